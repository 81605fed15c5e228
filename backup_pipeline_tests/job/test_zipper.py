"""The streamed backup zip: contents and order, checksums, compression, names, missing files, failures."""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import struct
import subprocess
import threading
import time
import zipfile
from collections.abc import Iterator
from dataclasses import replace
from datetime import datetime
from pathlib import Path, PurePosixPath

import pytest
from openpyxl import Workbook

from backup_pipeline.archive import prefetch, zipper, zipwriter
from backup_pipeline.archive.verify import verify_zip
from backup_pipeline.archive.zipper import (
    REASON_NOT_FOUND,
    REASON_UNREADABLE,
    ArchiveIntegrityError,
    FileTally,
    assemble_archive,
)
from backup_pipeline.resources.storage import open_store
from backup_pipeline.rules.archive_entries import MissingFile, PlannedFile, StagedEntry
from backup_pipeline.rules.leeme import (
    ARCHIVE_FOLDERS,
    LeemeFacts,
    PartNoteFacts,
    leeme_text,
    part_note_path,
    part_note_text,
    part_sums_path,
)
from backup_pipeline.storage import ObjectStore
from backup_pipeline.storage.folder import FolderStore

FINAL_KEY = "respaldos/1/7/respaldo_clinica_2026-01-02.zip"
STAMP = datetime(2026, 1, 2, 9, 30)


class FlakyStore(FolderStore):
    """Reads of the keys in `failures` raise OSError after the first chunk, that many times."""

    def __init__(self, root: Path, failures: dict[str, int]) -> None:
        super().__init__(root)
        self.failures = dict(failures)
        self.opens: dict[str, int] = {}

    def open_read(self, key: str):
        self.opens[key] = self.opens.get(key, 0) + 1
        src = super().open_read(key)
        if self.failures.get(key, 0) > 0:
            self.failures[key] -= 1
            return _BreaksAfterFirstRead(src)
        return src


class _BreaksAfterFirstRead(io.RawIOBase):
    def __init__(self, src) -> None:
        self._src = src
        self._reads = 0

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        self._reads += 1
        if self._reads > 1:
            raise ConnectionResetError("connection reset mid-read")
        return self._src.read(size)

    def close(self) -> None:
        self._src.close()
        super().close()


def _folder(path: Path) -> ObjectStore:
    return open_store(path.as_uri())


@pytest.fixture
def stores(tmp_path):
    return _folder(tmp_path / "archives"), _folder(tmp_path / "files")


def _stage(archives: ObjectStore, archive_path: str, data: bytes) -> StagedEntry:
    key = f"staging/7/{archive_path}"
    archives.put_bytes(key, data)
    return StagedEntry(archive_path, key, len(data), hashlib.sha256(data).hexdigest())


def _planned(files: ObjectStore, archive_path: str, data: bytes | None, record_id: int, **kw):
    key = f"platform/{record_id}"
    if data is not None:
        files.put_bytes(key, data)
    return PlannedFile(
        archive_path=archive_path,
        source_key=key,
        kind=kw.pop("kind", "adjunto"),
        record_id=record_id,
        patient_id=kw.pop("patient_id", 10),
        **kw,
    )


def _facts(tally: FileTally) -> LeemeFacts:
    return LeemeFacts(
        clinic_name="Clínica Sonrisas",
        generated_at_local=STAMP,
        timezone="America/Mexico_City",
        workbooks=[("pacientes.xlsx", "Pacientes: datos personales y de contacto", 2)],
        files_copied=tally.files_copied,
        file_bytes=tally.file_bytes,
        missing_count=tally.missing_count,
        invoices_issued=1,
    )


def _xlsx(*texts: str) -> bytes:
    """A real workbook (verify_zip opens every one) holding `texts`, one per row.

    Re-stored uncompressed, so that a test can still find a text in the entry's raw bytes.
    """
    book = Workbook()
    for text in texts:
        book.active.append([text])
    saved = io.BytesIO()
    book.save(saved)
    stored = io.BytesIO()
    with zipfile.ZipFile(saved) as src, zipfile.ZipFile(stored, "w", zipfile.ZIP_STORED) as dst:
        for info in src.infolist():
            dst.writestr(info.filename, src.read(info))
    return stored.getvalue()


def _render_missing(missing: list[MissingFile], workdir: Path) -> Path:
    path = workdir / "faltantes.xlsx"
    path.write_bytes(_xlsx(*(m.archive_path for m in missing)))
    return path


def _assemble(archives, files, staged, planned, tmp_path, **kw):
    workdir = tmp_path / "work"
    workdir.mkdir(exist_ok=True)
    return assemble_archive(
        archives=archives,
        files=files,
        final_key=FINAL_KEY,
        staged=staged,
        planned=planned,
        render_missing=kw.pop("render_missing", _render_missing),
        leeme=kw.pop("leeme", lambda tally: leeme_text(_facts(tally))),
        workdir=workdir,
        modified_at=STAMP,
        retry_wait_seconds=0,
        **kw,
    )


PHOTO = bytes(range(256)) * 40
NOTE = b"Paciente refiere dolor en pieza 36.\n" * 200
XML = b'<?xml version="1.0"?><cfdi:Comprobante Version="4.0"/>' * 20


@pytest.fixture
def assembled(stores, tmp_path):
    archives, files = stores
    staged = [
        _stage(archives, "pacientes.xlsx", _xlsx(*["workbook pacientes"] * 100)),
        _stage(archives, "facturacion/ingresos/comprobantes_emitidos.xlsx", _xlsx("emitidos")),
    ]
    planned = [
        _planned(files, "adjuntos/Peña Ñúñez Ana (10)/radiografía.png", PHOTO, 100),
        _planned(files, "adjuntos/Peña Ñúñez Ana (10)/nota.txt", NOTE, 101),
        _planned(files, "adjuntos/Peña Ñúñez Ana (10)/perdido.pdf", None, 102),
        _planned(files, "facturacion/ingresos/xml/ABC.xml", XML, 300, kind="cfdi_xml"),
    ]
    result = _assemble(archives, files, staged, planned, tmp_path)
    return result, _object_path(archives)


