"""SAT's CFDI catalogues: a code as the clinic reads it, "616 - Sin obligaciones fiscales".

One place for every catalogue a workbook decodes: the patients' régimen fiscal and the invoice
reports read the same tables. Descriptions are the official ones of the catalogues published
with Anexo 20 (catCFDI, CFDI 4.0), without the closing period some of them carry; codes that
only CFDI 3.3 allowed (uso P01, regímenes 609, 628-630) are kept, since older invoices and
patient records still hold them. A code that is not in a catalogue is shown as it is written.
"""

from __future__ import annotations

from collections.abc import Mapping

# c_TipoDeComprobante
TIPO_COMPROBANTE: Mapping[str, str] = {
    "I": "Ingreso",
    "E": "Egreso",
    "T": "Traslado",
    "N": "Nómina",
    "P": "Pago",
}

# c_MetodoPago
METODO_PAGO: Mapping[str, str] = {
    "PUE": "Pago en una sola exhibición",
    "PPD": "Pago en parcialidades o diferido",
}

# c_FormaPago
FORMA_PAGO: Mapping[str, str] = {
    "01": "Efectivo",
    "02": "Cheque nominativo",
    "03": "Transferencia electrónica de fondos",
    "04": "Tarjeta de crédito",
    "05": "Monedero electrónico",
    "06": "Dinero electrónico",
    "08": "Vales de despensa",
    "12": "Dación en pago",
    "13": "Pago por subrogación",
    "14": "Pago por consignación",
    "15": "Condonación",
    "17": "Compensación",
    "23": "Novación",
    "24": "Confusión",
    "25": "Remisión de deuda",
    "26": "Prescripción o caducidad",
    "27": "A satisfacción del acreedor",
    "28": "Tarjeta de débito",
    "29": "Tarjeta de servicios",
    "30": "Aplicación de anticipos",
    "31": "Intermediario pagos",
    "99": "Por definir",
}

# c_UsoCFDI (4.0), plus P01, which 3.3 allowed
USO_CFDI: Mapping[str, str] = {
    "G01": "Adquisición de mercancías",
    "G02": "Devoluciones, descuentos o bonificaciones",
    "G03": "Gastos en general",
    "I01": "Construcciones",
    "I02": "Mobiliario y equipo de oficina por inversiones",
    "I03": "Equipo de transporte",
    "I04": "Equipo de computo y accesorios",
    "I05": "Dados, troqueles, moldes, matrices y herramental",
    "I06": "Comunicaciones telefónicas",
    "I07": "Comunicaciones satelitales",
    "I08": "Otra maquinaria y equipo",
    "D01": "Honorarios médicos, dentales y gastos hospitalarios",
    "D02": "Gastos médicos por incapacidad o discapacidad",
    "D03": "Gastos funerales",
    "D04": "Donativos",
    "D05": "Intereses reales efectivamente pagados por créditos hipotecarios (casa habitación)",
    "D06": "Aportaciones voluntarias al SAR",
    "D07": "Primas por seguros de gastos médicos",
    "D08": "Gastos de transportación escolar obligatoria",
    "D09": "Depósitos en cuentas para el ahorro, primas que tengan como base planes de pensiones",
    "D10": "Pagos por servicios educativos (colegiaturas)",
    "S01": "Sin efectos fiscales",
    "CP01": "Pagos",
    "CN01": "Nómina",
    "P01": "Por definir",
}

# c_RegimenFiscal (4.0), plus 609, 628, 629 and 630, which 3.3 allowed
REGIMEN_FISCAL: Mapping[str, str] = {
    "601": "General de Ley Personas Morales",
    "603": "Personas Morales con Fines no Lucrativos",
    "605": "Sueldos y Salarios e Ingresos Asimilados a Salarios",
    "606": "Arrendamiento",
    "607": "Régimen de Enajenación o Adquisición de Bienes",
    "608": "Demás ingresos",
    "609": "Consolidación",
    "610": "Residentes en el Extranjero sin Establecimiento Permanente en México",
    "611": "Ingresos por Dividendos (socios y accionistas)",
    "612": "Personas Físicas con Actividades Empresariales y Profesionales",
    "614": "Ingresos por intereses",
    "615": "Régimen de los ingresos por obtención de premios",
    "616": "Sin obligaciones fiscales",
    "620": "Sociedades Cooperativas de Producción que optan por diferir sus ingresos",
    "621": "Incorporación Fiscal",
    "622": "Actividades Agrícolas, Ganaderas, Silvícolas y Pesqueras",
    "623": "Opcional para Grupos de Sociedades",
    "624": "Coordinados",
    "625": "Régimen de las Actividades Empresariales con ingresos a través de Plataformas Tecnológicas",
    "626": "Régimen Simplificado de Confianza",
    "628": "Hidrocarburos",
    "629": "De los Regímenes Fiscales Preferentes y de las Empresas Multinacionales",
    "630": "Enajenación de acciones en bolsa de valores",
}


def describe(code: str | None, catalogue: Mapping[str, str]) -> str | None:
    """'G03' -> 'G03 - Gastos en general'; an unknown code is shown as written, None stays None.

    Blank text is no code: None. A known code is matched ignoring case and surrounding spaces,
    as the platform's forms and some issuers' XML write them.
    """
    if code is None:
        return None
    wanted = code.strip().upper()
    if not wanted:
        return None
    name = catalogue.get(wanted)
    return f"{wanted} - {name}" if name else code


def describe_regimen(code: str | None) -> str | None:
    return describe(code, REGIMEN_FISCAL)


def describe_uso_cfdi(code: str | None) -> str | None:
    return describe(code, USO_CFDI)


def describe_forma_pago(code: str | None) -> str | None:
    return describe(code, FORMA_PAGO)


def describe_metodo_pago(code: str | None) -> str | None:
    return describe(code, METODO_PAGO)


def describe_tipo_comprobante(code: str | None) -> str | None:
    return describe(code, TIPO_COMPROBANTE)
