r"""What every connection of one server shares: config, application, ledger, log.

`ServerContext` is built by the Server and handed to each connection driver and
session, so that none of them needs to know the Server itself.

The access log writes the Combined Log Format, one line per response, followed by
the request time in seconds with millisecond resolution (nginx's `$request_time`,
here from the end of the request head to the answer being queued).  Every field
that comes from the client is escaped as nginx does by default: `"`, `\` and
bytes below 0x20 or above 0x7e become `\xHH`, so a client can neither end a
quoted field early nor start a line of its own, and combined-log parsers keep
working whatever was sent.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

from ..core.filecache import sweep_open_file_caches
from ..core.loans import LoanLedger
from ..core.message import Message
from ..core.metrics import METRICS, Metrics
from .config import ServerConfig
from .forwarded import TrustedProxies, forwarded_peer

__all__ = ["ServerContext"]

access_logger = logging.getLogger("pageloan.access")


class ServerContext:
    def __init__(self, config: ServerConfig, app: Callable[[Any], Any],
                 loop: asyncio.AbstractEventLoop, metrics: Metrics | None = None) -> None:
        self.config = config
        self.app = app
        self.loop = loop
        self.metrics = metrics or METRICS
        self.metrics.ledger.budget = config.global_loan_budget
        self.ledger: LoanLedger = self.metrics.ledger
        self.connections: set[Any] = set()
        # Called by the server's once-a-second sweep with the loop time: other layers'
        # periodic housekeeping (the open-file caches close idle and deleted files).
        # Metrics publish into the workers' shared array (a no-op for one process).
        self.ticks: list[Callable[[float], None]] = [sweep_open_file_caches, self.metrics.publish]
        # False once draining starts: the readiness path answers 503.
        self.ready = True
        if config.ready_path:
            app = _Readiness(app, config.ready_path.encode("latin-1"), self)
            self.app = app
        # Forwarding headers are believed only from trusted proxies: connections from
        # those get `forwarded_app` (connection.py), everybody else the plain one.
        self.trusted: TrustedProxies | None = None
        self.forwarded_app: Callable[[Any], Any] | None = None
        if config.forwarded_allow_ips:
            self.trusted = TrustedProxies.parse(config.forwarded_allow_ips)
            self.forwarded_app = _Forwarding(app, self.trusted)
        self.access_log = _access_logger() if config.access_log else None

    def app_for(self, peer: tuple[str, int] | None) -> Callable[[Any], Any] | None:
        """The forwarding-aware application for a connection from `peer`, if it is a
        trusted proxy (None: the session keeps the plain one)."""
        if self.trusted is not None and peer is not None and self.trusted.trusts(peer[0]):
            return self.forwarded_app
        return None

    def connection_opened(self, conn: Any) -> None:
        self.connections.add(conn)
        self.metrics.connections_open += 1
        self.metrics.connections_total += 1

    def connection_closed(self, conn: Any) -> None:
        if conn in self.connections:
            self.connections.discard(conn)
            self.metrics.connections_open -= 1


# nginx's default access-log escaping: `"`, `\`, controls and non-ASCII as \xHH.
_LOG_ESCAPES = {c: f"\\x{c:02X}" for c in (*range(0x20), 0x22, 0x5C, *range(0x7F, 0x100))}


def log_escape(text: str) -> str:
    """`text` safe inside a quoted access-log field (and on one line)."""
    if text.isascii() and text.isprintable() and '"' not in text and "\\" not in text:
        return text
    return text.translate(_LOG_ESCAPES)


class _AppFront:
    """A front on the application that answers a few things itself and passes the rest.

    Handlers reach the application through `request.app` (its `state`, its
    routes), which is whatever the session calls: so every other attribute is the
    wrapped application's.
    """

    def __init__(self, inner: Callable[[Any], Any]) -> None:
        self._inner = inner

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


class _Forwarding(_AppFront):
    """`request.client` taken from a trusted proxy's forwarding headers (forwarded.py)."""

    def __init__(self, inner: Callable[[Any], Any], trusted: TrustedProxies) -> None:
        super().__init__(inner)
        self._trusted = trusted

    def __call__(self, request: Any) -> Any:
        request.client = forwarded_peer(request.client, request.raw_headers, self._trusted, "http").client
        return self._inner(request)


_READY = b"Content-Type: text/plain; charset=utf-8\r\nContent-Length: 6\r\nCache-Control: no-store\r\n\r\n"
_UNREADY = b"Content-Type: text/plain; charset=utf-8\r\nContent-Length: 9\r\nCache-Control: no-store\r\n\r\n"


class _Readiness(_AppFront):
    """GET/HEAD `path` answered here: 200 `ready`, or 503 `draining` once the server
    drains.  Only installed when a readiness path is configured, so the default
    request path pays nothing for it."""

    def __init__(self, inner: Callable[[Any], Any], path: bytes, ctx: ServerContext) -> None:
        super().__init__(inner)
        self._path = path
        self._ctx = ctx

    def __call__(self, request: Any) -> Any:
        if request.raw_path == self._path and (request.method == "GET" or request.method == "HEAD"):
            if self._ctx.ready:
                return Message(200, (_READY,), (b"ready\n",))
            return Message(503, (_UNREADY,), (b"draining\n",), close=True)
        return self._inner(request)


def _access_logger() -> Callable[..., None]:
    """Combined Log Format plus $request_time, one line per response."""
    def log_access(request: Any, msg: Any, client: tuple[str, int] | None) -> None:
        if request is not None and request.client is not None:
            client = request.client          # a trusted proxy's client (forwarded.py)
        host = log_escape(client[0]) if client else "-"
        when = time.strftime("%d/%b/%Y:%H:%M:%S %z")
        if request is None:
            line, referer, agent, took = "-", "-", "-", 0.0
        else:
            line = log_escape(f"{request.method} {request.target.decode('latin-1')} HTTP/{request.version}")
            referer = log_escape(request.headers.get("referer", "-"))
            agent = log_escape(request.headers.get("user-agent", "-"))
            took = max(0.0, time.monotonic() - request.started)
        size = 0 if msg.head_only else msg.payload_length
        access_logger.info('%s - - [%s] "%s" %d %d "%s" "%s" %.3f', host, when, line,
                           msg.status, size, referer, agent, took)
    return log_access
