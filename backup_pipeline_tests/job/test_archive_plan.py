"""The file plan read from the platform database: what goes in, what stays out, and its names."""

from __future__ import annotations

import unicodedata
from datetime import datetime

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import create_engine, insert

from backup_pipeline.archive.plan import plan_files
from backup_pipeline.platform.tables import (
    attachments,
    cfdi_documents,
    metadata,
    patients,
    subscriptions,
)
from backup_pipeline.platform.tables import patients as patients_table
from backup_pipeline.rules.archive_entries import PlannedFile

T0 = datetime(2026, 1, 2, 3, 4, 5)
SHA = "ab" * 32
UUID_A = "6f2c9a1e-3b4d-4c5e-8f90-1a2b3c4d5e6f"
UUID_B = "0A1B2C3D-4E5F-4061-8293-A4B5C6D7E8F9"


def _patient(pid, sub, first, last=None, second=None, deleted=None):
    return {
        "id": pid,
        "subscription_id": sub,
        "first_name": first,
        "last_name": last,
        "second_last_name": second,
        "created_at": T0,
        "deleted_at": deleted,
    }


def _attachment(aid, sub, pid, name, *, minute=0, deleted=None, size=None, sha=None):
    return {
        "id": aid,
        "subscription_id": sub,
        "patient_id": pid,
        "storage_key": f"files/{aid}",
        "file_name": name,
        "size_bytes": size,
        "sha256": sha,
        "uploaded_at": T0.replace(minute=minute),
        "deleted_at": deleted,
    }


def _cfdi(cid, sub, direction, uuid, *, pdf=True, patient=None):
    return {
        "id": cid,
        "subscription_id": sub,
        "direction": direction,
        "uuid": uuid,
        "xml_storage_key": f"cfdi/{cid}.xml",
        "pdf_storage_key": f"cfdi/{cid}.pdf" if pdf else None,
        "status": "vigente",
        "patient_id": patient,
        "created_at": T0,
    }


@pytest.fixture
def platform(db_url):
    engine = create_engine(db_url)
    metadata.create_all(engine)
    with engine.begin() as conn:
        conn.execute(
            insert(subscriptions),
            [
                {"id": sub, "name": f"Clínica {sub}", "status": "active", "created_at": T0}
                for sub in (1, 2)
            ],
        )
        conn.execute(
            insert(patients),
            [
                _patient(10, 1, "Ana", "García", "López"),
                _patient(11, 1, "Ana", "García", "López"),  # same name, another patient
                _patient(12, 1, "Borrado", "Paciente", deleted=T0),
                _patient(13, 1, "CON", "../..", "a\\b"),
                _patient(20, 2, "Otra", "Clínica"),
            ],
        )
        conn.execute(
            insert(attachments),
            [
                _attachment(100, 1, 10, "radiografía.png", minute=5, size=3, sha=SHA.upper()),
                _attachment(101, 1, 10, "Receta.PDF", minute=1),
                _attachment(102, 1, 10, "receta.pdf", minute=2),  # same name, case aside
                _attachment(103, 1, 10, "borrado.png", minute=3, deleted=T0),
                _attachment(104, 1, 11, "receta.pdf", minute=1, size=-1, sha="not-a-hash"),
                _attachment(105, 1, 12, "de_paciente_borrado.png"),
                _attachment(106, 1, 13, "../../etc/passwd"),
                _attachment(107, 1, 13, "nul.txt"),
                _attachment(108, 1, 13, ""),
                _attachment(200, 2, 20, "ajeno.png"),
            ],
        )
        conn.execute(
            insert(cfdi_documents),
            [
                _cfdi(300, 1, "issued", UUID_A, patient=10),
                _cfdi(301, 1, "received", UUID_B, pdf=False),
                _cfdi(302, 1, "issued", UUID_A.upper(), pdf=True),  # the same UUID twice
                _cfdi(303, 1, "received", "", pdf=False),
                _cfdi(304, 2, "issued", "11111111-2222-3333-4444-555555555555"),
            ],
        )
    yield engine
    engine.dispose()


def _plan(engine, subscription_id=1) -> list[PlannedFile]:
    with engine.connect() as conn:
        return list(plan_files(conn, subscription_id))


