"""CFDI 3.3 and 4.0 XML for synthetic invoices: comprobante, conceptos, taxes (federal and local), payments and the SAT stamp."""

from __future__ import annotations

import base64
import random
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

from lxml import etree

CFDI40_NS = "http://www.sat.gob.mx/cfd/4"
CFDI33_NS = "http://www.sat.gob.mx/cfd/3"
TFD_NS = "http://www.sat.gob.mx/TimbreFiscalDigital"
PAGOS20_NS = "http://www.sat.gob.mx/Pagos20"
PAGOS10_NS = "http://www.sat.gob.mx/Pagos"
IMPLOCAL_NS = "http://www.sat.gob.mx/implocal"
XSI_NS = "http://www.w3.org/2001/XMLSchema-instance"

_SCHEMAS = {
    "4.0": f"{CFDI40_NS} http://www.sat.gob.mx/sitio_internet/cfd/4/cfdv40.xsd",
    "3.3": f"{CFDI33_NS} http://www.sat.gob.mx/sitio_internet/cfd/3/cfdv33.xsd",
}
_TFD_SCHEMA = f"{TFD_NS} http://www.sat.gob.mx/sitio_internet/cfd/TimbreFiscalDigital/TimbreFiscalDigitalv11.xsd"
_IMPLOCAL_SCHEMA = f"{IMPLOCAL_NS} http://www.sat.gob.mx/sitio_internet/cfd/implocal/implocal.xsd"
_PAGOS_SCHEMA = {
    "4.0": f"{PAGOS20_NS} http://www.sat.gob.mx/sitio_internet/cfd/Pagos/Pagos20.xsd",
    "3.3": f"{PAGOS10_NS} http://www.sat.gob.mx/sitio_internet/cfd/Pagos/Pagos10.xsd",
}

CENT = Decimal("0.01")
IVA_RATE = Decimal("0.160000")
ISR_WITHHOLDING = Decimal("0.100000")
IVA_WITHHOLDING = Decimal("0.106667")  # two thirds of the 16% VAT


@dataclass(frozen=True)
class Party:
    rfc: str
    name: str
    tax_regime: str  # SAT régimen fiscal code
    postal_code: str


@dataclass(frozen=True)
class Concept:
    product_key: str  # ClaveProdServ
    unit_key: str  # ClaveUnidad
    description: str
    quantity: Decimal
    unit_price: Decimal
    discount: Decimal = Decimal("0")
    tax: str = "iva16"  # 'iva16' | 'exento' | 'none'
    withhold: bool = False  # ISR 10% and two thirds of VAT (services of a persona física)


@dataclass(frozen=True)
class LocalTax:
    """A state tax of the implocal complement, on the invoice's SubTotal − Descuento.

    e.g. LocalTax("ISH", Decimal("3.00")): the lodging tax a hotel transfers;
    LocalTax("Cedular", Decimal("2.00"), withheld=True): withheld on professional fees.
    """

    name: str  # ImpLocTrasladado / ImpLocRetenido
    rate_percent: Decimal  # TasadeTraslado / TasadeRetencion, in percent as SAT writes it
    withheld: bool = False


@dataclass(frozen=True)
class Payment:
    paid_at: datetime
    payment_form: str
    amount: Decimal
    related_uuid: str
    previous_balance: Decimal


@dataclass(frozen=True)
class Invoice:
    version: str  # '4.0' | '3.3'
    kind: str  # TipoDeComprobante: 'I' | 'E' | 'P'
    serie: str | None
    folio: str | None
    issued_at: datetime  # local time where it was issued, as CFDI writes it
    stamped_at: datetime
    issuer: Party
    receiver: Party
    use: str  # UsoCFDI
    concepts: Sequence[Concept]
    uuid: str  # the TimbreFiscalDigital UUID
    payment_form: str | None = None  # FormaPago
    payment_method: str | None = None  # MetodoPago: PUE | PPD
    currency: str = "MXN"
    exchange_rate: Decimal | None = None
    related_uuid: str | None = None  # CfdiRelacionados (credit notes)
    payment: Payment | None = None  # complemento de pagos (kind P)
    local_taxes: Sequence[LocalTax] = ()  # complemento implocal: part of the Total


def _money(value: Decimal) -> str:
    return str(value.quantize(CENT, ROUND_HALF_UP))


