"""Sending email behind one small interface: SendGrid (sendgrid://) or an outbox folder of .eml files (file://)."""

from __future__ import annotations

import abc
from dataclasses import dataclass


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


def open_mailer(url: str) -> Mailer:
    """The mailer for a URL: 'sendgrid://' (SENDGRID_API_KEY, host overridable) or 'file:///dir'."""
    raise NotImplementedError
