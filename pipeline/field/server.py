"""`tinyops field serve`: the endpoint gateways post batches to. POST /v1/batches with
`Authorization: Bearer <token>` and one batch as JSON; GET /v1/health. Every refusal is a JSON
`{"error": reason}` with the status a client can act on (401 token, 403 another device's
stream, 409 replay, 413 too large, 429 over the rate, with Retry-After). Loopback by default;
any other address needs TLS (docs/field.md)."""

from __future__ import annotations

import ipaddress
import json
import ssl
import sys
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from pipeline.core.errors import ConfigError, FieldRefusal
from pipeline.field.store import FieldStore
from pipeline.field.tokens import TokenStore


@dataclass(frozen=True)
class Limits:
    max_bytes: int = 1 << 20  # per request body
    rate: float = 20.0  # batches per second per device, sustained
    burst: int = 40  # batches a device may send at once before the rate applies


class RateLimiter:
    """A token bucket per device: `burst` at once, then `rate` per second."""

    def __init__(self, rate: float, burst: int) -> None:
        self.rate, self.burst = rate, burst
        self._buckets: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def take(self, device: str) -> None:
        now = time.monotonic()
        with self._lock:
            level, last = self._buckets.get(device, (float(self.burst), now))
            level = min(float(self.burst), level + (now - last) * self.rate)
            if level < 1.0:
                self._buckets[device] = (level, now)
                wait = (1.0 - level) / self.rate
                raise FieldRefusal(
                    f"{device}: over {self.rate:g} batches/s; retry in {wait:.2f} s", 429
                )
            self._buckets[device] = (level - 1.0, now)


class _Handler(BaseHTTPRequestHandler):
    server: FieldServer
    protocol_version = "HTTP/1.1"  # keep-alive: a gateway posts many batches on one connection
    timeout = 30  # seconds a connection may stay silent: a stalled client never holds a thread

    def do_GET(self) -> None:
        if self.path == "/v1/health":
            self._answer(200, {"ok": True})
        else:
            self._answer(404, {"error": f"no such path: {self.path}"})

    def do_POST(self) -> None:
        try:
            if self.path != "/v1/batches":
                raise FieldRefusal(f"no such path: {self.path}", 404)
            device = self._device()
            body = self._body()
            stored = self.server.store.ingest(body, token_device=device)
            self._answer(
                201, {"stored": stored.path.name, "seq": stored.seq, "samples": stored.samples}
            )
        except FieldRefusal as exc:
            self.server.refused(self.client_address[0], exc)
            self._answer(exc.http_status, {"error": str(exc)})

    def _device(self) -> str:
        auth = self.headers.get("Authorization", "")
        if not auth.startswith("Bearer "):
            raise FieldRefusal("no bearer token (Authorization: Bearer <token>)", 401)
        device = self.server.tokens.device_of(auth.removeprefix("Bearer ").strip())
        self.server.limiter.take(device)
        return device

    def _body(self) -> object:
        length = self.headers.get("Content-Length")
        if length is None or not length.isdigit():
            raise FieldRefusal("a Content-Length is required", 411)
        if int(length) > self.server.limits.max_bytes:
            self.close_connection = True  # the body is not read: the connection cannot go on
            raise FieldRefusal(f"{length} bytes; at most {self.server.limits.max_bytes}", 413)
        try:
            return json.loads(self.rfile.read(int(length)))
        except (ValueError, UnicodeDecodeError):
            raise FieldRefusal("the body is not JSON") from None

    def _answer(self, status: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        if status == 429:
            self.send_header("Retry-After", "1")
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: object) -> None:
        pass  # one line per refusal instead (FieldServer.refused); successes are the ledger


class FieldServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], store: FieldStore, tokens: TokenStore,
                 limits: Limits) -> None:  # fmt: skip
        super().__init__(address, _Handler)
        self.store, self.tokens, self.limits = store, tokens, limits
        self.limiter = RateLimiter(limits.rate, limits.burst)

    def refused(self, client: str, exc: FieldRefusal) -> None:
        print(f"refused {exc.http_status} from {client}: {exc}", file=sys.stderr, flush=True)

    def handle_error(self, request: object, client_address: tuple[str, int]) -> None:
        """One line, not a traceback: a failed TLS handshake or a dropped connection."""
        error = sys.exc_info()[1]
        print(f"connection from {client_address[0]} failed: {error}", file=sys.stderr, flush=True)


def make_server(
    host: str, port: int, store: FieldStore, tokens: TokenStore, limits: Limits,
    tls: tuple[Path, Path] | None = None,
) -> FieldServer:  # fmt: skip
    """Bound and ready; a non-loopback address without TLS is refused before binding."""
    if tls is None and not _loopback(host):
        raise ConfigError(
            f"--host {host}: tokens would cross the network in clear; give --tls-cert and "
            "--tls-key, or keep 127.0.0.1 behind a TLS proxy (docs/field.md)"
        )
    server = FieldServer((host, port), store, tokens, limits)
    if tls is not None:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(*tls)
        # the handshake happens in the request's thread: a slow client never holds up accept()
        server.socket = context.wrap_socket(
            server.socket, server_side=True, do_handshake_on_connect=False
        )
    return server


def _loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"
