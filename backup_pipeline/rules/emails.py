"""What the emails say: the clinic's Spanish messages and support's alerts, as plain text and HTML."""

from __future__ import annotations

import html
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from backup_pipeline.rules.quota import MAX_IN_WINDOW, WINDOW
from backup_pipeline.rules.spanish import (
    spanish_count,
    spanish_datetime,
    spanish_number,
    spanish_size,
    zone_name,
)


@dataclass(frozen=True)
class OutgoingEmail:
    to: str
    subject: str
    text: str
    html: str
    from_email: str
    reply_to: str | None = None
    # Our own stable id for this message (e.g. "backup-42-delivered"): the outbox names its file
    # after it and SendGrid carries it as a custom arg, so one logical email is recognisable.
    key: str | None = None


# ---------------------------------------------------------------------------------------------
# A tiny document model: each email is written once and rendered twice, so the plain-text twin
# cannot drift from the HTML.
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Strong:
    text: str


@dataclass(frozen=True)
class Code:
    text: str


@dataclass(frozen=True)
class Link:
    """A link whose visible text is its own target (a URL or an address), so both parts show it."""

    href: str
    text: str


Span = str | Strong | Code | Link


@dataclass(frozen=True)
class Paragraph:
    spans: tuple[Span, ...]


@dataclass(frozen=True)
class Heading:
    text: str


@dataclass(frozen=True)
class Bullets:
    items: tuple[tuple[Span, ...], ...]


@dataclass(frozen=True)
class Button:
    """A call to action; the URL is also printed under it for clients that hide buttons."""

    href: str
    label: str


@dataclass(frozen=True)
class Preformatted:
    """A value the reader may copy exactly (a checksum): its own line, never wrapped by us."""

    text: str


Block = Paragraph | Heading | Bullets | Button | Preformatted


def _p(*spans: Span) -> Paragraph:
    return Paragraph(spans)


def _span_text(span: Span) -> str:
    return span if isinstance(span, str) else span.text


def _span_html(span: Span) -> str:
    if isinstance(span, str):
        return html.escape(span).replace("\n", "<br>\n")
    if isinstance(span, Strong):
        return f"<strong>{html.escape(span.text)}</strong>"
    if isinstance(span, Code):
        return f'<code style="{_CODE_STYLE}">{html.escape(span.text)}</code>'
    return f'<a href="{html.escape(span.href)}" style="color:#1a56db">{html.escape(span.text)}</a>'


def render_text(blocks: Sequence[Block]) -> str:
    parts: list[str] = []
    for block in blocks:
        if isinstance(block, Paragraph):
            parts.append("".join(_span_text(s) for s in block.spans))
        elif isinstance(block, Heading):
            parts.append(f"{block.text}\n{'-' * len(block.text)}")
        elif isinstance(block, Bullets):
            parts.append("\n".join("- " + "".join(map(_span_text, item)) for item in block.items))
        elif isinstance(block, Button):
            parts.append(f"{block.label}:\n{block.href}")
        else:
            parts.append(block.text)
    return "\n\n".join(parts) + "\n"


_FONT = "font-family:Arial,Helvetica,sans-serif;font-size:15px;line-height:1.5;color:#1f2937"
_CODE_STYLE = "font-family:Consolas,Menlo,monospace;background:#f3f4f6;padding:1px 4px"