def test_entries_come_in_order_files_workbooks_missing_report_leeme_and_sha256sums_last(assembled):
    # The files first: they go in while the workbooks are still being rendered.
    result, path = assembled
    with zipfile.ZipFile(path) as zf:
        names = zf.namelist()
    assert names == [
        "adjuntos/Peña Ñúñez Ana (10)/radiografía.png",
        "adjuntos/Peña Ñúñez Ana (10)/nota.txt",
        "facturacion/ingresos/xml/ABC.xml",
        "pacientes.xlsx",
        "facturacion/ingresos/comprobantes_emitidos.xlsx",
        "archivos_no_incluidos.xlsx",
        "LEEME.txt",
        "SHA256SUMS",
    ]
    assert result.entries == len(names)
    assert result.files_copied == 3
    assert result.file_bytes == len(PHOTO) + len(NOTE) + len(XML)


def test_extracted_archive_passes_the_real_sha256sum_check(assembled, tmp_path):
    _result, path = assembled
    out = tmp_path / "extracted"
    with zipfile.ZipFile(path) as zf:
        zf.extractall(out)
    check = subprocess.run(
        ["sha256sum", "--check", "--strict", "SHA256SUMS"],
        cwd=out,
        capture_output=True,
        text=True,
        env={**os.environ, "LC_ALL": "C.UTF-8"},
    )
    assert check.returncode == 0, check.stdout + check.stderr
    assert check.stdout.count(": OK") == 7  # every entry but SHA256SUMS itself
    assert (out / "adjuntos/Peña Ñúñez Ana (10)/radiografía.png").read_bytes() == PHOTO


def test_the_reported_sha256_and_size_are_those_of_the_stored_object(assembled):
    result, path = assembled
    data = path.read_bytes()
    assert result.size == len(data)
    assert result.sha256 == hashlib.sha256(data).hexdigest()
    assert result.key == FINAL_KEY


def test_assembled_archive_passes_verify_zip(assembled):
    _result, path = assembled
    report = verify_zip(path)
    assert report.ok, report.problems
    assert report.entries == 8


def test_compressed_formats_are_stored_and_the_rest_deflated(assembled):
    _result, path = assembled
    with zipfile.ZipFile(path) as zf:
        types = {info.filename.rsplit("/", 1)[-1]: info.compress_type for info in zf.infolist()}
    assert types["radiografía.png"] == zipfile.ZIP_STORED
    assert types["pacientes.xlsx"] == zipfile.ZIP_STORED
    assert types["nota.txt"] == zipfile.ZIP_DEFLATED
    assert types["ABC.xml"] == zipfile.ZIP_DEFLATED
    assert types["LEEME.txt"] == zipfile.ZIP_DEFLATED


def test_non_ascii_names_carry_the_utf8_flag(assembled):
    _result, path = assembled
    with zipfile.ZipFile(path) as zf:
        flags = {info.filename: info.flag_bits for info in zf.infolist()}
    assert flags["adjuntos/Peña Ñúñez Ana (10)/radiografía.png"] & 0x800
    assert all(
        bits & 0x800 for name, bits in flags.items() if not name.isascii()
    )  # and in the local headers, which streaming unzippers read:
    for header in _local_headers(path.read_bytes()):
        assert bool(header["flags"] & 0x800) == (not header["name"].isascii())


def test_every_local_header_has_a_zip64_extra_field(assembled):
    _result, path = assembled
    headers = list(_local_headers(path.read_bytes()))
    assert len(headers) == 8
    for header in headers:
        assert 0x0001 in header["extra_ids"], header["name"]
        assert header["flags"] & 0x08  # sizes follow the data: the zip was streamed


def test_entries_carry_the_given_local_time(assembled):
    _result, path = assembled
    with zipfile.ZipFile(path) as zf:
        assert {info.date_time for info in zf.infolist()} == {(2026, 1, 2, 9, 30, 0)}


def test_a_missing_source_is_recorded_and_left_out(assembled):
    result, path = assembled
    assert result.missing == [
        MissingFile(
            archive_path="adjuntos/Peña Ñúñez Ana (10)/perdido.pdf",
            kind="adjunto",
            record_id=102,
            patient_id=10,
            reason=REASON_NOT_FOUND,
        )
    ]
    with zipfile.ZipFile(path) as zf:
        assert not any("perdido" in name for name in zf.namelist())
        assert b"perdido.pdf" in zf.read("archivos_no_incluidos.xlsx")
        assert "perdido" not in zf.read("SHA256SUMS").decode()


def test_leeme_is_spanish_crlf_with_a_bom_and_the_counts(assembled):
    _result, path = assembled
    with zipfile.ZipFile(path) as zf:
        raw = zf.read("LEEME.txt")
    assert raw.startswith(b"\xef\xbb\xbf")
    text = raw.decode("utf-8-sig")
    assert "\n" not in text.replace("\r\n", "")
    assert "Clínica Sonrisas" in text
    assert "hora central (Ciudad de México)" in text
    assert "America/" not in text
    assert "Archivos adjuntos y comprobantes copiados en total: 3 " in text
    assert "1 archivo no se pudo copiar" in text
    assert "archivos_no_incluidos.xlsx" in text


def test_a_read_that_fails_midway_is_retried_from_the_start(tmp_path):
    archives = _folder(tmp_path / "archives")
    files = FlakyStore(tmp_path / "files", {"platform/1": 2})
    planned = [_planned(files, "adjuntos/A (1)/a.txt", NOTE, 1)]
    result = _assemble(archives, files, [], planned, tmp_path)
    assert files.opens["platform/1"] == 3
    assert result.missing == [] and result.files_copied == 1
    with zipfile.ZipFile(_object_path(archives)) as zf:
        assert zf.read("adjuntos/A (1)/a.txt") == NOTE
        assert zf.namelist().count("adjuntos/A (1)/a.txt") == 1


def test_a_file_that_never_reads_whole_is_missing_with_no_partial_entry(tmp_path):
    archives = _folder(tmp_path / "archives")
    files = FlakyStore(tmp_path / "files", {"platform/1": 99})
    planned = [
        _planned(files, "adjuntos/A (1)/roto.txt", NOTE, 1),
        _planned(files, "adjuntos/A (1)/bien.txt", b"ok", 2),
    ]
    result = _assemble(archives, files, [], planned, tmp_path, read_attempts=3)
    assert files.opens["platform/1"] == 3
    assert [(m.record_id, m.reason) for m in result.missing] == [(1, REASON_UNREADABLE)]
    with zipfile.ZipFile(_object_path(archives)) as zf:
        assert "adjuntos/A (1)/roto.txt" not in zf.namelist()
        assert zf.read("adjuntos/A (1)/bien.txt") == b"ok"
    assert verify_zip(_object_path(archives)).ok


