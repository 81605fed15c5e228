"""Mexican Spanish from CLDR (Babel, es_MX): dates, times, numbers, sizes and zone names."""

from __future__ import annotations

import locale
import re
from datetime import UTC, date, datetime
from zoneinfo import ZoneInfo, available_timezones

import pytest
from hypothesis import given
from hypothesis import strategies as st

from backup_pipeline.rules.spanish import (
    DEFAULT_TIMEZONE,
    clinic_zone,
    plural_category,
    spanish_count,
    spanish_date,
    spanish_datetime,
    spanish_moment,
    spanish_number,
    spanish_plural,
    spanish_size,
    to_clinic_time,
    zone_name,
)

MONTHS = [
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
]


@pytest.mark.parametrize(("month", "name"), list(enumerate(MONTHS, start=1)))
def test_every_month_is_named_in_spanish(month, name):
    assert spanish_date(date(2027, month, 1)) == f"1 de {name} de 2027"


def test_the_date_does_not_depend_on_the_process_locale():
    previous = locale.setlocale(locale.LC_TIME)
    try:
        locale.setlocale(locale.LC_TIME, "C")
        assert spanish_date(date(2027, 7, 15)) == "15 de julio de 2027"
    finally:
        locale.setlocale(locale.LC_TIME, previous)


@pytest.mark.parametrize(
    ("moment", "text"),
    [
        (datetime(2027, 7, 15, 21, 5, 59), "15 de julio de 2027, 21:05"),
        (datetime(2027, 7, 15, 1, 30), "15 de julio de 2027, 01:30"),
        (datetime(2027, 7, 15, 0, 0), "15 de julio de 2027, 00:00"),
    ],
)
def test_a_time_is_cldr_s_long_date_and_a_24_hour_clock(moment, text):
    assert spanish_datetime(moment) == text


@pytest.mark.parametrize(
    ("zone", "name"),
    [
        ("America/Mexico_City", "hora central (Ciudad de México)"),
        ("America/Monterrey", "hora central (Monterrey)"),
        ("America/Cancun", "hora oriental (Cancún)"),
        ("America/Tijuana", "hora del Pacífico (Tijuana)"),
        ("America/Hermosillo", "hora del Pacífico de México (Hermosillo)"),
        ("America/Mazatlan", "hora del Pacífico de México (Mazatlán)"),
        ("America/Ciudad_Juarez", "hora de la montaña (Ciudad Juárez)"),
        ("UTC", "hora GMT+00:00"),
        ("Etc/GMT+6", "hora GMT-06:00"),
    ],
)
def test_a_zone_is_named_by_cldr_in_mexican_spanish(zone, name):
    assert zone_name(zone, datetime(2026, 12, 3, 12, tzinfo=UTC)) == name


def test_no_zone_is_ever_shown_by_its_iana_id():
    for key in available_timezones():
        name = zone_name(key, datetime(2026, 1, 1, tzinfo=UTC))
        assert name.startswith("hora ")
        assert "/" not in name and "_" not in name, (key, name)
        assert not re.search(r"desconocida|verano|mundo", name), (key, name)


def test_a_moment_reads_with_its_zone():
    moment = datetime(2026, 12, 3, 17, 5, tzinfo=ZoneInfo("America/Mexico_City"))
    assert spanish_moment(moment) == (
        "3 de diciembre de 2026, 17:05, hora central (Ciudad de México)"
    )


@pytest.mark.parametrize(
    ("value", "text"),
    [(0, "0"), (999, "999"), (1234, "1,234"), (1_234_567.5, "1,234,567.5"), (-12_345, "-12,345")],
)
def test_numbers_group_with_a_comma_and_use_a_decimal_point_as_cldr_es_mx(value, text):
    assert spanish_number(value) == text


def test_counts_agree_in_number():
    assert spanish_count(1, "archivo", "archivos") == "1 archivo"
    assert spanish_count(0, "archivo", "archivos") == "0 archivos"
    assert spanish_count(12_345, "archivo", "archivos") == "12,345 archivos"


def test_counts_follow_cldrs_plural_rules_and_a_million_takes_the_plural_word():
    # es_MX: "one" is exactly 1; "many" a multiple of a million (CLDR's "1 millón de ...").
    assert [plural_category(n) for n in (0, 1, 2, 1000, 1_000_000, 2_000_000, 1_000_001)] == [
        "other",
        "one",
        "other",
        "other",
        "many",
        "many",
        "other",
    ]
    assert spanish_count(1_000_000, "archivo", "archivos") == "1,000,000 archivos"
    assert spanish_plural(1, "se copió", "se copiaron") == "se copió"
    assert spanish_plural(1_000_000, "se copió", "se copiaron") == "se copiaron"


def test_a_whole_phrase_after_the_count_agrees():
    phrase = ("archivo adjunto o de facturación", "archivos adjuntos y de facturación")
    assert spanish_count(1, *phrase) == "1 archivo adjunto o de facturación"
    assert spanish_count(3, *phrase) == "3 archivos adjuntos y de facturación"


@pytest.mark.parametrize(
    ("size", "expected"),
    [
        (0, "0 bytes"),
        (1, "1 byte"),
        (1023, "1,023 bytes"),
        (1024, "1.0 kB"),
        (1536, "1.5 kB"),
        (12_900_000, "12.3 MB"),
        (1024**2 - 1, "1.0 MB"),  # rounds up into the next unit, not "1024.0 kB"
        (5 * 1024**3, "5.0 GB"),
        (3 * 1024**4 + 1024**4 * 3 // 10, "3.3 TB"),
        (20_000 * 1024**4, "20,000.0 TB"),
    ],
)
def test_size_reads_as_cldr_es_mx_writes_it(size: int, expected: str) -> None:
    assert spanish_size(size) == expected


@given(st.integers(min_value=0, max_value=2**60))
def test_size_is_always_a_number_and_a_unit_within_five_percent(size: int) -> None:
    text = spanish_size(size)

    match = re.fullmatch(r"(\d{1,3}(?:,\d{3})*)(?:\.(\d))? (bytes|byte|kB|MB|GB|TB)", text)
    assert match, text
    whole, tenth, unit = match.groups()
    value = float(whole.replace(",", "") + "." + (tenth or "0"))
    scale = {"bytes": 1, "byte": 1, "kB": 1024, "MB": 1024**2, "GB": 1024**3, "TB": 1024**4}
    assert value * scale[unit] == pytest.approx(size, rel=0.05, abs=0.05 * scale[unit])


def test_utc_is_shown_in_the_clinics_zone():
    local = to_clinic_time(datetime(2027, 7, 16, 3, 0), "America/Mexico_City")
    assert (local.date(), local.hour) == (date(2027, 7, 15), 21)


@pytest.mark.parametrize("bad", [None, "", "Not/AZone", "America", "../etc/passwd"])
def test_an_unusable_time_zone_falls_back_to_the_platform_default(bad):
    assert clinic_zone(bad).key == DEFAULT_TIMEZONE
