"""LEEME.txt: the Spanish guide inside the zip (what each file is, counts, time zone, how to verify)."""

from __future__ import annotations

import re
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import datetime

from backup_pipeline.rules.cleaning import EXCEL_CELL_MAX_CHARS
from backup_pipeline.rules.spanish import (
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
# The folders of the files copied from the platform (attachments and CFDI), as opposed to the
# files this pipeline writes (workbooks, long texts, LEEME.txt and the checksum files).
FILE_FOLDERS = ARCHIVE_FOLDERS[:-1]
# With a byte-order mark, Notepad before Windows 10 (1903) also reads the accents right.
LEEME_ENCODING = "utf-8-sig"
# The totals, worded alike in LEEME.txt and the email, so that the clinic can compare them.
FILES_COPIED_LABEL = "Archivos adjuntos y comprobantes copiados"
FILES_MISSING_LABEL = "Archivos que no se pudieron incluir"
_FILES_COPIED_LINE = re.compile(rf"^{FILES_COPIED_LABEL} en total: ([\d,]+)\b", re.MULTILINE)
_FILES_MISSING_LINE = re.compile(rf"^{FILES_MISSING_LABEL}: ([\d,]+)\.", re.MULTILINE)


def part_sums_path(part: int, parts: int) -> str:
    """The checksum file of part `part` of `parts`: SHA256SUMS for a single zip, else a name of
    its own (SHA256SUMS-parte-03-de-17), so that no part's file replaces another's when the
    parts are extracted into one folder."""
    if parts == 1:
        return SHA256SUMS_PATH
    return f"{SHA256SUMS_PATH}-parte-{_numbered_part(part, parts)}"


def part_note_path(part: int, parts: int) -> str:
    """The short guide in parts 2 and later (LEEME-parte-03-de-17.txt): LEEME.txt is part 1's."""
    return f"LEEME-parte-{_numbered_part(part, parts)}.txt"


def _numbered_part(part: int, parts: int) -> str:
    # Zero-padded, so that a folder listing sorts the parts' files in order.
    width = max(2, len(str(parts)))
    return f"{part:0{width}d}-de-{parts:0{width}d}"


def folder_of(archive_path: str) -> str | None:
    """The folder of ARCHIVE_FOLDERS that holds archive_path, or None (a file at the top)."""
    return next((f for f in ARCHIVE_FOLDERS if archive_path.startswith(f)), None)


def files_copied_in(leeme: str) -> int | None:
    """The count of files copied that LEEME.txt states (verify compares it with the zip), or
    None when the text states none."""
    match = _FILES_COPIED_LINE.search(leeme.replace("\r\n", "\n"))
    return int(match.group(1).replace(",", "")) if match else None


def files_missing_in(leeme: str) -> int:
    """The count of files not included that LEEME.txt states: 0 when it states none."""
    match = _FILES_MISSING_LINE.search(leeme.replace("\r\n", "\n"))
    return int(match.group(1).replace(",", "")) if match else 0


@dataclass(frozen=True)
class LeemeFacts:
    clinic_name: str
    generated_at_local: datetime  # wall-clock time in `timezone`
    timezone: str  # IANA name, e.g. "America/Mexico_City"
    workbooks: Sequence[tuple[str, str, int]]  # (archive path, Spanish description, rows)
    files_copied: int  # attachments and CFDI files in the zip (every part of it)
    file_bytes: int
    missing_count: int  # files listed in archivos_no_incluidos.xlsx
    invoices_issued: int = 0
    invoices_received: int = 0
    long_text_files: int = 0  # cell values too long for Excel, written whole to text files
    # A very large account comes in parts, each a complete zip: LEEME.txt is in part 1 and
    # describes them all, one Spanish line per part saying what it holds.
    part: int = 1
    parts: int = 1
    part_summaries: Sequence[str] = ()
    # Attachments whose folder or file name was cut to keep its path short for Windows.
    names_shortened: int = 0
    # The folders of ARCHIVE_FOLDERS the archive holds (in any part); None: all of them.
    folders: Collection[str] | None = None


def leeme_text(facts: LeemeFacts) -> str:
    """The text of LEEME.txt, with CRLF line endings so that Notepad shows its lines."""
    sections = [
        _heading(facts),
        _confidentiality(),
        _dates(facts),
        _contents(facts),
        _names(facts),
        _verification(facts),
    ]
    if facts.missing_count:
        sections.insert(4, _missing(facts))
    if facts.parts > 1:
        sections.insert(1, _parts(facts))
    text = "\n\n".join(section.strip("\n") for section in sections) + "\n"
    return text.replace("\r\n", "\n").replace("\n", "\r\n")


@dataclass(frozen=True)
class PartNoteFacts:
    """What the short guide of part 2 or later says: which part it is and what it holds."""

    clinic_name: str
    generated_at_local: datetime  # wall-clock time in `timezone`
    timezone: str
    part: int
    parts: int
    files_copied: int  # attachments and CFDI files in this part
    file_bytes: int


def part_note_text(facts: PartNoteFacts) -> str:
    """The text of part_note_path(part, parts) in parts 2 and later: it points to part 1's
    LEEME.txt, which describes the whole archive, instead of replacing it when the parts are
    extracted into one folder."""
    title = (
        f"RESPALDO DE INFORMACIÓN: PARTE {spanish_number(facts.part)} "
        f"DE {spanish_number(facts.parts)}"
    )
    zone = zone_name(facts.timezone, facts.generated_at_local)
    sums = part_sums_path(facts.part, facts.parts)
    heading = f"""
{title}
{"=" * len(title)}

Clínica: {facts.clinic_name}
Generado el {spanish_datetime(facts.generated_at_local)}, {zone}.

Este archivo .zip es la parte {spanish_number(facts.part)} de {spanish_number(facts.parts)} de su \
respaldo. Descargue todas las partes y
descomprímalas en la misma carpeta: las carpetas de las partes se juntan en una sola.
La descripción completa del respaldo (qué es cada archivo, los totales y los archivos que
no se pudieron incluir) está en LEEME.txt, en la parte 1, junto con las hojas de cálculo.

{FILES_COPIED_LABEL} en esta parte: {spanish_number(facts.files_copied)} \
({spanish_size(facts.file_bytes)}).
La huella digital (SHA-256) de cada archivo de esta parte está en {sums};
LEEME.txt explica cómo comprobarla.
"""
    sections = [heading, _confidentiality()]
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
    count = spanish_number(facts.parts)
    first, last = part_sums_path(1, facts.parts), part_sums_path(facts.parts, facts.parts)
    lines = [
        "RESPALDO EN VARIAS PARTES",
        "-------------------------",
        f"Su respaldo es muy grande, así que se entregó en {count} archivos .zip (partes).",
        f"Esta es la parte {spanish_number(facts.part)} de {count}: este LEEME.txt describe el "
        "respaldo completo (todas",
        "las partes, sus totales y los archivos que no se pudieron incluir). Descargue todas las",
        "partes y descomprímalas en la misma carpeta: las carpetas de las partes se juntan en una",
        "sola y ningún archivo de una parte reemplaza al de otra. Cada parte es un .zip completo,",
        f"con su propia lista de huellas digitales (de {first} a",
        f"{last}); desde la parte 2, cada una trae también una breve guía",
        f"({part_note_path(2, facts.parts)} y las siguientes).",
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
    long_texts = spanish_count(
        facts.long_text_files, "archivo de texto largo", "archivos de texto largo"
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
            f"consulta 125. En este respaldo: {long_texts}."
        ),
    }
    assert tuple(folders) == ARCHIVE_FOLDERS
    for folder, text in folders.items():
        if not _holds(facts, folder):
            continue  # only the folders the clinic finds after extracting
        lines.append(folder)
        lines += [f"    {line}" for line in text.split("\n")]
    if facts.missing_count:
        lines.append(MISSING_REPORT_PATH)
        lines.append("    La lista de archivos que no se pudieron incluir (vea más abajo).")
    lines.append(LEEME_PATH)
    lines.append("    Este archivo.")
    if facts.parts > 1:
        lines.append(part_sums_path(1, facts.parts))
        lines.append(
            "    La huella digital (SHA-256) de cada archivo de la parte 1, para comprobar que"
        )
        lines.append("    están completos; cada parte trae el suyo, con su número.")
    else:
        lines.append(SHA256SUMS_PATH)
        lines.append(
            "    La huella digital (SHA-256) de cada archivo, para comprobar que están completos."
        )
    lines.append("")
    lines.append(
        f"{FILES_COPIED_LABEL} en total: {spanish_number(facts.files_copied)} "
        f"({spanish_size(facts.file_bytes)})."
    )
    if facts.missing_count:
        lines.append(f"{FILES_MISSING_LABEL}: {spanish_number(facts.missing_count)}.")
    return "\n".join(lines)


def _holds(facts: LeemeFacts, folder: str) -> bool:
    if folder == LONG_TEXTS_FOLDER:
        return facts.long_text_files > 0
    return facts.folders is None or folder in facts.folders


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
habrían tenido en el respaldo: esa lista indica cuáles faltan. Si necesita alguno de ellos,
comuníquese con soporte.
"""


def _verification(facts: LeemeFacts) -> str:
    if facts.parts > 1:
        # One command checks every part's list: the shells expand the pattern to all of them.
        sums = f"{SHA256SUMS_PATH}-parte-*"
        intro = f"""
Cada parte trae su lista de huellas digitales ({part_sums_path(1, facts.parts)} y las
siguientes), con la huella (SHA-256) de cada uno de sus archivos. Si un archivo se dañó, su
huella ya no coincide. Primero descomprima todas las partes en la misma carpeta y abra una
terminal en esa carpeta: los comandos de abajo comprueban las listas de todas las partes."""
        zip_sums = (
            "La huella de cada parte (.zip) viene en el\n"
            "correo con el que recibió los enlaces de descarga"
        )
    else:
        sums = SHA256SUMS_PATH
        intro = f"""
El archivo {SHA256SUMS_PATH} contiene la huella digital (SHA-256) de cada archivo del respaldo.
Si un archivo se dañó, su huella ya no coincide. Primero descomprima el .zip en una carpeta
y abra una terminal en esa carpeta."""
        zip_sums = (
            "La huella del archivo .zip completo viene en el\n"
            "correo con el que recibió el enlace de descarga"
        )
    return f"""
CÓMO COMPROBAR QUE EL RESPALDO ESTÁ COMPLETO
--------------------------------------------
{intro.strip()}

Windows (PowerShell): en el Explorador de archivos abra la carpeta, escriba powershell en
la barra de direcciones, presione Enter y pegue esta línea:

  Get-Content -Encoding UTF8 {sums} | ForEach-Object {{ $h, $p = $_ -split '  ', 2; if ((Get-FileHash -Algorithm SHA256 -LiteralPath $p).Hash -eq $h) {{ "OK: $p" }} else {{ "NO COINCIDE: $p" }} }}

macOS (Terminal):

  shasum -a 256 -c {sums}

Linux:

  sha256sum -c {sums}

Cada archivo debe aparecer como "OK". {zip_sums}; en Windows puede calcularla con
Get-FileHash -Algorithm SHA256 <nombre del archivo .zip>, y en macOS o Linux con
shasum -a 256 <nombre del archivo .zip>.
"""
