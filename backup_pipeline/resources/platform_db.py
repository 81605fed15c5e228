"""The platform's database as a Dagster resource: a URL, and the engine the services take."""

from __future__ import annotations

import dagster as dg
from sqlalchemy.engine import Engine

from backup_pipeline.platform import engine_for


class PlatformDatabaseResource(dg.ConfigurableResource):
    """The platform's database (any SQLAlchemy URL)."""

    url: str

    def get_engine(self) -> Engine:
        # Dagster resolves an EnvVar field only for runs and sensors; the CLI and scripts use the
        # resource as built (resources.build_resources), where `url` is still the variable's name.
        url = self.url.get_value() if isinstance(self.url, dg.EnvVar) else self.url
        if url is None:
            raise ValueError("BACKUP_PLATFORM_DB_URL is not set in this process's environment")
        return engine_for(url)
