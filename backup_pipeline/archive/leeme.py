"""LEEME.txt: the Spanish guide inside the zip (what each file is, counts, time zone, how to verify)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from backup_pipeline.cleaning import EXCEL_CELL_MAX_CHARS
from backup_pipeline.spanish import (
    spanish_count,
    spanish_datetime,
    spanish_number,
    spanish_plural,
    spanish_size,
    zone_name,
)

LEEME_PATH = "LEEME.txt"
MISSING_REPORT_PATH = "archivos_no_incluidos.xlsx"
SHA256SUMS_PATH = "SHA256SUMS"
ATTACHMENTS_FOLDER = "adjuntos/"
LONG_TEXTS_FOLDER = "textos_largos/"
# Every folder an archive can hold, in the order LEEME.txt explains them.
ARCHIVE_FOLDERS = (
    ATTACHMENTS_FOLDER,
    "facturacion/ingresos/xml/",
    "facturacion/ingresos/pdf/",
    "facturacion/gastos/xml/",
    "facturacion/gastos/pdf/",
    LONG_TEXTS_FOLDER,
)
# With a byte-order mark, Notepad before Windows 10 (1903) also reads the accents right.
LEEME_ENCODING = "utf-8-sig"


@dataclass(frozen=True)
class LeemeFacts:
    clinic_name: str
    generated_at_local: datetime  # wall-clock time in `timezone`
    timezone: str  # IANA name, e.g. "America/Mexico_City"
    workbooks: Sequence[tuple[str, str, int]]  # (archive path, Spanish description, rows)
    files_copied: int  # attachments and CFDI files in the zip
    file_bytes: int
    missing_count: int  # files listed in archivos_no_incluidos.xlsx
    invoices_issued: int = 0
    invoices_received: int = 0
    long_text_files: int = 0  # cell values too long for Excel, written whole to text files
    # A very large account comes in parts, each a complete zip: which one this is, and one
    # Spanish line per part saying what it holds.
    part: int = 1
    parts: int = 1
    part_summaries: Sequence[str] = ()
    # Attachments whose folder or file name was cut to keep its path short for Windows.
    names_shortened: int = 0


def leeme_text(facts: LeemeFacts) -> str:
    """The text of LEEME.txt, with CRLF line endings so that Notepad shows its lines."""
    sections = [
        _heading(facts),
        _confidentiality(),
        _dates(facts),
        _contents(facts),
        _names(facts),
        _verification(),
    ]
    if facts.missing_count:
        sections.insert(4, _missing(facts))
    if facts.parts > 1:
        sections.insert(1, _parts(facts))
    text = "\n\n".join(section.strip("\n") for section in sections) + "\n"
    return text.replace("\r\n", "\n").replace("\n", "\r\n")


def _heading(facts: LeemeFacts) -> str:
    title = "RESPALDO DE INFORMACIÓN"
    return f"""
{title}
{"=" * len(title)}

Clínica: {facts.clinic_name}
Generado el {spanish_datetime(facts.generated_at_local)}, {_zone(facts)}.

Este archivo comprimido contiene un respaldo de la información registrada en su cuenta:
pacientes, anamnesis, consultas, tratamientos, vacunación, archivos adjuntos y facturación.
Para usarlo, descomprímalo completo en una carpeta de su computadora. Los archivos de Excel
se abren con Microsoft Excel o LibreOffice Calc; los XML de las facturas son los que
entrega el SAT y los puede recibir su contador o cualquier otro sistema de facturación.
"""


def _parts(facts: LeemeFacts) -> str:
    lines = [
        "RESPALDO EN VARIAS PARTES",
        "-------------------------",
        "Su respaldo es muy grande, así que se entregó en "
        f"{spanish_count(facts.parts, 'archivo .zip', 'archivos .zip')}. "
        f"Esta es la parte {spanish_number(facts.part)} de {spanish_number(facts.parts)}.",
        "Cada parte es un .zip completo, con su propio LEEME.txt y su propio SHA256SUMS, que",
        "sirve para comprobar solo los archivos de esa parte. Descargue todas las partes y",
        "descomprímalas en la misma carpeta: las carpetas de las partes se juntan en una sola.",
        "",
    ]
    lines += [f"  {summary}" for summary in facts.part_summaries]
    return "\n".join(lines)


def _confidentiality() -> str:
    return """
