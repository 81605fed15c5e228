"""Deterministic synthetic clinics (Mexican patients, records, files and CFDI) for the demo, tests and benchmarks."""

from backup_pipeline.synthetic.profiles import PROFILES, Profile
from backup_pipeline.synthetic.seed import (
    ID_BLOCK,
    SeedSummary,
    file_backup_request,
    row_id,
    seed_platform,
)

__all__ = [
    "ID_BLOCK",
    "PROFILES",
    "Profile",
    "SeedSummary",
    "file_backup_request",
    "row_id",
    "seed_platform",
]
