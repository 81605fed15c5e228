"""SendGrid's v3 Mail Send API (sendgrid://[HOST]): the key only from the environment."""

from __future__ import annotations

import http.client
import ipaddress
import json
import logging
import re
from collections.abc import Mapping
from urllib.parse import parse_qs, urlsplit

import python_http_client
import sendgrid
from sendgrid.helpers.mail import (
    ClickTracking,
    CustomArg,
    From,
    Mail,
    ReplyTo,
    To,
    TrackingSettings,
)

from backup_pipeline.mail.base import MailError, OutgoingEmail, Transport, check_single_line_headers

API_KEY_ENV = "SENDGRID_API_KEY"
HOST_ENV = "BACKUP_SENDGRID_HOST"
DEFAULT_SENDGRID_HOST = "https://api.sendgrid.com"
DEFAULT_TIMEOUT_SECONDS = 30.0


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


class SendGridTransport(Transport):
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
        return f"SendGridTransport(host={self.host!r})"

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
        check_single_line_headers(email)
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


def sendgrid_from_url(url: str, environ: Mapping[str, str]) -> SendGridTransport:
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
    return SendGridTransport(api_key=api_key, host=host, timeout=timeout)
