"""What every connection of one server shares: config, application, ledger, log.

`ServerContext` is built by the Server and handed to each connection driver and
session, so that none of them needs to know the Server itself.  The access log
writes the Combined Log Format, one line per response.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any, Protocol

from ..core.loans import LoanLedger
from ..core.metrics import METRICS, Metrics
from .config import ServerConfig

__all__ = ["ReplayCache", "ServerContext"]

access_logger = logging.getLogger("pageloan.access")


class ReplayCache(Protocol):
    """Answers laid out once and sent again for byte-identical requests.

    The session asks `lookup(data)` for a read that may be one whole request: a
    layout for the transmitter's `replay`, or whether the answer about to be built
    is worth offering back with `store`.  The static layer implements it
    (static/answer_memo.py); the HTTP layer knows only this much.
    """

    def lookup(self, request: bytes) -> Any: ...

    def store(self, request: bytes, message: Any, stale_at: float, transmitter: Any) -> None: ...

    def drop_stale(self) -> None: ...


class ServerContext:
    def __init__(self, config: ServerConfig, app: Callable[[Any], Any],
                 loop: asyncio.AbstractEventLoop, metrics: Metrics | None = None,
                 replay: ReplayCache | None = None) -> None:
        self.config = config
        self.app = app
        self.loop = loop
        self.metrics = metrics or METRICS
        self.metrics.ledger.budget = config.global_loan_budget
        self.ledger: LoanLedger = self.metrics.ledger
        self.connections: set[Any] = set()
        self.access_log = _access_logger() if config.access_log else None
        # Answers replayed for byte-identical requests (the session's ReplayCache);
        # a replay builds no Request, so there is none with an access log.
        self.replay = replay if self.access_log is None else None

    def connection_opened(self, conn: Any) -> None:
        self.connections.add(conn)
        self.metrics.connections_open += 1
        self.metrics.connections_total += 1

    def connection_closed(self, conn: Any) -> None:
        if conn in self.connections:
            self.connections.discard(conn)
            self.metrics.connections_open -= 1


def _access_logger() -> Callable[..., None]:
    """Combined Log Format, one line per response."""
    def log_access(request: Any, msg: Any, client: tuple[str, int] | None) -> None:
        host = client[0] if client else "-"
        when = time.strftime("%d/%b/%Y:%H:%M:%S %z")
        if request is None:
            line, referer, agent = "-", "-", "-"
        else:
            line = f"{request.method} {request.target.decode('latin-1')} HTTP/{request.version}"
            referer = request.headers.get("referer", "-")
            agent = request.headers.get("user-agent", "-")
        size = 0 if msg.head_only else msg.payload_length
        access_logger.info('%s - - [%s] "%s" %d %d "%s" "%s"', host, when, line,
                           msg.status, size, referer, agent)
    return log_access
