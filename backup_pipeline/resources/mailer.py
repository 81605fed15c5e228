"""Sending email behind one small interface: SendGrid (sendgrid://) or an outbox folder of .eml files (file://).

Mail URLs (BACKUP_MAIL_URL):

- ``file:///var/backups/outbox``: every email becomes one ``.eml`` file (RFC 5322) in that folder,
  named ``<UTC timestamp>_<key>.eml``; for development, demos and tests.
- ``sendgrid://``: SendGrid's v3 Mail Send API at https://api.sendgrid.com. The API key is read
  from the ``SENDGRID_API_KEY`` environment variable only; a URL carrying credentials is refused,
  so the key never shows up in Dagster's resource config, run logs or the UI.
- ``sendgrid://HOST[:PORT]``: another API host, e.g. ``sendgrid://api.eu.sendgrid.com`` for EU
  data residency. HTTPS unless ``?scheme=http`` is given, which is accepted for loopback hosts
  only (``sendgrid://127.0.0.1:8025?scheme=http``: a local fake in tests), because the key travels
  in the Authorization header.
- ``?timeout=SECONDS`` (default 30) bounds each request, so a hung connection becomes a transient
  MailError instead of a hung run.

When the URL names no host, the ``BACKUP_SENDGRID_HOST`` environment variable may give a base URL
(``http://127.0.0.1:8025`` with the same loopback rule); a host in the URL wins over it.
"""

from __future__ import annotations

import abc
import hashlib
import http.client
import ipaddress
import json
import logging
import os
import re
import tempfile
from collections.abc import Mapping
from datetime import UTC, datetime
from email import policy as email_policy
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid, parseaddr
from pathlib import Path
from urllib.parse import parse_qs, urlsplit
from urllib.request import url2pathname

import dagster as dg
import python_http_client
import sendgrid
from pydantic import Field, PrivateAttr
from sendgrid.helpers.mail import (
    ClickTracking,
    CustomArg,
    From,
    Mail,
    ReplyTo,
    To,
    TrackingSettings,
)

# What an email is belongs to the domain (backup_pipeline.mail builds them); the adapters here only
# send it. Re-exported so that callers keep importing it from the mail interface.
from backup_pipeline.mail import OutgoingEmail
from backup_pipeline.settings import secret_environment

__all__ = [
    "MailError",
    "Mailer",
    "MailerResource",
    "OutboxMailer",
    "OutgoingEmail",
    "SendGridMailer",
    "open_mailer",
]

API_KEY_ENV = "SENDGRID_API_KEY"
HOST_ENV = "BACKUP_SENDGRID_HOST"
DEFAULT_SENDGRID_HOST = "https://api.sendgrid.com"
DEFAULT_TIMEOUT_SECONDS = 30.0


class MailError(Exception):
    """Sending failed. transient=True means a retry may succeed (429, 5xx, timeouts)."""

    def __init__(self, message: str, *, transient: bool, status: int | None = None) -> None:
        super().__init__(message)
        self.transient = transient
        self.status = status


class Mailer(abc.ABC):
    url: str

    @abc.abstractmethod
    def send(self, email: OutgoingEmail) -> str:
        """Send the email and return its message id. Raises MailError."""


def _check_single_line_headers(email: OutgoingEmail) -> None:
    """A line break in a header value would let it add headers (Bcc:) or split the message."""
    for name in ("to", "from_email", "reply_to", "subject"):
        value = getattr(email, name) or ""
        if "\r" in value or "\n" in value:
            raise MailError(
                f"email {email.key or '(no key)'} has a line break in its {name} header; refused",
                transient=False,
            )


# ---------------------------------------------------------------------------------------------
# Outbox: one .eml file per email
# ---------------------------------------------------------------------------------------------

_SAFE_KEY = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")


def _sender_domain(from_email: str) -> str:
    address = parseaddr(from_email)[1]
    domain = address.rpartition("@")[2]
    # make_msgid() would otherwise ask DNS for this machine's FQDN on every call.
    return domain or "backup-pipeline.invalid"