def render_html(blocks: Sequence[Block], *, title: str) -> str:
    body: list[str] = []
    for block in blocks:
        if isinstance(block, Paragraph):
            body.append(f"<p>{''.join(_span_html(s) for s in block.spans)}</p>")
        elif isinstance(block, Heading):
            body.append(
                f'<h2 style="font-size:17px;margin:24px 0 8px">{html.escape(block.text)}</h2>'
            )
        elif isinstance(block, Bullets):
            items = "".join(f"<li>{''.join(map(_span_html, item))}</li>" for item in block.items)
            body.append(f"<ul>{items}</ul>")
        elif isinstance(block, Button):
            href = html.escape(block.href)
            body.append(
                f'<p style="margin:24px 0"><a href="{href}" style="background:#1a56db;color:#ffffff;'
                "padding:12px 20px;border-radius:6px;text-decoration:none;font-weight:bold;"
                f'display:inline-block">{html.escape(block.label)}</a></p>'
                f'<p style="font-size:13px;word-break:break-all"><a href="{href}" '
                f'style="color:#1a56db">{href}</a></p>'
            )
        else:
            body.append(
                f'<p><code style="{_CODE_STYLE};word-break:break-all">'
                f"{html.escape(block.text)}</code></p>"
            )
    return (
        '<!DOCTYPE html>\n<html lang="es">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{html.escape(title)}</title>\n</head>\n"
        f'<body style="margin:0;padding:24px;{_FONT}">\n'
        '<div style="max-width:600px;margin:0 auto">\n'
        + "\n".join(body)
        + "\n</div>\n</body>\n</html>\n"
    )


def _one_line(value: str) -> str:
    """User-typed names reach subjects and headers: no line breaks, no runs of spaces."""
    return " ".join(value.split())


def _email(
    *,
    to: str,
    subject: str,
    blocks: Sequence[Block],
    from_email: str,
    reply_to: str | None,
    key: str,
) -> OutgoingEmail:
    subject = _one_line(subject)
    return OutgoingEmail(
        to=to.strip(),
        subject=subject,
        text=render_text(blocks),
        html=render_html(blocks, title=subject),
        from_email=from_email,
        reply_to=reply_to,
        key=key,
    )


def _mailto(address: str) -> Link:
    return Link(href=f"mailto:{address}", text=address)


_SHA256 = re.compile(r"[0-9a-f]{64}")


# ---------------------------------------------------------------------------------------------
# The clinic's emails (Spanish)
# ---------------------------------------------------------------------------------------------

_SIGNATURE = _p("Saludos,\nEl equipo de soporte")


def delivered_email(
    *,
    to: str,
    clinic_name: str,
    link: str,
    expires_at_local: datetime,
    timezone_label: str,  # the clinic's IANA zone: shown by its Spanish (CLDR) name, never as is
    size_bytes: int,
    sha256: str,
    contents: list[tuple[str, int]],
    support_email: str,
    from_email: str,
    request_id: int,
    parts: Sequence[PartLink] = (),
) -> OutgoingEmail:
    """The backup is ready: the link, until when it works (clinic's local time), size, checksum.
    A very large account's archive comes in `parts` (more than one): each with its link, size
    and checksum; `link`, `size_bytes` and `sha256` are then the first part's and the total's.

    Formal register ("usted") throughout, as LEEME.txt and every status detail.
    """
    if len(parts) > 1:
        return _delivered_in_parts(
            to=to,
            clinic_name=clinic_name,
            expires_at_local=expires_at_local,
            timezone_label=timezone_label,
            contents=contents,
            support_email=support_email,
            from_email=from_email,
            request_id=request_id,
            parts=parts,
        )
    if not link.startswith(("https://", "http://", "file:///")):
        # The link goes into an href: anything but http(s), or file:// for the embedded local
        # default's archives folder (javascript:, data:) is a bug upstream.
        raise ValueError("the download link must be an http(s) or file:/// URL")
    sha256 = sha256.strip().lower()
    if not _SHA256.fullmatch(sha256):
        raise ValueError("sha256 must be 64 hexadecimal characters")
    clinic = _one_line(clinic_name) or "su clínica"
    zone = zone_name(_one_line(timezone_label), expires_at_local)
    until = f"{spanish_datetime(expires_at_local)}, {zone}"
    blocks: list[Block] = [
        _p("Hola:"),
        _p(
            "El respaldo de información de ",
            Strong(clinic),
            " que solicitó ya está listo. Puede descargarlo con el siguiente enlace:",
        ),
        Button(href=link, label="Descargar respaldo"),
        _p(
            "El enlace funciona hasta el ",
            Strong(until),
            ". Después de esa fecha deja de funcionar y no se puede volver a usar, así que le "
            "recomendamos descargar el archivo lo antes posible y guardarlo en un lugar seguro.",
        ),
        Heading("Qué contiene"),
    ]
    if contents:
        blocks.append(_p(f"El archivo .zip pesa {spanish_size(size_bytes)} e incluye:"))
        blocks.append(
            Bullets(tuple((f"{label}: {spanish_number(count)}",) for label, count in contents))
        )
    else:
        blocks.append(_p(f"El archivo .zip pesa {spanish_size(size_bytes)}."))
    blocks += [
        _p(
            "Dentro encontrará el archivo ",
            Code("LEEME.txt"),
            ", que explica qué es cada archivo y en qué zona horaria están las fechas. "
            "Los archivos de Excel se abren con Excel o LibreOffice.",
        ),
        Heading("Cómo comprobar que el archivo llegó completo (opcional)"),
        _p("Esta es la huella digital (SHA-256) del archivo:"),
        Preformatted(sha256),
        *_how_to_check(
            "Cambie archivo.zip por el nombre del archivo descargado. Si el resultado es igual a "
            "la huella de arriba, el archivo está completo."
        ),
        *_care_and_help(support_email, request_id),
    ]
    return _email(
        to=to,
        subject=f"Su respaldo de información de {clinic} está listo",
        blocks=blocks,
        from_email=from_email,
        reply_to=support_email,
        key=f"backup-{request_id}-delivered",
    )


