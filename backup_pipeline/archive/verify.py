"""The SHA256SUMS format, and a check of a finished archive against it (for engineers): every
entry's checksum, that every workbook and CFDI XML in it opens, and for an archive in parts
that every part is there and that the parts merge without loss."""

from __future__ import annotations

import hashlib
import re
import shutil
import tempfile
import zipfile
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from backup_pipeline.rules import cfdi
from backup_pipeline.rules.archive_names import part_key
from backup_pipeline.rules.leeme import (
    FILE_FOLDERS,
    LEEME_PATH,
    MISSING_REPORT_PATH,
    files_copied_in,
    files_missing_in,
)

SHA256SUMS = "SHA256SUMS"
# A zip's checksum file names the part it belongs to (leeme.part_sums_path): a part is known
# by its contents, whatever a browser renamed its file to.
_SUMS_NAME = re.compile(r"SHA256SUMS(?:-parte-(\d+)-de-(\d+))?")
# A part's file name as names.part_key makes it.
_PART_FILE = re.compile(r"(.+)_parte-\d+-de-\d+\.zip")
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
    # Which part of its archive the zip says it is (its checksum file's name): 1 of 1 alone.
    part: int = 1
    parts: int = 1
    # Every entry's sha256, for the checks across parts.
    digests: dict[str, str] = field(default_factory=dict, repr=False)
    # What LEEME.txt says of the files copied and not included (the whole archive's, in
    # part 1), when it says; and the rows of archivos_no_incluidos.xlsx.
    leeme_files_copied: int | None = None
    leeme_files_missing: int = 0
    missing_listed: int = 0


@dataclass
class ArchiveVerifyReport:
    """One archive given as one zip or as its parts: each zip's report, and the whole's."""

    zips: list[tuple[str, VerifyReport]]
    missing_parts: list[str] = field(default_factory=list)  # "falta la parte 5 de 17 (<file name>)"
    problems: list[str] = field(default_factory=list)  # across the zips

    @property
    def parts(self) -> int:
        return max((report.parts for _, report in self.zips), default=0)

    @property
    def ok(self) -> bool:
        return (
            not self.missing_parts
            and not self.problems
            and all(report.ok for _, report in self.zips)
        )


def verify_archive(paths: Sequence[str | Path]) -> ArchiveVerifyReport:
    """Check one archive: a zip, or every part of one. Each zip is checked alone (verify_zip);
    then the whole: every part from 1 to n is there (those that are not are named, with the
    file name part_key gives them), no two parts hold an entry of one name with different
    contents (extracting the parts into one folder would lose one), and the files copied and
    the rows of archivos_no_incluidos.xlsx add up to what part 1's LEEME.txt says."""
    zips = [(str(path), verify_zip(path)) for path in paths]
    report = ArchiveVerifyReport(zips=zips)
    readable = [(name, r) for name, r in zips if r.entries]
    if all(r.parts == 1 for _, r in readable):
        for name, single in readable:  # single zips, each an archive of its own
            report.problems += _totals_problems(
                {single.part: single}, name if len(zips) > 1 else ""
            )
        return report
    totals = {r.parts for _, r in readable}
    if len(totals) > 1:
        report.problems.append(
            "the zips are not parts of one archive: they say they are parts of "
            + " and of ".join(str(n) for n in sorted(totals))
        )
        return report
    (count,) = totals
    by_part: dict[int, list[str]] = {}
    for name, r in readable:
        by_part.setdefault(r.part, []).append(name)
    for number, names in sorted(by_part.items()):
        if len(names) > 1:
            report.problems.append(f"part {number} of {count} was given {len(names)} times")
    stem = next(
        (m.group(1) for name, _ in readable if (m := _PART_FILE.fullmatch(Path(name).name))), None
    )
    for number in range(1, count + 1):
        if number not in by_part:
            expected = f" ({part_key(stem + '.zip', number, count)})" if stem else ""
            report.missing_parts.append(f"falta la parte {number} de {count}{expected}")
    if report.missing_parts:
        return report  # the whole cannot be checked without every part
    parts = {r.part: r for _, r in readable}
    report.problems += _conflicts(parts)
    report.problems += _totals_problems(parts, "")
    return report


def _conflicts(parts: dict[int, VerifyReport]) -> list[str]:
    """Entries of one name with different contents in two parts: one would overwrite the other."""
    problems: list[str] = []
    first_seen: dict[str, tuple[int, str]] = {}
    for number, part in sorted(parts.items()):
        for path, digest in part.digests.items():
            seen = first_seen.setdefault(path, (number, digest))
            if seen[1] != digest:
                problems.append(
                    f"{describe_entry(None, path)} is in part {seen[0]} and part {number} with "
                    "different contents: extracting both into one folder keeps only one"
                )
    return problems


def _totals_problems(parts: dict[int, VerifyReport], where: str) -> list[str]:
    """The files copied (attachments and CFDI) in the zips, and those listed as not included,
    against part 1's LEEME.txt."""
    first = parts.get(1)
    if first is None or LEEME_PATH not in first.digests:
        return [f"{LEEME_PATH} is missing" + (f" in {where}" if where else "")]
    if first.leeme_files_copied is None:
        return []  # an archive made before LEEME.txt stated its total
    problems: list[str] = []
    held = {
        path for part in parts.values() for path in part.digests if path.startswith(FILE_FOLDERS)
    }
    zips = "the zip" if len(parts) == 1 else "the parts"
    if len(held) != first.leeme_files_copied:
        problems.append(
            f"{LEEME_PATH} says {first.leeme_files_copied} files were copied, "
            f"{zips} hold {len(held)}"
        )
    listed = sum(part.missing_listed for part in parts.values())
    if listed != first.leeme_files_missing:
        problems.append(
            f"{LEEME_PATH} says {first.leeme_files_missing} files were not included, "
            f"{MISSING_REPORT_PATH} lists {listed}"
        )
    return [p + (f" in {where}" if where else "") for p in problems]


