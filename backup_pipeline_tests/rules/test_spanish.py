"""Dates and times in Spanish for the clinic, whatever the server's locale."""

from __future__ import annotations

import locale
from datetime import date, datetime

import pytest

from backup_pipeline.spanish import (
    DEFAULT_TIMEZONE,
    clinic_zone,
    spanish_date,
    spanish_datetime,
    to_clinic_time,
)


@pytest.mark.parametrize(
    ("month", "name"),
    list(
        enumerate(
            [
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
            ],
            start=1,
        )
    ),
)
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
        (datetime(2027, 7, 15, 21, 5, 59), "15 de julio de 2027 a las 21:05"),
        (datetime(2027, 7, 15, 1, 30), "15 de julio de 2027 a la 01:30"),
        (datetime(2027, 7, 15, 0, 0), "15 de julio de 2027 a las 00:00"),
        (datetime(2027, 7, 15, 13, 0), "15 de julio de 2027 a las 13:00"),
    ],
)
def test_a_time_reads_as_spanish_says_it(moment, text):
    assert spanish_datetime(moment) == text


def test_utc_is_shown_in_the_clinics_zone():
    local = to_clinic_time(datetime(2027, 7, 16, 3, 0), "America/Mexico_City")
    assert (local.date(), local.hour) == (date(2027, 7, 15), 21)


@pytest.mark.parametrize("bad", [None, "", "Not/AZone", "America", "../etc/passwd"])
def test_an_unusable_time_zone_falls_back_to_the_platform_default(bad):
    assert clinic_zone(bad).key == DEFAULT_TIMEZONE
