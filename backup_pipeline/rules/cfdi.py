"""Reading a CFDI (Mexican electronic invoice, 3.3 or 4.0) from its XML, safely, and naming it in the archive."""

from __future__ import annotations

import codecs
import dataclasses
import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal, InvalidOperation
from typing import Any

from lxml import etree

from backup_pipeline.rules.spanish import spanish_number

# Real CFDI weigh kilobytes; a few thousand conceptos still fit in a few MB. Anything larger is
# not read at all, so a hostile file cannot make a run hold hundreds of MB per thread.
MAX_CFDI_BYTES = 16 * 1024 * 1024

CFDI_NAMESPACES = {
    "http://www.sat.gob.mx/cfd/3": "3.3",
    "http://www.sat.gob.mx/cfd/4": "4.0",
}
TFD_NAMESPACE = "http://www.sat.gob.mx/TimbreFiscalDigital"  # TFD 1.0 and 1.1 share it
PAGOS20_NAMESPACE = "http://www.sat.gob.mx/Pagos20"
IMPLOCAL_NAMESPACE = "http://www.sat.gob.mx/implocal"  # local (state) taxes: lodging, cedular

# How far a CFDI's Total may be from its parts before the report says so. Every figure is
# rounded to the currency's decimals on its own (SAT allows up to six), so the sum of rounded
# parts may miss the rounded total by a few cents; more than that is a real discrepancy.
TOTALS_TOLERANCE = Decimal("0.05")
# Where Total = SubTotal − Descuento + taxes transferred − taxes withheld holds. Not P: a payment
# receipt's SubTotal and Total are 0 while the taxes it reports (from Pagos 2.0) are the paid
# invoices'. N (nómina) has no Impuestos node: its Descuento is the deductions (ISR included),
# so Total = SubTotal − Descuento is the same rule with no taxes.
_BALANCED_TYPES = frozenset({"I", "E", "T", "N"})

# Observations the clinic reads in the report (Spanish). None of them quotes the file's text
# (the totals one shows a difference computed from its figures, and at most a currency code).
PROBLEM_EMPTY = "El archivo XML está vacío"
PROBLEM_TOO_LARGE = (
    f"El archivo XML mide más de {MAX_CFDI_BYTES // (1024 * 1024)} MB y no se procesó"
)
PROBLEM_ENTITIES = "El XML contiene declaraciones de entidades y no se procesó por seguridad"
PROBLEM_BROKEN = "El XML está dañado o incompleto y no se pudo leer"
PROBLEM_NOT_CFDI = "El archivo no es un CFDI 3.3 ni 4.0"
PROBLEM_NO_STAMP = "El XML no tiene el timbre fiscal digital del SAT (no está timbrado)"
PROBLEM_UNEXPECTED = "No se pudo leer el XML por un error inesperado"
PROBLEM_TOTALS_PREFIX = (
    "Los importes no cuadran: subtotal − descuento + impuestos trasladados − impuestos "
    "retenidos (federales y locales) ≠ total"
)


@dataclass(frozen=True)
class CfdiRecord:
    """What the report shows of one CFDI. Every field is None when the XML lacks it.

    fecha and fecha_timbrado are naive and exactly as written: a CFDI's dates are the local time
    of issue (and of the stamp) without a zone, so they are never converted.
    """

    version: str | None = None
    uuid: str | None = None
    serie: str | None = None
    folio: str | None = None
    fecha: datetime | None = None
    fecha_timbrado: datetime | None = None
    emisor_rfc: str | None = None
    emisor_nombre: str | None = None
    emisor_regimen: str | None = None
    receptor_rfc: str | None = None
    receptor_nombre: str | None = None
    uso_cfdi: str | None = None
    tipo: str | None = None  # I, E, T, N or P
    forma_pago: str | None = None
    metodo_pago: str | None = None
    moneda: str | None = None
    tipo_cambio: Decimal | None = None
    subtotal: Decimal | None = None
    descuento: Decimal | None = None
    total_impuestos_trasladados: Decimal | None = None
    total_impuestos_retenidos: Decimal | None = None
    # From the implocal:ImpuestosLocales complement (TotaldeTraslados, TotaldeRetenciones).
    impuestos_locales_trasladados: Decimal | None = None
    impuestos_locales_retenidos: Decimal | None = None
    total: Decimal | None = None
    problems: tuple[str, ...] = ()  # Spanish observations for the report