def _stamp(value: datetime) -> str:
    return value.strftime("%Y-%m-%dT%H:%M:%S")


def _fake_base64(rng: random.Random, size: int) -> str:
    return base64.b64encode(rng.randbytes(size)).decode("ascii")


@dataclass
class _Totals:
    subtotal: Decimal = Decimal("0")
    discount: Decimal = Decimal("0")
    transferred: Decimal = Decimal("0")
    withheld_isr: Decimal = Decimal("0")
    withheld_iva: Decimal = Decimal("0")
    iva_base: Decimal = Decimal("0")
    exempt_base: Decimal = Decimal("0")


def invoice_total(invoice: Invoice) -> Decimal:
    totals = _totals(invoice.concepts)
    return _total(totals) + _local_net(invoice, totals)


def _local_amounts(invoice: Invoice, t: _Totals) -> list[tuple[LocalTax, Decimal]]:
    base = t.subtotal - t.discount
    return [
        (tax, (base * tax.rate_percent / 100).quantize(CENT, ROUND_HALF_UP))
        for tax in invoice.local_taxes
    ]


def _local_net(invoice: Invoice, t: _Totals) -> Decimal:
    """Local taxes transferred minus withheld: what they add to the Total."""
    return sum(
        (-amount if tax.withheld else amount for tax, amount in _local_amounts(invoice, t)),
        Decimal(0),
    )


def _total(t: _Totals) -> Decimal:
    return (t.subtotal - t.discount + t.transferred - t.withheld_isr - t.withheld_iva).quantize(
        CENT
    )


def _totals(concepts: Sequence[Concept]) -> _Totals:
    t = _Totals()
    for c in concepts:
        amount = (c.quantity * c.unit_price).quantize(CENT, ROUND_HALF_UP)
        base = amount - c.discount
        t.subtotal += amount
        t.discount += c.discount
        if c.tax == "iva16":
            t.iva_base += base
            t.transferred += (base * IVA_RATE).quantize(CENT, ROUND_HALF_UP)
        elif c.tax == "exento":
            t.exempt_base += base
        if c.withhold:
            t.withheld_isr += (base * ISR_WITHHOLDING).quantize(CENT, ROUND_HALF_UP)
            t.withheld_iva += (base * IVA_WITHHOLDING).quantize(CENT, ROUND_HALF_UP)
    return t