def test_attachments_are_grouped_by_patient_in_upload_order_with_safe_unique_names(platform):
    plan = [p for p in _plan(platform) if p.kind == "adjunto"]
    assert [(p.record_id, p.archive_path) for p in plan] == [
        (101, "adjuntos/García López Ana (10)/Receta.PDF"),
        (102, "adjuntos/García López Ana (10)/receta (2).pdf"),
        (100, "adjuntos/García López Ana (10)/radiografía.png"),
        (104, "adjuntos/García López Ana (11)/receta.pdf"),
        (106, "adjuntos/_.. a_b CON (13)/_.._etc_passwd"),
        (107, "adjuntos/_.. a_b CON (13)/_nul.txt"),
        (108, "adjuntos/_.. a_b CON (13)/archivo"),
    ]


def test_soft_deleted_rows_and_other_subscriptions_stay_out(platform):
    plan = _plan(platform)
    record_ids = {p.record_id for p in plan}
    assert not record_ids & {103, 105, 200, 304}
    assert all("ajeno" not in p.archive_path and "Borrado" not in p.archive_path for p in plan)
    assert [p.archive_path for p in _plan(platform, 2)] == [
        "adjuntos/Clínica Otra (20)/ajeno.png",
        "facturacion/ingresos/xml/11111111-2222-3333-4444-555555555555.xml",
        "facturacion/ingresos/pdf/11111111-2222-3333-4444-555555555555.pdf",
    ]


def test_platform_checksums_are_kept_only_when_they_look_valid(platform):
    by_id = {p.record_id: p for p in _plan(platform) if p.kind == "adjunto"}
    assert (by_id[100].expected_size, by_id[100].expected_sha256) == (3, SHA)
    assert (by_id[104].expected_size, by_id[104].expected_sha256) == (None, None)
    assert by_id[100].source_key == "files/100" and by_id[100].patient_id == 10


def test_cfdi_files_follow_the_attachments_and_one_uuid_twice_keeps_both(platform):
    plan = [(p.kind, p.record_id, p.archive_path) for p in _plan(platform) if p.kind != "adjunto"]
    upper_a = UUID_A.upper()
    assert plan == [
        ("cfdi_xml", 300, f"facturacion/ingresos/xml/{upper_a}.xml"),
        ("cfdi_pdf", 300, f"facturacion/ingresos/pdf/{upper_a}.pdf"),
        ("cfdi_xml", 302, f"facturacion/ingresos/xml/{upper_a} (2).xml"),
        ("cfdi_pdf", 302, f"facturacion/ingresos/pdf/{upper_a} (2).pdf"),
        ("cfdi_xml", 301, f"facturacion/gastos/xml/{UUID_B}.xml"),
        ("cfdi_xml", 303, "facturacion/gastos/xml/sin_uuid_303.xml"),
    ]
    assert len({path.casefold() for _, _, path in plan}) == len(plan)


def test_every_planned_path_is_unique_in_the_archive(platform):
    paths = [p.archive_path.casefold() for p in _plan(platform)]
    assert len(paths) == len(set(paths)) == 13


# --- Windows can extract it: short paths, no two names that one system sees as one -------------

# The rules stated independently of backup_pipeline.rules.archive_names: Windows Explorer's 260-unit
# limit leaves 140 UTF-16 units for a path inside the zip; Windows and macOS ignore case, and
# macOS also ignores composed versus decomposed accents.
MAX_ENTRY_UNITS = 140
WINDOWS_RESERVED = {"CON", "PRN", "AUX", "NUL", "CONIN$", "CONOUT$", "CLOCK$"} | {
    f"{port}{n}" for port in ("COM", "LPT") for n in "0123456789¹²³"
}


def utf16_length(text: str) -> int:
    return len(text.encode("utf-16-le")) // 2


def same_on_windows_or_macos(path: str) -> tuple[str, str]:
    return (
        unicodedata.normalize("NFC", path).casefold(),
        unicodedata.normalize("NFD", unicodedata.normalize("NFD", path).casefold()),
    )


def assert_extractable(paths: list[str]) -> None:
    for path in paths:
        assert utf16_length(path) <= MAX_ENTRY_UNITS, path
        for part in path.split("/"):
            assert part and part not in (".", "..")
            assert not set(part) & set('<>:"\\|?*')
            assert not part.endswith((" ", ".")) and not part.startswith(" ")
            assert part.split(".", 1)[0].rstrip(" ").upper() not in WINDOWS_RESERVED
            assert all(unicodedata.category(c) not in ("Cc", "Cs") for c in part)
    for fold in (0, 1):
        folded = [same_on_windows_or_macos(path)[fold] for path in paths]
        assert len(set(folded)) == len(folded), "two entries are one file on Windows or macOS"


