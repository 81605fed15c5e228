"""The SHA256SUMS format, and a check of a finished archive against it (for engineers): every
entry's checksum, and that every workbook and CFDI XML in it opens."""

from __future__ import annotations

import hashlib
import re
import shutil
import tempfile
import zipfile
import zlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from openpyxl import load_workbook

from backup_pipeline import cfdi

SHA256SUMS = "SHA256SUMS"
CHUNK = 1024 * 1024

# `sha256sum` text mode ("<hex>  <path>") and binary mode ("<hex> *<path>").
_SUMS_LINE = re.compile(r"^([0-9a-fA-F]{64}) [ *](.+)$")
_PATIENT_ID = re.compile(r"\((\d+)\)$")
_CFDI_XML = re.compile(r"facturacion/(ingresos|gastos)/xml/[^/]+\.xml")
# What parse_cfdi says of a file it could not read as a CFDI at all.
_CFDI_UNREADABLE = {
    cfdi.PROBLEM_EMPTY,
    cfdi.PROBLEM_TOO_LARGE,
    cfdi.PROBLEM_ENTITIES,
    cfdi.PROBLEM_BROKEN,
    cfdi.PROBLEM_NOT_CFDI,
    cfdi.PROBLEM_UNEXPECTED,
}
_SPOOL_IN_MEMORY = 16 * 1024 * 1024


def sha256sums_text(entries: Iterable[tuple[str, str]]) -> str:
    """'<hex>  <path>\\n' per (path, sha256 hex) entry, as `sha256sum -c` reads it."""
    lines = []
    for path, digest in entries:
        if any(c in path for c in "\n\r\\"):
            # sha256sum would need its escaped form for these; our names never have them.
            raise ValueError("archive paths in SHA256SUMS must not contain newlines or '\\'")
        if not re.fullmatch(r"[0-9a-f]{64}", digest):
            raise ValueError("a sha256 must be 64 lower-case hex digits")
        lines.append(f"{digest}  {path}\n")
    return "".join(lines)


@dataclass
class VerifyReport:
    ok: bool
    entries: int = 0
    problems: list[str] = field(default_factory=list)
    # CFDI XML that the hardened parser cannot read. Not a damaged archive: the platform's file
    # is copied as it was stored (the invoice report says so too), so `ok` does not depend on it.
    unreadable_cfdi: list[str] = field(default_factory=list)


def verify_zip(path_or_stream: str | Path | BinaryIO) -> VerifyReport:
    """Check a backup zip: every entry reads back with a good CRC, paths stay inside the
    archive, SHA256SUMS lists every other entry exactly once and each digest matches, and
    every workbook opens with openpyxl (read-only, each sheet read through).

    Every CFDI XML is also opened with the hardened parser (backup_pipeline.cfdi); those that
    do not open are named in `unreadable_cfdi`. A support tool and a test helper: the
    delivery itself does not run it.

    Messages are for engineers and name no patient: entries under adjuntos/ are shown by
    their index and patient id, never by their name.
    """
    problems: list[str] = []
    try:
        archive = zipfile.ZipFile(path_or_stream)
    except (zipfile.BadZipFile, OSError) as exc:
        return VerifyReport(ok=False, problems=[f"not a readable zip: {exc}"])
    with archive:
        infos = archive.infolist()
        digests: dict[str, str] = {}
        seen: set[str] = set()
        for index, info in enumerate(infos):
            where = describe_entry(index, info.filename)
            if info.filename in seen:
                problems.append(f"{where}: the name appears twice in the zip")
            seen.add(info.filename)
            if not is_contained(info.filename):
                problems.append(f"{where}: the path escapes the archive folder")
            try:
                digests[info.filename] = _entry_sha256(archive, info)
            except (zipfile.BadZipFile, zlib.error, EOFError, OSError) as exc:
                problems.append(f"{where}: cannot be read back ({type(exc).__name__})")
        problems.extend(_check_sums(archive, infos, digests))
        unreadable_cfdi: list[str] = []
        for index, info in enumerate(infos):
            if info.filename not in digests:
                continue  # unreadable: already reported
            where = describe_entry(index, info.filename)
            if info.filename.lower().endswith(".xlsx"):
                failure = _workbook_failure(archive, info)
                if failure:
                    problems.append(f"{where}: the workbook does not open ({failure})")
            elif _CFDI_XML.fullmatch(info.filename):
                failure = _cfdi_failure(archive, info)
                if failure:
                    unreadable_cfdi.append(f"{where}: the CFDI XML does not open ({failure})")
    return VerifyReport(
        ok=not problems, entries=len(infos), problems=problems, unreadable_cfdi=unreadable_cfdi
    )


