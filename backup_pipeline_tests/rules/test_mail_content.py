"""What the emails say: Spanish dates and sizes, safe HTML, and a plain-text twin with the same facts."""

from __future__ import annotations

import re
import subprocess
import sys
from datetime import datetime
from zoneinfo import ZoneInfo

import lxml.html
import pytest

from backup_pipeline.rules import emails
from backup_pipeline.rules.emails import OutgoingEmail

LINK = (
    "https://storage.googleapis.com/archivos/respaldos/42.zip?X-Goog-Algorithm=GOOG4-RSA-SHA256"
    "&X-Goog-Expires=259200&X-Goog-Signature=0a1b2c&response-content-disposition=attachment"
)
SHA = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"


def delivered(**overrides: object) -> OutgoingEmail:
    fields: dict[str, object] = {
        "to": "ana.lopez@example.mx",
        "clinic_name": "Clínica Dental Peña",
        "link": LINK,
        "expires_at_local": datetime(2026, 11, 28, 14, 30, tzinfo=ZoneInfo("America/Mexico_City")),
        "timezone_label": "America/Mexico_City",
        "size_bytes": 12_900_000,
        "sha256": SHA,
        "contents": [("Pacientes", 1234), ("Consultas", 56_789), ("Archivos adjuntos", 0)],
        "support_email": "soporte@clinica.example",
        "from_email": "Respaldos <respaldos@clinica.example>",
        "request_id": 42,
    }
    fields.update(overrides)
    return emails.delivered_email(**fields)  # type: ignore[arg-type]


def failed(**overrides: object) -> OutgoingEmail:
    fields: dict[str, object] = {
        "to": "ana.lopez@example.mx",
        "clinic_name": "Clínica Dental Peña",
        "support_email": "soporte@clinica.example",
        "from_email": "respaldos@clinica.example",
        "request_id": 42,
    }
    fields.update(overrides)
    return emails.failed_email_to_requester(**fields)  # type: ignore[arg-type]


def failure_alert(**overrides: object) -> OutgoingEmail:
    fields: dict[str, object] = {
        "support_email": "soporte@clinica.example",
        "from_email": "respaldos@clinica.example",
        "request_id": 42,
        "subscription_id": 7,
        "run_id": "5f1c9e0a-run",
        "reason": "step=assemble_backup error=TimeoutError",
    }
    fields.update(overrides)
    return emails.failure_alert_to_support(**fields)  # type: ignore[arg-type]


def late_alert(**overrides: object) -> OutgoingEmail:
    fields: dict[str, object] = {
        "support_email": "soporte@clinica.example",
        "from_email": "respaldos@clinica.example",
        "request_id": 42,
        "subscription_id": 7,
        "status": "running",
        "requested_at": datetime(2026, 11, 27, 9, 5),
        "run_id": "5f1c9e0a-run",
    }
    fields.update(overrides)
    return emails.late_alert_to_support(**fields)  # type: ignore[arg-type]


ALL_EMAILS = [delivered, failed, failure_alert, late_alert]


def visible_text(html: str) -> str:
    """What a reader of the HTML part sees (the body, not the <title>), one block per line."""
    body = lxml.html.document_fromstring(html).body
    for block in body.iter("p", "li", "h2", "ul", "div", "br"):
        block.tail = "\n" + (block.tail or "")
    return body.text_content()


def words(text: str) -> set[str]:
    return set(re.findall(r"\w+", text.lower()))


# ---------------------------------------------------------------------------------------------
# Numbers and dates in Spanish
# ---------------------------------------------------------------------------------------------


def test_expiry_is_written_in_spanish_in_the_clinics_time_in_both_parts() -> None:
    email = delivered(
        expires_at_local=datetime(2026, 11, 28, 14, 30, tzinfo=ZoneInfo("America/Mexico_City"))
    )

    expected = "28 de noviembre de 2026, 14:30, hora central (Ciudad de México)"
    assert expected in email.text
    assert expected in visible_text(email.html)


def test_the_time_zone_is_named_in_spanish_never_by_its_iana_id() -> None:
    moment = datetime(2027, 1, 1, 1, 5, tzinfo=ZoneInfo("America/Tijuana"))
    email = delivered(expires_at_local=moment, timezone_label="America/Tijuana")

    assert "1 de enero de 2027, 01:05, hora del Pacífico (Tijuana)" in email.text
    for part in (email.text, email.html):
        assert "America/" not in part
        assert "_" not in visible_text(email.html)


