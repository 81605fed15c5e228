"""The mail adapters: one suite on the outbox and a loopback SendGrid, then each backend's own rules."""

from __future__ import annotations

import email
import email.policy
import logging
import os
import re
import stat

import dagster as dg
import pytest

from backup_pipeline.mail import (
    MailError,
    OutboxTransport,
    OutgoingEmail,
    SendGridTransport,
    open_transport,
)
from backup_pipeline.resources.mailer import MailerResource
from backup_pipeline.settings import Settings
from backup_pipeline_tests.support.sendgrid import (
    DUMMY_API_KEY,
    STALL,
    MailerUnderTest,
    SendGridEndpoint,
    closed_port,
    read_outbox,
)

RECIPIENT = "dueña.clinica@example.mx"


def spanish_email(key: str | None = "backup-42-delivered", **overrides: str) -> OutgoingEmail:
    fields = {
        "to": "ana.lopez@example.mx",
        "subject": "Su respaldo de información de Clínica Dental Peña está listo",
        "text": "Hola:\n\nEl respaldo de información ya está listo: acentos áéíóú ñ ü ¿¡.\n",
        "html": "<p>Hola:</p><p>El respaldo de información ya está listo: áéíóú ñ ü ¿¡.</p>\n",
        "from_email": "Respaldos Clínica <respaldos@clinica.example>",
        "reply_to": "soporte@clinica.example",
    }
    fields.update(overrides)
    return OutgoingEmail(key=key, **fields)


# ---------------------------------------------------------------------------------------------
# Both backends
# ---------------------------------------------------------------------------------------------


def test_email_arrives_with_its_headers_both_bodies_and_accents(mailer: MailerUnderTest) -> None:
    sent = spanish_email()
    message_id = mailer.mailer.send(sent)

    [received] = mailer.sent()
    assert received.to == sent.to
    assert received.from_address == "respaldos@clinica.example"
    assert received.reply_to == "soporte@clinica.example"
    assert received.subject == sent.subject
    assert received.text == sent.text
    assert received.html == sent.html
    assert received.key == "backup-42-delivered"
    assert received.message_id == message_id


def test_each_send_is_its_own_message_with_its_own_id(mailer: MailerUnderTest) -> None:
    first = mailer.mailer.send(spanish_email())
    second = mailer.mailer.send(spanish_email())

    assert first != second
    assert [m.message_id for m in mailer.sent()] == [first, second]


def test_email_without_reply_to_or_key_is_sent(mailer: MailerUnderTest) -> None:
    mailer.mailer.send(spanish_email(key=None, reply_to=None))

    [received] = mailer.sent()
    assert received.reply_to is None
    assert received.key is None


@pytest.mark.parametrize(
    "field", [{"to": "a@example.mx\r\nBcc: b@example.mx"}, {"subject": "Hola\nBcc: b@example.mx"}]
)
def test_line_break_in_a_header_is_refused_for_good(
    mailer: MailerUnderTest, field: dict[str, str]
) -> None:
    with pytest.raises(MailError) as error:
        mailer.mailer.send(spanish_email(**field))

    assert error.value.transient is False
    assert "example.mx" not in str(error.value)
    assert mailer.sent() == []


def test_mailer_url_reopens_the_same_backend(mailer: MailerUnderTest) -> None:
    assert type(open_transport(mailer.mailer.url)) is type(mailer.mailer)


# ---------------------------------------------------------------------------------------------
# SendGrid
# ---------------------------------------------------------------------------------------------


def test_sendgrid_payload_follows_the_v3_mail_send_schema(
    sendgrid_endpoint: SendGridEndpoint,
) -> None:
    sent = spanish_email(to=RECIPIENT)
    open_transport(sendgrid_endpoint.url).send(sent)

    [payload] = sendgrid_endpoint.requests
    assert payload["personalizations"] == [{"to": [{"email": RECIPIENT}]}]
    assert payload["from"] == {"email": "respaldos@clinica.example", "name": "Respaldos Clínica"}
    assert payload["reply_to"] == {"email": "soporte@clinica.example"}
    assert payload["subject"] == sent.subject
    assert payload["content"] == [
        {"type": "text/plain", "value": sent.text},
        {"type": "text/html", "value": sent.html},
    ]
    assert payload["custom_args"] == {"key": "backup-42-delivered"}


