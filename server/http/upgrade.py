"""Switching protocols: how an application takes a connection over from HTTP.

Theory of operation.  When httptools reports an upgrade request (`Connection:
upgrade` + `Upgrade: ...`), the session stops parsing HTTP and leaves the bytes
behind the head unread (reading pauses, so nothing the client sends early is lost).
The application answers that request like any other.  An ordinary answer (a 400, a
403, a 404) is sent and the connection closes, as before.  An `Upgrade` answer means
"take over": the session queues the 101 response on the transmitter, stops being the
connection's protocol, and calls `upgrade.take_over(handover)` with everything the
new protocol needs: the raw driver (read, pause, close), the transmitter (the same
one, so the 101 and the first frames keep their order on the wire), the bytes already
read past the head, and the server context.  The new protocol then becomes the
driver's `session`: the driver feeds it bytes and the server's sweeper and drain talk
to it through the same few methods (see `UpgradedProtocol`).

This module knows no WebSocket: it is the small contract between the HTTP layer and
whatever protocol a higher layer switches to (server/websocket/ is the one user).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

__all__ = ["Handover", "Upgrade", "UpgradedProtocol"]


class UpgradedProtocol(Protocol):
    """What a driver, the sweeper and drain call on the protocol that took over."""

    client: tuple[str, int] | None

    def data_received(self, data: bytes) -> None: ...

    def eof_received(self) -> None: ...

    def connection_lost(self) -> None: ...

    def progress(self) -> tuple | None: ...

    def on_timeout(self, phase: str) -> None: ...

    def start_draining(self) -> None: ...


class Handover:
    """What the HTTP session hands the protocol that takes its connection over."""

    __slots__ = ("driver", "transmitter", "data", "client", "ctx", "request")

    def __init__(self, driver: Any, transmitter: Any, data: bytes,
                 client: tuple[str, int] | None, ctx: Any, request: Any) -> None:
        self.driver = driver            # read side: pause/resume_reading, close, abort
        self.transmitter = transmitter  # the only way to send; the 101 is queued on it
        self.data = data                # bytes the client sent after the request head
        self.client = client
        self.ctx = ctx                  # the ServerContext: config, metrics, ledger, loop
        self.request = request          # the upgrade request


class Upgrade:
    """An application's answer to an upgrade request: send 101, then hand over.

    `headers` is a header stack like a Message's (bottom first, each slice ending in
    CRLF, the bottom one ending the head with the blank line); `push` adds a slice on
    top, so after-request hooks can add fields to the 101 as to any answer.
    `take_over(handover)` is called once the 101 is queued and returns the protocol
    that now owns the connection; `abandon()`, if given, is called instead when the
    client went away before the answer could be sent (so whoever waits for the
    take-over is not left waiting).
    """

    __slots__ = ("_stack", "take_over", "abandon", "status")

    def __init__(self, headers: list[bytes],
                 take_over: Callable[[Handover], UpgradedProtocol],
                 abandon: Callable[[], None] | None = None) -> None:
        self._stack = list(headers)
        self.take_over = take_over
        self.abandon = abandon
        self.status = 101

    def push(self, header: bytes) -> None:
        self._stack.append(header)

    def __repr__(self) -> str:
        return f"<Upgrade {self.take_over!r}>"
