"""A fault-injecting HTTP proxy on 127.0.0.1 in front of an S3 endpoint (moto), for the storage tests.

    with FaultProxy(moto_url, share=0.3, kinds=FAULT_KINDS, stall_s=6.0) as proxy:
        storage.read_bytes(uri, endpoint_url=proxy.url)
    proxy.counts  # {"requests": 31, "forwarded": 24, "500": 2, "503": 1, "slowdown": 1, "reset": 1, ...}

Faults, one kind per faulted request:

- ``500``: HTTP 500 with the S3 error body ``InternalError``.
- ``503``: HTTP 503 with a plain-text body (what a load balancer in front of a store says).
- ``slowdown``: HTTP 503 with the S3 error body ``SlowDown`` (S3's throttling).
- ``reset``: the connection is reset (RST) without an answer.
- ``stall``: no answer for ``stall_s`` seconds (longer than the client's read timeout), then closed.
- ``latency``: answered correctly, ``latency_s`` seconds late (not a failure).

Which requests: exactly ``share`` of them, spread evenly (request n is faulted when ``floor(n * share)``
grows), the kinds taken in turn, so that every kind is injected once ``len(kinds) / share`` requests
went by, whatever the timing; and every request whose path contains one of ``doomed`` (say a key), with
a failing kind: that object is unreachable while the rest is only flaky. ``counts`` says what was
really done. A faulted request never reaches the upstream, so a retried write is never applied twice.
"""
from __future__ import annotations

import http.client
import math
import socket
import struct
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Optional, Sequence
from urllib.parse import urlparse

FAULT_KINDS = ("500", "503", "slowdown", "reset", "stall", "latency")
FAILING_KINDS = ("500", "503", "slowdown", "reset", "stall")  # every kind that gives no answer/an error
_ERRORS = {  # kind -> (status, content type, body)
    "500": (500, "application/xml", b"<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>InternalError"
                                    b"</Code><Message>We encountered an internal error. Please try again."
                                    b"</Message></Error>"),
    "503": (503, "text/plain", b"Service Unavailable"),
    "slowdown": (503, "application/xml", b"<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>SlowDown"
                                         b"</Code><Message>Please reduce your request rate.</Message></Error>"),
}
# Hop-by-hop headers (RFC 9110 7.6.1) and those the proxy writes itself.
_HOP = frozenset({"connection", "keep-alive", "proxy-connection", "proxy-authenticate", "proxy-authorization",
                  "te", "trailer", "transfer-encoding", "upgrade", "expect", "content-length", "server", "date"})


class FaultProxy:
    """A threaded HTTP proxy to ``upstream`` that fails ``share`` of the requests (module doc)."""

    def __init__(self, upstream: str, *, share: float, kinds: Sequence[str] = FAULT_KINDS,
                 stall_s: float = 6.0, latency_s: float = 0.3, doomed: Sequence[str] = ()):
        if not 0.0 <= share <= 1.0:
            raise ValueError(f"share={share!r} must lie in [0, 1]")
        unknown = [k for k in kinds if k not in FAULT_KINDS]
        if unknown or not kinds:
            raise ValueError(f"kinds={list(kinds)!r}: each must be one of {list(FAULT_KINDS)}")
        parsed = urlparse(upstream)
        self.upstream = (parsed.hostname, parsed.port or 80)
        self.share, self.kinds, self.stall_s, self.latency_s = share, tuple(kinds), stall_s, latency_s
        self.doomed = tuple(doomed)
        self._flaky_requests = self._flaky_faults = self._doomed_faults = 0
        self.counts: dict[str, int] = {"requests": 0, "forwarded": 0}
        self._lock = threading.Lock()
        self.closing = threading.Event()  # set by close(): wakes stalled and delayed handlers
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.proxy = self
        self._thread: Optional[threading.Thread] = None
        self.url = f"http://127.0.0.1:{self._server.server_port}"

    def set_faults(self, *, share: float, kinds: Optional[Sequence[str]] = None) -> None:
        """Change the share (and kinds) of faults from the next request on."""
        with self._lock:
            self.share, self.kinds = share, tuple(kinds or self.kinds)

    def injected(self) -> dict[str, int]:
        """Faults done so far, by kind (only those injected at least once)."""
        with self._lock:
            return {k: n for k, n in self.counts.items() if k in FAULT_KINDS}

    def next_fault(self, path: str) -> str:
        """The fault for the next request, to ``path`` ("" for none), counted."""
        with self._lock:
            self.counts["requests"] += 1
            if any(d in path for d in self.doomed):
                kinds = [k for k in self.kinds if k in FAILING_KINDS] or ["500"]
                kind, self._doomed_faults = kinds[self._doomed_faults % len(kinds)], self._doomed_faults + 1
            else:
                n = self._flaky_requests = self._flaky_requests + 1
                if math.floor(n * self.share) == math.floor((n - 1) * self.share):
                    return ""
                kind, self._flaky_faults = self.kinds[self._flaky_faults % len(self.kinds)], self._flaky_faults + 1
            self.counts[kind] = self.counts.get(kind, 0) + 1
            return kind

    def count_forwarded(self) -> None:
        with self._lock:
            self.counts["forwarded"] += 1

    def start(self) -> "FaultProxy":
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        self.closing.set()
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join()

    def __enter__(self) -> "FaultProxy":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()