def test_sendgrid_does_not_rewrite_the_download_link_for_click_tracking(
    sendgrid_endpoint: SendGridEndpoint,
) -> None:
    open_transport(sendgrid_endpoint.url).send(spanish_email())

    [payload] = sendgrid_endpoint.requests
    assert payload["tracking_settings"]["click_tracking"] == {"enable": False, "enable_text": False}


def test_sendgrid_authenticates_with_the_api_key_from_the_environment(
    sendgrid_endpoint: SendGridEndpoint,
) -> None:
    open_transport(sendgrid_endpoint.url).send(spanish_email())

    [request] = sendgrid_endpoint.recorded
    assert request.path == "/v3/mail/send"
    assert request.headers["Authorization"] == f"Bearer {DUMMY_API_KEY}"
    assert request.headers["Content-Type"] == "application/json"


def test_sendgrid_returns_the_x_message_id_it_answered(sendgrid_endpoint: SendGridEndpoint) -> None:
    message_id = open_transport(sendgrid_endpoint.url).send(spanish_email())

    assert message_id == sendgrid_endpoint.recorded[0].message_id


@pytest.mark.parametrize(
    ("status", "transient"),
    [(429, True), (500, True), (503, True), (400, False), (401, False), (413, False), (422, False)],
)
def test_sendgrid_refusal_is_transient_only_for_429_and_5xx(
    sendgrid_endpoint: SendGridEndpoint, status: int, transient: bool
) -> None:
    sendgrid_endpoint.script([status])

    with pytest.raises(MailError) as error:
        open_transport(sendgrid_endpoint.url).send(spanish_email(to=RECIPIENT))

    assert error.value.transient is transient
    assert error.value.status == status
    message = str(error.value)
    assert str(status) in message
    assert "backup-42-delivered" in message
    # The fake's error body quotes the recipient, as SendGrid's validation errors can.
    assert RECIPIENT not in message
    assert DUMMY_API_KEY not in message


def test_sendgrid_succeeds_on_retry_after_a_transient_refusal(
    sendgrid_endpoint: SendGridEndpoint,
) -> None:
    sendgrid_endpoint.script([429])
    mailer = open_transport(sendgrid_endpoint.url)

    with pytest.raises(MailError):
        mailer.send(spanish_email())
    message_id = mailer.send(spanish_email())

    assert [r.status for r in sendgrid_endpoint.recorded] == [429, 202]
    assert message_id == sendgrid_endpoint.recorded[1].message_id