def test_large_files_spill_to_disk_and_copy_whole(stores, tmp_path, monkeypatch):
    monkeypatch.setattr(prefetch, "SPOOL_IN_MEMORY", 64 * 1024)
    archives, files = stores
    big = os.urandom(3 * 1024 * 1024 + 17)  # several 1 MiB chunks, incompressible
    result = _assemble(
        archives, files, [], [_planned(files, "adjuntos/A (1)/video.mp4", big, 1)], tmp_path
    )
    with zipfile.ZipFile(_object_path(archives)) as zf:
        assert zf.read("adjuntos/A (1)/video.mp4") == big
    assert result.file_bytes == len(big)
    assert list((tmp_path / "work").iterdir()) == []  # spools are cleaned up


def test_a_file_differing_from_the_platform_checksum_is_kept_and_counted(stores, tmp_path):
    archives, files = stores
    planned = [
        _planned(files, "adjuntos/A (1)/a.png", b"abc", 1, expected_sha256="0" * 64),
        _planned(files, "adjuntos/A (1)/b.png", b"abc", 2, expected_size=4),
        _planned(
            files,
            "adjuntos/A (1)/c.png",
            b"abc",
            3,
            expected_size=3,
            expected_sha256=hashlib.sha256(b"abc").hexdigest(),
        ),
    ]
    result = _assemble(archives, files, [], planned, tmp_path)
    assert result.checksum_mismatches == 2
    assert result.files_copied == 3 and result.missing == []


def test_an_error_midway_leaves_no_object_at_the_final_key(stores, tmp_path):
    archives, files = stores
    planned = [_planned(files, "adjuntos/A (1)/perdido.png", None, 1)]

    def broken_renderer(missing, workdir):
        raise RuntimeError("workbook renderer crashed")

    with pytest.raises(RuntimeError, match="renderer crashed"):
        _assemble(archives, files, [], planned, tmp_path, render_missing=broken_renderer)
    assert not archives.exists(FINAL_KEY)
    assert list(archives.list("respaldos/")) == []


def test_a_damaged_staged_workbook_fails_the_archive(stores, tmp_path):
    archives, files = stores
    entry = _stage(archives, "pacientes.xlsx", b"PK original")
    archives.put_bytes(entry.staging_key, b"PK changed!")
    with pytest.raises(ArchiveIntegrityError):
        _assemble(archives, files, [entry], [], tmp_path)
    assert not archives.exists(FINAL_KEY)


def test_two_entries_with_one_path_are_refused(stores, tmp_path):
    archives, files = stores
    staged = [_stage(archives, "pacientes.xlsx", b"PK")]
    planned = [_planned(files, "pacientes.xlsx", b"x", 1)]
    with pytest.raises(ValueError, match="repeats an archive path"):
        _assemble(archives, files, staged, planned, tmp_path)
    assert not archives.exists(FINAL_KEY)


def test_no_missing_files_means_no_missing_report_and_no_mention(stores, tmp_path):
    archives, files = stores
    calls = []
    result = _assemble(
        archives,
        files,
        [],
        [_planned(files, "adjuntos/A (1)/a.txt", b"a", 1)],
        tmp_path,
        render_missing=lambda missing, workdir: calls.append(missing),
    )
    assert calls == [] and result.missing == []
    with zipfile.ZipFile(_object_path(archives)) as zf:
        assert zf.namelist() == ["adjuntos/A (1)/a.txt", "LEEME.txt", "SHA256SUMS"]
        leeme = zf.read("LEEME.txt").decode("utf-8-sig")
    assert "archivos_no_incluidos" not in leeme


def test_leeme_text_explains_verification_dates_and_confidentiality():
    text = leeme_text(
        _facts(FileTally(files_copied=1_234, file_bytes=3 * 1024**3, missing_count=0))
    )
    assert text.endswith("\r\n") and "\n" not in text.replace("\r\n", "")
    for expected in (
        "zona horaria configurada en su cuenta:\r\nhora central (Ciudad de México).",
        "2 de enero de 2026, 09:30, hora central (Ciudad de México).",
        "tal como están escritas en el XML",
        "Get-FileHash -Algorithm SHA256",
        "shasum -a 256 -c SHA256SUMS",
        "sha256sum -c SHA256SUMS",
        "NOM-004-SSA3-2012",
        "LFPDPPP",
        "pacientes.xlsx",
        "(2 registros).",
        "copiados en total: 1,234 (3.0 GB).",
        "3.0 GB",
        "en total, 1 comprobante.",
    ):
        assert expected in text, expected
    assert ".." not in text.replace("...", "").replace("./", "")  # no doubled punctuation


def test_leeme_explains_every_folder_an_archive_can_have():
    facts = replace(
        _facts(FileTally(files_copied=1, file_bytes=10, missing_count=0)), long_text_files=1
    )
    text = leeme_text(facts).replace("\r\n", "\n")
    listed = [line for line in text.splitlines() if line.endswith("/") and " " not in line]
    assert listed == list(ARCHIVE_FOLDERS)
    for folder in (
        "adjuntos/",
        "facturacion/ingresos/xml/",
        "facturacion/ingresos/pdf/",
        "facturacion/gastos/xml/",
        "facturacion/gastos/pdf/",
        "textos_largos/",
    ):
        assert f"\n{folder}\n    " in text, folder


def test_leeme_lists_only_the_folders_the_archive_has():
    facts = replace(
        _facts(FileTally(files_copied=1, file_bytes=10, missing_count=0)),
        folders={"adjuntos/", "facturacion/ingresos/xml/"},
        long_text_files=0,
    )
    text = leeme_text(facts).replace("\r\n", "\n")
    listed = [line for line in text.splitlines() if line.endswith("/") and " " not in line]
    assert listed == ["adjuntos/", "facturacion/ingresos/xml/"]
    assert "facturacion/gastos/pdf/" not in text and "textos_largos/" not in text


def _object_path(store: ObjectStore) -> Path:
    assert isinstance(store, FolderStore)
    return store.root.joinpath(*FINAL_KEY.split("/"))


