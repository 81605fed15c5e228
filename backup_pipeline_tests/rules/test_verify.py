"""verify_zip: a good archive passes; damage, tampering and escaping paths are reported."""

from __future__ import annotations

import hashlib
import io
import zipfile
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from openpyxl import Workbook

from backup_pipeline.archive.verify import (
    is_contained,
    sha256sums_text,
    verify_archive,
    verify_zip,
)
from backup_pipeline.rules.archive_names import part_key
from backup_pipeline.rules.leeme import (
    FILES_COPIED_LABEL,
    FILES_MISSING_LABEL,
    part_note_path,
    part_sums_path,
)
from backup_pipeline_tests.support.oracles import stays_in_the_archive

SAMPLES = Path(__file__).parents[1] / "data" / "cfdi"
UUID = "5FB2822E-396D-4725-8521-CDC4BDD20CCF"


def _workbook() -> bytes:
    book = Workbook()
    book.active.append(["ID paciente", "Paciente"])
    book.active.append([17, "García López Ana"])
    buffer = io.BytesIO()
    book.save(buffer)
    return buffer.getvalue()


GOOD = {
    "pacientes.xlsx": _workbook(),
    f"facturacion/ingresos/xml/{UUID}.xml": (SAMPLES / "cfdi40_ingreso.xml").read_bytes(),
    "adjuntos/García López Ana (17)/radiografía.png": b"\x89PNG" + bytes(range(256)) * 8,
    "LEEME.txt": "Léame\r\n".encode(),
}


def _zip(
    entries: dict[str, bytes], sums: str | None = None, sums_path: str = "SHA256SUMS"
) -> bytes:
    if sums is None:
        sums = sha256sums_text((p, hashlib.sha256(d).hexdigest()) for p, d in entries.items())
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for path, data in entries.items():
            zf.writestr(path, data)
        zf.writestr(sums_path, sums)
    return buffer.getvalue()


def test_sha256sums_text_is_the_sha256sum_format():
    text = sha256sums_text([("a b/ñ.txt", "0" * 64), ("LEEME.txt", "f" * 64)])
    assert text == f"{'0' * 64}  a b/ñ.txt\n{'f' * 64}  LEEME.txt\n"


@pytest.mark.parametrize("path", ["a\nb", "a\\b"])
def test_sha256sums_text_refuses_paths_sha256sum_would_escape(path):
    with pytest.raises(ValueError):
        sha256sums_text([(path, "0" * 64)])


def test_a_good_zip_passes_from_a_path_and_from_a_stream(tmp_path):
    data = _zip(GOOD)
    path = tmp_path / "good.zip"
    path.write_bytes(data)
    for source in (path, str(path), io.BytesIO(data)):
        report = verify_zip(source)
        assert report.ok and report.problems == [] and report.unreadable_cfdi == []
        assert report.entries == 5


def test_one_flipped_byte_in_an_entry_fails_and_names_no_patient():
    data = bytearray(_zip({"nota.txt": b"A" * 2000, **GOOD}))
    with zipfile.ZipFile(io.BytesIO(bytes(data))) as zf:
        info = zf.getinfo("adjuntos/García López Ana (17)/radiografía.png")
    # The entry's data starts after its 30-byte local header, name and extra field.
    start = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra)
    data[start + 10] ^= 0xFF
    report = verify_zip(io.BytesIO(bytes(data)))
    assert not report.ok
    assert any("attachment of patient 17" in p for p in report.problems), report.problems
    assert not any("García" in p or "radiograf" in p for p in report.problems)


def test_a_tampered_sha256sums_fails():
    sums = sha256sums_text((p, hashlib.sha256(d).hexdigest()) for p, d in GOOD.items())
    tampered = sums.replace(hashlib.sha256(GOOD["pacientes.xlsx"]).hexdigest(), "0" * 64)
    report = verify_zip(io.BytesIO(_zip(GOOD, tampered)))
    assert not report.ok
    assert report.problems == ["entry #0 ('pacientes.xlsx'): sha256 differs from SHA256SUMS line 1"]


def test_entries_missing_from_sha256sums_and_listed_paths_missing_from_the_zip_fail():
    sums = sha256sums_text(
        [
            ("pacientes.xlsx", hashlib.sha256(GOOD["pacientes.xlsx"]).hexdigest()),
            ("consultas.xlsx", "1" * 64),
        ]
    )
    report = verify_zip(io.BytesIO(_zip(GOOD, sums + "not a checksum line\n")))
    assert not report.ok
    problems = "\n".join(report.problems)
    assert "'consultas.xlsx') is listed but not in the zip" in problems
    assert "line 3 is not '<sha256>  <path>'" in problems
    assert "attachment of patient 17) is not listed" in problems
    assert "'LEEME.txt') is not listed" in problems


def test_a_zip_without_sha256sums_fails():
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        zf.writestr("pacientes.xlsx", GOOD["pacientes.xlsx"])
    report = verify_zip(io.BytesIO(buffer.getvalue()))
    assert report.problems == ["SHA256SUMS is missing"]


