"""Times the zip writer alone: the same seeded files through assemble_archive, folder to folder.

Not part of the test suite. Seed once, then time `zip` as a whole process (for example with
`/usr/bin/time -v`), on this checkout and on another one (PYTHONPATH) to compare two writers on
the same files in the same order:

    python -m bench.zip_bench seed /tmp/zipbench            # about 230 MB in 3,000 files
    PYTHONPATH=. python -m bench.zip_bench zip /tmp/zipbench
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

# A clinic's attachments, roughly: mostly photos and PDFs (stored as they are), some notes and
# CFDI XML (deflated). Fixed seed: every checkout zips the same bytes in the same order.
KINDS = (
    ("jpg", 0.45, (20_000, 400_000)),
    ("pdf", 0.20, (30_000, 300_000)),
    ("txt", 0.20, (2_000, 60_000)),
    ("xml", 0.15, (3_000, 12_000)),
)
TEXT = (
    "Paciente refiere dolor en pieza 36 al masticar; se indica radiografía periapical y "
    "revisión en 15 días. Receta: ibuprofeno 400 mg cada 8 horas por 3 días.\n"
)
XML = '<cfdi:Concepto ClaveProdServ="85121800" Cantidad="1" Importe="{0}.00" Descripcion="Consulta"/>\n'


def _payload(rng: random.Random, suffix: str, size: int) -> bytes:
    if suffix in ("jpg", "pdf"):
        return rng.randbytes(size)  # incompressible, as a photo is
    if suffix == "txt":
        words = TEXT.split(" ")
        out = []
        total = 0
        while total < size:
            line = " ".join(rng.sample(words, len(words) // 2)) + "\n"
            out.append(line)
            total += len(line)
        return "".join(out).encode("utf-8")[:size]
    lines = [XML.format(rng.randrange(100, 99_999)) for _ in range(size // len(XML) + 1)]
    return "".join(lines).encode("utf-8")[:size]


def seed(root: Path, count: int) -> None:
    rng = random.Random(19)
    files = root / "files" / "platform"
    files.mkdir(parents=True, exist_ok=True)
    plan = []
    suffixes = [kind[0] for kind in KINDS]
    weights = [kind[1] for kind in KINDS]
    sizes = {kind[0]: kind[2] for kind in KINDS}
    for n in range(count):
        suffix = rng.choices(suffixes, weights)[0]
        data = _payload(rng, suffix, rng.randrange(*sizes[suffix]))
        (files / f"{n:06d}").write_bytes(data)
        patient = n // 12
        plan.append(
            {
                "archive_path": f"adjuntos/Hernández Núñez María {patient} ({patient})/"
                f"archivo_{n:06d}.{suffix}",
                "source_key": f"platform/{n:06d}",
                "patient_id": patient,
                "record_id": n,
            }
        )
    (root / "plan.json").write_text(json.dumps(plan))
    total = sum(p.stat().st_size for p in files.iterdir())
    print(f"seeded {count} files, {total / 1e6:.1f} MB in {root}")


def zip_files(root: Path) -> None:
    from backup_pipeline.archive.zipper import assemble_archive
    from backup_pipeline.rules.archive_entries import PlannedFile
    from backup_pipeline.storage.folder import FolderStore

    plan = [
        PlannedFile(kind="adjunto", **entry)
        for entry in json.loads((root / "plan.json").read_text())
    ]
    files = FolderStore(root / "files")
    with tempfile.TemporaryDirectory(prefix="zipbench-", dir=root) as tmp:
        archives = FolderStore(Path(tmp) / "archives")
        workdir = Path(tmp) / "work"
        workdir.mkdir()
        started = time.perf_counter()
        result = assemble_archive(
            archives=archives,
            files=files,
            final_key="bench.zip",
            staged=[],
            planned=iter(plan),
            render_missing=lambda missing, workdir: None,
            leeme=lambda tally: "bench",
            workdir=workdir,
            modified_at=datetime(2026, 1, 2, 9, 30),  # the same bytes on every run
            prefetch=1,
        )
        seconds = time.perf_counter() - started
        # The zip's own checksum, to check that two writers made the same archive.
        with (Path(tmp) / "archives" / "bench.zip").open("rb") as zipped:
            digest = hashlib.file_digest(zipped, "sha256").hexdigest()
    print(
        json.dumps(
            {
                "files": result.files_copied,
                "file_bytes": result.file_bytes,
                "archive_bytes": result.size,
                "archive_sha256": digest,
                "seconds": round(seconds, 3),
                "mb_per_s": round(result.file_bytes / 1e6 / seconds, 1),
            }
        )
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("action", choices=("seed", "zip"))
    parser.add_argument("root", type=Path)
    parser.add_argument("--files", type=int, default=3_000)
    args = parser.parse_args(argv)
    if args.action == "seed":
        seed(args.root, args.files)
    else:
        zip_files(args.root)


if __name__ == "__main__":
    sys.exit(main())