def build_cfdi(invoice: Invoice, rng: random.Random) -> bytes:
    """The XML bytes (UTF-8, with declaration) of a stamped CFDI; seals are random base64."""
    v4 = invoice.version == "4.0"
    ns = CFDI40_NS if v4 else CFDI33_NS
    nsmap = {"cfdi": ns, "xsi": XSI_NS, "tfd": TFD_NS}
    schema_location = [_SCHEMAS[invoice.version], _TFD_SCHEMA]
    if invoice.payment is not None:
        nsmap["pago20" if v4 else "pago10"] = PAGOS20_NS if v4 else PAGOS10_NS
        schema_location.append(_PAGOS_SCHEMA[invoice.version])
    if invoice.local_taxes:
        nsmap["implocal"] = IMPLOCAL_NS
        schema_location.append(_IMPLOCAL_SCHEMA)

    def q(tag: str) -> str:
        return f"{{{ns}}}{tag}"

    totals = _totals(invoice.concepts)
    root = etree.Element(q("Comprobante"), nsmap=nsmap)
    root.set(f"{{{XSI_NS}}}schemaLocation", " ".join(schema_location))
    attrs: dict[str, str | None] = {
        "Version": invoice.version,
        "Serie": invoice.serie,
        "Folio": invoice.folio,
        "Fecha": _stamp(invoice.issued_at),
        "Sello": _fake_base64(rng, 256),
        "FormaPago": invoice.payment_form,
        "NoCertificado": f"000010000005{rng.randrange(10**8):08d}",
        "Certificado": _fake_base64(rng, 900),
        "SubTotal": "0" if invoice.kind == "P" else _money(totals.subtotal),
        "Descuento": _money(totals.discount) if totals.discount else None,
        "Moneda": invoice.currency,
        "TipoCambio": str(invoice.exchange_rate) if invoice.exchange_rate is not None else None,
        "Total": "0"
        if invoice.kind == "P"
        else _money(_total(totals) + _local_net(invoice, totals)),
        "TipoDeComprobante": invoice.kind,
        "Exportacion": "01" if v4 else None,
        "MetodoPago": invoice.payment_method,
        "LugarExpedicion": invoice.issuer.postal_code,
    }
    for name, value in attrs.items():
        if value is not None:
            root.set(name, value)

    if invoice.related_uuid:
        related = etree.SubElement(root, q("CfdiRelacionados"), TipoRelacion="01")
        etree.SubElement(related, q("CfdiRelacionado"), UUID=invoice.related_uuid)
    etree.SubElement(
        root,
        q("Emisor"),
        Rfc=invoice.issuer.rfc,
        Nombre=invoice.issuer.name,
        RegimenFiscal=invoice.issuer.tax_regime,
    )
    receiver = etree.SubElement(
        root, q("Receptor"), Rfc=invoice.receiver.rfc, Nombre=invoice.receiver.name
    )
    if v4:
        receiver.set("DomicilioFiscalReceptor", invoice.receiver.postal_code)
        receiver.set("RegimenFiscalReceptor", invoice.receiver.tax_regime)
    receiver.set("UsoCFDI", invoice.use)

    concepts = etree.SubElement(root, q("Conceptos"))
    for c in invoice.concepts:
        amount = (c.quantity * c.unit_price).quantize(CENT, ROUND_HALF_UP)
        node = etree.SubElement(
            concepts,
            q("Concepto"),
            ClaveProdServ=c.product_key,
            Cantidad=str(c.quantity),
            ClaveUnidad=c.unit_key,
            Descripcion=c.description,
            ValorUnitario=str(c.unit_price) if invoice.kind != "P" else "0",
            Importe=_money(amount) if invoice.kind != "P" else "0",
        )
        if c.discount:
            node.set("Descuento", _money(c.discount))
        if v4:
            node.set("ObjetoImp", "01" if c.tax == "none" and not c.withhold else "02")
        _concept_taxes(node, c, amount - c.discount, q, v4)

    if totals.iva_base or totals.withheld_isr or (v4 and totals.exempt_base):
        taxes = etree.SubElement(root, q("Impuestos"))
        if totals.withheld_isr:
            taxes.set("TotalImpuestosRetenidos", _money(totals.withheld_isr + totals.withheld_iva))
        if totals.iva_base:
            taxes.set("TotalImpuestosTrasladados", _money(totals.transferred))
        if totals.withheld_isr:
            withheld = etree.SubElement(taxes, q("Retenciones"))
            etree.SubElement(
                withheld, q("Retencion"), Impuesto="001", Importe=_money(totals.withheld_isr)
            )
            etree.SubElement(
                withheld, q("Retencion"), Impuesto="002", Importe=_money(totals.withheld_iva)
            )
        if totals.iva_base or (v4 and totals.exempt_base):
            transferred = etree.SubElement(taxes, q("Traslados"))
            if totals.iva_base:
                node = etree.SubElement(transferred, q("Traslado"))
                if v4:
                    node.set("Base", _money(totals.iva_base))
                node.set("Impuesto", "002")
                node.set("TipoFactor", "Tasa")
                node.set("TasaOCuota", str(IVA_RATE))
                node.set("Importe", _money(totals.transferred))
            if v4 and totals.exempt_base:
                etree.SubElement(
                    transferred, q("Traslado"), Base=_money(totals.exempt_base), Impuesto="002", TipoFactor="Exento"
                )  # fmt: skip

    complement = etree.SubElement(root, q("Complemento"))
    if invoice.payment is not None:
        _payment_complement(complement, invoice, v4)
    if invoice.local_taxes:
        _local_taxes_complement(complement, _local_amounts(invoice, totals))
    etree.SubElement(
        complement,
        f"{{{TFD_NS}}}TimbreFiscalDigital",
        {
            f"{{{XSI_NS}}}schemaLocation": _TFD_SCHEMA,
            "Version": "1.1",
            "UUID": invoice.uuid,
            "FechaTimbrado": _stamp(invoice.stamped_at),
            "RfcProvCertif": "SAT970701NN3",
            "SelloCFD": root.get("Sello") or "",
            "NoCertificadoSAT": f"000010000005{rng.randrange(10**8):08d}",
            "SelloSAT": _fake_base64(rng, 256),
        },
    )
    return etree.tostring(root, xml_declaration=True, encoding="UTF-8", pretty_print=True)