def verify_zip(path_or_stream: str | Path | BinaryIO) -> VerifyReport:
    """Check a backup zip: every entry reads back with a good CRC, paths stay inside the
    archive, SHA256SUMS lists every other entry exactly once and each digest matches, and
    every workbook opens with openpyxl (read-only, each sheet read through).

    Every CFDI XML is also opened with the hardened parser (backup_pipeline.rules.cfdi); those that
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
        sums_names = [i.filename for i in infos if _SUMS_NAME.fullmatch(i.filename)]
        sums_name = sums_names[0] if sums_names else SHA256SUMS
        if len(sums_names) > 1:
            problems.append(f"the zip has {len(sums_names)} checksum files, not one")
        problems.extend(_check_sums(archive, infos, digests, sums_name))
        part, parts = _part_of(sums_name)
        if not 1 <= part <= parts:
            problems.append(f"{sums_name} names a part that cannot be (part {part} of {parts})")
        leeme_copied, leeme_missing, missing_listed = None, 0, 0
        if LEEME_PATH in digests:
            leeme = archive.read(LEEME_PATH).decode("utf-8-sig", errors="replace")
            leeme_copied, leeme_missing = files_copied_in(leeme), files_missing_in(leeme)
        unreadable_cfdi: list[str] = []
        for index, info in enumerate(infos):
            if info.filename not in digests:
                continue  # unreadable: already reported
            where = describe_entry(index, info.filename)
            if info.filename.lower().endswith(".xlsx"):
                failure, rows = _workbook_failure(archive, info)
                if failure:
                    problems.append(f"{where}: the workbook does not open ({failure})")
                if info.filename == MISSING_REPORT_PATH:
                    missing_listed = rows
            elif _CFDI_XML.fullmatch(info.filename):
                failure = _cfdi_failure(archive, info)
                if failure:
                    unreadable_cfdi.append(f"{where}: the CFDI XML does not open ({failure})")
    return VerifyReport(
        ok=not problems,
        entries=len(infos),
        problems=problems,
        unreadable_cfdi=unreadable_cfdi,
        part=part,
        parts=parts,
        digests=digests,
        leeme_files_copied=leeme_copied,
        leeme_files_missing=leeme_missing,
        missing_listed=missing_listed,
    )


def _part_of(sums_name: str) -> tuple[int, int]:
    match = _SUMS_NAME.fullmatch(sums_name)
    if match is None or match.group(1) is None:
        return 1, 1
    return int(match.group(1)), int(match.group(2))


def _workbook_failure(archive: zipfile.ZipFile, info: zipfile.ZipInfo) -> tuple[str | None, int]:
    """Why openpyxl cannot read the workbook through (None when it can), and its data rows:
    those with a value, each sheet's header row aside."""
    # Imported here: only `verify` reads workbooks back, and the run imports this module for its
    # checksum file (~0.07 s of openpyxl in every command and run worker otherwise).
    import openpyxl

    rows = 0
    # openpyxl needs a seekable file: spooled, on disk past a few MB (a workbook may be large).
    with tempfile.SpooledTemporaryFile(max_size=_SPOOL_IN_MEMORY) as spool:
        with archive.open(info) as src:
            shutil.copyfileobj(src, spool, CHUNK)
        spool.seek(0)
        try:
            book = openpyxl.load_workbook(spool, read_only=True, data_only=True)
            try:
                for sheet in book.worksheets:
                    filled = sum(
                        1
                        for row in sheet.iter_rows(values_only=True)
                        if any(v is not None for v in row)
                    )
                    rows += max(filled - 1, 0)
            finally:
                book.close()
        except Exception as exc:
            # Only the class: the message may quote a cell (patient data).
            return type(exc).__name__, rows
    return None, rows


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
    archive: zipfile.ZipFile,
    infos: list[zipfile.ZipInfo],
    digests: dict[str, str],
    sums_name: str = SHA256SUMS,
) -> list[str]:
    if sums_name not in digests:
        if any(info.filename == sums_name for info in infos):
            return []  # unreadable: already reported
        return [f"{sums_name} is missing"]
    problems: list[str] = []
    index_of = {info.filename: i for i, info in enumerate(infos)}
    try:
        text = archive.read(sums_name).decode("utf-8")
    except UnicodeDecodeError:
        return [f"{sums_name} is not UTF-8"]
    listed: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        match = _SUMS_LINE.match(line)
        if match is None:
            problems.append(f"{sums_name} line {number} is not '<sha256>  <path>'")
            continue
        digest, path = match.group(1).lower(), match.group(2)
        where = describe_entry(index_of.get(path), path)
        if path in listed:
            problems.append(f"{sums_name} line {number}: {where} is listed twice")
        listed[path] = digest
        if path not in index_of:
            problems.append(f"{sums_name} line {number}: {where} is listed but not in the zip")
        elif path in digests and digests[path] != digest:
            problems.append(f"{where}: sha256 differs from {sums_name} line {number}")
    for path, index in index_of.items():
        if path != sums_name and path not in listed and not path.endswith("/"):
            problems.append(f"{describe_entry(index, path)} is not listed in {sums_name}")
    return problems