def test_sendgrid_connection_refused_is_transient(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SENDGRID_API_KEY", DUMMY_API_KEY)
    mailer = open_transport(f"sendgrid://127.0.0.1:{closed_port()}?scheme=http")

    with pytest.raises(MailError) as error:
        mailer.send(spanish_email(to=RECIPIENT))

    assert error.value.transient is True
    assert error.value.status is None
    assert RECIPIENT not in str(error.value)


def test_sendgrid_request_that_gets_no_answer_times_out_as_transient(
    sendgrid_endpoint: SendGridEndpoint,
) -> None:
    sendgrid_endpoint.script([STALL])
    mailer = open_transport(f"{sendgrid_endpoint.url}&timeout=0.3")

    with pytest.raises(MailError) as error:
        mailer.send(spanish_email())

    assert error.value.transient is True


def test_sendgrid_logs_neither_the_api_key_nor_the_recipient(
    sendgrid_endpoint: SendGridEndpoint, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    sendgrid_endpoint.script([400])
    mailer = open_transport(sendgrid_endpoint.url)

    with pytest.raises(MailError):
        mailer.send(spanish_email(to=RECIPIENT))
    mailer.send(spanish_email(to=RECIPIENT))

    assert DUMMY_API_KEY not in caplog.text
    assert RECIPIENT not in caplog.text
    assert DUMMY_API_KEY not in repr(mailer)


def test_sendgrid_host_comes_from_the_environment_when_the_url_has_none(
    sendgrid_endpoint: SendGridEndpoint, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BACKUP_SENDGRID_HOST", sendgrid_endpoint.base_url)

    open_transport("sendgrid://").send(spanish_email())

    assert len(sendgrid_endpoint.requests) == 1


def test_sendgrid_defaults_to_the_public_api_over_https(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SENDGRID_API_KEY", DUMMY_API_KEY)
    monkeypatch.delenv("BACKUP_SENDGRID_HOST", raising=False)

    mailer = open_transport("sendgrid://")
    eu = open_transport("sendgrid://api.eu.sendgrid.com")

    assert isinstance(mailer, SendGridTransport)
    assert mailer.host == "https://api.sendgrid.com"
    assert mailer.url == "sendgrid://"
    assert isinstance(eu, SendGridTransport)
    assert eu.host == "https://api.eu.sendgrid.com"


def test_sendgrid_without_api_key_is_a_configuration_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("SENDGRID_API_KEY", raising=False)

    with pytest.raises(ValueError, match="SENDGRID_API_KEY"):
        open_transport("sendgrid://")


@pytest.mark.parametrize(
    ("url", "complaint"),
    [
        ("sendgrid://apikey:SG.secret@api.sendgrid.com", "SENDGRID_API_KEY"),
        ("sendgrid://?api_key=SG.secret", "SENDGRID_API_KEY"),
        ("sendgrid://mail.example.com?scheme=http", "loopback"),
        ("sendgrid://127.0.0.1:8025?scheme=ftp", "https or http"),
        ("sendgrid://127.0.0.1:8025?timeout=soon", "seconds"),
        ("sendgrid://api.sendgrid.com/v3", "no path"),
    ],
)
def test_sendgrid_url_mistakes_are_explained(
    monkeypatch: pytest.MonkeyPatch, url: str, complaint: str
) -> None:
    monkeypatch.setenv("SENDGRID_API_KEY", DUMMY_API_KEY)

    with pytest.raises(ValueError, match=complaint) as error:
        open_transport(url)

    assert "SG.secret" not in str(error.value)


def test_plain_http_host_from_the_environment_must_be_loopback(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("SENDGRID_API_KEY", DUMMY_API_KEY)
    monkeypatch.setenv("BACKUP_SENDGRID_HOST", "http://mail.example.com")

    with pytest.raises(ValueError, match="loopback"):
        open_transport("sendgrid://")


def test_unknown_mail_scheme_names_the_supported_ones() -> None:
    with pytest.raises(ValueError, match=r"'smtp'.*file:///.*sendgrid://") as error:
        open_transport("smtp://user:hunter2@mail.example.com")

    assert "hunter2" not in str(error.value)


# ---------------------------------------------------------------------------------------------
# Outbox
# ---------------------------------------------------------------------------------------------


def test_the_default_sender_has_a_spanish_display_name(tmp_path) -> None:
    sender = Settings.from_env({}).from_email
    assert sender == "Respaldo de información <respaldos@clinica.example>"

    OutboxTransport(tmp_path).send(spanish_email(from_email=sender))
    [path] = tmp_path.iterdir()
    msg = email.message_from_bytes(path.read_bytes(), policy=email.policy.strict)
    assert msg["From"].addresses[0].display_name == "Respaldo de información"


def test_outbox_file_is_a_strict_rfc5322_message_named_without_the_recipient(tmp_path) -> None:
    outbox = tmp_path / "outbox"
    message_id = OutboxTransport(outbox).send(spanish_email(to=RECIPIENT))

    [path] = outbox.iterdir()
    assert re.fullmatch(r"\d{8}T\d{12}Z_backup-42-delivered\.eml", path.name)
    data = path.read_bytes()
    assert data.isascii()  # 7-bit clean: the accents travel encoded
    assert b"\n" not in data.replace(b"\r\n", b"")  # CRLF line ends, as RFC 5322 wants
    msg = email.message_from_bytes(data, policy=email.policy.strict)
    assert msg.defects == []
    assert all(part.defects == [] for part in msg.walk())
    assert msg["Message-ID"] == message_id
    assert msg["Date"].datetime.tzinfo is not None
    assert msg["To"].addresses[0].addr_spec == RECIPIENT
    # The sender's display name keeps its accents, RFC 2047-encoded in a 7-bit header.
    assert msg["From"].addresses[0].display_name == "Respaldos Clínica"
    assert msg["From"].addresses[0].addr_spec == "respaldos@clinica.example"
    assert b"From: Respaldos =?utf-8?q?Cl=C3=ADnica?= <respaldos@clinica.example>" in data
    assert msg.get_content_type() == "multipart/alternative"
    assert [p.get_content_type() for p in msg.iter_parts()] == ["text/plain", "text/html"]
    assert "ñ" in msg.get_body(("plain",)).get_content()


def test_outbox_names_a_file_by_hash_when_the_key_is_missing_or_not_a_plain_token(
    tmp_path,
) -> None:
    mailer = OutboxTransport(tmp_path)
    mailer.send(spanish_email(key=None))
    mailer.send(spanish_email(key=f"resend-to-{RECIPIENT}"))

    names = sorted(p.name for p in tmp_path.iterdir())
    assert len(names) == 2
    for name in names:
        assert re.fullmatch(r"\d{8}T\d{12}Z_[0-9a-f]{16}\.eml", name), name


def test_outbox_leaves_no_temporary_file_and_keeps_the_link_private(tmp_path) -> None:
    OutboxTransport(tmp_path).send(spanish_email())

    [path] = tmp_path.iterdir()
    assert path.suffix == ".eml"
    if os.name == "posix":
        assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_outbox_url_with_percent_escapes_is_the_folder_it_names(tmp_path) -> None:
    outbox = tmp_path / "buzón de salida"
    mailer = open_transport(outbox.as_uri())
    mailer.send(spanish_email())

    assert isinstance(mailer, OutboxTransport)
    assert len(read_outbox(outbox)) == 1


def test_outbox_that_cannot_be_written_is_a_transient_mail_error(tmp_path) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")

    with pytest.raises(MailError) as error:
        OutboxTransport(blocker / "outbox").send(spanish_email())

    assert error.value.transient is True


# ---------------------------------------------------------------------------------------------
# Dagster resource
# ---------------------------------------------------------------------------------------------


def test_resource_builds_one_mailer_per_instance(tmp_path) -> None:
    resource = MailerResource(
        url=tmp_path.as_uri(), from_email="r@clinica.example", support_email="s@clinica.example"
    )
    other = MailerResource(
        url=tmp_path.as_uri(), from_email="r@clinica.example", support_email="s@clinica.example"
    )

    assert resource.get_mailer() is resource.get_mailer()
    assert resource.get_mailer() is not other.get_mailer()


def test_resource_sends_from_an_op(sendgrid_endpoint: SendGridEndpoint) -> None:
    @dg.op
    def send_notice(mailer: MailerResource) -> str:
        return mailer.get_mailer().send(
            spanish_email(from_email=mailer.from_email, reply_to=mailer.support_email)
        )

    @dg.job
    def notify() -> None:
        send_notice()

    resource = MailerResource(
        url=sendgrid_endpoint.url,
        from_email="respaldos@clinica.example",
        support_email="soporte@clinica.example",
    )
    result = notify.execute_in_process(resources={"mailer": resource})

    assert result.output_for_node("send_notice") == sendgrid_endpoint.recorded[0].message_id
    assert sendgrid_endpoint.requests[0]["reply_to"] == {"email": "soporte@clinica.example"}
