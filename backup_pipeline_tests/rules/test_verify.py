"""verify_zip: a good archive passes; damage, tampering and escaping paths are reported."""

from __future__ import annotations

import hashlib
import io
import zipfile

import pytest

from backup_pipeline.archive.verify import sha256sums_text, verify_zip

GOOD = {
    "pacientes.xlsx": b"PK workbook" * 50,
    "adjuntos/García López Ana (17)/radiografía.png": b"\x89PNG" + bytes(range(256)) * 8,
    "LEEME.txt": "Léame\r\n".encode(),
}


def _zip(entries: dict[str, bytes], sums: str | None = None) -> bytes:
    if sums is None:
        sums = sha256sums_text((p, hashlib.sha256(d).hexdigest()) for p, d in entries.items())
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for path, data in entries.items():
            zf.writestr(path, data)
        zf.writestr("SHA256SUMS", sums)
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
        assert report.ok and report.problems == []
        assert report.entries == 4


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
        zf.writestr("pacientes.xlsx", b"PK")
    report = verify_zip(io.BytesIO(buffer.getvalue()))
    assert report.problems == ["SHA256SUMS is missing"]


@pytest.mark.parametrize("evil", ["../fuera.txt", "/etc/passwd", "adjuntos/../../x", "C:/x"])
def test_paths_that_escape_the_archive_fail(evil):
    report = verify_zip(io.BytesIO(_zip({**GOOD, evil: b"x"})))
    assert not report.ok
    assert any("escapes the archive folder" in p for p in report.problems)


def test_something_that_is_not_a_zip_fails_with_a_message():
    report = verify_zip(io.BytesIO(b"this is not a zip"))
    assert not report.ok and report.problems[0].startswith("not a readable zip")
