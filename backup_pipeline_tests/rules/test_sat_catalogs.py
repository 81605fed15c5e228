"""SAT catalogue codes as the clinic reads them: "616 - Sin obligaciones fiscales"."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from backup_pipeline.rules import sat_catalogs
from backup_pipeline.rules.sat_catalogs import (
    FORMA_PAGO,
    METODO_PAGO,
    REGIMEN_FISCAL,
    TIPO_COMPROBANTE,
    USO_CFDI,
    describe,
)

CATALOGUES = (REGIMEN_FISCAL, USO_CFDI, FORMA_PAGO, METODO_PAGO, TIPO_COMPROBANTE)


@pytest.mark.parametrize(
    ("describer", "code", "shown"),
    [
        (sat_catalogs.describe_regimen, "616", "616 - Sin obligaciones fiscales"),
        (sat_catalogs.describe_regimen, "626", "626 - Régimen Simplificado de Confianza"),
        (sat_catalogs.describe_regimen, "628", "628 - Hidrocarburos"),  # 3.3 only
        (sat_catalogs.describe_uso_cfdi, "G03", "G03 - Gastos en general"),
        (
            sat_catalogs.describe_uso_cfdi,
            "D01",
            "D01 - Honorarios médicos, dentales y gastos hospitalarios",
        ),
        (sat_catalogs.describe_uso_cfdi, "P01", "P01 - Por definir"),  # 3.3 only
        (sat_catalogs.describe_uso_cfdi, "s01", "S01 - Sin efectos fiscales"),
        (sat_catalogs.describe_forma_pago, "28", "28 - Tarjeta de débito"),
        (sat_catalogs.describe_forma_pago, " 99 ", "99 - Por definir"),
        (sat_catalogs.describe_metodo_pago, "PPD", "PPD - Pago en parcialidades o diferido"),
        (sat_catalogs.describe_tipo_comprobante, "P", "P - Pago"),
    ],
)
def test_a_known_code_is_shown_with_its_official_description(describer, code, shown):
    assert describer(code) == shown


def test_an_unknown_code_is_shown_as_written_and_nothing_stays_nothing():
    assert describe("ZZ9", USO_CFDI) == "ZZ9"
    assert describe("616 - Sin obligaciones fiscales", REGIMEN_FISCAL) == (
        "616 - Sin obligaciones fiscales"
    )
    assert describe(None, USO_CFDI) is None
    assert describe("   ", USO_CFDI) is None


def test_every_description_is_spanish_text_without_a_closing_period():
    for catalogue in CATALOGUES:
        for code, description in catalogue.items():
            assert code == code.strip().upper()
            assert description and description == description.strip()
            assert not description.endswith(".")


@given(st.text(max_size=12))
def test_a_code_is_never_lost(code: str):
    shown = describe(code, REGIMEN_FISCAL)
    if code.strip():
        assert shown is not None
        assert shown == code or shown.startswith(code.strip().upper() + " - ")
    else:
        assert shown is None
