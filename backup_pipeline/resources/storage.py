"""The object store as a Dagster resource, chosen by URL: file:// (a folder) or gs:// (GCS)."""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit
from urllib.request import url2pathname

import dagster as dg
from pydantic import Field, PrivateAttr

from backup_pipeline.storage import ObjectStore
from backup_pipeline.storage.folder import FolderStore

_BUCKET_NAME = re.compile(r"[a-z0-9][a-z0-9._-]{1,220}[a-z0-9]")
_SUPPORTED_FORMS = (
    "'file:///absolute/folder' for a local folder or "
    "'gs://bucket[/prefix][?signer=service-account-email]' for Google Cloud Storage"
)


def open_store(
    url: str, signer_email: str | None = None, project: str | None = None
) -> ObjectStore:
    """The store for a URL: 'file:///dir' or 'gs://bucket[/prefix][?signer=email]'.

    For gs:// the signer defaults to signer_email (Settings.gcs_signer_email, from
    BACKUP_GCS_SIGNER_EMAIL); it is only needed when the credentials cannot sign (workload
    identity). project (Settings.gcs_project) is the client's project, which object calls do not need.
    """
    parts = urlsplit(url)
    if parts.scheme == "file":
        path = Path(url2pathname(parts.path))
        if parts.netloc not in ("", "localhost") or parts.query or not path.is_absolute():
            raise ValueError(
                f"a file:// object store URL needs an absolute local path; use {_SUPPORTED_FORMS}"
            )
        return FolderStore(path)
    if parts.scheme == "gs":
        if not _BUCKET_NAME.fullmatch(parts.netloc):
            raise ValueError(f"a gs:// URL needs a valid bucket name; use {_SUPPORTED_FORMS}")
        query = parse_qs(parts.query, keep_blank_values=True)
        if set(query) - {"signer"}:
            raise ValueError(f"a gs:// URL takes only the 'signer' option; use {_SUPPORTED_FORMS}")
        signer = query.get("signer", [""])[-1] or signer_email or None
        # Imported here: Google's client (google-auth, requests, urllib3) takes ~0.2 s to import,
        # which every command, sensor tick and run worker with file:// stores would pay. A run
        # opens its stores before it forks its workbook workers, so they share this import.
        from backup_pipeline.storage.gcs import GcsStore

        return GcsStore(parts.netloc, unquote(parts.path), signer_email=signer, project=project)
    raise ValueError(
        f"unsupported object store URL scheme {parts.scheme!r}; use {_SUPPORTED_FORMS}"
    )


class ObjectStoreResource(dg.ConfigurableResource):
    """An object store chosen by URL (see open_store), opened once per resource instance."""

    url: str = Field(
        description="'file:///absolute/folder' or 'gs://bucket[/prefix][?signer=email]'"
    )
    signer_email: str | None = Field(
        default=None,
        description="gs:// only: the service account that signs links when the URL names none",
    )
    project: str | None = Field(
        default=None, description="gs:// only: the client's Google Cloud project (optional)"
    )

    # A pydantic private attribute: the only mutable state a (frozen) ConfigurableResource may hold.
    _store: ObjectStore | None = PrivateAttr(default=None)

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        self._store = self._open()

    def get_store(self) -> ObjectStore:
        # Outside a run (scripts, tests) setup_for_execution is never called: open lazily.
        if self._store is None:
            self._store = self._open()
        return self._store

    def open_new_store(self) -> ObjectStore:
        """A store of its own, sharing no connection with get_store()'s: for a forked worker
        process, which must not use its parent's HTTP connections."""
        return self._open()

    def _open(self) -> ObjectStore:
        return open_store(self.url, signer_email=self.signer_email, project=self.project)
