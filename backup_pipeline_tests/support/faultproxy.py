"""A loopback HTTP proxy in front of the GCS emulator that fails a seeded share of object reads and upload chunks."""

from __future__ import annotations

import contextlib
import random
import socket
import struct
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from http.client import HTTPConnection
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

READ = "read"  # GET ...?alt=media: an object's bytes
UPLOAD_CHUNK = "upload_chunk"  # PUT ...?upload_id=...: one chunk of a resumable upload
CATEGORIES = (READ, UPLOAD_CHUNK)

UNAVAILABLE = "503"
SLOW = "slow"
RESET = "reset"
KINDS = (UNAVAILABLE, SLOW, RESET)

# Hop-by-hop headers are the proxy's own business (RFC 9110 7.6.1); the body is re-framed with
# Content-Length.
_HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "transfer-encoding",
        "te",
        "trailer",
        "upgrade",
        "content-length",
    }
)


@dataclass(frozen=True)
class FaultPlan:
    """Which requests fail: one in every `read_every` reads and one in every `upload_every`
    upload chunks (0: none), at a position within each run of that many requests drawn from a
    Random seeded with `seed`. The count of faults is fixed by the count of requests, whatever
    order threads send them in; the kinds of fault take turns, so three faults in a category
    show every kind."""

    seed: int = 0
    read_every: int = 0
    upload_every: int = 0
    slow_seconds: float = 0.3

    @classmethod
    def off(cls) -> FaultPlan:
        return cls()

    def every(self, category: str) -> int:
        return self.read_every if category == READ else self.upload_every


def _category(method: str, path: str) -> str | None:
    query = parse_qs(urlsplit(path).query)
    if method == "GET" and query.get("alt") == ["media"]:
        return READ
    if method == "PUT" and path.startswith("/upload/") and "upload_id" in query:
        return UPLOAD_CHUNK
    return None


class FaultProxy:
    """Forwards every request to `upstream` and answers with its response, except a planned
    share of reads and upload chunks, which get one of:

    - 503: answered at once, the request never reaches the emulator;
    - slow: held `slow_seconds`, then forwarded;
    - reset: a read gets the status line, headers and half the body, then a TCP RST; an upload
      chunk gets an RST before it is forwarded (the emulator appends a resent chunk instead of
      ignoring the overlap as GCS does, so a chunk it has seen must not be sent again).

    A request just failed is let through when it is sent again unchanged, so every retry makes
    progress. URLs of the emulator in responses (mediaLink, upload session Location) are
    rewritten to the proxy's, so the client keeps coming back through it.
    """

    def __init__(self, upstream: str, plan: FaultPlan | None = None) -> None:
        parts = urlsplit(upstream)
        self._upstream_host = parts.hostname or "127.0.0.1"
        self._upstream_port = parts.port or 80
        self._upstream_base = f"http://{parts.netloc}".encode()
        self._lock = threading.Lock()
        self.plan = plan or FaultPlan.off()
        self._rngs: dict[str, random.Random] = {}
        self._drawn: Counter[str] = Counter()  # requests of each category the plan decided on
        self._target: dict[str, int] = {}  # the position to fail in the current run of requests
        self._turns: Counter[str] = Counter()
        self._just_failed: set[tuple[str, ...]] = set()
        self.injected: Counter[tuple[str, str]] = Counter()  # (category, kind) -> count
        self.seen: Counter[str] = Counter()  # category -> requests
        self.requests: list[tuple[str, str]] = []  # (method, path) of every request, in order
        self._refusals: list[tuple[str, int]] = []  # (path fragment, status) for reads
        self._server = _QuietServer(("127.0.0.1", 0), _handler(self))
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(
            target=self._server.serve_forever, args=(0.05,), daemon=True, name="gcs-fault-proxy"
        )

    def set_plan(self, plan: FaultPlan) -> None:
        """Switch plans between runs; each category's random sequence starts over."""
        with self._lock:
            self.plan = plan
            self._rngs.clear()
            self._drawn.clear()
            self._target.clear()
            self._turns.clear()
            self._just_failed.clear()

    def refuse_reads(self, path_fragment: str, status: int) -> None:
        """From now on, answer `status` to every read whose URL path contains path_fragment
        (URL-encoded, as the client sends it): e.g. 404 for an object deleted after its metadata
        was read. Not counted as an injected fault."""
        with self._lock:
            self._refusals.append((path_fragment, status))

    def _refusal(self, category: str | None, path: str) -> int | None:
        if category != READ:
            return None
        with self._lock:
            return next((s for f, s in self._refusals if f in urlsplit(path).path), None)

    def start(self) -> FaultProxy:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def requests_naming(self, fragment: str) -> list[tuple[str, str]]:
        """The requests whose URL path (URL-encoded, as the client sent it) contains fragment."""
        with self._lock:
            return [(m, p) for m, p in self.requests if fragment in urlsplit(p).path]

    def injected_kinds(self, category: str) -> set[str]:
        return {kind for (cat, kind), n in self.injected.items() if cat == category and n}

    def _decide(self, category: str | None, identity: tuple[str, ...]) -> str | None:
        if category is None:
            return None
        with self._lock:
            self.seen[category] += 1
            if identity in self._just_failed:
                self._just_failed.discard(identity)
                return None
            every = self.plan.every(category)
            if every <= 0:
                return None
            position = self._drawn[category] % every
            self._drawn[category] += 1
            if position == 0:
                rng = self._rngs.setdefault(category, random.Random(f"{self.plan.seed}:{category}"))
                self._target[category] = rng.randrange(every)
            if position != self._target[category]:
                return None
            kind = KINDS[self._turns[category] % len(KINDS)]
            self._turns[category] += 1
            self._just_failed.add(identity)
            self.injected[(category, kind)] += 1
            return kind

    def _forward(
        self, method: str, path: str, headers: list[tuple[str, str]], body: bytes
    ) -> tuple[int, str, list[tuple[str, str]], bytes]:
        upstream = HTTPConnection(self._upstream_host, self._upstream_port, timeout=60)
        try:
            upstream.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
            for name, value in headers:
                if name.lower() == "host":
                    # The emulator writes the Host it sees into stored metadata (mediaLink):
                    # it must see its own.
                    value = f"{self._upstream_host}:{self._upstream_port}"
                if name.lower() not in _HOP_BY_HOP:
                    upstream.putheader(name, value)
            upstream.putheader("Content-Length", str(len(body)))
            upstream.endheaders(body)
            response = upstream.getresponse()
            data = response.read()
            return response.status, response.reason, response.getheaders(), data
        finally:
            upstream.close()

    def _rewrite(self, data: bytes) -> bytes:
        return data.replace(self._upstream_base, self.url.encode())