def parse_cfdi(data: bytes) -> CfdiRecord:
    """The record of a CFDI's XML. Never raises: whatever is wrong becomes a problem."""
    try:
        return _parse(bytes(data))
    except Exception:
        # The contract is "never raises": an unforeseen input must not stop a clinic's backup.
        return CfdiRecord(problems=(PROBLEM_UNEXPECTED,))


def compare_uuid(record: CfdiRecord, platform_uuid: str | None) -> str | None:
    """An observation when the XML's folio fiscal is not the one the platform recorded."""
    if record.uuid is None:
        return None  # parse_cfdi already said why the XML has none
    if platform_uuid is not None and record.uuid.strip().casefold() == (
        platform_uuid.strip().casefold()
    ):
        return None
    if _UUID_SHAPE.fullmatch(record.uuid.strip()):
        return (
            f"El UUID del XML ({record.uuid.strip().upper()}) no coincide con el registrado "
            "en la plataforma"
        )
    # Not a UUID at all: do not copy arbitrary text from the file into the report.
    return "El UUID del XML no coincide con el registrado en la plataforma"


# --- Archive names ------------------------------------------------------------------------------

_ARCHIVE_FOLDERS = {"issued": "facturacion/ingresos", "received": "facturacion/gastos"}
_UUID_SHAPE = re.compile(
    r"[0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12}"
)
_UUID_CHARS = frozenset("0123456789ABCDEF-")
_MAX_STEM = 64


def cfdi_archive_paths(
    direction: str, uuid: str | None, row_id: int, has_pdf: bool
) -> tuple[str, str | None]:
    """The archive paths of a CFDI's XML and PDF: 'facturacion/ingresos/xml/<UUID>.xml', ...

    The one place these names are made: the report's columns and the archive's files agree.
    A received invoice rarely has a PDF; when the platform stored one it goes to
    'facturacion/gastos/pdf/' beside the XML folder, so that nothing the clinic stored is lost.
    """
    folder = _ARCHIVE_FOLDERS.get(direction)
    if folder is None:
        raise ValueError(f"unknown CFDI direction {direction!r}: expected 'issued' or 'received'")
    stem = archive_stem(uuid, row_id)
    pdf = f"{folder}/pdf/{stem}.pdf" if has_pdf else None
    return f"{folder}/xml/{stem}.xml", pdf


def archive_stem(uuid: str | None, row_id: int) -> str:
    """The UUID upper-cased, kept to [0-9A-F-]; 'sin_uuid_<id>' when nothing is left.

    When anything had to be dropped the row id is appended, so two hostile UUIDs that clean to
    the same text cannot overwrite each other in the archive.
    """
    wanted = (uuid or "").strip().upper()
    kept = "".join(ch for ch in wanted if ch in _UUID_CHARS)[:_MAX_STEM]
    if not kept:
        return f"sin_uuid_{int(row_id)}"
    if kept != wanted:
        return f"{kept}_{int(row_id)}"
    return kept


# --- Parsing ------------------------------------------------------------------------------------

_CURRENCY = re.compile(r"[A-Z]{3}")
_AMOUNT = re.compile(r"[+-]?[0-9]{1,24}(?:\.[0-9]{1,12})?")
_LOCAL_DATETIME = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(?:\.[0-9]{1,6})?"
)
_XML_ENCODING = re.compile(
    rb"""^\s*<\?xml[^>]{0,200}?encoding\s*=\s*["']([A-Za-z][A-Za-z0-9._-]{0,40})["']"""
)
_PAGOS_TRASLADOS = (
    "TotalTrasladosImpuestoIVA16",
    "TotalTrasladosImpuestoIVA8",
    "TotalTrasladosImpuestoIVA0",
)
_PAGOS_RETENCIONES = ("TotalRetencionesIVA", "TotalRetencionesISR", "TotalRetencionesIEPS")
_IVA = "002"


class _RefuseExternal(etree.Resolver):
    """Answers every request for an external document (DTD, entity) with nothing.

    With load_dtd=False and resolve_entities=False libxml2 should ask for none; this makes sure
    no file or URL is read even if a future lxml or libxml2 changes its mind.
    """

    def resolve(self, system_url: str, public_id: str, context: Any) -> Any:
        return self.resolve_string("", context)


