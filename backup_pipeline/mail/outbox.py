"""An outbox folder of .eml files (file:///folder): every email one RFC 5322 file."""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from datetime import UTC, datetime
from email import policy as email_policy
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid, parseaddr
from pathlib import Path

from backup_pipeline.mail.base import MailError, OutgoingEmail, Transport, check_single_line_headers

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


class OutboxTransport(Transport):
    """Writes each email to `directory` as `<UTC timestamp>_<key or message-id hash>.eml`."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        self.url = self.directory.resolve().as_uri()

    def send(self, email: OutgoingEmail) -> str:
        check_single_line_headers(email)
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