def _how_to_check(closing: str) -> list[Block]:
    return [
        _p(
            "En Windows, abra el Símbolo del sistema en la carpeta donde lo descargó y escriba: ",
            Code("certutil -hashfile archivo.zip SHA256"),
        ),
        _p("En macOS o Linux, abra la Terminal y escriba: ", Code("shasum -a 256 archivo.zip")),
        _p(closing),
    ]


def _care_and_help(support_email: str, request_id: int) -> list[Block]:
    return [
        Heading("Cuide esta información"),
        _p(
            "El respaldo contiene datos personales y de salud de sus pacientes. Guárdelo en un "
            "lugar seguro y no lo comparta con personas no autorizadas."
        ),
        _p(
            "¿Necesita ayuda? Escríbanos a ",
            _mailto(support_email),
            f" o responda a este correo, e indique el número de solicitud {request_id}.",
        ),
        _SIGNATURE,
    ]


@dataclass(frozen=True)
class PartLink:
    """One zip of an archive delivered in parts: its download link, name, size and checksum."""

    link: str
    file_name: str
    size_bytes: int
    sha256: str


def _delivered_in_parts(
    *,
    to: str,
    clinic_name: str,
    expires_at_local: datetime,
    timezone_label: str,
    contents: list[tuple[str, int]],
    support_email: str,
    from_email: str,
    request_id: int,
    parts: Sequence[PartLink],
) -> OutgoingEmail:
    for part in parts:
        if not part.link.startswith(("https://", "http://", "file:///")):
            raise ValueError("the download link must be an http(s) or file:/// URL")
        if not _SHA256.fullmatch(part.sha256.strip().lower()):
            raise ValueError("sha256 must be 64 hexadecimal characters")
    clinic = _one_line(clinic_name) or "su clínica"
    zone = zone_name(_one_line(timezone_label), expires_at_local)
    until = f"{spanish_datetime(expires_at_local)}, {zone}"
    zips = spanish_count(len(parts), "archivo .zip", "archivos .zip")
    total = spanish_size(sum(part.size_bytes for part in parts))
    blocks: list[Block] = [
        _p("Hola:"),
        _p(
            "El respaldo de información de ",
            Strong(clinic),
            f" que solicitó ya está listo. Como es muy grande ({total}), llega en {zips} "
            "(partes). Descargue todas las partes con estos enlaces:",
        ),
    ]
    for number, part in enumerate(parts, start=1):
        blocks.append(
            Button(
                href=part.link,
                label=f"Descargar la parte {spanish_number(number)} de {spanish_number(len(parts))}",
            )
        )
    blocks += [
        _p(
            "Los enlaces funcionan hasta el ",
            Strong(until),
            ". Después de esa fecha dejan de funcionar y no se pueden volver a usar, así que le "
            "recomendamos descargar los archivos lo antes posible y guardarlos en un lugar seguro.",
        ),
        _p(
            "Cada parte es un .zip completo. Descomprima todas las partes en la misma carpeta: "
            "sus carpetas se juntan en una sola. Las hojas de cálculo y el archivo LEEME.txt, "
            "que describe el respaldo completo, están en la parte 1."
        ),
        Heading("Qué contiene"),
    ]
    if contents:
        blocks.append(Bullets(tuple((f"{label}: {spanish_number(n)}",) for label, n in contents)))
    else:
        # A re-sent link for an archive delivered before its contents were recorded: the section
        # still says something true rather than standing empty.
        blocks.append(_p("El archivo LEEME.txt de la parte 1 describe todo lo que contiene."))
    blocks += [
        Heading("Cómo comprobar que cada archivo llegó completo (opcional)"),
        _p("Esta es la huella digital (SHA-256) de cada parte:"),
    ]
    for part in parts:
        blocks.append(_p(Code(part.file_name), f" ({spanish_size(part.size_bytes)}):"))
        blocks.append(Preformatted(part.sha256.strip().lower()))
    blocks += [
        *_how_to_check(
            "Cambie archivo.zip por el nombre de cada parte. Si el resultado es igual a su "
            "huella, esa parte está completa."
        ),
        *_care_and_help(support_email, request_id),
    ]
    return _email(
        to=to,
        subject=(
            f"Su respaldo de información de {clinic} está listo "
            f"({spanish_count(len(parts), 'parte', 'partes')})"
        ),
        blocks=blocks,
        from_email=from_email,
        reply_to=support_email,
        key=f"backup-{request_id}-delivered",
    )


