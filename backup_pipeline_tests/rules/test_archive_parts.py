"""Splitting a very large account's archive into parts: every file once, in order, each part under
the part size, a patient's folder or an invoice's files never split unless alone too large."""

from __future__ import annotations

import itertools

from hypothesis import given
from hypothesis import strategies as st

from backup_pipeline.rules.archive_entries import (
    KIND_ATTACHMENT,
    KIND_CFDI_PDF,
    KIND_CFDI_XML,
    PlannedFile,
)
from backup_pipeline.rules.archive_names import part_key
from backup_pipeline.rules.archive_parts import (
    DEFAULT_PART_SIZE,
    archive_spans,
    estimated_size,
    fixed_entries_reserve,
    group_of,
    split_into_parts,
    workbook_reserve,
)


def _attachment(patient: int, n: int, size: int | None) -> PlannedFile:
    return PlannedFile(
        archive_path=f"adjuntos/Paciente ({patient})/archivo {n}.jpg",
        source_key=f"k/{patient}/{n}",
        kind=KIND_ATTACHMENT,
        record_id=patient * 1000 + n,
        patient_id=patient,
        expected_size=size,
    )


def _invoice(record: int) -> list[PlannedFile]:
    return [
        PlannedFile(
            f"facturacion/ingresos/xml/U{record}.xml", f"x/{record}", KIND_CFDI_XML, record, None
        ),
        PlannedFile(
            f"facturacion/ingresos/pdf/U{record}.pdf", f"p/{record}", KIND_CFDI_PDF, record, None
        ),
    ]


@st.composite
def plans(draw) -> list[PlannedFile]:
    files: list[PlannedFile] = []
    for patient in range(draw(st.integers(0, 8))):
        for n in range(draw(st.integers(1, 6))):
            size = draw(st.one_of(st.none(), st.integers(0, 3_000_000)))
            files.append(_attachment(patient, n, size))
    for record in range(draw(st.integers(0, 5))):
        files += _invoice(record)
    return files


@given(plans(), st.integers(100_000, 10_000_000), st.integers(0, 2_000_000))
def test_every_file_goes_once_in_order_and_parts_stay_under_the_size(plan, part_size, first):
    spans = split_into_parts(plan, part_size=part_size, first_part_bytes=first)
    assert [s.number for s in spans] == list(range(1, len(spans) + 1))
    assert spans[0].start == 0 and spans[-1].stop == len(plan)
    assert all(a.stop == b.start for a, b in itertools.pairwise(spans))
    for span in spans:
        files = plan[span.start : span.stop]
        bytes_here = sum(estimated_size(f) for f in files) + (first if span.number == 1 else 0)
        assert span.estimated_bytes == bytes_here
        # Over the size only when a single file is (nothing can be cut smaller than a file),
        # or part 1 when its workbooks alone are.
        assert bytes_here <= part_size or len(files) <= 1 or (span.number == 1 and first > 0)


@given(plans(), st.integers(100_000, 10_000_000))
def test_a_group_is_split_only_when_it_alone_exceeds_a_part(plan, part_size):
    spans = split_into_parts(plan, part_size=part_size)
    part_of = {i: span.number for span in spans for i in range(span.start, span.stop)}
    groups: dict[tuple[str, str], list[int]] = {}
    for index, item in enumerate(plan):
        groups.setdefault(group_of(item), []).append(index)
    for members in groups.values():
        if len({part_of[i] for i in members}) > 1:
            assert sum(estimated_size(plan[i]) for i in members) > part_size


def test_one_part_when_everything_fits_and_its_name_is_the_archives():
    plan = [_attachment(1, n, 1000) for n in range(3)]
    (span,) = split_into_parts(plan, part_size=10**9, first_part_bytes=5000)
    assert (span.start, span.stop) == (0, 3)
    key = "respaldos/1/7/respaldo_clinica_2026-11-30.zip"
    assert part_key(key, 1, 1) == key
    assert part_key(key, 2, 3) == "respaldos/1/7/respaldo_clinica_2026-11-30_parte-2-de-3.zip"


def test_an_empty_account_is_one_part():
    (span,) = split_into_parts([], part_size=1000, first_part_bytes=50_000)
    assert (span.start, span.stop) == (0, 0)


@st.composite
def plans_of_small_groups(draw, part_size: int) -> list[PlannedFile]:
    """Plans whose every group (a patient's folder, an invoice) is under a tenth of a part."""
    files: list[PlannedFile] = []
    for patient in range(draw(st.integers(1, 60))):
        for n in range(draw(st.integers(1, 4))):
            files.append(_attachment(patient, n, draw(st.integers(0, part_size // 45))))
    return files


@given(st.data(), st.integers(1_000_000, 10_000_000))
def test_parts_are_filled_evenly_with_no_near_empty_tail(data, part_size):
    plan = data.draw(plans_of_small_groups(part_size))
    first = workbook_reserve(part_size) + fixed_entries_reserve(part_size)
    spans = archive_spans(plan, part_size)
    total = first + sum(estimated_size(f) for f in plan)
    if total <= part_size:
        assert len(spans) == 1
        return
    # As few parts as the size allows (one more at most, when the groups do not fall evenly),
    # none of them a tail far under the others.
    assert len(spans) <= -(-total // part_size) + 1
    mean = total / len(spans)
    assert min(span.estimated_bytes for span in spans) >= mean / 2
    assert max(span.estimated_bytes for span in spans) <= part_size


def test_a_one_megabyte_part_keeps_room_for_files_in_part_1():
    plan = [_attachment(patient, 0, 50_000) for patient in range(60)]
    spans = archive_spans(plan, 1_000_000)
    assert len(spans) >= 3
    # Part 1 keeps a fifth for the workbooks and LEEME.txt: the rest holds files.
    assert workbook_reserve(1_000_000) + fixed_entries_reserve(1_000_000) <= 200_000
    assert spans[0].files >= 10
    assert all(span.estimated_bytes <= 1_000_000 for span in spans)


def test_the_default_part_size_keeps_its_reserves():
    assert DEFAULT_PART_SIZE == 4_000_000_000
    assert workbook_reserve(DEFAULT_PART_SIZE) == 256 * 1024 * 1024
    assert fixed_entries_reserve(DEFAULT_PART_SIZE) == 1024 * 1024