# ---------------------------------------------------------------------------------------------
# The delivered email
# ---------------------------------------------------------------------------------------------


def test_delivered_email_is_addressed_and_keyed_for_the_request() -> None:
    email = delivered()

    assert email.to == "ana.lopez@example.mx"
    assert email.subject == "Su respaldo de información de Clínica Dental Peña está listo"
    assert email.reply_to == "soporte@clinica.example"
    assert email.from_email == "Respaldos <respaldos@clinica.example>"
    assert email.key == "backup-42-delivered"


def test_link_is_in_both_parts_exactly_as_signed() -> None:
    email = delivered()

    assert LINK in email.text.splitlines()
    hrefs = lxml.html.document_fromstring(email.html).xpath("//a/@href")
    assert LINK in hrefs  # the attribute decodes &amp; back to the signed query string
    assert LINK in visible_text(email.html)  # printed too, for clients that hide buttons


def test_delivered_email_states_size_checksum_how_to_verify_contents_and_support() -> None:
    email = delivered()

    for part in (email.text, visible_text(email.html)):
        assert "12.3 MB" in part
        assert SHA in part
        assert "certutil -hashfile archivo.zip SHA256" in part
        assert "shasum -a 256 archivo.zip" in part
        assert "Pacientes: 1,234" in part
        assert "Consultas: 56,789" in part
        assert "Archivos adjuntos: 0" in part
        assert "soporte@clinica.example" in part
        assert "número de solicitud 42" in part
        assert "no se puede volver a usar" in part
        assert "lo antes posible" in part


def test_support_address_is_a_mailto_link() -> None:
    hrefs = lxml.html.document_fromstring(delivered().html).xpath("//a/@href")

    assert "mailto:soporte@clinica.example" in hrefs


def test_checksum_is_shown_in_lowercase_whatever_its_input_case() -> None:
    assert SHA in delivered(sha256=SHA.upper()).text


def test_delivered_email_without_contents_still_states_the_size() -> None:
    email = delivered(contents=[])

    assert "El archivo .zip pesa 12.3 MB." in email.text


def _parts(count: int) -> list[emails.PartLink]:
    return [
        emails.PartLink(f"{LINK}&part={i}", f"respaldo_parte-{i}-de-{count}.zip", 4_000_000, SHA)
        for i in range(1, count + 1)
    ]


def test_an_email_in_parts_counts_its_zips_in_agreement() -> None:
    email = delivered(parts=_parts(2))

    assert email.subject.endswith("está listo (2 partes)")
    assert "llega en 2 archivos .zip (partes)" in email.text
    assert "Descargar la parte 2 de 2" in email.text


def test_an_email_in_parts_without_a_contents_list_still_says_where_the_contents_are() -> None:
    text = delivered(parts=_parts(3), contents=[]).text

    section = text.split("Qué contiene\n------------\n\n", 1)[1].split("\n\n", 1)[0]
    assert section == "El archivo LEEME.txt de la parte 1 describe todo lo que contiene."


@pytest.mark.parametrize("link", ["javascript:alert(1)", "data:text/html,hola", "ftp://x/y.zip"])
def test_a_link_that_is_not_http_is_refused(link: str) -> None:
    with pytest.raises(ValueError, match="http"):
        delivered(link=link)


def test_a_checksum_that_is_not_sha256_is_refused() -> None:
    with pytest.raises(ValueError, match="sha256"):
        delivered(sha256="1234")


# ---------------------------------------------------------------------------------------------
# Hostile names
# ---------------------------------------------------------------------------------------------

HOSTILE_NAMES = [
    "<script>alert('x')</script>",
    "Dr. O'Neil & Hijos",
    '"><img src=x onerror=alert(1)>',
    "Clínica <b>Sonrisas</b> & Asociados",
]


@pytest.mark.parametrize("name", HOSTILE_NAMES)
@pytest.mark.parametrize("build", [delivered, failed], ids=["delivered", "failed"])
def test_clinic_name_renders_as_text_never_as_markup(build, name: str) -> None:
    email = build(clinic_name=name)

    doc = lxml.html.document_fromstring(email.html)
    assert doc.xpath("//script | //img | //b") == []
    assert doc.xpath("//@onerror") == []
    assert name in doc.body.text_content()
    assert name in email.text
    assert name in email.subject


