"""Every setting declared once (type, default, bounds, meaning), read from the environment and
checked when read; a bad value stops the command or the code location's load in one line."""

from __future__ import annotations

import dataclasses
import os
import re
import sys
from collections.abc import Mapping
from datetime import timedelta
from email.utils import getaddresses
from pathlib import Path
from typing import Annotated, Any, get_type_hints
from urllib.parse import parse_qs, urlsplit

import pydantic
from pydantic import AfterValidator, BeforeValidator, Field
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from backup_pipeline.rules.archive_parts import DEFAULT_PART_SIZE

MAX_LINK_TTL = timedelta(days=7)  # GCS V4 signed URLs cannot live longer
MAX_LINK_TTL_HOURS = int(MAX_LINK_TTL.total_seconds() // 3600)

DEFAULT_FROM_EMAIL = "Respaldo de información <respaldos@clinica.example>"

# BACKUP_DEPLOYMENT: "embedded" (one machine, defaults under BACKUP_VAR_DIR) or "cluster".
DEPLOYMENTS = ("embedded", "cluster")


class SettingsError(ValueError):
    """A setting the environment gives that cannot be used; str() is one line naming the
    variable, its value (never a secret) and what is allowed."""


@dataclasses.dataclass(frozen=True)
class Variable:
    """How one setting appears in the environment and in the README's configuration table."""

    names: tuple[str, ...]  # the first is the documented one; later ones are older spellings
    meaning: str
    allowed: str  # completes "NAME='value': ... expected"
    shown_default: str | None = None  # the README's default when the value itself is not it
    # A cluster (BACKUP_DEPLOYMENT=cluster) must state it: its default is a local folder or an
    # example address, which in a pod would silently lose archives or mail.
    stated_in_cluster: bool = False


def dagster_home() -> Path:
    """DAGSTER_HOME, defaulting to ./var/dagster_home (the embedded instance of the CLI)."""
    return Path(os.environ.get("DAGSTER_HOME") or Path("var/dagster_home").resolve())


def secret_environment(*names: str) -> dict[str, str]:
    """The named secrets (e.g. SENDGRID_API_KEY), read when an adapter is first used in the
    process that needs them: never held in Settings or resource config, so never shown in the UI."""
    return {name: os.environ[name] for name in names if name in os.environ}


# --- the rules a raw string is held to (each raises ValueError; the message shown is the
# Variable's `allowed`, so these need not word their own)

_WHOLE_NUMBER = re.compile(r"\s*\+?\d+\s*")
_SIZE = re.compile(r"\s*(\d+)\s*([kmg]i?b|b)?\s*", re.IGNORECASE)
# Decimal units as storage vendors and GCS count them; binary ones as operating systems do.
_SIZE_UNITS = {
    "b": 1,
    "kb": 1000,
    "mb": 1000**2,
    "gb": 1000**3,
    "kib": 1024,
    "mib": 1024**2,
    "gib": 1024**3,
}
_ADDRESS = re.compile(r"[^@\s<>\"(),;:]+@[^@\s<>\"(),;:]+\.[^@\s<>\"(),;:]+")
_BUCKET_NAME = re.compile(r"[a-z0-9][a-z0-9._-]{1,220}[a-z0-9]")


def _whole_number(value: Any) -> Any:
    """Digits only: '72h', '72.5', '1e2', 'nan' and 'inf' are refused, not rounded."""
    if isinstance(value, str):
        if not _WHOLE_NUMBER.fullmatch(value):
            raise ValueError("not a whole number")
        return int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError("not a whole number")
    return value


def _byte_size(value: Any) -> Any:
    """Bytes, or a whole number with a unit: 4GB is 4_000_000_000, 4GiB is 4 * 1024**3."""
    if isinstance(value, str):
        match = _SIZE.fullmatch(value)
        if not match:
            raise ValueError("not a size in bytes")
        return int(match[1]) * _SIZE_UNITS[(match[2] or "b").lower()]
    return _whole_number(value)


def _workers(value: Any) -> Any:
    if isinstance(value, str) and value.strip().lower() == "auto":
        return None
    return None if value is None else _whole_number(value)


def _email(value: str) -> str:
    """'address@host.tld' or 'Display Name <address@host.tld>' (the name may have accents, or be
    quoted when it holds a comma): one address, nothing around it."""
    text = value.strip()
    found = getaddresses([text])
    if len(found) != 1:
        raise ValueError("not one email address")
    address = found[0][1]
    if not _ADDRESS.fullmatch(address) or not (text == address or text.endswith(f"<{address}>")):
        raise ValueError("not an email address")
    return text


def _optional_email(value: str | None) -> str | None:
    return None if value is None else _email(value)


def _database_url(value: str) -> str:
    try:
        url = make_url(value.strip())
    except ArgumentError:
        raise ValueError("not a SQLAlchemy URL") from None
    if url.get_backend_name() not in ("sqlite", "postgresql"):
        raise ValueError("not a SQLite or PostgreSQL URL")
    if url.get_backend_name() == "sqlite" and not url.database:
        raise ValueError("an in-memory SQLite database would be one per process")
    return value.strip()


def _local_folder(url: str) -> bool:
    parts = urlsplit(url)
    return parts.netloc in ("", "localhost") and parts.path.startswith("/") and not parts.query


def _store_url(value: str) -> str:
    """The shapes resources.storage.open_store opens: file:///absolute/folder or
    gs://bucket[/prefix][?signer=email]."""
    text = value.strip()
    parts = urlsplit(text)
    if parts.scheme == "file" and _local_folder(text):
        return text
    if (
        parts.scheme == "gs"
        and _BUCKET_NAME.fullmatch(parts.netloc)
        and set(parse_qs(parts.query, keep_blank_values=True)) <= {"signer"}
    ):
        return text
    raise ValueError("not an object store URL")


def _mail_url(value: str) -> str:
    """file:///absolute/folder (an outbox) or sendgrid://[HOST[:PORT]][?scheme=...&timeout=...];
    the key never travels in the URL (SENDGRID_API_KEY)."""
    text = value.strip()
    parts = urlsplit(text)
    if parts.scheme == "file" and _local_folder(text):
        return text
    if (
        parts.scheme == "sendgrid"
        and not (parts.username or parts.password)
        and not parts.path.strip("/")
        and set(parse_qs(parts.query, keep_blank_values=True)) <= {"scheme", "timeout"}
    ):
        return text
    raise ValueError("not a mail URL")


WholeNumber = BeforeValidator(_whole_number)
Email = AfterValidator(_email)
POSITIVE_BATCH = Field(ge=1, le=100_000)
BATCH_ALLOWED = "a whole number from 1 to 100000"


@pydantic.dataclasses.dataclass(frozen=True)
class Settings:
    """The code location's configuration; `from_env` reads it, `Variable`s document it.

    The URL fields have no default here: their embedded defaults live under BACKUP_VAR_DIR,
    which `from_env` knows and a direct construction (tests) does not."""

    platform_db_url: Annotated[
        str,
        AfterValidator(_database_url),
        Variable(
            ("BACKUP_PLATFORM_DB_URL",),
            "the platform's database, a SQLAlchemy URL (`postgresql+psycopg://…`, `sqlite:///…`);"
            " no password in it (psycopg reads `PGPASSWORD`)",
            "a sqlite:/// or postgresql:// SQLAlchemy URL",
            "`sqlite:///$BACKUP_VAR_DIR/platform.db`",
            stated_in_cluster=True,
        ),
    ]
    files_url: Annotated[
        str,
        AfterValidator(_store_url),
        Variable(
            ("BACKUP_FILES_URL",),
            "the platform's files (attachments, CFDI XML/PDF), read only",
            "gs://bucket[/prefix] or file:///absolute/folder",
            "`file://$BACKUP_VAR_DIR/files`",
            stated_in_cluster=True,
        ),
    ]
    archives_url: Annotated[
        str,
        AfterValidator(_store_url),
        Variable(
            ("BACKUP_ARCHIVES_URL",),
            "where archives and staging go",
            "gs://bucket[/prefix] or file:///absolute/folder",
            "`file://$BACKUP_VAR_DIR/archives`",
            stated_in_cluster=True,
        ),
    ]
    mail_url: Annotated[
        str,
        AfterValidator(_mail_url),
        Variable(
            ("BACKUP_MAIL_URL",),
            "`sendgrid://` (key in `SENDGRID_API_KEY`) or an outbox of `.eml` files",
            "sendgrid://[host[:port]] or file:///absolute/folder",
            "`file://$BACKUP_VAR_DIR/outbox`",
            stated_in_cluster=True,
        ),
    ]
    # With a display name: the clinic's inbox shows who wrote, not a bare address.
    from_email: Annotated[
        str,
        Email,
        Variable(
            ("BACKUP_FROM_EMAIL",),
            "sender of every email (`Name <address>`: the display name may have accents)",
            "an email address, optionally as 'Name <address>'",
            stated_in_cluster=True,
        ),
    ] = DEFAULT_FROM_EMAIL
    support_email: Annotated[
        str,
        Email,
        Variable(
            ("BACKUP_SUPPORT_EMAIL",),
            "support's address: reply-to of the clinic's emails, and where alerts go",
            "an email address, optionally as 'Name <address>'",
            stated_in_cluster=True,
        ),
    ] = "soporte@clinica.example"
    link_ttl_hours: Annotated[
        int,
        WholeNumber,
        Field(ge=1, le=MAX_LINK_TTL_HOURS),
        Variable(
            ("BACKUP_LINK_TTL", "BACKUP_LINK_TTL_HOURS"),
            "download link lifetime in hours (at most 168: GCS V4's limit);"
            " `BACKUP_LINK_TTL_HOURS` is read too",
            f"whole hours from 1 to {MAX_LINK_TTL_HOURS}",
        ),
    ] = 72
    late_after_hours: Annotated[
        float,
        Field(gt=0, le=24 * 30, allow_inf_nan=False),
        Variable(
            ("BACKUP_LATE_AFTER_HOURS",),
            "support is alerted about a request not delivered after this many hours",
            "a number of hours more than 0 and at most 720",
        ),
    ] = 24.0
    partition_retention_days: Annotated[
        float,
        Field(gt=0, le=3650, allow_inf_nan=False),
        Variable(
            ("BACKUP_PARTITION_RETENTION_DAYS",),
            "finished requests' dynamic partitions are deleted after this many days",
            "a number of days more than 0 and at most 3650",
        ),
    ] = 90.0
    # Google's own variable; None lets object calls run without a project (they need none).
    gcs_project: Annotated[
        str | None,
        Variable(("GOOGLE_CLOUD_PROJECT",), "the GCS client's project", "a project id"),
    ] = None
    # Signs links when the credentials hold no key (workload identity) and the gs:// URL names no
    # ?signer=.
    gcs_signer_email: Annotated[
        str | None,
        AfterValidator(_optional_email),
        Variable(
            ("BACKUP_GCS_SIGNER_EMAIL",),
            "the service account that signs links under workload identity",
            "a service account's email address",
        ),
    ] = None
    # True when the database URL came from BACKUP_PLATFORM_DB_URL: the resource then names the
    # variable instead of holding the URL, so a password never shows as config in the UI.
    platform_db_url_from_env: bool = False
    # Transient errors (storage 5xx, dropped connections) are retried with exponential backoff.
    op_max_retries: Annotated[
        int,
        WholeNumber,
        Field(ge=0, le=20),
        Variable(
            ("BACKUP_OP_MAX_RETRIES",),
            "retries of a step after a transient error (storage 5xx, dropped connection)",
            "a whole number from 0 to 20",
        ),
    ] = 3
    retry_delay_seconds: Annotated[
        float,
        Field(gt=0, le=3600, allow_inf_nan=False),
        Variable(
            ("BACKUP_RETRY_DELAY_SECONDS",),
            "delay before the first retry, doubled for each next one",
            "a number of seconds more than 0 and at most 3600",
        ),
    ] = 5.0
    sensor_interval_seconds: Annotated[
        int,
        WholeNumber,
        Field(ge=1, le=3600),
        Variable(
            ("BACKUP_SENSOR_INTERVAL_SECONDS",),
            "how often the request sensor looks for pending requests",
            "whole seconds from 1 to 3600",
        ),
    ] = 30
    sensor_batch: Annotated[
        int,
        WholeNumber,
        POSITIVE_BATCH,
        Variable(
            ("BACKUP_SENSOR_BATCH",), "pending requests reviewed per sensor tick", BATCH_ALLOWED
        ),
    ] = 2_000
    expire_batch: Annotated[
        int,
        WholeNumber,
        POSITIVE_BATCH,
        Variable(("BACKUP_EXPIRE_BATCH",), "archives one expiry run deletes", BATCH_ALLOWED),
    ] = 500
    staging_batch: Annotated[
        int,
        WholeNumber,
        POSITIVE_BATCH,
        Variable(("BACKUP_STAGING_BATCH",), "staging objects one sweep run deletes", BATCH_ALLOWED),
    ] = 10_000
    late_alert_batch: Annotated[
        int,
        WholeNumber,
        POSITIVE_BATCH,
        Variable(
            ("BACKUP_LATE_ALERT_BATCH",), "late requests one alert run reports", BATCH_ALLOWED
        ),
    ] = 200
    partition_delete_batch: Annotated[
        int,
        WholeNumber,
        POSITIVE_BATCH,
        Variable(
            ("BACKUP_PARTITION_DELETE_BATCH",),
            "old partitions one clean-up run deletes",
            BATCH_ALLOWED,
        ),
    ] = 10_000
    # An archive larger than this is delivered as numbered parts, each a complete zip.
    part_size_bytes: Annotated[
        int,
        BeforeValidator(_byte_size),
        Field(ge=1_000_000),
        Variable(
            ("BACKUP_PART_SIZE",),
            "a larger archive is delivered as numbered parts, each a complete zip",
            "at least 1000000 bytes, as a whole number optionally followed by"
            " kB, MB, GB (powers of 1000) or KiB, MiB, GiB (powers of 1024)",
            f"`{DEFAULT_PART_SIZE}` (4 GB: fits FAT32)",
        ),
    ] = DEFAULT_PART_SIZE
    # Worker processes rendering workbooks beside the zip; None: the CPUs the run may use
    # (datasets.parallel.usable_cpus), 0: one after another in the run's own process.
    export_workers: Annotated[
        Annotated[int, Field(ge=0, le=64)] | None,
        BeforeValidator(_workers),
        Variable(
            ("BACKUP_EXPORT_WORKERS",),
            "worker processes rendering the workbooks while the run zips the files; `0`: one"
            " after another in the run's process; `auto`: the CPUs the run may use (affinity,"
            " cgroup CPU limit), at most 2",
            "'auto' or a whole number from 0 to 64",
            "`auto`",
        ),
    ] = None

    @property
    def link_ttl(self) -> timedelta:
        return timedelta(hours=self.link_ttl_hours)

    @property
    def late_after(self) -> timedelta:
        return timedelta(hours=self.late_after_hours)

    @property
    def partition_retention(self) -> timedelta:
        return timedelta(days=self.partition_retention_days)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """The settings `environ` (the process's environment by default) gives; an empty value
        is as good as unset. Raises SettingsError, one line, for anything out of bounds."""
        env = os.environ if environ is None else environ
        var = Path(env.get("BACKUP_VAR_DIR", "").strip() or "var").resolve()
        raw: dict[str, Any] = {
            "platform_db_url": f"sqlite:///{var / 'platform.db'}",
            "files_url": (var / "files").as_uri(),
            "archives_url": (var / "archives").as_uri(),
            "mail_url": (var / "outbox").as_uri(),
            # Dagster resolves an EnvVar from the process's environment, not from `environ`.
            "platform_db_url_from_env": environ is None
            and bool(env.get("BACKUP_PLATFORM_DB_URL", "").strip()),
        }
        read_from: dict[str, str] = {}
        for field_name, variable in declared_variables().items():
            for name in reversed(variable.names):  # the documented name wins when both are set
                if env.get(name, "").strip():
                    raw[field_name] = env[name]
                    read_from[field_name] = name
        if deployment_of(env) == "cluster":
            _require_stated(env, read_from)
        try:
            return cls(**raw)
        except pydantic.ValidationError as exc:
            raise SettingsError(_one_line(exc, raw, read_from)) from None


def deployment_of(env: Mapping[str, str]) -> str:
    """BACKUP_DEPLOYMENT: 'embedded' when unset; SettingsError for anything but the two kinds."""
    value = env.get("BACKUP_DEPLOYMENT", "").strip()
    if not value:
        return "embedded"
    if value.lower() not in DEPLOYMENTS:
        raise SettingsError(f"BACKUP_DEPLOYMENT={value!r}: 'embedded' or 'cluster' expected")
    return value.lower()


def _require_stated(env: Mapping[str, str], read_from: Mapping[str, str]) -> None:
    """In a cluster every location and address is stated: an embedded default there would write
    archives to a pod's disk (gone with the pod) or mail from an example address."""
    missing = [
        variable.names[0]
        for field_name, variable in declared_variables().items()
        if variable.stated_in_cluster and field_name not in read_from
    ]
    mail_url = env.get("BACKUP_MAIL_URL", "").strip()
    if mail_url.startswith("sendgrid:") and not env.get("SENDGRID_API_KEY", "").strip():
        missing.append("SENDGRID_API_KEY")
    if missing:
        raise SettingsError(
            f"{', '.join(missing)} not set: BACKUP_DEPLOYMENT=cluster states every location and"
            " address (the embedded defaults serve only the embedded setup)"
        )


def declared_variables() -> dict[str, Variable]:
    """Each Settings field read from the environment, with its Variable, in declaration order."""
    hints = get_type_hints(Settings, include_extras=True)
    declared = {}
    for field in dataclasses.fields(Settings):
        for item in getattr(hints[field.name], "__metadata__", ()):
            if isinstance(item, Variable):
                declared[field.name] = item
    return declared


def _shown(name: str, value: Any) -> str:
    """The value as the error line shows it: a database URL's password hidden, even in a URL
    too malformed to parse (whatever stands between a colon and an at sign)."""
    text = str(value)
    if name == "BACKUP_PLATFORM_DB_URL":
        text = re.sub(r":[^:@/]*@", ":***@", text)
    return repr(text)


def _one_line(exc: pydantic.ValidationError, raw: dict[str, Any], read_from: dict[str, str]) -> str:
    variables = declared_variables()
    problems = []
    for field_name in dict.fromkeys(str(error["loc"][0]) for error in exc.errors()):
        variable = variables[field_name]
        name = read_from.get(field_name, variable.names[0])
        problems.append(f"{name}={_shown(name, raw.get(field_name))}: {variable.allowed} expected")
    return "; ".join(problems)


# --- the README's configuration table

# Read where they are used, not by Settings: secrets in the process that needs them, the rest by
# the libraries that own them.
OTHER_VARIABLES: tuple[Variable, ...] = (
    Variable(
        ("BACKUP_DEPLOYMENT",),
        "`cluster` in a deployment: every setting marked *required in a cluster* must then be set"
        " (a missing one stops the load); `embedded`: the defaults under `BACKUP_VAR_DIR`",
        "'embedded' or 'cluster'",
        "`embedded`",
    ),
    Variable(
        ("BACKUP_VAR_DIR",),
        "the folder of the embedded defaults (database, files, archives, outbox)",
        "a folder",
        "`./var`",
    ),
    Variable(
        ("SENDGRID_API_KEY",),
        "the SendGrid key, read only when the first email is sent, never shown in the UI",
        "a SendGrid API key (never echoed)",
    ),
    Variable(
        ("BACKUP_SENDGRID_HOST",),
        "another SendGrid API host for a `sendgrid://` URL without one (tests' loopback endpoint)",
        "https://host[:port], or http:// to a loopback address",
    ),
    Variable(("STORAGE_EMULATOR_HOST",), "honoured by the GCS client (tests)", "a URL"),
    Variable(("DAGSTER_HOME",), "the Dagster instance", "a folder", "`./var/dagster_home`"),
)


def _default_text(field: dataclasses.Field[Any], variable: Variable) -> str:
    text = _embedded_default_text(field, variable)
    return f"{text}; required in a cluster" if variable.stated_in_cluster else text


def _embedded_default_text(field: dataclasses.Field[Any], variable: Variable) -> str:
    if variable.shown_default is not None:
        return variable.shown_default
    if field.default is None:
        return "—"
    if isinstance(field.default, float):
        return f"`{field.default:g}`"
    return f"`{field.default}`"


def markdown_table() -> str:
    """The README's configuration table, one row per variable, from the declarations above."""
    rows = [
        "| variable | meaning | allowed | default (embedded) |",
        "| --- | --- | --- | --- |",
    ]
    fields = {field.name: field for field in dataclasses.fields(Settings)}
    documented = [
        (variable, _default_text(fields[field_name], variable))
        for field_name, variable in declared_variables().items()
    ]
    documented += [(variable, variable.shown_default or "—") for variable in OTHER_VARIABLES]
    for variable, default in documented:
        meaning = variable.meaning.replace("|", "\\|")
        # Escaped so that Markdown shows '<address>' instead of taking it for an HTML tag.
        allowed = re.sub(r"([|<>])", r"\\\1", variable.allowed)
        rows.append(f"| `{variable.names[0]}` | {meaning} | {allowed} | {default} |")
    return "\n".join(rows) + "\n"


README_TABLE = re.compile(
    r"(<!-- settings table: begin -->\n)(.*?)(<!-- settings table: end -->)", re.DOTALL
)


def readme_with_table(readme: str) -> str:
    """The README's text with the table between its markers replaced by markdown_table()."""
    if not README_TABLE.search(readme):
        raise ValueError("the README has no '<!-- settings table: begin -->' ... end markers")
    return README_TABLE.sub(lambda match: match[1] + markdown_table() + match[3], readme)


def main(argv: list[str]) -> int:
    if argv == ["--markdown"]:
        sys.stdout.write(markdown_table())
        return 0
    if len(argv) == 2 and argv[0] == "--update-readme":
        readme = Path(argv[1])
        readme.write_text(readme_with_table(readme.read_text(encoding="utf-8")), encoding="utf-8")
        return 0
    print(
        "usage: python -m backup_pipeline.settings --markdown | --update-readme README.md",
        file=sys.stderr,
    )
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
