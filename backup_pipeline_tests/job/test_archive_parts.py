"""A very large account (here: a tiny part size) gets its archive in parts: each a complete,
verified zip, one email listing every part, a re-sent link for every part, expiry of them all."""

from __future__ import annotations

import re
from datetime import timedelta
from pathlib import Path

from backup_pipeline import cli
from backup_pipeline.archive.parts import estimated_size
from backup_pipeline.archive.plan import plan_files
from backup_pipeline.archive.verify import verify_zip
from backup_pipeline.housekeeping import expire_archives
from backup_pipeline.resources import platform_db as db
from backup_pipeline.support_actions import resend_link
from backup_pipeline_tests.support.acceptance import Archive
from backup_pipeline_tests.support.platform import build_platform


def test_a_very_large_account_is_delivered_in_verified_parts(tmp_path: Path):
    (tmp_path / "sizing").mkdir()
    (tmp_path / "platform").mkdir()
    seeded = build_platform(tmp_path / "sizing")
    (clinic,) = seeded.seed(patients=30, seed=3)
    with seeded.engine.connect() as conn:
        files_bytes = sum(estimated_size(f) for f in plan_files(conn, clinic.subscription_id))
    seeded.close()
    # Just over three parts' worth of files (part 1 also holds the workbooks).
    part_size = files_bytes // 3
    platform = build_platform(tmp_path / "platform", env={"BACKUP_PART_SIZE": str(part_size)})
    (clinic,) = platform.seed(patients=30, seed=3)

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

    folders: dict[str, set[int]] = {}
    paths = []
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
        platform.resources()["mailer"],
        request_id=backup.request_id,
        reason="the clinic lost the email",
        link_ttl=timedelta(hours=72),
    )
    again = [m for m in platform.sent() if m.key == f"backup-{backup.request_id}-delivered"]
    assert len(again) == 2 and f"Descargar la parte {len(parts)} de {len(parts)}" in again[1].text

    expire_archives(platform.engine, platform.archives, db.utcnow() + timedelta(days=30))
    assert platform.status(backup.request_id) == "expired"
    assert not any(platform.archives.exists(p.archive_key) for p in parts)