hostile_words = st.one_of(
    st.text(max_size=300),
    st.text(alphabet="aAáÁéÉñÑßẞıİ😀👨\u200d👩\u200d👧\u0301 .\u202e\u200f\u061c", max_size=200),
    st.sampled_from(["CON", "nul", "Com1", "lpt¹", "aux ", "..", ".", "", " . ", "...", "   "]),
    st.builds(lambda n: "Radiografía panorámica " * n, st.integers(1, 12)),
)
hostile_file_names = st.builds(
    lambda stem, extension, upper: (stem + extension).upper() if upper else stem + extension,
    hostile_words,
    st.sampled_from(["", ".pdf", ".JPG", ".jpeg", ".tar.gz", ".😀", "."]),
    st.booleans(),
)
hostile_uuids = st.one_of(
    st.sampled_from([UUID_A, UUID_A.lower(), UUID_A.upper(), "", "x" * 300]),
    st.text(alphabet="0123456789abcdefABCDEF-gz😀", max_size=120),
)


@given(
    patients=st.lists(
        st.tuples(
            st.integers(min_value=1, max_value=10**18), hostile_words, hostile_words, hostile_words
        ),
        min_size=1,
        max_size=4,
        unique_by=lambda p: p[0],
    ),
    files=st.lists(st.tuples(st.integers(0, 3), hostile_file_names), max_size=25),
    uuids=st.lists(st.tuples(st.sampled_from(["issued", "received"]), hostile_uuids), max_size=8),
)
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_every_planned_path_is_short_and_distinct_on_windows_and_macos(patients, files, uuids):
    engine = create_engine("sqlite://")
    metadata.create_all(engine)
    with engine.begin() as conn:
        conn.execute(
            insert(subscriptions), [{"id": 1, "name": "c", "status": "active", "created_at": T0}]
        )
        conn.execute(
            insert(patients_table),
            [_patient(pid, 1, first, last, second) for pid, last, second, first in patients],
        )
        if files:
            conn.execute(
                insert(attachments),
                [
                    _attachment(n + 1, 1, patients[which % len(patients)][0], name, minute=n % 60)
                    for n, (which, name) in enumerate(files)
                ],
            )
        if uuids:
            conn.execute(
                insert(cfdi_documents),
                [_cfdi(n + 1, 1, direction, uuid) for n, (direction, uuid) in enumerate(uuids)],
            )
    plan = _plan(engine)
    engine.dispose()

    assert len(plan) == len(files) + 2 * len(uuids)
    assert_extractable([p.archive_path for p in plan])
    for planned in plan:
        if planned.kind == "adjunto":
            root, folder, _name = planned.archive_path.split("/")
            assert root == "adjuntos" and folder.endswith(f" ({planned.patient_id})")


def test_a_long_name_is_shortened_recognisably_and_counted(platform):
    long_name = "Radiografía panorámica de control " * 8 + "2024-03-15.jpeg"
    with platform.begin() as conn:
        conn.execute(
            insert(patients_table),
            [_patient(14, 1, "María Guadalupe", "Hernández " * 10, "Gutiérrez")],
        )
        conn.execute(
            insert(attachments),
            [
                _attachment(110, 1, 14, long_name, minute=1),
                _attachment(111, 1, 14, long_name.upper(), minute=2),
                _attachment(112, 1, 14, "Foto.JPG", minute=3),
                _attachment(113, 1, 14, "foto.jpg", minute=4),
            ],
        )
    by_id = {p.record_id: p for p in _plan(platform) if p.patient_id == 14}
    folder = by_id[110].archive_path.rsplit("/", 1)[0]
    assert folder.startswith("adjuntos/Hernández Hernández") and folder.endswith(" (14)")
    first, second = (by_id[i].archive_path.rsplit("/", 1)[1] for i in (110, 111))
    assert first.startswith("Radiografía panorámica de control") and first.endswith(".jpeg")
    assert second.startswith("RADIOGRAFÍA PANORÁMICA") and second.endswith(" (2).JPEG")
    assert by_id[112].archive_path == f"{folder}/Foto.JPG"
    assert by_id[113].archive_path == f"{folder}/foto (2).jpg"
    assert [by_id[i].name_shortened for i in (110, 111, 112, 113)] == [True, True, True, True]
    assert by_id[110].original_name == long_name  # what adjuntos.xlsx shows beside the path
    assert_extractable([p.archive_path for p in by_id.values()])


def test_a_short_name_in_a_short_folder_is_not_counted_as_shortened(platform):
    plan = [p for p in _plan(platform) if p.kind == "adjunto"]
    assert plan and not any(p.name_shortened for p in plan)
    assert [p.original_name for p in plan][:3] == ["Receta.PDF", "receta.pdf", "radiografía.png"]
    assert plan[0].uploaded_at == T0.replace(minute=1).isoformat()