def build_message(mail: OutgoingEmail, *, message_id: str, date: datetime) -> EmailMessage:
    """The RFC 5322 message: text/plain with a text/html alternative, UTF-8 throughout."""
    msg = EmailMessage()
    msg["From"] = mail.from_email
    msg["To"] = mail.to
    if mail.reply_to:
        msg["Reply-To"] = mail.reply_to
    msg["Subject"] = mail.subject
    msg["Date"] = format_datetime(date)
    msg["Message-ID"] = message_id
    if mail.key:
        msg["X-Backup-Key"] = mail.key
    # Quoted-printable keeps the file 7-bit clean while the Spanish stays legible in a text editor.
    msg.set_content(mail.text, subtype="plain", charset="utf-8", cte="quoted-printable")
    msg.add_alternative(mail.html, subtype="html", charset="utf-8", cte="quoted-printable")
    return msg


class OutboxMailer(Mailer):
    """Writes each email to `directory` as `<UTC timestamp>_<key or message-id hash>.eml`."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        self.url = self.directory.resolve().as_uri()

    def send(self, email: OutgoingEmail) -> str:
        _check_single_line_headers(email)
        now = datetime.now(UTC)
        message_id = make_msgid(domain=_sender_domain(email.from_email))
        try:
            data = build_message(email, message_id=message_id, date=now).as_bytes(
                policy=email_policy.SMTP
            )
        except (ValueError, TypeError) as exc:
            # e.g. a line break in a header value; the exception text may quote the address.
            raise MailError(
                f"email {email.key or '(no key)'} cannot be written as a message: "
                f"{type(exc).__name__}",
                transient=False,
            ) from None
        try:
            return self._write(data, now, email.key, message_id)
        except OSError as exc:
            raise MailError(
                f"could not write to the outbox {self.directory}: {exc.strerror or exc}",
                transient=True,
            ) from exc

    def _write(self, data: bytes, now: datetime, key: str | None, message_id: str) -> str:
        self.directory.mkdir(parents=True, exist_ok=True)
        id_hash = hashlib.sha256(message_id.encode()).hexdigest()[:16]
        # The name never carries the recipient: only our own key, or a hash when the key is not
        # a plain token.
        if key and _SAFE_KEY.fullmatch(key):
            label = key
        elif key:
            label = hashlib.sha256(key.encode()).hexdigest()[:16]
        else:
            label = id_hash
        stamp = now.strftime("%Y%m%dT%H%M%S%fZ")
        target = self.directory / f"{stamp}_{label}.eml"
        if target.exists():  # the same key twice in one microsecond: keep both
            target = self.directory / f"{stamp}_{label}_{id_hash}.eml"
        # A temporary file in the same folder, then one rename: a reader of the outbox sees a
        # whole message or nothing. mkstemp's 0600 also suits a file holding a download link.
        fd, tmp = tempfile.mkstemp(dir=self.directory, prefix=".", suffix=".eml.tmp")
        try:
            with os.fdopen(fd, "wb") as out:
                out.write(data)
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return message_id


# ---------------------------------------------------------------------------------------------
# SendGrid v3 Mail Send
# ---------------------------------------------------------------------------------------------


class _DropWireLogs(logging.Filter):
    """python_http_client logs every request's headers (the API key) and payload (addresses and
    the signed link) at DEBUG; none of that may reach our logs, whatever level they run at."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno > logging.DEBUG


def _silence_wire_logs() -> None:
    logger = logging.getLogger("python_http_client.client")
    if not any(isinstance(f, _DropWireLogs) for f in logger.filters):
        logger.addFilter(_DropWireLogs())


def _is_loopback(hostname: str) -> bool:
    if hostname.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(hostname).is_loopback
    except ValueError:
        return False


