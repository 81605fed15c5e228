"""The mail interface: an email's transport, the Mailer the services send through, MailError."""

from __future__ import annotations

import abc
from dataclasses import dataclass

# What an email is belongs to the domain (backup_pipeline.rules.emails builds them); the
# adapters here only send it.
from backup_pipeline.rules.emails import OutgoingEmail


class MailError(Exception):
    """Sending failed. transient=True means a retry may succeed (429, 5xx, timeouts)."""

    def __init__(self, message: str, *, transient: bool, status: int | None = None) -> None:
        super().__init__(message)
        self.transient = transient
        self.status = status


class Transport(abc.ABC):
    """One way of sending an email (SendGrid, an outbox folder); it knows no addresses of ours."""

    url: str

    @abc.abstractmethod
    def send(self, email: OutgoingEmail) -> str:
        """Send the email and return its message id. Raises MailError."""


@dataclass(frozen=True)
class Mailer:
    """What a service sends through: a transport and the two addresses every email of ours
    carries (the sender, and support's address: the clinics' reply-to and where alerts go)."""

    transport: Transport
    from_email: str
    support_email: str

    def send(self, email: OutgoingEmail) -> str:
        """Send the email and return its message id. Raises MailError."""
        return self.transport.send(email)


def check_single_line_headers(email: OutgoingEmail) -> None:
    """A line break in a header value would let it add headers (Bcc:) or split the message."""
    for name in ("to", "from_email", "reply_to", "subject"):
        value = getattr(email, name) or ""
        if "\r" in value or "\n" in value:
            raise MailError(
                f"email {email.key or '(no key)'} has a line break in its {name} header; refused",
                transient=False,
            )