def failed_email_to_requester(
    *,
    to: str,
    clinic_name: str,
    support_email: str,
    from_email: str,
    request_id: int,
    cancelled: bool = False,
) -> OutgoingEmail:
    """The backup could not be made (or support stopped it: `cancelled`, worded as the
    request's status_detail is); it does not count toward the limit."""
    clinic = _one_line(clinic_name) or "su clínica"
    what_happened = (
        _p(
            "Le informamos que el equipo de soporte detuvo la generación del respaldo de "
            "información de ",
            Strong(clinic),
            " que solicitó.",
        )
        if cancelled
        else _p(
            "Lamentamos informarle que no pudimos generar el respaldo de información de ",
            Strong(clinic),
            " que solicitó.",
        )
    )
    blocks: list[Block] = [
        _p("Hola:"),
        what_happened,
        _p(
            Strong(
                "Esta solicitud no cuenta para su límite de "
                f"{spanish_count(MAX_IN_WINDOW, 'respaldo', 'respaldos')} cada "
                f"{spanish_count(WINDOW.days, 'día', 'días')}."
            ),
            ""
            if cancelled
            else " Nuestro equipo de soporte ya está enterado y está trabajando para resolverlo.",
        ),
        _p(
            "Puede volver a solicitar el respaldo cuando quiera desde la plataforma, en "
            "FACTURACIÓN Y PLANES > RESPALDO DE INFORMACIÓN."
        ),
        _p(
            "Si tiene dudas, escríbanos a ",
            _mailto(support_email),
            f" o responda a este correo, e indique el número de solicitud {request_id}.",
        ),
        _SIGNATURE,
    ]
    return _email(
        to=to,
        subject=(
            f"Se detuvo la generación del respaldo de información de {clinic}"
            if cancelled
            else f"No pudimos generar el respaldo de información de {clinic}"
        ),
        blocks=blocks,
        from_email=from_email,
        reply_to=support_email,
        key=f"backup-{request_id}-failed",
    )