INFORMACIÓN CONFIDENCIAL
------------------------
Este respaldo contiene datos personales y datos personales sensibles de sus pacientes
(datos de salud) que forman parte del expediente clínico. Su resguardo y confidencialidad
son responsabilidad de la clínica, conforme a la NOM-004-SSA3-2012, Del expediente clínico,
y a la Ley Federal de Protección de Datos Personales en Posesión de los Particulares
(LFPDPPP). Guárdelo en un lugar seguro, no lo comparta por medios públicos y elimine las
copias que ya no necesite.
"""


def _zone(facts: LeemeFacts) -> str:
    return zone_name(facts.timezone, facts.generated_at_local)


def _dates(facts: LeemeFacts) -> str:
    return f"""
FECHAS Y HORAS
--------------
Las fechas y horas de este respaldo están en la zona horaria configurada en su cuenta:
{_zone(facts)}.

Excepción: en los reportes de facturación (comprobantes_emitidos.xlsx y
comprobantes_recibidos.xlsx), las columnas "Fecha de emisión" y "Fecha de timbrado"
muestran la fecha y hora tal como están escritas en el XML de cada comprobante (sus
atributos Fecha y FechaTimbrado), sin convertirlas: son la hora local de quien emitió o
timbró el comprobante. La columna "Fecha de emisión registrada en la plataforma" sí está
en la zona horaria de su cuenta.
"""


def _contents(facts: LeemeFacts) -> str:
    lines = ["CONTENIDO", "---------"]
    for path, description, rows in facts.workbooks:
        # The description is a sentence of its own: its period moves after the count.
        count = spanish_count(rows, "registro", "registros")
        lines += [path, f"    {description.rstrip().rstrip('.')} ({count})."]
    issued = spanish_count(facts.invoices_issued, "comprobante", "comprobantes")
    received = spanish_count(facts.invoices_received, "comprobante", "comprobantes")
    long_texts = (
        f"En este respaldo hay {spanish_count(facts.long_text_files, 'archivo', 'archivos')}."
        if facts.long_text_files
        else "En este respaldo no hubo ninguno, así que la carpeta no está."
    )
    folders = {
        ATTACHMENTS_FOLDER: (
            "Una carpeta por paciente con sus archivos adjuntos (PDF, imágenes y otros),\n"
            'nombrada "Apellidos Nombre (número de paciente)". El número distingue a dos\n'
            "pacientes con el mismo nombre."
        ),
        "facturacion/ingresos/xml/": (
            "El XML de cada comprobante emitido, nombrado con su folio fiscal (UUID);\n"
            f"en total, {issued}."
        ),
        "facturacion/ingresos/pdf/": (
            "El PDF de cada comprobante emitido que lo tenga en la plataforma, con el mismo\n"
            "nombre que su XML."
        ),
        "facturacion/gastos/xml/": (
            "El XML de cada comprobante recibido, nombrado con su folio fiscal (UUID);\n"
            f"en total, {received}."
        ),
        "facturacion/gastos/pdf/": (
            "El PDF de un comprobante recibido, solo cuando la plataforma lo tenía guardado,\n"
            "con el mismo nombre que su XML."
        ),
        LONG_TEXTS_FOLDER: (
            "Los textos más largos de lo que cabe en una celda de Excel "
            f"({spanish_number(EXCEL_CELL_MAX_CHARS)}\ncaracteres), "
            "completos, en archivos de texto. Su celda indica el archivo: por\n"
            "ejemplo, textos_largos/consultas/consulta_125_notas.txt tiene las notas de la\n"
            f"consulta 125. {long_texts}"
        ),
    }
    assert tuple(folders) == ARCHIVE_FOLDERS
    for folder, text in folders.items():
        lines.append(folder)
        lines += [f"    {line}" for line in text.split("\n")]
    if facts.missing_count:
        lines.append(MISSING_REPORT_PATH)
        lines.append("    La lista de archivos que no se pudieron incluir (vea más abajo).")
    lines.append(LEEME_PATH)
    lines.append("    Este archivo.")
    lines.append(SHA256SUMS_PATH)
    lines.append(
        "    La huella digital (SHA-256) de cada archivo, para comprobar que están completos."
    )
    lines.append("")
    copied = spanish_count(
        facts.files_copied, "archivo adjunto o de facturación", "archivos adjuntos y de facturación"
    )
    verb = spanish_plural(facts.files_copied, "se copió", "se copiaron")
    lines.append(f"En total {verb} {copied} ({spanish_size(facts.file_bytes)}).")
    return "\n".join(lines)


def _names(facts: LeemeFacts) -> str:
    text = """