def _hardened_parser() -> etree.XMLParser:
    # A new parser per call: lxml parsers must not be shared between threads.
    parser = etree.XMLParser(
        resolve_entities=False,
        no_network=True,
        load_dtd=False,
        dtd_validation=False,
        huge_tree=False,  # keeps libxml2's limits on depth, text size and entity amplification
        remove_comments=True,
        remove_pis=True,
    )
    parser.resolvers.add(_RefuseExternal())
    return parser


def _parse(data: bytes) -> CfdiRecord:
    if len(data) > MAX_CFDI_BYTES:
        return CfdiRecord(problems=(PROBLEM_TOO_LARGE,))
    if not data.strip():
        return CfdiRecord(problems=(PROBLEM_EMPTY,))
    if data.startswith(b"\x4c\x6f\xa7\x94"):
        # EBCDIC: a CFDI is UTF-8 by rule, and the entity screen below cannot read EBCDIC.
        return CfdiRecord(problems=(PROBLEM_NOT_CFDI,))
    if _declares_entities(data):
        return CfdiRecord(problems=(PROBLEM_ENTITIES,))
    root = _parse_xml(data)
    if root is None:
        return CfdiRecord(problems=(PROBLEM_BROKEN,))
    if _tree_declares_entities(root):
        return CfdiRecord(problems=(PROBLEM_ENTITIES,))
    return _read_comprobante(root)


def _declares_entities(data: bytes) -> bool:
    """True when the document has a DOCTYPE declaring entities: refused before libxml2 sees it.

    libxml2 parses the internal subset even with resolve_entities=False and expands internal
    entities inside attribute values, so a billion-laughs file is refused here, unparsed.
    """
    # The raw bytes cover UTF-8 and every ASCII-compatible encoding, whatever the declaration
    # claims; the decoded text covers UTF-16, UTF-32 and other declared encodings.
    if b"<!DOCTYPE" in data and b"<!ENTITY" in data:
        return True
    text = _decode_for_screening(data)
    return text is not None and "<!DOCTYPE" in text and "<!ENTITY" in text


def _decode_for_screening(data: bytes) -> str | None:
    """The document decoded as an XML parser would (BOM, then the declaration); None: ASCII-like."""
    for bom, codec in (
        (codecs.BOM_UTF32_LE, "utf-32"),
        (codecs.BOM_UTF32_BE, "utf-32"),
        (codecs.BOM_UTF8, "utf-8-sig"),
        (codecs.BOM_UTF16_LE, "utf-16"),
        (codecs.BOM_UTF16_BE, "utf-16"),
    ):
        if data.startswith(bom):
            return data.decode(codec, errors="replace")
    for start, codec in (
        (b"\x00\x00\x00<", "utf-32-be"),
        (b"<\x00\x00\x00", "utf-32-le"),
        (b"\x00<", "utf-16-be"),
        (b"<\x00", "utf-16-le"),
    ):
        if data.startswith(start):
            return data.decode(codec, errors="replace")
    declared = _XML_ENCODING.match(data)
    if declared:
        try:
            return data.decode(declared.group(1).decode("ascii"), errors="replace")
        except LookupError:
            pass  # a name Python does not know: the raw-bytes screen is all there is
    return None


def _parse_xml(data: bytes) -> Any | None:
    try:
        return etree.fromstring(data, _hardened_parser())
    except (etree.LxmlError, ValueError):
        # The parser's message quotes the document: it is dropped, never logged or re-raised.
        return None


def _tree_declares_entities(root: Any) -> bool:
    # Second line of defence behind the text screen (an encoding it could not read).
    dtd = root.getroottree().docinfo.internalDTD
    return dtd is not None and any(True for _ in dtd.iterentities())


class _Reader:
    """Reads attributes, collecting what is wrong with them as Spanish observations."""

    def __init__(self) -> None:
        self.problems: list[str] = []

    @staticmethod
    def text(element: Any, name: str) -> str | None:
        if element is None:
            return None
        value = element.get(name)
        if value is None:
            return None
        value = value.strip()
        return value or None

    def amount(self, element: Any, name: str, label: str) -> Decimal | None:
        value = self.text(element, name)
        if value is None:
            return None
        number = _to_decimal(value)
        if number is None:
            self.problems.append(f"{label} no es un número válido")
        return number

    def local_datetime(self, element: Any, name: str, label: str) -> datetime | None:
        value = self.text(element, name)
        if value is None:
            return None
        if _LOCAL_DATETIME.fullmatch(value):
            try:
                return datetime.fromisoformat(value)
            except ValueError:
                pass
        self.problems.append(f"{label} no es una fecha válida")
        return None


