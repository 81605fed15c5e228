"""A very large account (here: a tiny part size) gets its archive in parts: each a complete,
verified zip, one email listing every part, a re-sent link for every part, expiry of them all;
extracted into one folder, the parts merge without loss."""

from __future__ import annotations

import io
import re
import subprocess
import zipfile
from collections import Counter
from datetime import timedelta
from pathlib import Path

import openpyxl

from backup_pipeline import cli
from backup_pipeline import platform as db
from backup_pipeline.archive.plan import plan_files
from backup_pipeline.archive.verify import verify_zip
from backup_pipeline.datasets.missing import MISSING_KIND_LABELS
from backup_pipeline.rules.archive_parts import archive_spans, estimated_size
from backup_pipeline.rules.leeme import (
    FILE_FOLDERS,
    FILES_COPIED_LABEL,
    FILES_MISSING_LABEL,
    MISSING_REPORT_PATH,
    part_sums_path,
)
from backup_pipeline.rules.spanish import spanish_count, spanish_number
from backup_pipeline.services.housekeeping import expire_archives
from backup_pipeline.services.support_actions import resend_link
from backup_pipeline_tests.support.acceptance import Archive, table_rows
from backup_pipeline_tests.support.platform import build_platform

PATIENTS = 80  # a small clinic's ~5 MB of files: a few parts of the smallest part size