NOMBRES DE LOS ARCHIVOS
-----------------------
Los nombres de algunos archivos se ajustaron para que se puedan abrir en Windows, macOS y
Linux: los caracteres no permitidos (como / \\ : * ? " < > |) se cambiaron por "_" y los
nombres muy largos se acortaron. Si un paciente tenía dos archivos con el mismo nombre,
ambos se incluyen: el segundo se llama, por ejemplo, "foto (2).jpg".
"""
    if facts.names_shortened:
        n = facts.names_shortened
        files = spanish_count(n, "archivo adjunto", "archivos adjuntos")
        text += (
            f"En este respaldo se acortó el nombre de {files} (o el de su carpeta) para que\n"
            f"Windows pueda descomprimir{'lo' if n == 1 else 'los'}.\n"
        )
    text += (
        "El nombre original de cada archivo adjunto está en adjuntos.xlsx, junto a su\n"
        "ubicación en el respaldo.\n"
    )
    return text


def _missing(facts: LeemeFacts) -> str:
    return f"""
ARCHIVOS NO INCLUIDOS
---------------------
{spanish_count(facts.missing_count, "archivo no se pudo", "archivos no se pudieron")} copiar al respaldo
(por ejemplo, porque ya no {spanish_plural(facts.missing_count, "existía", "existían")} en el almacenamiento de la plataforma). El archivo
{MISSING_REPORT_PATH} indica cuáles son, de qué paciente o comprobante, y el motivo.
Los archivos adjuntos entre ellos aparecen también en adjuntos.xlsx, con la ubicación que
habrían tenido en el respaldo. Si necesita alguno de ellos, comuníquese con soporte.
"""


def _verification() -> str:
    return """
CÓMO COMPROBAR QUE EL RESPALDO ESTÁ COMPLETO
--------------------------------------------
El archivo SHA256SUMS contiene la huella digital (SHA-256) de cada archivo del respaldo.
Si un archivo se dañó, su huella ya no coincide. Primero descomprima el .zip en una carpeta
y abra una terminal en esa carpeta.

Windows (PowerShell): en el Explorador de archivos abra la carpeta, escriba powershell en
la barra de direcciones, presione Enter y pegue esta línea:

  Get-Content -Encoding UTF8 SHA256SUMS | ForEach-Object { $h, $p = $_ -split '  ', 2; if ((Get-FileHash -Algorithm SHA256 -LiteralPath $p).Hash -eq $h) { "OK: $p" } else { "NO COINCIDE: $p" } }

macOS (Terminal):

  shasum -a 256 -c SHA256SUMS

Linux:

  sha256sum -c SHA256SUMS

Cada archivo debe aparecer como "OK". La huella del archivo .zip completo viene en el
correo con el que recibió el enlace de descarga; en Windows puede calcularla con
Get-FileHash -Algorithm SHA256 <nombre del archivo .zip>, y en macOS o Linux con
shasum -a 256 <nombre del archivo .zip>.
"""