def _local_headers(data: bytes) -> Iterator[dict]:
    """Walk the zip's local file headers (which zipfile's reader does not expose)."""
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        for info in zf.infolist():
            offset = info.header_offset
            fields = struct.unpack("<4sHHHHHIIIHH", data[offset : offset + 30])
            assert fields[0] == b"PK\x03\x04"
            flags, name_len, extra_len = fields[2], fields[9], fields[10]
            name = data[offset + 30 : offset + 30 + name_len].decode("utf-8")
            extra = data[offset + 30 + name_len : offset + 30 + name_len + extra_len]
            ids = []
            while len(extra) >= 4:
                header_id, size = struct.unpack("<HH", extra[:4])
                ids.append(header_id)
                extra = extra[4 + size :]
            yield {"name": name, "flags": flags, "extra_ids": ids}


def test_streams_into_gcs_and_a_failure_there_leaves_no_object(gcs_bucket_url, tmp_path):
    archives = open_store(f"{gcs_bucket_url}/archives")
    files = open_store(f"{gcs_bucket_url}/platform")
    staged = [_stage(archives, "pacientes.xlsx", _xlsx(*["workbook"] * 1000))]
    planned = [
        _planned(files, "adjuntos/Peña Ana (10)/radiografía.png", PHOTO, 1),
        _planned(files, "adjuntos/Peña Ana (10)/perdida.png", None, 2),
    ]
    result = _assemble(archives, files, staged, planned, tmp_path)
    data = archives.get_bytes(FINAL_KEY)
    assert (result.size, result.sha256) == (len(data), hashlib.sha256(data).hexdigest())
    assert verify_zip(io.BytesIO(data)).ok
    assert [m.reason for m in result.missing] == [REASON_NOT_FOUND]

    archives.delete(FINAL_KEY)

    def broken_renderer(missing, workdir):
        raise RuntimeError("workbook renderer crashed")

    with pytest.raises(RuntimeError):
        _assemble(archives, files, staged, planned, tmp_path, render_missing=broken_renderer)
    assert not archives.exists(FINAL_KEY)


class SlowFirstStore(FolderStore):
    """Earlier keys read slower, so reads running side by side finish in reverse plan order."""

    def __init__(self, root: Path, delays: dict[str, float]) -> None:
        super().__init__(root)
        self.delays = delays
        self._lock = threading.Lock()
        self._reading = 0
        self.most_at_once = 0

    def open_read(self, key: str):
        with self._lock:
            self._reading += 1
            self.most_at_once = max(self.most_at_once, self._reading)
        try:
            time.sleep(self.delays.get(key, 0))
            return super().open_read(key)
        finally:
            with self._lock:
                self._reading -= 1


def test_files_read_ahead_side_by_side_keep_the_plan_order(tmp_path):
    archives = _folder(tmp_path / "archives")
    files = SlowFirstStore(
        tmp_path / "files", {"platform/1": 0.3, "platform/2": 0.2, "platform/3": 0.1}
    )
    planned = [
        _planned(files, f"adjuntos/A (1)/{n}.txt", f"archivo {n}\n".encode() * 50, n)
        for n in range(1, 8)
    ]
    planned.insert(3, _planned(files, "adjuntos/A (1)/perdido.txt", None, 99))
    result = _assemble(archives, files, [], planned, tmp_path, prefetch=4)
    assert files.most_at_once > 1  # the reads did overlap
    with zipfile.ZipFile(_object_path(archives)) as zf:
        copied = [name for name in zf.namelist() if name.startswith("adjuntos/")]
        assert copied == [p.archive_path for p in planned if p.record_id != 99]
        for n in range(1, 8):
            assert zf.read(f"adjuntos/A (1)/{n}.txt") == f"archivo {n}\n".encode() * 50
    assert [m.record_id for m in result.missing] == [99]
    # Every spool was closed: only the missing-files report is left in the work folder.
    assert [path.name for path in (tmp_path / "work").iterdir()] == ["faltantes.xlsx"]


def test_a_local_folder_is_read_one_file_at_a_time_by_default(tmp_path):
    archives = _folder(tmp_path / "archives")
    files = SlowFirstStore(tmp_path / "files", {"platform/1": 0.1, "platform/2": 0.05})
    planned = [_planned(files, f"adjuntos/A (1)/{n}.txt", b"x" * n, n) for n in range(1, 5)]
    result = _assemble(archives, files, [], planned, tmp_path)
    assert files.most_at_once == 1
    assert result.files_copied == 4


class _Unseekable(io.RawIOBase):
    """A write-only stream, as the store's upload is."""

    def __init__(self) -> None:
        super().__init__()
        self.data = bytearray()

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        self.data += data
        return len(data)


# The zip clients a clinic or its IT person may use, each run on every kind of zip we make:
# CPython's zipfile (central directory), Info-ZIP's `unzip -t` (CRC of every entry), 7-Zip's
# `7z t` (as on Windows), and libarchive's `bsdtar` reading from a pipe (the local headers and
# data descriptors only, as a streaming unzipper reads them). A missing tool skips its case.
CLIENTS = ("zipfile", "unzip", "7z", "bsdtar")
_INSTALL = {"unzip": "unzip", "7z": "p7zip-full", "bsdtar": "libarchive-tools"}


def _read_back_clean(client: str, path: Path, expected: dict[str, bytes], tmp: Path) -> None:
    """The client reads every entry of the zip at path without an error (and, where it
    extracts, with the expected bytes)."""
    if client == "zipfile":
        with zipfile.ZipFile(path) as zf:
            assert zf.testzip() is None
            assert zf.namelist() == list(expected)
            for name, data in expected.items():
                assert zf.read(name) == data, name
        return
    if shutil.which(client) is None:
        pytest.skip(f"{client} is not installed here (apt-get install {_INSTALL[client]})")
    env = {**os.environ, "LC_ALL": "C.UTF-8"}
    if client == "unzip":
        done = subprocess.run(["unzip", "-t", str(path)], capture_output=True, env=env)
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
        assert b"No errors detected" in done.stdout
    elif client == "7z":
        done = subprocess.run(["7z", "t", str(path)], capture_output=True, env=env)
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
        assert b"Everything is Ok" in done.stdout
        assert b"WARNING" not in done.stdout.upper()
    else:
        out = tmp / f"bsdtar-{path.stem}"
        out.mkdir()
        with path.open("rb") as stdin:
            done = subprocess.run(
                ["bsdtar", "-x", "-f", "-", "-C", str(out)],
                stdin=stdin,
                capture_output=True,
                env=env,
            )
        assert done.returncode == 0, done.stderr[-2000:]
        for name, data in expected.items():
            assert out.joinpath(*name.split("/")).read_bytes() == data, name