def _check_host(host: str) -> str:
    parts = urlsplit(host)
    if parts.scheme not in ("https", "http") or not parts.hostname:
        raise ValueError(f"SendGrid host must be an http(s) base URL, got {host!r}")
    if parts.username or parts.password or parts.query or parts.path.strip("/"):
        raise ValueError(f"SendGrid host must be a bare base URL such as {DEFAULT_SENDGRID_HOST}")
    if parts.scheme == "http" and not _is_loopback(parts.hostname):
        raise ValueError(
            "plain http to SendGrid would send the API key unencrypted; it is allowed for "
            f"loopback hosts only, got {parts.hostname!r}"
        )
    return f"{parts.scheme}://{parts.netloc}"


_ADDRESS = re.compile(r"[^\s@<>\"']+@[^\s@<>\"']+")


def _provider_errors(body: bytes | None) -> str:
    """SendGrid's own explanation ("field: message"), with any address in it blanked out."""
    try:
        errors = json.loads(body or b"{}").get("errors") or []
    except (ValueError, AttributeError):
        return ""
    details = [
        f"{e.get('field') or '-'}: {e.get('message') or ''}".strip()
        for e in errors
        if isinstance(e, dict)
    ]
    text = _ADDRESS.sub("<address>", "; ".join(details))
    return f" ({text[:300]})" if text else ""


class SendGridMailer(Mailer):
    """Sends through SendGrid's v3 /mail/send with the official client."""

    def __init__(
        self, api_key: str, host: str | None = None, *, timeout: float = DEFAULT_TIMEOUT_SECONDS
    ) -> None:
        if not api_key:
            raise ValueError(f"a SendGrid API key is required (set {API_KEY_ENV})")
        if timeout <= 0:
            raise ValueError(f"timeout must be positive, got {timeout}")
        self.host = _check_host(host or DEFAULT_SENDGRID_HOST)
        self.timeout = timeout
        parts = urlsplit(self.host)
        if self.host == DEFAULT_SENDGRID_HOST:
            self.url = "sendgrid://"
        else:
            self.url = f"sendgrid://{parts.netloc}" + (
                "?scheme=http" if parts.scheme == "http" else ""
            )
        _silence_wire_logs()
        # The key lives only inside the client's Authorization header, not on this object.
        self._client = sendgrid.SendGridAPIClient(api_key=api_key, host=self.host)

    def __repr__(self) -> str:
        return f"SendGridMailer(host={self.host!r})"

    @staticmethod
    def build_mail(email: OutgoingEmail) -> Mail:
        mail = Mail(
            from_email=From(email.from_email),
            to_emails=To(email.to),
            subject=email.subject,
            plain_text_content=email.text,
            html_content=email.html,
        )
        if email.reply_to:
            mail.reply_to = ReplyTo(email.reply_to)
        if email.key:
            mail.custom_arg = CustomArg("key", email.key)
        # The download link is a bearer credential to patient data: it must reach the clinic as
        # we signed it, not rewritten through a click-tracking redirect that logs it.
        mail.tracking_settings = TrackingSettings(click_tracking=ClickTracking(False, False))
        return mail

    def send(self, email: OutgoingEmail) -> str:
        what = f"email {email.key or '(no key)'}"
        _check_single_line_headers(email)
        body = self.build_mail(email).get()
        try:
            response = self._client.client.mail.send.post(request_body=body, timeout=self.timeout)
        except python_http_client.exceptions.HTTPError as exc:
            raise _http_error(what, exc) from None
        except (OSError, http.client.HTTPException) as exc:
            # Refused, reset, DNS, TLS and timeouts all land here (URLError and TimeoutError are
            # OSErrors). Their text can carry the host, never the recipient.
            reason = getattr(exc, "reason", None) or exc
            raise MailError(
                f"could not reach SendGrid at {self.host} to send {what}: "
                f"{type(reason).__name__}: {reason}; a retry may succeed",
                transient=True,
            ) from None
        message_id = response.headers.get("X-Message-Id") if response.headers else None
        if message_id:
            return message_id
        # SendGrid documents the header on every 202; without it the custom arg still finds the
        # message in the activity feed, and the value says plainly that it is not SendGrid's id.
        return f"sendgrid-accepted-without-id:{email.key or 'no-key'}"