def _workbook_failure(archive: zipfile.ZipFile, info: zipfile.ZipInfo) -> str | None:
    """Why openpyxl cannot read the workbook through, or None when it can."""
    # openpyxl needs a seekable file: spooled, on disk past a few MB (a workbook may be large).
    with tempfile.SpooledTemporaryFile(max_size=_SPOOL_IN_MEMORY) as spool:
        with archive.open(info) as src:
            shutil.copyfileobj(src, spool, CHUNK)
        spool.seek(0)
        try:
            book = load_workbook(spool, read_only=True, data_only=True)
            try:
                for sheet in book.worksheets:
                    for _row in sheet.iter_rows(values_only=True):
                        pass
            finally:
                book.close()
        except Exception as exc:
            # Only the class: the message may quote a cell (patient data).
            return type(exc).__name__
    return None


def _cfdi_failure(archive: zipfile.ZipFile, info: zipfile.ZipInfo) -> str | None:
    """What the hardened parser says of an XML it cannot read, or None when it reads."""
    with archive.open(info) as src:
        data = src.read(cfdi.MAX_CFDI_BYTES + 1)  # one byte over is enough to refuse it
    problems = [p for p in cfdi.parse_cfdi(data).problems if p in _CFDI_UNREADABLE]
    return "; ".join(problems) or None


def is_contained(path: str) -> bool:
    """False for absolute paths, drive letters, backslashes and '..' components."""
    if not path or path.startswith("/") or "\\" in path or re.match(r"^[A-Za-z]:", path):
        return False
    # split, not PurePosixPath(path).parts: pathlib interns each part it parses (see
    # zipper.compression_for), and this runs for every entry of an archive.
    return ".." not in path.split("/")


def describe_entry(index: int | None, path: str) -> str:
    """How an engineer's message names an entry without the patient's name in it."""
    label = "a path" if index is None else f"entry #{index}"
    parts = path.split("/")
    if parts[0] == "adjuntos" and len(parts) > 1:
        match = _PATIENT_ID.search(parts[1])
        patient = f"patient {match.group(1)}" if match else "a patient"
        return f"{label} (an attachment of {patient})"
    return f"{label} ({path!r})"


def _entry_sha256(archive: zipfile.ZipFile, info: zipfile.ZipInfo) -> str:
    digest = hashlib.sha256()
    with archive.open(info) as src:  # raises BadZipFile on a CRC mismatch at the end
        while chunk := src.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _check_sums(
    archive: zipfile.ZipFile, infos: list[zipfile.ZipInfo], digests: dict[str, str]
) -> list[str]:
    if SHA256SUMS not in digests:
        if any(info.filename == SHA256SUMS for info in infos):
            return []  # unreadable: already reported
        return [f"{SHA256SUMS} is missing"]
    problems: list[str] = []
    index_of = {info.filename: i for i, info in enumerate(infos)}
    try:
        text = archive.read(SHA256SUMS).decode("utf-8")
    except UnicodeDecodeError:
        return [f"{SHA256SUMS} is not UTF-8"]
    listed: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        match = _SUMS_LINE.match(line)
        if match is None:
            problems.append(f"{SHA256SUMS} line {number} is not '<sha256>  <path>'")
            continue
        digest, path = match.group(1).lower(), match.group(2)
        where = describe_entry(index_of.get(path), path)
        if path in listed:
            problems.append(f"{SHA256SUMS} line {number}: {where} is listed twice")
        listed[path] = digest
        if path not in index_of:
            problems.append(f"{SHA256SUMS} line {number}: {where} is listed but not in the zip")
        elif path in digests and digests[path] != digest:
            problems.append(f"{where}: sha256 differs from {SHA256SUMS} line {number}")
    for path, index in index_of.items():
        if path != SHA256SUMS and path not in listed and not path.endswith("/"):
            problems.append(f"{describe_entry(index, path)} is not listed in {SHA256SUMS}")
    return problems