def _contents(path: Path) -> dict[str, bytes]:
    with zipfile.ZipFile(path) as zf:
        return {name: zf.read(name) for name in zf.namelist()}


MIXED = {
    "adjuntos/Peña Ana (10)/radiografía.png": PHOTO,  # stored, a UTF-8 name
    "adjuntos/Peña Ana (10)/notas.txt": b"texto " * 5000,  # deflated
    "adjuntos/Peña Ana (10)/vacío.txt": b"",  # deflated, empty
    "adjuntos/Peña Ana (10)/vacía.png": b"",  # stored, empty
    "adjuntos/Peña Ana (10)/😀 sonrisa.jpg": os.urandom(70_000),  # several chunks, stored
}


def _zip_of(entries: dict[str, bytes], tmp: Path) -> Path:
    sink = zipwriter.HashingSink(_Unseekable())
    writer = zipper._EntryWriter(sink, STAMP.timetuple()[:6], tmp)
    for name, data in entries.items():
        writer.add_stream(name, io.BytesIO(data))
    writer.add_sha256sums("SHA256SUMS")
    writer.close()
    path = tmp / "respaldo.zip"
    path.write_bytes(bytes(sink._out.data))
    return path


@pytest.mark.parametrize("client", CLIENTS)
def test_every_client_reads_the_assembled_zip_clean(client, assembled, tmp_path):
    _result, path = assembled
    _read_back_clean(client, path, _contents(path), tmp_path)


@pytest.mark.parametrize("client", CLIENTS)
def test_every_client_reads_stored_deflated_empty_and_utf8_entries(client, tmp_path):
    path = _zip_of(MIXED, tmp_path)
    expected = {**MIXED, "SHA256SUMS": _contents(path)["SHA256SUMS"]}
    _read_back_clean(client, path, expected, tmp_path)


@pytest.mark.parametrize("client", CLIENTS)
def test_every_client_reads_the_zip64_fields_of_large_sizes_offsets_and_counts(
    client, tmp_path, monkeypatch
):
    # A zip past 2 GiB or 65,535 entries, made cheap: with the limits lowered, every central
    # record carries a zip64 extra field (sizes and local header offset) and the zip ends with
    # zip64's end record and locator, as a 5 GB archive's would.
    monkeypatch.setattr(zipwriter, "ZIP64_LIMIT", -1)  # even 0 bytes at offset 0
    monkeypatch.setattr(zipwriter, "ENTRY_COUNT_LIMIT", 2)
    path = _zip_of(MIXED, tmp_path)
    data = path.read_bytes()
    records = list(_central_records(data))
    assert len(records) == len(MIXED) + 1
    assert all(record["zip64"] == 3 for record in records)  # size, compressed size, offset
    assert data.rfind(b"PK\x06\x06") > 0 and data.rfind(b"PK\x06\x07") > 0
    expected = {**MIXED, "SHA256SUMS": _contents(path)["SHA256SUMS"]}
    _read_back_clean(client, path, expected, tmp_path)


def _central_records(data: bytes) -> Iterator[dict]:
    """Each central directory record's fields, and how many zip64 values its extra holds."""
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        start = zf.start_dir
    offset = start
    while data[offset : offset + 4] == b"PK\x01\x02":
        fields = zipwriter.CENTRAL_HEADER.unpack_from(data, offset)
        name_len, extra_len, comment_len = fields[12], fields[13], fields[14]
        extra = data[offset + 46 + name_len : offset + 46 + name_len + extra_len]
        zip64 = 0
        if extra[:2] == b"\x01\x00":
            zip64 = struct.unpack_from("<H", extra, 2)[0] // 8
        yield {"made_by": fields[1:3], "attributes": fields[17], "zip64": zip64}
        offset += 46 + name_len + extra_len + comment_len


def test_every_entry_is_streamed_with_a_zip64_data_descriptor(tmp_path):
    # zipfile's reader skips data descriptors; a streaming unzipper (and bsdtar from a pipe)
    # reads nothing else for an entry's CRC and sizes.
    data = _zip_of(MIXED, tmp_path).read_bytes()
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        infos = zf.infolist()
    assert len(infos) == len(MIXED) + 1
    for info in infos:
        fields = zipwriter.LOCAL_HEADER.unpack_from(data, info.header_offset)
        signature, version, _, flags, _, _, _, crc, compressed, size, name_len, extra_len = fields
        assert (signature, version) == (b"PK\x03\x04", 45)
        assert flags & 0x08 and (crc, compressed, size) == (0, 0xFFFFFFFF, 0xFFFFFFFF)
        extra = data[
            info.header_offset + 30 + name_len : info.header_offset + 30 + name_len + extra_len
        ]
        assert extra == struct.pack("<HHQQ", 1, 16, 0, 0)
        after = info.header_offset + 30 + name_len + extra_len + info.compress_size
        assert zipwriter.DATA_DESCRIPTOR64.unpack_from(data, after) == (
            b"PK\x07\x08",
            info.CRC,
            info.compress_size,
            info.file_size,
        ), info.filename
    for record in _central_records(data):
        assert record["made_by"] == (45, 3)  # version 4.5, UNIX: the permissions count
        assert record["attributes"] == 0o644 << 16
        assert record["zip64"] == 0  # nothing here is too large for the 32-bit fields


def test_an_entry_stamped_before_1980_cannot_be_written(tmp_path):
    # MS-DOS dates start in 1980: an earlier one would wrap into a wrong date silently.
    with pytest.raises(ValueError, match="1980"):
        zipper._EntryWriter(zipwriter.HashingSink(io.BytesIO()), (1979, 12, 31, 0, 0, 0), tmp_path)