class _Server(ThreadingHTTPServer):
    daemon_threads = True  # a stalled handler never holds up close()
    proxy: FaultProxy

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.resets: set = set()  # sockets to close with RST rather than FIN
        self.resets_lock = threading.Lock()

    def shutdown_request(self, request) -> None:
        with self.resets_lock:
            reset = request in self.resets
            self.resets.discard(request)
        if reset:  # no shutdown(SHUT_WR): that would send FIN; linger 0 makes close() send RST
            self.close_request(request)
        else:
            super().shutdown_request(request)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as S3 clients expect; 100-continue answered
    server: _Server

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        proxy = self.server.proxy
        body = self._read_body()
        kind = proxy.next_fault(self.path)
        if kind == "reset":
            self._reset()
        elif kind == "stall":
            proxy.closing.wait(proxy.stall_s)
            self.close_connection = True  # then closed, never answered
        elif kind in _ERRORS:
            self._answer(*_ERRORS[kind])
        else:
            if kind == "latency":
                proxy.closing.wait(proxy.latency_s)
            self._forward(body)

    do_HEAD = do_PUT = do_POST = do_DELETE = do_GET

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            out = bytearray()
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    return bytes(out)
                out += self.rfile.read(size)
                self.rfile.readline()  # CRLF after the chunk
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _reset(self) -> None:
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        with self.server.resets_lock:
            self.server.resets.add(self.connection)
        self.close_connection = True

    def _answer(self, status: int, ctype: str, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _forward(self, body: bytes) -> None:
        proxy = self.server.proxy
        conn = http.client.HTTPConnection(*proxy.upstream, timeout=60)
        try:
            conn.putrequest(self.command, self.path, skip_host=True, skip_accept_encoding=True)
            for name, value in self.headers.items():  # Host too: the request is signed with it
                if name.lower() not in _HOP:
                    conn.putheader(name, value)
            if body or self.command in ("PUT", "POST"):
                conn.putheader("Content-Length", str(len(body)))
            conn.endheaders(body or None)
            resp = conn.getresponse()
            data = resp.read()
            headers = [(k, v) for k, v in resp.getheaders() if k.lower() not in _HOP]
            length = resp.getheader("Content-Length") if self.command == "HEAD" else str(len(data))
        finally:
            conn.close()
        proxy.count_forwarded()  # before the answer: a client that has it sees it counted
        self.send_response(resp.status, resp.reason)
        for name, value in headers:
            self.send_header(name, value)
        if length is not None:
            self.send_header("Content-Length", length)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def log_message(self, *args) -> None:
        pass
