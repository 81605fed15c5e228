"""Mexican Spanish for everything the clinic reads: dates, times, numbers, sizes and time-zone
names from CLDR (locale es_MX, through Babel), the same whatever the server's OS locale is."""

from __future__ import annotations

from datetime import UTC, date, datetime
from decimal import Decimal
from functools import lru_cache
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from babel import Locale
from babel.dates import format_date, format_skeleton, get_timezone_location, get_timezone_name
from babel.numbers import format_decimal
from babel.units import format_unit

LOCALE = "es_MX"

# The platform's default time zone (schema.sql, subscriptions.timezone).
DEFAULT_TIMEZONE = "America/Mexico_City"

_NOT_A_NAME = ("desconocida", "mundo", "verano")
_SIZE_UNITS = ("digital-kilobyte", "digital-megabyte", "digital-gigabyte", "digital-terabyte")


def spanish_number(value: int | float | Decimal, *, decimals: int | None = None) -> str:
    """1234567.5 -> "1,234,567.5": CLDR es_MX groups thousands with a comma, decimals with a point.

    `decimals` fixes the number of decimals shown; None shows as many as the value has (up to 3).
    """
    if decimals is None:
        return format_decimal(value, locale=LOCALE)
    pattern = "#,##0" + ("." + "0" * decimals if decimals else "")
    return format_decimal(value, format=pattern, locale=LOCALE, decimal_quantization=True)


def plural_category(number: int) -> str:
    """CLDR's plural category of a count in es_MX: "one" (1), "many" (1,000,000, 2,000,000...)
    or "other" (0, 2, 1000...)."""
    return _locale().plural_form(number)


def spanish_plural(number: int, singular: str, plural: str) -> str:
    """The form that agrees with `number` by CLDR's es_MX plural rules: `singular` for "one",
    `plural` for "other" and "many".

    CLDR's "many" (a multiple of a million) exists for "1 millón de archivos"; written in
    figures the noun follows the number directly ("1,000,000 archivos"), as Babel's own unit
    formats do for es_MX, so it takes the plural word.
    """
    return singular if plural_category(number) == "one" else plural


def spanish_count(number: int, singular: str, plural: str) -> str:
    """(1, "archivo", "archivos") -> "1 archivo"; (1234, ...) -> "1,234 archivos".

    `singular` and `plural` may be whole phrases, so that every word after the number agrees:
    (1, "archivo adjunto", "archivos adjuntos") -> "1 archivo adjunto".
    """
    return f"{spanish_number(number)} {spanish_plural(number, singular, plural)}"


def spanish_size(size_bytes: int) -> str:
    """A file size as the clinic reads it: 12_900_000 -> "12.3 MB", 512 -> "512 bytes".

    Multiples of 1024, because that is what Windows Explorer shows for the downloaded file and
    the owner will compare the two; the unit's name and the number are CLDR's es_MX.
    """
    if size_bytes < 1024:
        return format_unit(size_bytes, "digital-byte", length="long", locale=LOCALE)
    value = float(size_bytes)
    for unit in _SIZE_UNITS:
        value /= 1024
        # Choose the unit after rounding, so 1023.97 KB reads "1.0 MB", not "1024.0 KB".
        if round(value, 1) < 1024 or unit == _SIZE_UNITS[-1]:
            break
    return format_unit(round(value, 1), unit, length="short", format="#,##0.0", locale=LOCALE)


def spanish_date(day: date) -> str:
    """`date(2027, 7, 15)` -> "15 de julio de 2027"."""
    return format_date(day, "long", locale=LOCALE)


def spanish_datetime(moment: datetime) -> str:
    """A wall-clock time -> "15 de julio de 2027, 21:05" (24-hour clock; seconds not shown)."""
    glue = _locale().datetime_formats["long"]
    time = format_skeleton("Hm", moment.replace(tzinfo=None), locale=LOCALE)
    return str(glue).format(time, spanish_date(moment.date()))


def zone_name(zone: ZoneInfo | str | None, at: datetime | None = None) -> str:
    """The Spanish name of a time zone: "hora central (Ciudad de México)", never its IANA id.

    CLDR's generic name ("hora central", "hora del Pacífico") with its city, since the name
    alone is shared by several countries. A zone CLDR names by no region (UTC, Etc/GMT+6) is
    named by its offset at `at` (now when None): "hora GMT-06:00".
    """
    return _zone_name(_zone(zone).key, _offset_name(_zone(zone), at))


def spanish_moment(moment: datetime) -> str:
    """An aware local time -> "3 de diciembre de 2026, 17:05, hora central (Ciudad de México)"."""
    zone = moment.tzinfo if isinstance(moment.tzinfo, ZoneInfo) else None
    if zone is None:
        raise ValueError("spanish_moment needs a time in a ZoneInfo zone")
    return f"{spanish_datetime(moment)}, {zone_name(zone, moment)}"


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


# --- helpers -------------------------------------------------------------------------------------


@lru_cache(maxsize=1)
def _locale() -> Locale:
    return Locale.parse(LOCALE)


def _zone(zone: ZoneInfo | str | None) -> ZoneInfo:
    return zone if isinstance(zone, ZoneInfo) else clinic_zone(zone)


def _offset_name(zone: ZoneInfo, at: datetime | None) -> str:
    moment = (at or datetime.now(UTC)).astimezone(zone)
    offset = moment.utcoffset()
    minutes = int(offset.total_seconds() // 60) if offset is not None else 0
    sign = "-" if minutes < 0 else "+"
    hours, rest = divmod(abs(minutes), 60)
    return f"hora GMT{sign}{hours:02d}:{rest:02d}"


@lru_cache(maxsize=256)
def _generic_name(key: str) -> str | None:
    """CLDR's generic long name of a zone with its city, or None when CLDR has no name for it."""
    zone = ZoneInfo(key)
    name = get_timezone_name(zone, width="long", locale=LOCALE)
    # Babel answers a zone outside every metazone with an "unknown region", the "world" region
    # or a bare offset, and some of those as a daylight-saving name: none is a name to show.
    if not name or name.startswith(("GMT", "UTC")) or any(w in name for w in _NOT_A_NAME):
        return None
    city = get_timezone_location(zone, locale=LOCALE, return_city=True)
    if not city or city in name or "/" in city or "_" in city:
        return name
    return f"{name} ({city})"


def _zone_name(key: str, offset_name: str) -> str:
    return _generic_name(key) or offset_name