def _to_decimal(value: str) -> Decimal | None:
    if not _AMOUNT.fullmatch(value):
        return None
    try:
        return Decimal(value)
    except InvalidOperation:
        return None


def _read_comprobante(root: Any) -> CfdiRecord:
    if not isinstance(root.tag, str):
        return CfdiRecord(problems=(PROBLEM_NOT_CFDI,))
    name = etree.QName(root)
    if name.namespace not in CFDI_NAMESPACES or name.localname != "Comprobante":
        return CfdiRecord(problems=(PROBLEM_NOT_CFDI,))
    ns = name.namespace
    read = _Reader()
    version = read.text(root, "Version")
    if version != CFDI_NAMESPACES[ns]:
        # A 3.2 (lowercase attributes) or a mislabelled file: keep what the 3.3/4.0 names find.
        read.problems.append(PROBLEM_NOT_CFDI)
        version = version or read.text(root, "version")

    emisor = root.find(f"{{{ns}}}Emisor")
    receptor = root.find(f"{{{ns}}}Receptor")
    # Only the comprobante's own Impuestos: each Concepto has one too.
    impuestos = root.find(f"{{{ns}}}Impuestos")
    complementos = root.findall(f"{{{ns}}}Complemento")
    stamp = _first(c.find(f"{{{TFD_NAMESPACE}}}TimbreFiscalDigital") for c in complementos)

    tipo = read.text(root, "TipoDeComprobante")
    trasladados = read.amount(
        impuestos, "TotalImpuestosTrasladados", "El total de impuestos trasladados"
    )
    retenidos = read.amount(impuestos, "TotalImpuestosRetenidos", "El total de impuestos retenidos")
    if tipo == "P" and impuestos is None:
        trasladados, retenidos = _payment_taxes(complementos)

    locales_trasladados, locales_retenidos = _local_taxes(read, complementos)

    uuid = read.text(stamp, "UUID")
    if stamp is None:
        read.problems.append(PROBLEM_NO_STAMP)
    record = CfdiRecord(
        version=version,
        uuid=uuid,
        serie=read.text(root, "Serie"),
        folio=read.text(root, "Folio"),
        fecha=read.local_datetime(root, "Fecha", "La fecha de emisión"),
        fecha_timbrado=read.local_datetime(stamp, "FechaTimbrado", "La fecha de timbrado"),
        emisor_rfc=read.text(emisor, "Rfc"),
        emisor_nombre=read.text(emisor, "Nombre"),
        emisor_regimen=read.text(emisor, "RegimenFiscal"),
        receptor_rfc=read.text(receptor, "Rfc"),
        receptor_nombre=read.text(receptor, "Nombre"),
        uso_cfdi=read.text(receptor, "UsoCFDI"),
        tipo=tipo,
        forma_pago=read.text(root, "FormaPago"),
        metodo_pago=read.text(root, "MetodoPago"),
        moneda=read.text(root, "Moneda"),
        tipo_cambio=read.amount(root, "TipoCambio", "El tipo de cambio"),
        subtotal=read.amount(root, "SubTotal", "El subtotal"),
        descuento=read.amount(root, "Descuento", "El descuento"),
        total_impuestos_trasladados=trasladados,
        total_impuestos_retenidos=retenidos,
        impuestos_locales_trasladados=locales_trasladados,
        impuestos_locales_retenidos=locales_retenidos,
        total=read.amount(root, "Total", "El total"),
        problems=tuple(dict.fromkeys(read.problems)),
    )
    observation = totals_observation(record)
    if observation is None:
        return record
    return dataclasses.replace(record, problems=(*record.problems, observation))


def _local_taxes(read: _Reader, complementos: list[Any]) -> tuple[Decimal | None, Decimal | None]:
    """(transferred, withheld) of the implocal:ImpuestosLocales complement; (None, None) without it.

    Its TotaldeTraslados and TotaldeRetenciones are required by SAT's schema; when one is
    absent anyway, the Importe of its TrasladosLocales (or RetencionesLocales) are added up.
    """
    found = [
        element
        for complemento in complementos
        for element in complemento.findall(f"{{{IMPLOCAL_NAMESPACE}}}ImpuestosLocales")
    ]
    if not found:
        return None, None
    transferred = _local_total(
        read,
        found,
        "TotaldeTraslados",
        "TrasladosLocales",
        "El total de impuestos locales trasladados",
    )
    withheld = _local_total(
        read,
        found,
        "TotaldeRetenciones",
        "RetencionesLocales",
        "El total de impuestos locales retenidos",
    )
    return transferred, withheld