# ---------------------------------------------------------------------------------------------
# Support's alerts (English; ids only, never patient data)
# ---------------------------------------------------------------------------------------------


def _utc(moment: datetime) -> str:
    return f"{moment:%Y-%m-%d %H:%M} UTC"


def failure_alert_to_support(
    *,
    support_email: str,
    from_email: str,
    request_id: int,
    subscription_id: int,
    run_id: str | None,
    reason: str,
) -> OutgoingEmail:
    """A backup failed for good: which request, which run, and the reason the pipeline recorded."""
    blocks: list[Block] = [
        _p(f"Backup request {request_id} failed for good and is now marked 'failed'."),
        Bullets(
            (
                (f"Request: {request_id}",),
                (f"Subscription: {subscription_id}",),
                ("Run: ", Code(run_id or "none")),
                ("Reason: ", _one_line(reason)),
            )
        ),
        _p(
            "The requester is told that the backup could not be made, that it does not count "
            "toward their quota, and that they may request it again."
        ),
        _p(
            "Open the run in the Dagster UI to see the failing step. Once the cause is fixed, "
            "re-run the request or ask the clinic to request again."
        ),
    ]
    return _email(
        to=support_email,
        subject=f"[backup] Request {request_id} failed (subscription {subscription_id})",
        blocks=blocks,
        from_email=from_email,
        reply_to=None,
        key=f"backup-{request_id}-failure-alert",
    )


def late_alert_to_support(
    *,
    support_email: str,
    from_email: str,
    request_id: int,
    subscription_id: int,
    status: str,
    requested_at: datetime,
    run_id: str | None,
) -> OutgoingEmail:
    """A request is not delivered long after it was made: tell support before the clinic asks."""
    blocks: list[Block] = [
        _p(
            f"Backup request {request_id} was made at {_utc(requested_at)} and is still "
            f"'{_one_line(status)}'."
        ),
        Bullets(
            (
                (f"Request: {request_id}",),
                (f"Subscription: {subscription_id}",),
                (f"Requested at: {_utc(requested_at)}",),
                (f"Status: {_one_line(status)}",),
                ("Run: ", Code(run_id or "none yet")),
            )
        ),
        _p(
            "The clinic was told to expect the email within 48 hours. Check the run (or, with no "
            "run, the intake sensor) in the Dagster UI."
        ),
    ]
    return _email(
        to=support_email,
        subject=f"[backup] Request {request_id} not delivered yet ({_one_line(status)})",
        blocks=blocks,
        from_email=from_email,
        reply_to=None,
        key=f"backup-{request_id}-late-alert",
    )


def authorisation_revoked_to_support(
    *,
    support_email: str,
    from_email: str,
    request_id: int,
    subscription_id: int,
    run_id: str | None,
    reason_code: str,
    checked_at: str,
) -> OutgoingEmail:
    """The requester lost the authorisation while the backup ran: no link went out."""
    blocks: list[Block] = [
        _p(
            f"Backup request {request_id} was stopped {checked_at}: its requester is no longer "
            "authorised, so no link was sent and any archive made for it was deleted. The request "
            "is marked 'failed' (it does not count toward the quota); the requester is not emailed."
        ),
        Bullets(
            (
                (f"Request: {request_id}",),
                (f"Subscription: {subscription_id}",),
                ("Run: ", Code(run_id or "none")),
                (f"Reason: {_one_line(reason_code)}",),
            )
        ),
        _p(
            "Nothing to do unless the clinic says the authorisation was removed by mistake: then "
            "an authorised user may request a new backup."
        ),
    ]
    return _email(
        to=support_email,
        subject=f"[backup] Request {request_id} stopped: requester no longer authorised",
        blocks=blocks,
        from_email=from_email,
        reply_to=None,
        key=f"backup-{request_id}-revoked-alert",
    )
