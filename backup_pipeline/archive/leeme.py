"""LEEME.txt: the Spanish guide inside the zip (what each file is, counts, time zone, how to verify)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from backup_pipeline.spanish import spanish_datetime

LEEME_PATH = "LEEME.txt"
MISSING_REPORT_PATH = "archivos_no_incluidos.xlsx"
SHA256SUMS_PATH = "SHA256SUMS"
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


def leeme_text(facts: LeemeFacts) -> str:
    """The text of LEEME.txt, with CRLF line endings so that Notepad shows its lines."""
    sections = [
        _heading(facts),
        _confidentiality(),
        _dates(facts),
        _contents(facts),
        _names(),
        _verification(),
    ]
    if facts.missing_count:
        sections.insert(4, _missing(facts))
    text = "\n\n".join(section.strip("\n") for section in sections) + "\n"
    return text.replace("\r\n", "\n").replace("\n", "\r\n")


def human_size(size: int) -> str:
    """Bytes as Windows Explorer shows them (1 KB = 1024 bytes), with a decimal point (es-MX)."""
    value = float(size)
    for unit in ("bytes", "KB", "MB", "GB"):
        if value < 1024 or unit == "GB":
            break
        value /= 1024
    if unit == "bytes":
        return f"{size:,} bytes" if size != 1 else "1 byte"
    return f"{value:,.1f} {unit}"


def _count(number: int, singular: str, plural: str) -> str:
    return f"{number:,} {singular if number == 1 else plural}"


def _heading(facts: LeemeFacts) -> str:
    title = "RESPALDO DE INFORMACIÓN"
    return f"""
{title}
{"=" * len(title)}

Clínica: {facts.clinic_name}
Generado el {spanish_datetime(facts.generated_at_local)} (zona horaria {facts.timezone}).

Este archivo comprimido contiene un respaldo de la información registrada en su cuenta:
pacientes, anamnesis, consultas, tratamientos, vacunación, archivos adjuntos y facturación.
Para usarlo, descomprímalo completo en una carpeta de su computadora. Los archivos de Excel
se abren con Microsoft Excel o LibreOffice Calc; los XML de las facturas son los que
entrega el SAT y los puede recibir su contador o cualquier otro sistema de facturación.
"""


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


def _dates(facts: LeemeFacts) -> str:
    return f"""
FECHAS Y HORAS
--------------
Todas las fechas y horas de este respaldo están en la zona horaria {facts.timezone},
la configurada en su cuenta.
"""


def _contents(facts: LeemeFacts) -> str:
    lines = ["CONTENIDO", "---------"]
    for path, description, rows in facts.workbooks:
        lines.append(f"{path}")
        lines.append(f"    {description} ({_count(rows, 'registro', 'registros')}).")
    lines.append("adjuntos/")
    lines.append(
        "    Una carpeta por paciente con sus archivos adjuntos (PDF, imágenes y otros),\n"
        '    nombrada "Apellidos Nombre (número de paciente)". El número distingue a dos\n'
        "    pacientes con el mismo nombre."
    )
    lines.append("facturacion/ingresos/xml/ y facturacion/ingresos/pdf/")
    lines.append(
        "    El XML y el PDF de cada comprobante emitido, nombrados con su folio fiscal (UUID)"
        f"\n    ({_count(facts.invoices_issued, 'comprobante emitido', 'comprobantes emitidos')})."
    )
    lines.append("facturacion/gastos/xml/")
    lines.append(
        "    El XML de cada comprobante recibido, nombrado con su folio fiscal (UUID)\n"
        f"    ({_count(facts.invoices_received, 'comprobante recibido', 'comprobantes recibidos')})."
    )
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
    lines.append(
        f"En total se copiaron {_count(facts.files_copied, 'archivo', 'archivos')} adjuntos y "
        f"de facturación ({human_size(facts.file_bytes)})."
    )
    if facts.long_text_files:
        lines.append(
            "Algunos textos eran más largos de lo que cabe en una celda de Excel: esa celda\n"
            "indica el archivo de texto del respaldo donde el texto está completo."
        )
    return "\n".join(lines)


def _names() -> str:
    return """
NOMBRES DE LOS ARCHIVOS
-----------------------
Los nombres de algunos archivos se ajustaron para que se puedan abrir en Windows, macOS y
Linux: los caracteres no permitidos (como / \\ : * ? " < > |) se cambiaron por "_" y los
nombres muy largos se acortaron. Si un paciente tenía dos archivos con el mismo nombre,
ambos se incluyen: el segundo se llama, por ejemplo, "foto (2).jpg".
"""


def _missing(facts: LeemeFacts) -> str:
    return f"""
ARCHIVOS NO INCLUIDOS
---------------------
{_count(facts.missing_count, "archivo no se pudo", "archivos no se pudieron")} copiar al respaldo
(por ejemplo, porque ya no existía en el almacenamiento de la plataforma). El archivo
{MISSING_REPORT_PATH} indica cuáles son, de qué paciente o comprobante, y el motivo.
Si necesita alguno de ellos, comuníquese con soporte.
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
