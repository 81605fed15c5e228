"""A very large account's archive in parts: where each part starts in the file plan, so that every
part stays under the part size and a patient's folder (or an invoice's XML and PDF) is never split
across parts unless it alone is larger than a part."""

from __future__ import annotations

from array import array
from collections.abc import Iterable
from dataclasses import dataclass

from backup_pipeline.rules.archive_entries import (
    KIND_ATTACHMENT,
    KIND_CFDI_PDF,
    KIND_CFDI_XML,
    PlannedFile,
)

# FAT32 holds files up to 4 GiB - 1 byte; 4 GB (decimal) leaves room for the zip's own headers.
DEFAULT_PART_SIZE = 4_000_000_000
# A planned file whose size the platform did not record counts as this much: a typical scanned
# page or phone photo; a CFDI's XML (a few kB, more with many concepts) and its PDF (tens of kB),
# whose sizes the platform never records. Only an estimate (asking the store for every such size
# would cost a request per file): an account whose sizes are mostly unrecorded may get parts
# somewhat over or under the part size, never a lost file. An estimate far above the truth
# leaves the parts of those files near empty; the part size (4 GB) is 7% under FAT32's limit.
UNKNOWN_ATTACHMENT_SIZE = 256 * 1024
UNKNOWN_CFDI_XML_SIZE = 8 * 1024
UNKNOWN_CFDI_PDF_SIZE = 48 * 1024
# What each entry adds to the zip besides its bytes (local header, central directory record,
# zip64 extras, its name), rounded up.
ENTRY_OVERHEAD = 512
# LEEME.txt, SHA256SUMS and a possible archivos_no_incluidos.xlsx, in part 1 beside the workbooks;
# at most a tenth of a small part (a 1 MB part keeps room for files too).
FIXED_ENTRIES_BYTES = 1024 * 1024
# The most part 1 keeps for workbooks (see workbook_reserve): a large clinic's are ~50 MB.
WORKBOOK_RESERVE_MAX = 256 * 1024 * 1024
# Balanced splits tried, each with one more part, before settling for the plain fill (see
# split_into_parts); each try is one pass over the plan's sizes.
BALANCE_ATTEMPTS = 4


_UNKNOWN_SIZES = {
    KIND_ATTACHMENT: UNKNOWN_ATTACHMENT_SIZE,
    KIND_CFDI_XML: UNKNOWN_CFDI_XML_SIZE,
    KIND_CFDI_PDF: UNKNOWN_CFDI_PDF_SIZE,
}


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
        size = _UNKNOWN_SIZES.get(planned.kind, UNKNOWN_ATTACHMENT_SIZE)
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


def fixed_entries_reserve(part_size: int) -> int:
    """Room part 1 keeps for LEEME.txt, its checksum file and archivos_no_incluidos.xlsx."""
    return min(part_size // 10, FIXED_ENTRIES_BYTES)


def archive_spans(planned: Iterable[PlannedFile], part_size: int) -> list[PartSpan]:
    """The parts of one clinic's archive, in the plan's order: the one split that the zip and
    every report of which file went into which part share."""
    return split_into_parts(
        planned,
        part_size=part_size,
        first_part_bytes=workbook_reserve(part_size) + fixed_entries_reserve(part_size),
    )


def split_into_parts(
    planned: Iterable[PlannedFile], *, part_size: int, first_part_bytes: int = 0
) -> list[PartSpan]:
    """The parts of an archive whose first part already holds `first_part_bytes` (the
    workbooks, LEEME.txt and SHA256SUMS). One span when everything fits in one part.

    Parts are filled evenly: aiming at n = ceil(total / part_size) parts, each part ends at the
    group boundary nearest its share of what is left, so that no part is a near-empty tail
    when the groups allow it; when the groups do not fit n parts that way, n + 1 is tried, and
    so on a few times before the plain fill (each part as full as it can be). Whatever the
    split, a part is over the part size only when a single file is (or part 1's
    `first_part_bytes` are); a group (group_of, contiguous in the plan's order) is cut between
    its files only when it does not fit a part of its own.
    """
    if part_size <= 0:
        raise ValueError("the part size must be positive")
    sizes, starts = _sizes_and_groups(planned)
    total = first_part_bytes + sum(sizes)
    filled = _split(sizes, starts, part_size, first_part_bytes)
    if len(filled) == 1:
        return filled
    least = max(1, -(-total // part_size))
    for parts in range(least, min(least + BALANCE_ATTEMPTS, len(filled) + 1)):
        balanced = _split(sizes, starts, part_size, first_part_bytes, parts=parts, total=total)
        if len(balanced) <= parts:
            return balanced
    return filled


def _split(
    sizes: array[int],
    starts: array[int],
    part_size: int,
    first_part_bytes: int,
    *,
    parts: int | None = None,
    total: int = 0,
) -> list[PartSpan]:
    """Spans over the groups. Aiming at `parts` parts, each part closes at the group boundary
    nearest its share of what is left (the bytes not yet placed over the parts not yet
    closed), so that a part cut short by the part size passes its shortfall on to the next
    ones; without `parts`, each part is filled to the part size."""
    spans: list[PartSpan] = []
    start = 0
    used = done = first_part_bytes  # this part's bytes; every byte placed so far

    def goal_of_open_part() -> float:
        # Where the open part should end, in bytes placed: its share of what was left when it
        # opened (part 1 opens holding first_part_bytes).
        left = (parts or 0) - len(spans)
        opened_at = done - used
        return opened_at + (total - opened_at) / left if left > 1 else float("inf")

    goal = goal_of_open_part()

    def close(at: int) -> None:
        nonlocal start, used, goal
        spans.append(PartSpan(len(spans) + 1, start, at, used))
        start, used = at, 0
        goal = goal_of_open_part()

    for number, group_start in enumerate(starts):
        group_stop = starts[number + 1] if number + 1 < len(starts) else len(sizes)
        group_bytes = sum(sizes[group_start:group_stop])
        if used + group_bytes <= part_size:
            # Past the goal, the group stays in this part only if that ends it nearer the goal.
            past = done + group_bytes - goal
            if used > 0 and past > 0 and past > goal - done:
                close(group_start)
            used += group_bytes
            done += group_bytes
            continue
        if used > 0 and group_bytes <= part_size:
            close(group_start)  # the group opens the next part, whole
            used = group_bytes
            done += group_bytes
            continue
        # Larger than a part (or than what is left of an empty one): cut between its files.
        for index in range(group_start, group_stop):
            if used > 0 and used + sizes[index] > part_size:
                close(index)
            used += sizes[index]
            done += sizes[index]
    spans.append(PartSpan(len(spans) + 1, start, len(sizes), used))
    return spans


def _sizes_and_groups(planned: Iterable[PlannedFile]) -> tuple[array[int], array[int]]:
    """Every planned file's estimated size, and the index where each group starts, in plan
    order: 8 bytes per file, since the balanced split goes over the whole plan more than once."""
    sizes: array[int] = array("q")
    starts: array[int] = array("q")
    current: tuple[str, str] | None = None
    for index, item in enumerate(planned):
        group = group_of(item)
        if group != current:
            starts.append(index)
            current = group
        sizes.append(estimated_size(item))
    return sizes, starts