# An element built by etree: lxml names its type _Element, a private name we do not use.
Element = Any


def _concept_taxes(node: Element, c: Concept, base: Decimal, q, v4: bool) -> None:
    if c.tax == "none" and not c.withhold:
        return
    if c.tax == "exento" and not v4 and not c.withhold:
        return  # CFDI 3.3 concept-level exempt transfers were rare: leave them out
    taxes = etree.SubElement(node, q("Impuestos"))
    if c.tax == "iva16" or (c.tax == "exento" and v4):
        transferred = etree.SubElement(taxes, q("Traslados"))
        item = etree.SubElement(transferred, q("Traslado"), Base=_money(base), Impuesto="002")
        if c.tax == "iva16":
            item.set("TipoFactor", "Tasa")
            item.set("TasaOCuota", str(IVA_RATE))
            item.set("Importe", _money((base * IVA_RATE).quantize(CENT, ROUND_HALF_UP)))
        else:
            item.set("TipoFactor", "Exento")
    if c.withhold:
        withheld = etree.SubElement(taxes, q("Retenciones"))
        for tax, rate in (("001", ISR_WITHHOLDING), ("002", IVA_WITHHOLDING)):
            etree.SubElement(
                withheld,
                q("Retencion"),
                Base=_money(base),
                Impuesto=tax,
                TipoFactor="Tasa",
                TasaOCuota=str(rate),
                Importe=_money((base * rate).quantize(CENT, ROUND_HALF_UP)),
            )


def _local_taxes_complement(complement: Element, amounts: list[tuple[LocalTax, Decimal]]) -> None:
    """implocal:ImpuestosLocales 1.0: its totals, then each tax withheld and transferred."""
    withheld = [(tax, amount) for tax, amount in amounts if tax.withheld]
    transferred = [(tax, amount) for tax, amount in amounts if not tax.withheld]
    node = etree.SubElement(
        complement,
        f"{{{IMPLOCAL_NS}}}ImpuestosLocales",
        version="1.0",
        TotaldeRetenciones=_money(sum((a for _, a in withheld), Decimal(0))),
        TotaldeTraslados=_money(sum((a for _, a in transferred), Decimal(0))),
    )
    for tax, amount in withheld:
        etree.SubElement(
            node,
            f"{{{IMPLOCAL_NS}}}RetencionesLocales",
            ImpLocRetenido=tax.name,
            TasadeRetencion=_money(tax.rate_percent),
            Importe=_money(amount),
        )
    for tax, amount in transferred:
        etree.SubElement(
            node,
            f"{{{IMPLOCAL_NS}}}TrasladosLocales",
            ImpLocTrasladado=tax.name,
            TasadeTraslado=_money(tax.rate_percent),
            Importe=_money(amount),
        )


def _payment_complement(complement: Element, invoice: Invoice, v4: bool) -> None:
    payment = invoice.payment
    assert payment is not None
    ns = PAGOS20_NS if v4 else PAGOS10_NS
    amount = _money(payment.amount)
    pagos = etree.SubElement(complement, f"{{{ns}}}Pagos", Version="2.0" if v4 else "1.0")
    if v4:
        etree.SubElement(pagos, f"{{{ns}}}Totales", MontoTotalPagos=amount)
    pago = etree.SubElement(
        pagos,
        f"{{{ns}}}Pago",
        FechaPago=_stamp(payment.paid_at),
        FormaDePagoP=payment.payment_form,
        MonedaP="MXN",
    )
    if v4:
        pago.set("TipoCambioP", "1")
    pago.set("Monto", amount)
    related = etree.SubElement(
        pago, f"{{{ns}}}DoctoRelacionado", IdDocumento=payment.related_uuid, MonedaDR="MXN"
    )
    if v4:
        related.set("EquivalenciaDR", "1")
    else:
        related.set("MetodoDePagoDR", "PPD")
    related.set("NumParcialidad", "1")
    related.set("ImpSaldoAnt", _money(payment.previous_balance))
    related.set("ImpPagado", amount)
    related.set("ImpSaldoInsoluto", _money(payment.previous_balance - payment.amount))
    if v4:
        related.set("ObjetoImpDR", "01")