def test_an_archived_file_costs_the_writer_well_under_a_kilobyte_of_memory(tmp_path):
    # What the writer keeps per entry, counted by Python's own allocator tracing (not sampled):
    # the growth from 10,000 to 30,000 entries, past the spools' in-memory part, per entry.
    import tracemalloc

    class Discard(io.RawIOBase):  # the zip's bytes themselves are the store's, not the writer's
        def writable(self) -> bool:
            return True

        def write(self, data) -> int:
            return len(data)

    writer = zipper._EntryWriter(zipwriter.HashingSink(Discard()), STAMP.timetuple()[:6], tmp_path)
    tracemalloc.start()
    try:
        sizes = []
        for n in range(30_000):
            if n in (10_000, 30_000 - 1):
                sizes.append(tracemalloc.get_traced_memory()[0])
            writer.add_bytes(f"adjuntos/Hernández López María {n // 20} ({n // 20})/{n}.jpg", b"x")
    finally:
        tracemalloc.stop()
        writer.abandon()
    per_entry = (sizes[1] - sizes[0]) / (30_000 - 1 - 10_000)
    assert per_entry < 1024, per_entry


@pytest.mark.slow
@pytest.mark.parametrize("client", CLIENTS)
def test_every_client_reads_a_zip_of_more_than_65535_entries(client, tmp_path):
    # Over 65,535 entries the end of the zip needs zip64's records.
    entries = {f"adjuntos/A (1)/{n}.txt": b"%d" % n for n in range(70_000)}
    work = tmp_path / "work"
    work.mkdir()
    sink = zipwriter.HashingSink(_Unseekable())
    writer = zipper._EntryWriter(sink, STAMP.timetuple()[:6], work)
    for path, data in entries.items():
        writer.add_bytes(path, data)
    assert writer.close() == len(entries)
    assert list(work.iterdir()) == []  # the spools are gone
    data = bytes(sink._out.data)
    assert data.rfind(b"PK\x06\x06") > 0  # the zip64 end of central directory record
    path = tmp_path / "muchos.zip"
    path.write_bytes(data)
    if client == "zipfile":
        with zipfile.ZipFile(path) as zf:
            assert len(zf.infolist()) == len(entries)
            assert zf.testzip() is None
            assert zf.read("adjuntos/A (1)/69999.txt") == b"69999"
    else:
        _read_back_clean(client, path, entries, tmp_path)


def _no_report(missing: list[MissingFile], workdir: Path) -> None:
    return None


class _ManyInFlight(FolderStore):
    """A folder read as a remote store is: many reads in flight, the earlier ones slower."""

    reads_in_flight = 16

    def read_into(self, key: str, out) -> int:
        time.sleep(0.002 * (hash(key) % 5))
        return super().read_into(key, out)


def test_the_archive_is_the_same_whether_files_are_read_ahead_or_one_at_a_time(tmp_path):
    archives = _folder(tmp_path / "archives")
    files = _ManyInFlight(tmp_path / "files")
    planned = [
        _planned(files, f"adjuntos/A (1)/{n}.{'png' if n % 3 else 'txt'}", os.urandom(n * 97), n)
        for n in range(1, 80)
    ]
    planned.insert(10, _planned(files, "adjuntos/A (1)/perdido.txt", None, 999))
    zips = []
    for depth in (None, 1):  # the store's 16 in flight, then one at a time
        result = _assemble(
            archives, files, [], planned, tmp_path, prefetch=depth, render_missing=_no_report
        )
        zips.append(_object_path(archives).read_bytes())
        assert [m.record_id for m in result.missing] == [999]
        assert verify_zip(_object_path(archives)).ok
    assert zips[0] == zips[1]  # same entries, same order, same SHA256SUMS, same bytes


def test_a_spool_in_memory_is_listed_by_the_hash_taken_as_it_was_filled(tmp_path):
    writer = zipper._EntryWriter(
        zipwriter.HashingSink(io.BytesIO()), STAMP.timetuple()[:6], tmp_path
    )
    known = hashlib.sha256(b"abc").hexdigest()
    # Not hashed again: even a hash that does not match is listed as given.
    assert writer.add_stream("a.txt", io.BytesIO(b"abd"), known, check=False) == 3
    assert writer.last_sha256 == known
    # A spool on disk is read back and hashed again: a local disk fault fails the archive.
    with pytest.raises(ArchiveIntegrityError):
        writer.add_stream("b.txt", io.BytesIO(b"abd"), known)
    writer.abandon()


def test_files_in_memory_and_on_disk_are_listed_by_their_own_sha256(stores, tmp_path, monkeypatch):
    archives, files = stores
    monkeypatch.setattr(prefetch, "SPOOL_IN_MEMORY", 64 * 1024)
    small, big = b"small file", os.urandom(200 * 1024)
    planned = [
        _planned(files, "adjuntos/A (1)/chico.png", small, 1),
        _planned(files, "adjuntos/A (1)/grande.png", big, 2),
    ]
    _assemble(archives, files, [], planned, tmp_path)
    with zipfile.ZipFile(io.BytesIO(archives.get_bytes(FINAL_KEY))) as zf:
        sums = dict(
            reversed(line.split("  ", 1))
            for line in zf.read("SHA256SUMS").decode("utf-8").splitlines()
        )
        for name in ("adjuntos/A (1)/chico.png", "adjuntos/A (1)/grande.png"):
            assert sums[name] == hashlib.sha256(zf.read(name)).hexdigest()


def test_a_spool_is_on_disk_once_it_held_more_than_its_share(stores, tmp_path):
    _archives, files = stores
    share = 64 * 1024
    for size, on_disk in ((share, False), (share + 1, True)):
        plan = _planned(files, f"adjuntos/A (1)/{size}.png", os.urandom(size), size)
        fetched = prefetch.fetch(files, plan, tmp_path, 1, 0.0, share)
        with fetched.spool:
            assert (fetched.size, fetched.on_disk) == (size, on_disk)
            # What SpooledTemporaryFile did: a file in workdir has a name, a buffer none.
            assert (fetched.spool.name is not None) is on_disk


class _CountingInFlight(FolderStore):
    """A folder read as a remote store: reads in flight together, each waiting a little first;
    counts the most at once."""

    reads_in_flight = 16

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self._lock = threading.Lock()
        self._reading = 0
        self.most_at_once = 0

    def read_into(self, key: str, out) -> int:
        with self._lock:
            self._reading += 1
            self.most_at_once = max(self.most_at_once, self._reading)
        try:
            time.sleep(0.003)
            return super().read_into(key, out)
        finally:
            with self._lock:
                self._reading -= 1


@pytest.fixture
def budgets(monkeypatch):
    """Every read-ahead memory budget made, to look at once the archive is written."""
    made: list[prefetch.MemoryBudget] = []

    class Recorded(prefetch.MemoryBudget):
        def __init__(self, limit: int) -> None:
            super().__init__(limit)
            made.append(self)

    monkeypatch.setattr(prefetch, "MemoryBudget", Recorded)
    return made