def _part_size_for_parts(tmp_path: Path, parts: int, seed: int) -> int:
    """A part size (1 MB at least, the smallest allowed) that splits the seeded clinic's files
    into about `parts` parts, measured on a platform of its own."""
    (tmp_path / "sizing").mkdir()
    seeded = build_platform(tmp_path / "sizing")
    (clinic,) = seeded.seed(patients=PATIENTS, seed=seed)
    with seeded.engine.connect() as conn:
        files_bytes = sum(estimated_size(f) for f in plan_files(conn, clinic.subscription_id))
    seeded.close()
    return max(1_000_000, files_bytes // parts)


def test_a_very_large_account_is_delivered_in_verified_parts(tmp_path: Path):
    # Just over three parts' worth of files (part 1 also holds the workbooks).
    part_size = _part_size_for_parts(tmp_path, 3, seed=3)
    (tmp_path / "platform").mkdir()
    platform = build_platform(tmp_path / "platform", env={"BACKUP_PART_SIZE": str(part_size)})
    (clinic,) = platform.seed(patients=PATIENTS, seed=3)

    backup = platform.back_up(clinic)

    assert backup.delivered
    with platform.engine.connect() as conn:
        parts = db.parts_of(conn, backup.request_id)
    assert len(parts) >= 3
    assert [p.part for p in parts] == list(range(1, len(parts) + 1))
    assert backup.request.archive_key == parts[0].archive_key
    assert backup.request.archive_size_bytes == sum(p.size_bytes for p in parts)
    names = [p.archive_key.rsplit("/", 1)[-1] for p in parts]
    assert all(re.search(rf"_parte-{i}-de-{len(parts)}\.zip$", n) for i, n in enumerate(names, 1))

    with platform.engine.connect() as conn:
        plan = list(plan_files(conn, clinic.subscription_id))
    gone = [p for p in plan if not platform.files.exists(p.source_key)]  # the seed's edge cases
    folders: dict[str, set[int]] = {}
    paths = []
    held: Counter[str] = Counter()  # every file of the plan's folders, over all parts
    for part in parts:
        blob = platform.archives.get_bytes(part.archive_key)
        path = tmp_path / part.archive_key.rsplit("/", 1)[-1]
        path.write_bytes(blob)
        paths.append(str(path))
        report = verify_zip(path)  # each part checks itself against its own checksum file
        assert report.ok and (report.part, report.parts) == (part.part, len(parts))
        archive = Archive(blob)
        if part.part == 1:
            leeme = archive.text("LEEME.txt")
            assert f"Esta es la parte 1 de {len(parts)}" in leeme
        else:
            assert "LEEME.txt" not in archive.names  # part 1's describes them all
            note = archive.text(f"LEEME-parte-{part.part:02d}-de-{len(parts):02d}.txt")
            assert f"PARTE {part.part} DE {len(parts)}" in note
        has_workbooks = "pacientes.xlsx" in archive.names
        assert has_workbooks == (part.part == 1)  # workbooks and reports in part 1
        for name in archive.names:
            if name.startswith("adjuntos/"):
                folders.setdefault(name.split("/")[1], set()).add(part.part)
            if name.startswith(FILE_FOLDERS):
                held[name] += 1
        if part.part == 1:
            book = openpyxl.load_workbook(io.BytesIO(archive.read(MISSING_REPORT_PATH)))
            listed_missing = sorted(
                (row["Tipo"], row["ID del registro"]) for row in table_rows(book.worksheets[0])
            )
    # Each part checks only against its own manifest: together they must hold exactly the plan,
    # every planned file once in one part, or listed as not included.
    assert {name for name, times in held.items() if times > 1} == set()
    assert set(held) == {p.archive_path for p in plan} - {p.archive_path for p in gone}
    assert listed_missing == sorted((MISSING_KIND_LABELS[p.kind], p.record_id) for p in gone)
    # A patient's folder is in one part (unless it alone exceeds one, which none does here).
    assert all(len(in_parts) == 1 for in_parts in folders.values())
    assert cli.main(["verify", *paths]) == 0

    (email,) = [m for m in platform.sent() if m.key == f"backup-{backup.request_id}-delivered"]
    for i in range(1, len(parts) + 1):
        assert f"Descargar la parte {i} de {len(parts)}" in email.text
    for part in parts:
        assert part.sha256 in email.text

    resend_link(
        platform.engine,
        platform.archives,
        platform.resources()["mailer"].get_mailer(),
        request_id=backup.request_id,
        reason="the clinic lost the email",
        link_ttl=timedelta(hours=72),
    )
    again = [m for m in platform.sent() if m.key == f"backup-{backup.request_id}-delivered"]
    assert len(again) == 2 and f"Descargar la parte {len(parts)} de {len(parts)}" in again[1].text

    expire_archives(platform.engine, platform.archives, db.utcnow() + timedelta(days=30))
    assert platform.status(backup.request_id) == "expired"
    assert not any(platform.archives.exists(p.archive_key) for p in parts)


def test_parts_extracted_into_one_folder_lose_nothing(tmp_path: Path, capsys):
    part_size = _part_size_for_parts(tmp_path, 4, seed=5)
    (tmp_path / "platform").mkdir()
    platform = build_platform(tmp_path / "platform", env={"BACKUP_PART_SIZE": str(part_size)})
    (clinic,) = platform.seed(patients=PATIENTS, seed=5)
    # A file gone from the store in the first, a middle and the last part (as split today).
    with platform.engine.connect() as conn:
        plan = list(plan_files(conn, clinic.subscription_id))
    spans = archive_spans(plan, part_size)
    assert len(spans) >= 3
    deleted = [plan[span.start] for span in (spans[0], spans[len(spans) // 2], spans[-1])]
    for planned in deleted:
        assert platform.files.delete(planned.source_key)
    # With those the seed already left out of the store (its edge cases).
    gone = [p for p in plan if not platform.files.exists(p.source_key)]
    assert len(gone) >= len(deleted)

    backup = platform.back_up(clinic)

    assert backup.delivered
    with platform.engine.connect() as conn:
        parts = db.parts_of(conn, backup.request_id)
    assert len(parts) == len(spans)
    # Filled evenly by the sizes the split knows (CFDI sizes are estimated: the platform does not
    # record them), with no near-empty tail; and no part over the part size in fact.
    planned_bytes = [span.estimated_bytes for span in spans]
    assert min(planned_bytes) >= max(planned_bytes) / 2, planned_bytes
    assert all(part.size_bytes <= part_size for part in parts)

    # Extract every part into one folder, in order, overwriting as Explorer's "Extract all"
    # into one folder does; nothing may be overwritten with other bytes.
    merged = tmp_path / "respaldo"
    paths: list[Path] = []
    overwritten: list[tuple[int, str]] = []
    for part in parts:
        path = tmp_path / part.archive_key.rsplit("/", 1)[-1]
        path.write_bytes(platform.archives.get_bytes(part.archive_key))
        paths.append(path)
        with zipfile.ZipFile(path) as zf:
            for info in zf.infolist():
                target = merged / info.filename
                data = zf.read(info)
                if target.exists() and target.read_bytes() != data:
                    overwritten.append((part.part, info.filename))
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(data)
    assert overwritten == []

    # Every part's own checksum file still checks its files in the merged folder.
    sums_files = sorted(p.name for p in merged.iterdir() if p.name.startswith("SHA256SUMS"))
    assert sums_files == [part_sums_path(n, len(parts)) for n in range(1, len(parts) + 1)]
    for sums in sums_files:
        check = subprocess.run(
            ["sha256sum", "--check", "--strict", sums],
            cwd=merged,
            capture_output=True,
            text=True,
            check=False,
        )
        assert check.returncode == 0, check.stdout + check.stderr
        assert check.stdout.count(": OK") == len((merged / sums).read_text().splitlines())

    # The list of files not included names every missing file, whichever part it was in.
    book = openpyxl.load_workbook(merged / MISSING_REPORT_PATH, read_only=True)
    listed = table_rows(book.worksheets[0])
    book.close()
    assert sorted((r["Tipo"], r["ID del registro"]) for r in listed) == sorted(
        (MISSING_KIND_LABELS[p.kind], p.record_id) for p in gone
    )
    assert not any((merged / p.archive_path).exists() for p in gone)

    # The email, part 1's LEEME.txt and the merged folder agree on every count.
    copied = [
        f
        for f in merged.rglob("*")
        if f.is_file() and f.relative_to(merged).as_posix().startswith(FILE_FOLDERS)
    ]
    assert len(copied) == len(plan) - len(gone)
    leeme = (merged / "LEEME.txt").read_text(encoding="utf-8-sig")
    assert f"Esta es la parte 1 de {len(parts)}" in leeme
    assert f"{FILES_COPIED_LABEL} en total: {spanish_number(len(copied))} (" in leeme
    assert f"{FILES_MISSING_LABEL}: {spanish_number(len(gone))}." in leeme
    assert (
        f"{spanish_count(len(gone), 'archivo no se pudo', 'archivos no se pudieron')} copiar"
        in leeme
    )
    (email,) = [m for m in platform.sent() if m.key == f"backup-{backup.request_id}-delivered"]
    assert f"{FILES_COPIED_LABEL}: {spanish_number(len(copied))}" in email.text
    assert f"{FILES_MISSING_LABEL}: {spanish_number(len(gone))}" in email.text
    # Each part's line in LEEME.txt counts the files in it; together, every file.
    per_part = [
        int(m.group(1).replace(",", ""))
        for m in re.finditer(r"Parte \d+ de \d+: [^\r]*?([\d,]+) archivos? adjunto", leeme)
    ]
    assert len(per_part) == len(parts) and sum(per_part) == len(copied)

    # verify: all parts pass, each and together; without one, it names the one left out.
    assert cli.main(["verify", *map(str, paths)]) == 0
    assert f"OK: all {len(parts)} parts are here" in capsys.readouterr().out
    left_out = len(parts) // 2 + 1
    given = [str(p) for n, p in enumerate(paths, start=1) if n != left_out]
    assert cli.main(["verify", *given]) == 1
    out = capsys.readouterr().out
    assert f"MISSING: falta la parte {left_out} de {len(parts)} ({paths[left_out - 1].name})" in out