def _local_total(
    read: _Reader, complements: list[Any], total_name: str, item_name: str, label: str
) -> Decimal | None:
    amounts: list[Decimal | None] = []
    for complement in complements:
        if read.text(complement, total_name) is not None:
            amounts.append(read.amount(complement, total_name, label))
            continue
        for item in complement.findall(f"{{{IMPLOCAL_NAMESPACE}}}{item_name}"):
            amounts.append(read.amount(item, "Importe", "El importe de un impuesto local"))
    numbers = [amount for amount in amounts if amount is not None]
    if len(numbers) < len(amounts):
        return None  # the reader noted which figure is not a number
    return sum(numbers, Decimal(0))


def totals_difference(record: CfdiRecord) -> Decimal | None:
    """Total − (SubTotal − Descuento + transferred − withheld, federal and local); None when
    the rule does not apply to the CFDI's type or it has no SubTotal or Total. An absent
    Descuento, Impuestos or complement counts as 0, as it does for SAT."""
    if record.tipo not in _BALANCED_TYPES or record.subtotal is None or record.total is None:
        return None
    zero = Decimal(0)
    parts = (
        record.subtotal
        - (record.descuento or zero)
        + (record.total_impuestos_trasladados or zero)
        - (record.total_impuestos_retenidos or zero)
        + (record.impuestos_locales_trasladados or zero)
        - (record.impuestos_locales_retenidos or zero)
    )
    return record.total - parts


def totals_observation(record: CfdiRecord) -> str | None:
    """The report's observation when a CFDI's figures do not add up to its Total.

    Only for a CFDI read without problems (an unstamped one included): a figure that is not a
    number, or a file that is no CFDI 3.3/4.0, is already noted and would only add noise.
    """
    if any(problem != PROBLEM_NO_STAMP for problem in record.problems):
        return None
    difference = totals_difference(record)
    if difference is None or abs(difference) <= TOTALS_TOLERANCE:
        return None
    amount = spanish_number(abs(difference), decimals=2)
    currency = record.moneda or ""
    # Another currency by its ISO code; anything else from the file is never quoted.
    foreign = _CURRENCY.fullmatch(currency) and currency not in ("MXN", "XXX")
    shown = f"{amount} {currency}" if foreign else f"${amount}"
    return f"{PROBLEM_TOTALS_PREFIX} (diferencia: {shown})"


def _first(elements: Iterable[Any]) -> Any | None:
    return next((element for element in elements if element is not None), None)


def _payment_taxes(complementos: list[Any]) -> tuple[Decimal | None, Decimal | None]:
    """A payment's taxes from its Pagos 2.0 Totales, when that total tells the whole story.

    Totales (in MXN) adds up IVA transfers and IVA/ISR/IEPS withholdings. Several Pagos
    complements, or a payment transferring another tax (IEPS), leave the transfers empty;
    Pagos 1.0 has no totals at all. None of this is an error in the XML, so nothing is noted.
    """
    pagos = [p for c in complementos for p in c.findall(f"{{{PAGOS20_NAMESPACE}}}Pagos")]
    if len(pagos) != 1:
        return None, None
    totales = pagos[0].findall(f"{{{PAGOS20_NAMESPACE}}}Totales")
    if len(totales) != 1:
        return None, None
    only_iva = all(
        t.get("ImpuestoP") == _IVA for t in pagos[0].iter(f"{{{PAGOS20_NAMESPACE}}}TrasladoP")
    )
    trasladados = _sum_attributes(totales[0], _PAGOS_TRASLADOS) if only_iva else None
    return trasladados, _sum_attributes(totales[0], _PAGOS_RETENCIONES)


def _sum_attributes(element: Any, names: tuple[str, ...]) -> Decimal | None:
    values = [element.get(name) for name in names if element.get(name) is not None]
    if not values:
        return None
    numbers = [n for n in (_to_decimal(value.strip()) for value in values) if n is not None]
    return sum(numbers, Decimal(0)) if len(numbers) == len(values) else None