def _zip_bytes(archives: ObjectStore) -> dict[str, bytes]:
    with zipfile.ZipFile(_object_path(archives)) as zf:
        return {name: zf.read(name) for name in zf.namelist() if name.startswith("adjuntos/")}


def test_the_read_ahead_never_holds_more_than_its_memory(tmp_path, monkeypatch, budgets):
    monkeypatch.setattr(prefetch, "PREFETCH_MEMORY", 256 * 1024)
    archives, files = _folder(tmp_path / "archives"), _CountingInFlight(tmp_path / "files")
    sizes = [40_000, 90_000, 5_000, 70_000, 200_000, 60_000] * 6
    contents = {f"adjuntos/A (1)/{n}.png": os.urandom(size) for n, size in enumerate(sizes)}
    planned = [
        _planned(files, path, data, n, expected_size=len(data))
        for n, (path, data) in enumerate(contents.items(), start=1)
    ]
    result = _assemble(archives, files, [], planned, tmp_path, render_missing=_no_report)
    assert files.most_at_once > 1
    (budget,) = budgets
    assert 0 < budget.most <= 256 * 1024
    assert budget.held == 0  # every spool's memory given back
    assert result.files_copied == len(contents)
    assert _zip_bytes(archives) == contents
    assert verify_zip(_object_path(archives)).ok
    assert list((tmp_path / "work").iterdir()) == []


def test_files_without_a_size_or_with_a_wrong_one_are_archived_whole(
    tmp_path, monkeypatch, budgets
):
    monkeypatch.setattr(prefetch, "PREFETCH_MEMORY", 256 * 1024)  # 64 KiB in memory per file
    archives, files = _folder(tmp_path / "archives"), _CountingInFlight(tmp_path / "files")
    cases = [
        ("sin-tamano-chico.png", 10_000, None),
        ("sin-tamano-grande.png", 300_000, None),  # no size: spills once over its share
        ("dice-menos.png", 500_000, 1_000),  # claims less than it holds: spills
        ("dice-mas.png", 2_000, 900_000),  # claims more: read to disk from the start
        ("dice-negativo.png", 3_000, -5),
        ("vacio.png", 0, None),
    ]
    contents = {}
    planned = []
    for n, (name, size, claim) in enumerate(cases, start=1):
        data = os.urandom(size)
        contents[f"adjuntos/A (1)/{name}"] = data
        planned.append(_planned(files, f"adjuntos/A (1)/{name}", data, n, expected_size=claim))
    result = _assemble(archives, files, [], planned, tmp_path, render_missing=_no_report)
    assert result.files_copied == len(cases) and result.missing == []
    assert result.checksum_mismatches == 3  # the three wrong claims, counted and kept
    assert _zip_bytes(archives) == contents
    assert verify_zip(_object_path(archives)).ok
    (budget,) = budgets
    assert budget.most <= 256 * 1024 and budget.held == 0
    assert list((tmp_path / "work").iterdir()) == []


def test_a_spool_spills_when_the_shared_memory_is_taken(stores, tmp_path):
    _archives, files = stores
    budget = prefetch.MemoryBudget(100_000)
    assert budget.take(60_000)  # another spool in flight holds this much
    plan = _planned(files, "adjuntos/A (1)/a.png", os.urandom(50_000), 1)
    fetched = prefetch.fetch(files, plan, tmp_path, 1, 0.0, 1_000_000, budget)
    with fetched.spool:
        assert fetched.on_disk and fetched.in_memory == 0
        assert fetched.spool.name is not None
    assert budget.held == 60_000
    budget.give_back(60_000)
    fetched = prefetch.fetch(files, plan, tmp_path, 1, 0.0, 1_000_000, budget)
    with fetched.spool:
        assert not fetched.on_disk and fetched.in_memory == 50_000 == budget.held


