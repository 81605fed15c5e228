"""Mail fixtures: a loopback SendGrid v3 endpoint, an outbox reader, and `mailer` on both backends."""

from __future__ import annotations

import email
import email.policy
import json
import socket
import threading
import uuid
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from email.utils import parseaddr
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from backup_pipeline.mail import Mailer, open_transport

DUMMY_API_KEY = "SG.test-key-not-real"
# A scripted entry that makes the endpoint hold the response until the client has given up.
STALL = None


@dataclass
class RecordedRequest:
    path: str
    headers: dict[str, str]
    payload: dict[str, Any]
    status: int | None  # None: held until the client gave up (STALL)
    message_id: str | None  # the X-Message-Id we answered with (2xx only)


@dataclass
class SendGridEndpoint:
    """A fake SendGrid API on 127.0.0.1; what it received and what it will answer next."""

    url: str  # the mail URL for open_transport: sendgrid://127.0.0.1:PORT?scheme=http
    base_url: str  # http://127.0.0.1:PORT (for BACKUP_SENDGRID_HOST)
    recorded: list[RecordedRequest] = field(default_factory=list)
    _script: deque[int | None] = field(default_factory=deque)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _release: threading.Event = field(default_factory=threading.Event)

    def script(self, codes: list[int | None]) -> None:
        """Answer the next requests with these statuses, in order (then 202 again).

        STALL (None) holds that response until the client times out.
        """
        with self._lock:
            self._script.extend(codes)

    @property
    def requests(self) -> list[dict[str, Any]]:
        """The JSON payload of every POST /v3/mail/send received, whatever it was answered."""
        return [r.payload for r in self.recorded]

    def _next_status(self) -> int | None:
        with self._lock:
            return self._script.popleft() if self._script else 202


def _handler(endpoint: SendGridEndpoint) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            if self.path != "/v3/mail/send":
                self._answer(404, {"errors": [{"message": "not found"}]})
                return
            status = endpoint._next_status()
            ok = status is not None and 200 <= status < 300
            message_id = uuid.uuid4().hex if ok else None
            endpoint.recorded.append(
                RecordedRequest(
                    path=self.path,
                    headers=dict(self.headers.items()),
                    payload=json.loads(body),
                    status=status,
                    message_id=message_id,
                )
            )
            if status is None:
                endpoint._release.wait(timeout=10)
                self.close_connection = True
                return
            if message_id:
                self._answer(status, None, {"X-Message-Id": message_id})
            else:
                # SendGrid's error shape; the 400 echoes the recipient, as real validation errors can.
                to = json.loads(body)["personalizations"][0]["to"][0]["email"]
                error = {"message": f"simulated {status} for {to}", "field": "personalizations"}
                self._answer(status, {"errors": [error]}, {"Retry-After": "1"})

        def _answer(self, status: int, payload: Any, headers: dict[str, str] | None = None) -> None:
            data = json.dumps(payload).encode() if payload is not None else b""
            self.send_response(status)
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:  # keep pytest's output clean
            pass

    return Handler


@pytest.fixture
def sendgrid_endpoint(monkeypatch: pytest.MonkeyPatch) -> Iterator[SendGridEndpoint]:
    """A loopback SendGrid v3 /mail/send; SENDGRID_API_KEY is set to a dummy for the test."""
    monkeypatch.setenv("SENDGRID_API_KEY", DUMMY_API_KEY)
    monkeypatch.delenv("BACKUP_SENDGRID_HOST", raising=False)
    placeholder = SendGridEndpoint(url="", base_url="")
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(placeholder))
    server.daemon_threads = True
    port = server.server_address[1]
    placeholder.url = f"sendgrid://127.0.0.1:{port}?scheme=http"
    placeholder.base_url = f"http://127.0.0.1:{port}"
    # A short poll interval: shutdown() waits for the loop's next poll, once per test.
    thread = threading.Thread(
        target=server.serve_forever, args=(0.02,), daemon=True, name="fake-sendgrid"
    )
    thread.start()
    try:
        yield placeholder
    finally:
        placeholder._release.set()
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# ---------------------------------------------------------------------------------------------
# Reading back what was sent, the same way for both backends
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SentEmail:
    to: str  # address only
    from_address: str
    reply_to: str | None
    subject: str
    text: str
    html: str
    key: str | None
    message_id: str


def read_eml(path: Path) -> SentEmail:
    with path.open("rb") as src:
        msg = email.message_from_binary_file(src, policy=email.policy.default)
    reply_to = msg["Reply-To"]
    return SentEmail(
        to=parseaddr(str(msg["To"]))[1],
        from_address=parseaddr(str(msg["From"]))[1],
        reply_to=parseaddr(str(reply_to))[1] if reply_to else None,
        subject=str(msg["Subject"]),
        text=msg.get_body(("plain",)).get_content(),
        html=msg.get_body(("html",)).get_content(),
        key=msg["X-Backup-Key"],
        message_id=str(msg["Message-ID"]),
    )


def read_outbox(directory: Path) -> list[SentEmail]:
    """Every .eml in an outbox folder, oldest first (the names start with a UTC timestamp)."""
    return [read_eml(path) for path in sorted(directory.glob("*.eml"))]


def _content(payload: dict[str, Any], mime_type: str) -> str:
    return next(c["value"] for c in payload["content"] if c["type"] == mime_type)


def read_sendgrid(endpoint: SendGridEndpoint) -> list[SentEmail]:
    """Every message the endpoint accepted (2xx), as SendGrid would deliver it."""
    sent = []
    for request in endpoint.recorded:
        if request.message_id is None:
            continue
        p = request.payload
        sent.append(
            SentEmail(
                to=p["personalizations"][0]["to"][0]["email"],
                from_address=p["from"]["email"],
                reply_to=p["reply_to"]["email"] if "reply_to" in p else None,
                subject=p["subject"],
                text=_content(p, "text/plain"),
                html=_content(p, "text/html"),
                key=p.get("custom_args", {}).get("key"),
                message_id=request.message_id,
            )
        )
    return sent


@dataclass
class MailerUnderTest:
    backend: str  # "outbox" or "sendgrid"
    url: str
    mailer: Mailer
    sent: Callable[[], list[SentEmail]]  # what has been sent so far, oldest first


@pytest.fixture(params=["outbox", "sendgrid"])
def mailer(request: pytest.FixtureRequest, tmp_path: Path) -> MailerUnderTest:
    """A Mailer on each backend, with a way to read back what it sent."""
    if request.param == "outbox":
        outbox = tmp_path / "outbox"
        url = outbox.as_uri()
        return MailerUnderTest("outbox", url, open_transport(url), lambda: read_outbox(outbox))
    endpoint: SendGridEndpoint = request.getfixturevalue("sendgrid_endpoint")
    return MailerUnderTest(
        "sendgrid", endpoint.url, open_transport(endpoint.url), lambda: read_sendgrid(endpoint)
    )
