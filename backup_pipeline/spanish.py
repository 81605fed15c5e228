"""Dates and times written in Spanish for the clinic, independent of the OS locale."""

from __future__ import annotations

from datetime import UTC, date, datetime
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

# The platform's default time zone (schema.sql, subscriptions.timezone).
DEFAULT_TIMEZONE = "America/Mexico_City"

# Written out rather than taken from the locale: servers run with C/POSIX locales, and the
# clinic must read the same words wherever the code runs.
MONTHS = (
    "enero",
    "febrero",
    "marzo",
    "abril",
    "mayo",
    "junio",
    "julio",
    "agosto",
    "septiembre",
    "octubre",
    "noviembre",
    "diciembre",
)


def spanish_date(d: date) -> str:
    """`date(2027, 7, 15)` -> "15 de julio de 2027"."""
    return f"{d.day} de {MONTHS[d.month - 1]} de {d.year}"


def spanish_datetime(moment: datetime) -> str:
    """A local wall-clock time -> "15 de julio de 2027 a las 21:05" (seconds are not shown)."""
    # Spanish says "a la una" but "a las dos", "a las trece"...: only 01:xx takes the singular.
    article = "la" if moment.hour == 1 else "las"
    return f"{spanish_date(moment.date())} a {article} {moment:%H:%M}"


def clinic_zone(timezone: str | None) -> ZoneInfo:
    """The subscription's zone; an unknown or empty name falls back to the platform's default.

    A bad value in the platform's database must not stop a clinic's backup or its email; the
    default is the zone most clinics are in.
    """
    try:
        return ZoneInfo(timezone or DEFAULT_TIMEZONE)
    # ZoneInfo("America") raises IsADirectoryError on Python 3.11 instead of ZoneInfoNotFoundError.
    except (ZoneInfoNotFoundError, ValueError, OSError):
        return ZoneInfo(DEFAULT_TIMEZONE)


def to_clinic_time(utc_naive: datetime, timezone: str | None) -> datetime:
    """A naive UTC datetime (as stored by the platform) -> the clinic's aware local time."""
    return utc_naive.replace(tzinfo=UTC).astimezone(clinic_zone(timezone))
