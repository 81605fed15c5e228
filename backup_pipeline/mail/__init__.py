"""Sending email behind one small interface: SendGrid (sendgrid://) or an outbox folder of .eml files (file://).

`open_transport(url)` opens the `Transport` a URL names; a `Mailer` is a transport with our
sender's and support's addresses, what the services send through (mail.base).

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

from pathlib import Path
from urllib.parse import urlsplit
from urllib.request import url2pathname

from backup_pipeline.mail.base import Mailer, MailError, OutgoingEmail, Transport
from backup_pipeline.mail.outbox import OutboxTransport
from backup_pipeline.mail.sendgrid import (
    API_KEY_ENV,
    HOST_ENV,
    SendGridTransport,
    sendgrid_from_url,
)
from backup_pipeline.settings import secret_environment

__all__ = [
    "MailError",
    "Mailer",
    "OutboxTransport",
    "OutgoingEmail",
    "SendGridTransport",
    "Transport",
    "open_transport",
]


def open_transport(url: str) -> Transport:
    """The mailer for a URL: 'sendgrid://' (SENDGRID_API_KEY, host overridable) or 'file:///dir'."""
    parts = urlsplit(url)
    if parts.scheme == "file":
        if parts.netloc not in ("", "localhost") or not parts.path:
            raise ValueError("an outbox mail URL looks like file:///absolute/folder")
        return OutboxTransport(Path(url2pathname(parts.path)))
    if parts.scheme == "sendgrid":
        return sendgrid_from_url(url, secret_environment(API_KEY_ENV, HOST_ENV))
    raise ValueError(
        f"unknown mail URL scheme {parts.scheme!r}: use file:///folder for an outbox "
        "of .eml files or sendgrid:// for SendGrid"
    )
