"""Alembic's environment for our tables: run by `upgrade()` on its connection, never by itself."""

from __future__ import annotations

from alembic import context

from backup_pipeline.platform.migrations import VERSION_TABLE, include_name, include_object
from backup_pipeline.platform.tables import metadata

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError(
        "backup_pipeline's migrations run through `backup-pipeline migrate` "
        "(backup_pipeline.platform.migrations.upgrade), which hands them a connection"
    )

context.configure(
    connection=connection,
    target_metadata=metadata,
    version_table=VERSION_TABLE,
    # Autogenerate and compare see only backup_* tables: a platform table is never created,
    # altered or dropped by a revision generated here.
    include_name=include_name,
    include_object=include_object,
    # SQLite's DDL is transactional too: one transaction for every revision, as on PostgreSQL.
    transactional_ddl=True,
    compare_type=True,
    render_as_batch=connection.dialect.name == "sqlite",
)

with context.begin_transaction():
    context.run_migrations()