def _http_error(what: str, exc: python_http_client.exceptions.HTTPError) -> MailError:
    status = int(exc.status_code)
    details = _provider_errors(exc.body)
    if status == 429 or status == 408 or status >= 500:
        advice = "a retry may succeed"
        retry_after = exc.headers.get("Retry-After") if exc.headers else None
        if retry_after:
            advice += f" (Retry-After: {retry_after})"
        return MailError(
            f"SendGrid answered {status} {exc.reason} to {what}{details}; {advice}",
            transient=True,
            status=status,
        )
    if status in (401, 403):
        advice = f"check {API_KEY_ENV} and that the key may send mail"
    else:
        advice = "the message was refused; retrying the same message will not help"
    return MailError(
        f"SendGrid answered {status} {exc.reason} to {what}{details}; {advice}",
        transient=False,
        status=status,
    )


# ---------------------------------------------------------------------------------------------
# Choosing a backend
# ---------------------------------------------------------------------------------------------


def _sendgrid_from_url(url: str, environ: Mapping[str, str]) -> SendGridMailer:
    parts = urlsplit(url)
    if parts.username or parts.password:
        raise ValueError(
            f"the mail URL must not carry credentials: put the API key in {API_KEY_ENV}"
        )
    if parts.path.strip("/"):
        raise ValueError("a sendgrid:// mail URL takes no path (sendgrid://[HOST[:PORT]][?...])")
    query = parse_qs(parts.query, keep_blank_values=True)
    unknown = sorted(set(query) - {"scheme", "timeout"})
    if unknown:
        raise ValueError(
            f"unknown sendgrid:// URL parameter(s) {', '.join(unknown)}; known: scheme, timeout"
            + (f" (the API key belongs in {API_KEY_ENV})" if "api_key" in unknown else "")
        )
    scheme = query.get("scheme", ["https"])[-1]
    if scheme not in ("https", "http"):
        raise ValueError(f"scheme must be https or http, got {scheme!r}")
    try:
        timeout = float(query.get("timeout", [DEFAULT_TIMEOUT_SECONDS])[-1])
    except ValueError:
        raise ValueError("timeout must be a number of seconds") from None
    if parts.netloc:
        host: str | None = f"{scheme}://{parts.netloc}"
    else:
        host = environ.get(HOST_ENV) or None
    api_key = environ.get(API_KEY_ENV, "").strip()
    if not api_key:
        raise ValueError(f"sendgrid:// mail needs the API key in the {API_KEY_ENV} variable")
    return SendGridMailer(api_key=api_key, host=host, timeout=timeout)


def open_mailer(url: str) -> Mailer:
    """The mailer for a URL: 'sendgrid://' (SENDGRID_API_KEY, host overridable) or 'file:///dir'."""
    parts = urlsplit(url)
    if parts.scheme == "file":
        if parts.netloc not in ("", "localhost") or not parts.path:
            raise ValueError("an outbox mail URL looks like file:///absolute/folder")
        return OutboxMailer(Path(url2pathname(parts.path)))
    if parts.scheme == "sendgrid":
        return _sendgrid_from_url(url, secret_environment(API_KEY_ENV, HOST_ENV))
    raise ValueError(
        f"unknown mail URL scheme {parts.scheme!r}: use file:///folder for an outbox "
        "of .eml files or sendgrid:// for SendGrid"
    )


# ---------------------------------------------------------------------------------------------
# Dagster resource
# ---------------------------------------------------------------------------------------------


class MailerResource(dg.ConfigurableResource):
    """Where emails go (a mail URL, see this module's docstring) and who they come from."""

    url: str = Field(description="file:///folder (an outbox of .eml files) or sendgrid://[HOST]")
    from_email: str = Field(description="Sender of every email, e.g. 'Respaldos <r@clinica.mx>'")
    support_email: str = Field(
        description="Support's address: alerts go to it, clinics reply to it"
    )

    # One mailer (one HTTP client) per resource instance, built on first use: a run that sends
    # nothing never needs the API key.
    _mailer: Mailer | None = PrivateAttr(default=None)

    def get_mailer(self) -> Mailer:
        if self._mailer is None:
            self._mailer = open_mailer(self.url)
        return self._mailer
