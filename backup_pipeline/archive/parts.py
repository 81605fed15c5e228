"""A very large account's archive in parts: where each part starts in the file plan, so that every
part stays under the part size and a patient's folder (or an invoice's XML and PDF) is never split
across parts unless it alone is larger than a part."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from backup_pipeline.archive.entries import KIND_ATTACHMENT, PlannedFile

# FAT32 holds files up to 4 GiB - 1 byte; 4 GB (decimal) leaves room for the zip's own headers.
DEFAULT_PART_SIZE = 4_000_000_000
# A planned file whose size the platform did not record counts as this much: a typical scanned
# page or phone photo, and a CFDI. Only an estimate (asking the store for every such size would
# cost a request per file): an account whose sizes are mostly unrecorded may get parts somewhat
# over or under the part size, never a lost file.
UNKNOWN_ATTACHMENT_SIZE = 256 * 1024
UNKNOWN_CFDI_SIZE = 64 * 1024
# What each entry adds to the zip besides its bytes (local header, central directory record,
# zip64 extras, its name), rounded up.
ENTRY_OVERHEAD = 512
# LEEME.txt, SHA256SUMS and a possible archivos_no_incluidos.xlsx, in part 1 beside the workbooks.
FIXED_ENTRIES_BYTES = 1024 * 1024
# The most part 1 keeps for workbooks (see workbook_reserve): a large clinic's are ~50 MB.
WORKBOOK_RESERVE_MAX = 256 * 1024 * 1024


@dataclass(frozen=True)
class PartSpan:
    """Planned files [start, stop) of the plan (in its order) go into part `number` (1-based)."""

    number: int
    start: int
    stop: int
    estimated_bytes: int

    @property
    def files(self) -> int:
        return self.stop - self.start


def estimated_size(planned: PlannedFile) -> int:
    if planned.expected_size is not None and planned.expected_size >= 0:
        size = planned.expected_size
    else:
        size = UNKNOWN_ATTACHMENT_SIZE if planned.kind == KIND_ATTACHMENT else UNKNOWN_CFDI_SIZE
    return size + ENTRY_OVERHEAD + len(planned.archive_path.encode("utf-8"))


def group_of(planned: PlannedFile) -> tuple[str, str]:
    """What must stay together: a patient's folder of attachments, or one invoice's files."""
    if planned.kind == KIND_ATTACHMENT:
        return ("folder", planned.archive_path.rsplit("/", 1)[0])
    return ("invoice", str(planned.record_id))


def workbook_reserve(part_size: int) -> int:
    """Room part 1 keeps for the workbooks, which are still rendering when its files are split:
    a tenth of a part, at most WORKBOOK_RESERVE_MAX. Workbooks larger than that (millions of
    rows) make part 1 larger than the part size by the difference; the run reports its largest
    part."""
    return min(part_size // 10, WORKBOOK_RESERVE_MAX)


def archive_spans(planned: Iterable[PlannedFile], part_size: int) -> list[PartSpan]:
    """The parts of one clinic's archive, in the plan's order: the one split that the zip and
    every report of which file went into which part share."""
    return split_into_parts(
        planned,
        part_size=part_size,
        first_part_bytes=workbook_reserve(part_size) + FIXED_ENTRIES_BYTES,
    )


def split_into_parts(
    planned: Iterable[PlannedFile], *, part_size: int, first_part_bytes: int = 0
) -> list[PartSpan]:
    """The parts of an archive whose first part already holds `first_part_bytes` (the
    workbooks, LEEME.txt and SHA256SUMS). One span when everything fits in one part.

    Groups (group_of) are contiguous in the plan's order; a group goes whole into the current
    part if it fits, else it opens the next part; a group larger than a part is cut between its
    files, each part as full as it can be.
    """
    if part_size <= 0:
        raise ValueError("the part size must be positive")
    spans: list[PartSpan] = []
    start = index = 0
    used = first_part_bytes

    def close(at: int) -> None:
        nonlocal start, used
        spans.append(PartSpan(len(spans) + 1, start, at, used))
        start, used = at, 0

    for group_start, sizes in _groups(planned):
        total = sum(sizes)
        index = group_start + len(sizes)
        if used + total <= part_size:
            used += total
            continue
        if used > 0 and total <= part_size:
            close(group_start)  # the group opens the next part, whole
            used = total
            continue
        # Larger than a part (or than what is left of an empty one): cut between its files.
        for offset, size in enumerate(sizes):
            if used > 0 and used + size > part_size:
                close(group_start + offset)
            used += size
    spans.append(PartSpan(len(spans) + 1, start, index, used))
    return spans


def _groups(planned: Iterable[PlannedFile]) -> Iterator[tuple[int, list[int]]]:
    """(index of the group's first file, sizes of its files), in plan order."""
    current: tuple[str, str] | None = None
    sizes: list[int] = []
    start = 0
    for index, item in enumerate(planned):
        group = group_of(item)
        if group != current and sizes:
            yield start, sizes
            sizes, start = [], index
        current = group
        sizes.append(estimated_size(item))
    if sizes:
        yield start, sizes