class _QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that drops its connection after an injected fault is expected here; anything
        # else still shows up, as a failed request on the client's side.
        pass


def _handler(proxy: FaultProxy) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _proxy(self) -> None:
            if self.headers.get("Transfer-Encoding"):
                self._answer(501, b'{"error": {"message": "chunked request bodies unsupported"}}')
                return
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            with proxy._lock:
                proxy.requests.append((self.command, self.path))
            category = _category(self.command, self.path)
            identity = (
                self.command,
                self.path,
                self.headers.get("Range", ""),
                self.headers.get("Content-Range", ""),
            )
            refusal = proxy._refusal(category, self.path)
            if refusal is not None:
                message = b'{"error": {"code": %d, "message": "refused by the test"}}' % refusal
                self._answer(refusal, message)
                return
            fault = proxy._decide(category, identity)
            if fault == UNAVAILABLE:
                self._answer(503, b'{"error": {"code": 503, "message": "injected fault"}}')
                return
            if fault == RESET and category == UPLOAD_CHUNK:
                self._reset()
                return
            if fault == SLOW:
                time.sleep(proxy.plan.slow_seconds)
            status, reason, headers, data = proxy._forward(
                self.command, self.path, list(self.headers.items()), body
            )
            is_media = category == READ
            if not is_media:
                data = proxy._rewrite(data)
            self.send_response(status, reason)
            for name, value in headers:
                if name.lower() in _HOP_BY_HOP:
                    continue
                if name.lower() == "location":
                    value = proxy._rewrite(value.encode()).decode()
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if fault == RESET:
                self.wfile.write(data[: len(data) // 2])
                self.wfile.flush()
                self._reset()
                return
            self.wfile.write(data)

        do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _proxy

        def _answer(self, status: int, data: bytes) -> None:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _reset(self) -> None:
            """Close with SO_LINGER 0: the peer gets an RST, not an orderly end of stream."""
            with contextlib.suppress(OSError):
                self.connection.setsockopt(
                    socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
                )
                self.connection.close()
            self.close_connection = True

        def finish(self) -> None:
            with contextlib.suppress(OSError):  # the socket may be gone after a reset
                super().finish()

        def log_message(self, format: str, *args: Any) -> None:  # keep pytest's output clean
            pass

    return Handler


@pytest.fixture
def gcs_fault_proxy(gcs_emulator: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[FaultProxy]:
    """A FaultProxy (faults off until set_plan) in front of the emulator; STORAGE_EMULATOR_HOST
    points at the proxy for the test, so every GCS client made in it goes through the proxy."""
    proxy = FaultProxy(gcs_emulator).start()
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", proxy.url)
    try:
        yield proxy
    finally:
        proxy.stop()