@pytest.mark.parametrize("build", [delivered, failed], ids=["delivered", "failed"])
def test_line_breaks_in_a_clinic_name_cannot_reach_the_subject(build) -> None:
    email = build(clinic_name="Clínica\r\nBcc: otro@example.mx\n  Sur")

    assert "\r" not in email.subject
    assert "\n" not in email.subject
    assert "Clínica Bcc: otro@example.mx Sur" in email.subject


@pytest.mark.parametrize("build", [delivered, failed], ids=["delivered", "failed"])
def test_empty_clinic_name_reads_as_tu_clinica(build) -> None:
    assert "de su clínica" in build(clinic_name="  ").subject


def test_support_alert_reason_renders_as_text() -> None:
    email = failure_alert(reason="error=<ValueError> & more")

    doc = lxml.html.document_fromstring(email.html)
    assert "error=<ValueError> & more" in doc.body.text_content()
    assert doc.xpath("//valueerror") == []


# ---------------------------------------------------------------------------------------------
# The plain-text twin
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("build", ALL_EMAILS, ids=lambda f: f.__name__)
def test_plain_text_and_html_carry_the_same_words(build) -> None:
    email = build()

    assert words(email.text) == words(visible_text(email.html))


@pytest.mark.parametrize("build", ALL_EMAILS, ids=lambda f: f.__name__)
def test_html_part_is_a_complete_spanish_or_english_document(build) -> None:
    email = build()

    doc = lxml.html.document_fromstring(email.html)
    assert doc.xpath("string(//title)") == email.subject
    assert doc.xpath("//meta/@charset") == ["utf-8"]
    assert email.html.startswith("<!DOCTYPE html>")


# ---------------------------------------------------------------------------------------------
# The failure email to the clinic
# ---------------------------------------------------------------------------------------------


def test_failed_email_says_it_does_not_count_support_knows_and_they_may_ask_again() -> None:
    email = failed()

    assert email.subject == "No pudimos generar el respaldo de información de Clínica Dental Peña"
    assert email.reply_to == "soporte@clinica.example"
    assert email.key == "backup-42-failed"
    for part in (email.text, visible_text(email.html)):
        assert "no cuenta para su límite de 2 respaldos cada 360 días" in part
        assert "soporte ya está enterado" in part
        assert "Puede volver a solicitar el respaldo" in part
        assert "soporte@clinica.example" in part


def test_failed_email_carries_no_technical_words() -> None:
    email = failed()

    assert not words(email.text) & {"error", "exception", "traceback", "run", "dagster", "step"}


# ---------------------------------------------------------------------------------------------
# Support's alerts
# ---------------------------------------------------------------------------------------------


def test_failure_alert_goes_to_support_with_ids_and_reason_only() -> None:
    email = failure_alert()

    assert email.to == "soporte@clinica.example"
    assert email.reply_to is None
    assert email.key == "backup-42-failure-alert"
    assert email.subject == "[backup] Request 42 failed (subscription 7)"
    for fact in ("Request: 42", "Subscription: 7", "5f1c9e0a-run", "step=assemble_backup"):
        assert fact in email.text
        assert fact in visible_text(email.html)


def test_failure_alert_without_a_run_says_none() -> None:
    assert "Run: none" in failure_alert(run_id=None).text


def test_late_alert_names_the_request_its_status_and_when_it_was_made() -> None:
    email = late_alert()

    assert email.to == "soporte@clinica.example"
    assert email.key == "backup-42-late-alert"
    assert email.subject == "[backup] Request 42 not delivered yet (running)"
    for fact in ("Requested at: 2026-11-27 09:05 UTC", "Status: running", "5f1c9e0a-run"):
        assert fact in email.text
        assert fact in visible_text(email.html)


def test_late_alert_for_a_request_never_launched_says_no_run_yet() -> None:
    assert "Run: none yet" in late_alert(status="pending", run_id=None).text


# ---------------------------------------------------------------------------------------------
# Purity
# ---------------------------------------------------------------------------------------------


def test_email_content_module_imports_neither_dagster_nor_a_mail_client() -> None:
    code = (
        "import sys, backup_pipeline.rules.emails; "
        "bad = [m for m in ('dagster', 'sendgrid', 'python_http_client') if m in sys.modules]; "
        "print(','.join(bad))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )

    assert result.stdout.strip() == ""