# Windows' Explorer and most unzip tools on it take a backslash for a folder separator.
ESCAPING_PATHS = [
    "../fuera.txt",
    "/etc/passwd",
    "adjuntos/../../x",
    "C:/x",
    "..\\x",
    "a\\..\\..\\x",
    "adjuntos\\..\\..\\x",
    "C:\\x",
    "c:x",
    "\\\\server\\share\\x",
    "\\x",
]


@pytest.mark.parametrize("evil", ESCAPING_PATHS)
def test_paths_that_escape_the_archive_fail(evil):
    # Listed in SHA256SUMS with its true sum (written out: sha256sums_text refuses a '\\'), so
    # that where it lands is the only thing wrong with it.
    sums = sha256sums_text((p, hashlib.sha256(d).hexdigest()) for p, d in GOOD.items())
    sums += f"{hashlib.sha256(b'x').hexdigest()}  {evil}\n"
    report = verify_zip(io.BytesIO(_zip({**GOOD, evil: b"x"}, sums)))
    assert not report.ok
    assert any("escapes the archive folder" in p for p in report.problems)


def test_the_escaping_paths_escape_by_the_rule_stated_apart():
    assert not any(stays_in_the_archive(path) for path in ESCAPING_PATHS)
    assert all(stays_in_the_archive(path) for path in GOOD)


# Paths made of the steps that matter: names, dots, drives, both separators.
path_steps = st.sampled_from(["a", "adjuntos", "x.pdf", ".", "..", "...", "C:", "c:x", "", " "])
paths = st.builds(
    lambda lead, steps, seps: (
        lead + "".join(s + step for s, step in zip(seps, steps, strict=False))
    ),
    st.sampled_from(["", "/", "\\", "\\\\", "C:", "..", "a"]),
    st.lists(path_steps, max_size=5),
    st.lists(st.sampled_from(["/", "\\"]), min_size=5, max_size=5),
)


@given(paths)
def test_is_contained_agrees_with_where_an_entry_lands_when_extracted(path):
    assert is_contained(path) == stays_in_the_archive(path)