class _SmallWrites(FolderStore):
    """Writes an object 8 KiB at a time, as resumable-media does, starting over once halfway
    when asked to (a download retried from the top)."""

    def __init__(self, root: Path, restart: bool = False) -> None:
        super().__init__(root)
        self.restart = restart

    def read_into(self, key: str, out) -> int:
        data = self.get_bytes(key)
        if self.restart:
            out.write(data[: len(data) // 2])
            out.seek(0)
        for start in range(0, len(data), 8192):
            out.write(data[start : start + 8192])
        return len(data)


@pytest.mark.parametrize("restart", [False, True])
@pytest.mark.parametrize(
    ("limit", "on_disk"),
    [(1_000_000, False), (100_000, True)],  # whole in memory; spills after 100 KB
)
def test_a_spool_is_hashed_whole_in_memory_or_partly_on_disk(tmp_path, restart, limit, on_disk):
    files = _SmallWrites(tmp_path / "files", restart)
    data = os.urandom(300_000)
    plan = _planned(files, "adjuntos/A (1)/a.png", data, 1)
    budget = prefetch.MemoryBudget(limit)
    fetched = prefetch.fetch(files, plan, tmp_path, 1, 0.0, 1_000_000, budget)
    with fetched.spool:
        assert fetched.on_disk is on_disk
        assert fetched.sha256 == hashlib.sha256(data).hexdigest()
        fetched.spool.seek(0)
        assert fetched.spool.read() == data


def test_a_failed_read_gives_its_memory_back(tmp_path):
    files = FlakyStore(tmp_path / "files", {"platform/1": 99})
    budget = prefetch.MemoryBudget(1_000_000)
    plan = _planned(files, "adjuntos/A (1)/roto.txt", NOTE * 100, 1)
    missing = prefetch.fetch(files, plan, tmp_path, 2, 0.0, 1_000_000, budget)
    assert isinstance(missing, MissingFile) and missing.reason == REASON_UNREADABLE
    assert budget.held == 0
    assert list(tmp_path.glob("tmp*")) == []


def test_the_files_claimed_ahead_are_bounded_by_bytes_as_well(tmp_path, monkeypatch):
    monkeypatch.setattr(prefetch, "PREFETCH_AHEAD", 300_000)
    archives, files = _folder(tmp_path / "archives"), _CountingInFlight(tmp_path / "files")
    contents = {f"adjuntos/A (1)/{n}.png": os.urandom(100_000) for n in range(12)}
    planned = [
        _planned(files, path, data, n, expected_size=len(data))
        for n, (path, data) in enumerate(contents.items(), start=1)
    ]
    # One file claims more than the whole window: it is read alone, and archived whole.
    huge = os.urandom(50_000)
    contents["adjuntos/A (1)/video.mp4"] = huge
    planned.insert(5, _planned(files, "adjuntos/A (1)/video.mp4", huge, 99, expected_size=10**9))
    _assemble(archives, files, [], planned, tmp_path, render_missing=_no_report)
    assert 1 < files.most_at_once <= 3
    assert _zip_bytes(archives) == contents


def test_an_abandoned_archive_closes_every_spool_read_ahead(tmp_path, budgets):
    archives, files = _folder(tmp_path / "archives"), _CountingInFlight(tmp_path / "files")
    planned = [
        _planned(files, f"adjuntos/A (1)/{n}.png", os.urandom(30_000), n) for n in range(1, 40)
    ]
    stop = threading.Event()
    calls = []

    def leeme(tally: FileTally) -> str:
        raise AssertionError("not reached")

    def staged():
        calls.append(1)
        return []

    stop.set()
    (tmp_path / "work").mkdir()
    with pytest.raises(zipper.ArchiveCancelled):
        assemble_archive(
            archives=archives,
            files=files,
            final_key=FINAL_KEY,
            staged=staged,
            planned=planned,
            render_missing=_no_report,
            leeme=leeme,
            workdir=tmp_path / "work",
            cancelled=stop,
        )
    assert calls == []
    (budget,) = budgets
    assert budget.held == 0
    assert list((tmp_path / "work").iterdir()) == []
    assert not archives.exists(FINAL_KEY)


def test_the_zip_hands_back_free_memory_as_it_goes(stores, tmp_path, monkeypatch):
    archives, files = stores
    trims = []
    monkeypatch.setattr(zipper, "TRIM_EVERY_FILES", 2)
    monkeypatch.setattr(zipper, "trim_free_memory", lambda: trims.append(1))
    planned = [_planned(files, f"adjuntos/A (1)/{i}.png", b"x", i) for i in range(1, 6)]
    _assemble(archives, files, [], planned, tmp_path)
    assert len(trims) == 2 + 1  # after files 2 and 4, and once all files are in


@pytest.mark.parametrize(
    "path",
    [
        "adjuntos/García López Ana (10)/Foto (2).JPG",
        "facturacion/ingresos/pdf/A.pdf",
        "facturacion/ingresos/xml/A.xml",
        "a.tar.gz",
        "carpeta.zip/notas",
        ".jpg",
        "foto.",
        "..gz",
        "a/..zip",
        "...jpg",
        "a.zip/.",
        "b.mp4/",
        "",
    ],
)
def test_compression_follows_the_name_suffix_as_pathlib_reads_it(path: str):
    suffix = PurePosixPath(path).suffix.lower().lstrip(".")
    expected = zipfile.ZIP_STORED if suffix in zipper.STORED_SUFFIXES else zipfile.ZIP_DEFLATED
    assert zipper.compression_for(path) == expected


def test_an_archive_in_parts_names_each_parts_own_files_and_part_1_describes_the_whole():
    facts = replace(
        _facts(FileTally(files_copied=140, file_bytes=5_000_000, missing_count=2)), parts=3
    )
    text = leeme_text(facts).replace("\r\n", "\n")
    assert "Esta es la parte 1 de 3: este LEEME.txt describe el respaldo completo" in text
    assert "SHA256SUMS-parte-01-de-03\n" in text  # part 1's own checksum file, in CONTENIDO
    assert "sha256sum -c SHA256SUMS-parte-*" in text  # every part's list at once
    assert "Archivos adjuntos y comprobantes copiados en total: 140 " in text
    assert "Archivos que no se pudieron incluir: 2." in text
    note = part_note_text(
        PartNoteFacts(
            clinic_name="Clínica Sonrisas",
            generated_at_local=STAMP,
            timezone="America/Mexico_City",
            part=2,
            parts=3,
            files_copied=1,
            file_bytes=2048,
        )
    ).replace("\r\n", "\n")
    assert note.startswith("RESPALDO DE INFORMACIÓN: PARTE 2 DE 3\n")
    assert "está en LEEME.txt, en la parte 1" in note
    assert "en esta parte: 1 (2.0 kB)." in note
    assert "SHA256SUMS-parte-02-de-03" in note
    assert (part_sums_path(1, 1), part_sums_path(3, 17)) == (
        "SHA256SUMS",
        "SHA256SUMS-parte-03-de-17",
    )
    assert part_note_path(3, 17) == "LEEME-parte-03-de-17.txt"


def test_a_later_part_leaves_the_missing_list_to_part_1_which_lists_every_parts(stores, tmp_path):
    archives, files = stores
    later = _assemble(
        archives,
        files,
        [],
        [
            _planned(files, "adjuntos/B (2)/b.txt", b"b", 2),
            _planned(files, "adjuntos/B (2)/gone.txt", None, 3),
        ],
        tmp_path,
        render_missing=None,
        leeme_path="LEEME-parte-02-de-02.txt",
        sums_path="SHA256SUMS-parte-02-de-02",
    )
    assert [m.record_id for m in later.missing] == [3]
    with zipfile.ZipFile(_object_path(archives)) as zf:
        assert zf.namelist() == [
            "adjuntos/B (2)/b.txt",
            "LEEME-parte-02-de-02.txt",
            "SHA256SUMS-parte-02-de-02",
        ]
    listed: list[list[MissingFile]] = []

    def render(missing: list[MissingFile], workdir: Path) -> Path:
        listed.append(missing)
        return _render_missing(missing, workdir)

    first = _assemble(
        archives,
        files,
        [],
        [_planned(files, "adjuntos/A (1)/a.txt", b"a", 1)],
        tmp_path,
        render_missing=render,
        missing_elsewhere=later.missing,
        sums_path="SHA256SUMS-parte-01-de-02",
    )
    # Part 1 copied all its files, and still lists part 2's missing one.
    assert first.missing == [] and [[m.record_id for m in ms] for ms in listed] == [[3]]
    with zipfile.ZipFile(_object_path(archives)) as zf:
        assert zf.namelist()[-3:] == [
            "archivos_no_incluidos.xlsx",
            "LEEME.txt",
            "SHA256SUMS-parte-01-de-02",
        ]
