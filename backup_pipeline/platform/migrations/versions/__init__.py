"""Alembic revisions of our backup_* tables, oldest first by down_revision (a package: shipped in the wheel)."""