def test_a_workbook_that_does_not_open_fails_and_is_named():
    damaged = GOOD["pacientes.xlsx"][: len(GOOD["pacientes.xlsx"]) // 2]
    report = verify_zip(io.BytesIO(_zip({**GOOD, "consultas.xlsx": damaged})))
    assert not report.ok
    assert len(report.problems) == 1
    assert report.problems[0].startswith(
        "entry #4 ('consultas.xlsx'): the workbook does not open ("
    )


def test_a_workbook_whose_sheet_is_not_xml_fails():
    with zipfile.ZipFile(io.BytesIO(GOOD["pacientes.xlsx"])) as source:
        parts = {name: source.read(name) for name in source.namelist()}
    parts["xl/worksheets/sheet1.xml"] = b"<worksheet><sheetData><row><c"  # cut mid-cell
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as book:
        for name, data in parts.items():
            book.writestr(name, data)
    report = verify_zip(io.BytesIO(_zip({**GOOD, "pacientes.xlsx": buffer.getvalue()})))
    assert not report.ok
    assert "'pacientes.xlsx'): the workbook does not open" in report.problems[0]


@pytest.mark.parametrize(
    "sample",
    ["broken_truncated.xml", "billion_laughs.xml", "empty.xml", "not_cfdi_retenciones.xml"],
)
def test_a_cfdi_xml_that_does_not_open_is_named_without_failing_the_archive(sample):
    path = f"facturacion/gastos/xml/{UUID}.xml"
    report = verify_zip(io.BytesIO(_zip({**GOOD, path: (SAMPLES / sample).read_bytes()})))
    # Copied as the platform stored it (the report says so too): the archive is still whole.
    assert report.ok, report.problems
    assert len(report.unreadable_cfdi) == 1
    assert report.unreadable_cfdi[0].startswith(f"entry #4 ('{path}'): the CFDI XML does not open")


def test_something_that_is_not_a_zip_fails_with_a_message():
    report = verify_zip(io.BytesIO(b"this is not a zip"))
    assert not report.ok and report.problems[0].startswith("not a readable zip")


def test_the_cli_names_what_does_not_open_and_exits_non_zero_only_for_damage(tmp_path, capsys):
    from backup_pipeline import cli

    path = f"facturacion/gastos/xml/{UUID}.xml"
    broken = {**GOOD, path: (SAMPLES / "broken_truncated.xml").read_bytes()}
    good_zip = tmp_path / "respaldo.zip"
    good_zip.write_bytes(_zip(broken))
    assert cli.main(["verify", str(good_zip)]) == 0
    out = capsys.readouterr().out
    assert f"NOTE: entry #4 ('{path}'): the CFDI XML does not open" in out
    assert "every workbook opens" in out

    damaged_zip = tmp_path / "dañado.zip"
    damaged_zip.write_bytes(_zip({**GOOD, "consultas.xlsx": b"PK not a workbook"}))
    assert cli.main(["verify", str(damaged_zip)]) == 1
    assert "MISMATCH: entry #4 ('consultas.xlsx'): the workbook does not open" in (
        capsys.readouterr().out
    )


# --- An archive in parts ------------------------------------------------------------------------

ARCHIVE_KEY = "respaldo_clinica_2026-12-07.zip"


def _leeme(files_copied: int, files_missing: int = 0) -> bytes:
    text = f"LEEME\r\n{FILES_COPIED_LABEL} en total: {files_copied} (3 kB).\r\n"
    if files_missing:
        text += f"{FILES_MISSING_LABEL}: {files_missing}.\r\n"
    return text.encode()


def _parts(
    tmp_path, count: int, *, files_copied: int | None = None, files_missing: int = 0
) -> list[Path]:
    """`count` parts on disk named as part_key names them: part 1 with the workbook and
    LEEME.txt, every part with one attachment of its own."""
    paths = []
    for number in range(1, count + 1):
        entries = {f"adjuntos/Paciente ({number})/foto.jpg": bytes([number]) * 300}
        if number == 1:
            entries["pacientes.xlsx"] = GOOD["pacientes.xlsx"]
            copied = count if files_copied is None else files_copied
            entries["LEEME.txt"] = _leeme(copied, files_missing)
            if files_missing:  # a list of one file, whatever LEEME.txt says
                entries["archivos_no_incluidos.xlsx"] = GOOD["pacientes.xlsx"]
        else:
            entries[part_note_path(number, count)] = b"parte"
        path = tmp_path / part_key(ARCHIVE_KEY, number, count)
        path.write_bytes(_zip(entries, sums_path=part_sums_path(number, count)))
        paths.append(path)
    return paths


def test_every_part_of_an_archive_passes_alone_and_together(tmp_path):
    paths = _parts(tmp_path, 3)
    report = verify_archive(paths)
    assert report.ok, (report.problems, report.missing_parts)
    assert [(r.part, r.parts) for _, r in report.zips] == [(1, 3), (2, 3), (3, 3)]


def test_a_left_out_part_is_named_with_its_file_name_and_fails(tmp_path, capsys):
    from backup_pipeline import cli

    paths = _parts(tmp_path, 17)
    given = [p for p in paths if p.name != part_key(ARCHIVE_KEY, 5, 17)]
    report = verify_archive(given)
    assert not report.ok
    assert report.missing_parts == [
        "falta la parte 5 de 17 (respaldo_clinica_2026-12-07_parte-5-de-17.zip)"
    ]
    assert cli.main(["verify", *map(str, given)]) == 1
    assert "MISSING: falta la parte 5 de 17 (respaldo_clinica_2026-12-07_parte-5-de-17.zip)" in (
        capsys.readouterr().out
    )


def test_a_part_renamed_by_the_browser_is_still_known_by_its_contents(tmp_path):
    paths = _parts(tmp_path, 2)
    renamed = paths[1].rename(tmp_path / "descarga (1).zip")
    assert verify_archive([paths[0], renamed]).ok
    # Without a file named as part_key names parts, the missing part is named by number.
    assert verify_archive([renamed]).missing_parts == ["falta la parte 1 de 2"]


def test_one_name_with_different_contents_in_two_parts_fails_without_naming_the_patient(
    tmp_path,
):
    paths = _parts(tmp_path, 2)
    clash = {"adjuntos/García López Ana (17)/radiografía.png": b"otra"}
    for number, path in enumerate(paths, start=1):
        with zipfile.ZipFile(path) as zf:
            entries = {n: zf.read(n) for n in zf.namelist() if not n.startswith("SHA256SUMS")}
        entries.update({k: v * number for k, v in clash.items()})
        path.write_bytes(_zip(entries, sums_path=part_sums_path(number, 2)))
    # The LEEME total does not add up either (one more file per part): the clash is named.
    problems = verify_archive(paths).problems
    assert any(
        "attachment of patient 17) is in part 1 and part 2 with different contents" in p
        for p in problems
    ), problems
    assert not any("García" in p or "radiograf" in p for p in problems)


def test_files_copied_that_do_not_add_up_to_leeme_fail(tmp_path):
    report = verify_archive(_parts(tmp_path, 3, files_copied=4))
    assert report.problems == ["LEEME.txt says 4 files were copied, the parts hold 3"]


def test_a_missing_list_shorter_than_leeme_says_fails(tmp_path):
    assert verify_archive(_parts(tmp_path, 2, files_missing=1)).ok
    report = verify_archive(_parts(tmp_path, 2, files_missing=2))
    assert report.problems == [
        "LEEME.txt says 2 files were not included, archivos_no_incluidos.xlsx lists 1"
    ]


def test_parts_of_two_archives_are_not_one_archive(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    a = _parts(tmp_path / "a", 2)
    b = _parts(tmp_path / "b", 3)
    report = verify_archive([a[0], b[1]])
    assert not report.ok
    assert report.problems == [
        "the zips are not parts of one archive: they say they are parts of 2 and of 3"
    ]
