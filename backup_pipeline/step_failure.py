"""How a permanent error ends an op: a Dagster Failure named for its cause, never retried, with
the operator's next step in its metadata."""

from __future__ import annotations

import functools
from collections.abc import Mapping

import dagster as dg

from backup_pipeline.services.failures import next_step


@functools.cache
def _failure_named_for(cause: type[BaseException]) -> type[dg.Failure]:
    # The run's failure event and the Dagster UI state an error as "module.Class: message". A
    # plain Failure reads "dagster._core.definitions.events.Failure: ..." and the failure sensor
    # would see the class "Failure"; a subclass named for its cause reads
    # "backup_pipeline.storage.base.StoreRefused: ..." in both. Still a dagster.Failure (public,
    # meant to be raised and subclassed by ops): allow_retries and metadata are honoured.
    return type(
        cause.__name__,
        (dg.Failure,),
        {
            "__module__": cause.__module__,
            "__qualname__": cause.__qualname__,
            "__doc__": f"A step ended for good by {cause.__name__} (see its message).",
        },
    )


def permanent(
    exc: BaseException,
    *,
    next_to_do: str | None = None,
    metadata: Mapping[str, object] | None = None,
) -> dg.Failure:
    """The Failure to raise (`raise permanent(exc) from exc`) for an error no retry can heal."""
    cause = type(exc)
    return _failure_named_for(cause)(
        description=str(exc),
        allow_retries=False,
        metadata={
            "cause": cause.__name__,
            "next_step": next_to_do or next_step(*(cls.__name__ for cls in cause.__mro__)),
            **(metadata or {}),
        },
    )
