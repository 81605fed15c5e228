"""Our tables as of issue 10: quota windows, alerts sent, and the request sensor's reviews.

Revision ID: 0001
Revises:
Create Date: 2026-05-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision: str | None = None
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    # Explicit DDL, not tables.metadata: a revision must keep creating what it created the day it
    # was written, whatever tables.py says later.
    op.create_table(
        "backup_quota_windows",
        sa.Column("subscription_id", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("last_counted_backup_at", sa.TIMESTAMP(), nullable=True),
        sa.Column("next_allowed_at", sa.TIMESTAMP(), nullable=True),
        sa.Column("backups_last_360_days", sa.Integer(), nullable=False),
        sa.Column("updated_at", sa.TIMESTAMP(), nullable=False),
        sa.PrimaryKeyConstraint("subscription_id"),
    )
    op.create_table(
        "backup_alerts",
        sa.Column("request_id", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("kind", sa.Text(), nullable=False),
        sa.Column("sent_at", sa.TIMESTAMP(), nullable=False),
        sa.PrimaryKeyConstraint("request_id", "kind"),
    )
    op.create_table(
        "backup_request_reviews",
        sa.Column("request_id", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("decision", sa.Text(), nullable=False),
        sa.Column("reason_code", sa.Text(), nullable=True),
        sa.Column("run_key", sa.Text(), nullable=True),
        sa.Column("reviewed_at", sa.TIMESTAMP(), nullable=False),
        sa.PrimaryKeyConstraint("request_id"),
    )


def downgrade() -> None:
    op.drop_table("backup_request_reviews")
    op.drop_table("backup_alerts")
    op.drop_table("backup_quota_windows")
