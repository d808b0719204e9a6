"""The ASGI `websocket` scope: an application's WebSocket over pageloan's own.

Theory of operation.  The adapter sees an upgrade request for `websocket` and, instead
of an `http` exchange, answers it with `AsgiWebSocket.answer()`: a coroutine whose
result is what the session sends — an Upgrade (the 101, then the socket is handed
over) or an HTTP answer refusing the handshake.  The WebSocket itself (handshake
checks, wsproto parsing, frames as Messages, limits, keep-alive) is the one native
handlers use; it reaches this package through the small `WebSocketOpener` seam
below, which the CLI fills in (`server.websocket.WebSocketService`), because two
packages of the same rank do not import each other.

The application runs in a task of its own, in a copy of the server's context, and
speaks ASGI messages (spec 2.4):

    receive → websocket.connect (first), websocket.receive {text|bytes},
              websocket.disconnect {code, reason} (then again on every call)
    send    ← websocket.accept {subprotocol, headers}, websocket.send {text|bytes},
              websocket.close {code, reason},
              websocket.http.response.start {status, headers} +
              websocket.http.response.body {body, more_body}   (the denial extension)

Before accepting, `websocket.close` refuses with 403, as uvicorn does; the denial
extension sends the application's own response (its body collected, then one
Message).  An application that returns or raises before deciding gets a 500; after
accepting, returning closes with 1000 and raising with 1011.  Once the socket is
closed, `send` raises ClientDisconnected (an OSError) and `receive` reports
`websocket.disconnect`; the task is not cancelled, so its `finally` blocks run, as
on uvicorn.  `websocket.send` of a `bytes` object hands that very object to the
transmitter, so an application sending one payload to many sockets holds one copy.
"""

from __future__ import annotations

import asyncio
import logging
import traceback
from collections.abc import Callable, Iterable
from typing import Any, Protocol

from ..http.request import BadRequest, Request
from ..http.responses import error_response, message_response
from .http import ClientDisconnected, ExchangeSettings
from .scope import ScopeMaker

__all__ = ["AsgiWebSocket", "WebSocketOpener", "is_websocket_request", "websocket_scope"]

log = logging.getLogger("pageloan.asgi")

EXTENSIONS = ("websocket.http.response",)
DENIAL_BODY_MAX = 1 << 20       # a refusal page is small; more is an application bug


class OpenedWebSocket(Protocol):
    """The WebSocket an opener returns (server.websocket.WebSocket)."""

    subprotocols: list[str]
    connection: Any                  # the WebSocketConnection once open
    close_code: int | None
    close_reason: str
    state: str

    async def accept(self, subprotocol: str | None = None, headers: Iterable[tuple[str, str]] = ()) -> None: ...

    async def receive(self) -> str | bytes: ...

    async def send(self, data: str | bytes) -> None: ...

    async def close(self, code: int = 1000, reason: str = "") -> None: ...

    def deny(self, answer: Any) -> None: ...

    async def handshake_answer(self) -> Any: ...


class WebSocketOpener(Protocol):
    """Checks a handshake: a WebSocket to drive, or the HTTP answer refusing it."""

    def open(self, request: Request) -> Any: ...


def is_websocket_request(request: Request) -> bool:
    """An upgrade to `websocket` (the session has stopped reading HTTP behind it)."""
    if request.head is not None and request.lowered_head.find(b"\r\nupgrade:") < 0:
        return False          # the common case, told by one search of the lowered head
    upgrade = request.header(b"upgrade")
    return upgrade is not None and b"websocket" in upgrade.lower()


def websocket_scope(scopes: ScopeMaker, request: Request) -> dict[str, Any]:
    """The `websocket` scope: the http scope's fields, ws/wss, no method."""
    scope = scopes.http(request)          # BadRequest for a path that is not UTF-8
    scope["type"] = "websocket"
    scope["scheme"] = "wss" if scope["scheme"] == "https" else "ws"
    scope.pop("method", None)
    scope["subprotocols"] = []
    scope["extensions"] = {name: {} for name in EXTENSIONS}
    return scope


class AsgiWebSocket:
    """One ASGI `websocket` connection, from the handshake to the close."""

    __slots__ = ("app", "scope", "request", "opener", "settings", "ws", "_conn", "_connect_sent",
                 "_closed_sent", "_denial_status", "_denial_headers", "_denial_body", "_denial_size")

    def __init__(self, app: Callable[..., Any], scope: dict[str, Any], request: Request,
                 opener: WebSocketOpener, settings: ExchangeSettings) -> None:
        self.app = app
        self.scope = scope
        self.request = request
        self.opener = opener
        self.settings = settings
        self.ws: Any = None
        # The open connection, once accepted: messages then go to and from it directly.
        self._conn: Any = None
        self._connect_sent = False
        self._closed_sent = False
        self._denial_status: int | None = None
        self._denial_headers: list[tuple[str, str]] = []
        self._denial_body: list[bytes] = []
        self._denial_size = 0

    @classmethod
    def for_request(cls, app: Callable[..., Any], scopes: ScopeMaker, request: Request,
                    opener: WebSocketOpener, settings: ExchangeSettings) -> Any:
        """The session's answer for a websocket upgrade request (a coroutine)."""
        try:
            scope = websocket_scope(scopes, request)
        except BadRequest as exc:
            return error_response(400, str(exc), close=True)
        return cls(app, scope, request, opener, settings).answer()

    async def answer(self) -> Any:
        opened = self.opener.open(self.request)
        if not hasattr(opened, "handshake_answer"):
            return opened                  # the handshake was refused (400 / 426)
        self.ws = opened
        self.scope["subprotocols"] = list(opened.subprotocols)
        context = self.settings.context.copy()
        task = asyncio.get_running_loop().create_task(self._run(), context=context)
        self.settings.tasks.add(task)
        task.add_done_callback(self.settings.tasks.discard)
        return await opened.handshake_answer()

    async def _run(self) -> None:
        ws = self.ws
        try:
            await self.app(self.scope, self.receive, self.send)
        except Exception as exc:  # noqa: BLE001 - the application's failure ends its socket only
            if ws.state == "connecting":
                text = "".join(traceback.format_exception(exc))
                log.error("ASGI websocket %r failed before accepting\n%s", self.request.target, text)
                ws.deny(error_response(500, text if self.settings.debug else None, close=True))
            elif ws.state == "open":
                log.exception("ASGI websocket %r failed", self.request.target)
                await ws.close(1011, "internal error")
            return
        if ws.state == "connecting":
            log.error("ASGI websocket %r returned without accepting or closing", self.request.target)
            ws.deny(error_response(500, close=True))
        elif ws.state == "open":
            await ws.close(1000)

    # -- receive ---------------------------------------------------------------------------
    async def receive(self) -> dict[str, Any]:
        conn = self._conn
        if conn is not None:
            item = await conn.receive()
            if type(item) is bytes:
                return {"type": "websocket.receive", "bytes": item}
            if type(item) is str:
                return {"type": "websocket.receive", "text": item}
            # The input has ended: the WebSocket's own receive records the close (it
            # reports the end again on every call) and raises, as below.
            self._conn = None
        if not self._connect_sent:
            self._connect_sent = True
            return {"type": "websocket.connect"}
        ws = self.ws
        try:
            if ws.state == "connecting":
                await ws.handshake_answer()       # a refusal makes receive raise below
            message = await ws.receive()
        except ConnectionError:
            return self._disconnect()
        if isinstance(message, str):
            return {"type": "websocket.receive", "text": message}
        return {"type": "websocket.receive", "bytes": message}

    def _disconnect(self) -> dict[str, Any]:
        ws = self.ws
        return {"type": "websocket.disconnect", "code": ws.close_code or 1006,
                "reason": ws.close_reason or ""}

    # -- send ------------------------------------------------------------------------------
    async def send(self, message: dict[str, Any]) -> None:
        kind = message["type"]
        conn = self._conn
        if kind == "websocket.send" and conn is not None and conn.open:
            # The open socket's common case, straight to its connection.
            try:
                await conn.send(_payload(message))
            except ConnectionError as exc:
                raise ClientDisconnected(str(exc)) from None
            return
        ws = self.ws
        if ws.state == "connecting" and self._denial_status is None:
            if kind == "websocket.accept":
                headers = [(bytes(k).decode("latin-1"), bytes(v).decode("latin-1"))
                           for k, v in message.get("headers") or ()]
                try:
                    await ws.accept(message.get("subprotocol"), headers)
                except ConnectionError as exc:
                    raise ClientDisconnected(str(exc)) from None
                self._conn = ws.connection
            elif kind == "websocket.close":
                await ws.close(message.get("code") or 1000, message.get("reason") or "")
            elif kind == "websocket.http.response.start":
                self._denial_status = int(message["status"])
                self._denial_headers = [(bytes(k).decode("latin-1"), bytes(v).decode("latin-1"))
                                        for k, v in message.get("headers") or ()
                                        if bytes(k).lower() not in (b"content-length", b"connection")]
            else:
                raise RuntimeError(f"ASGI websocket: {kind!r} before websocket.accept")
            return
        if self._denial_status is not None and ws.state == "connecting":
            if kind != "websocket.http.response.body":
                raise RuntimeError(f"ASGI websocket: {kind!r} during the denial response")
            body = bytes(message.get("body") or b"")
            self._denial_size += len(body)
            if self._denial_size > DENIAL_BODY_MAX:
                raise RuntimeError("ASGI websocket: denial response body over 1 MiB")
            self._denial_body.append(body)
            if not message.get("more_body"):
                payload = b"".join(self._denial_body)
                ws.deny(message_response(self._denial_status, (payload,) if payload else (), None,
                                         self._denial_headers, close=True))
            return
        if ws.state != "open":
            raise ClientDisconnected(f"WebSocket closed ({ws.close_code or 1006})")
        if kind == "websocket.send":
            try:
                await ws.send(_payload(message))
            except ConnectionError as exc:
                raise ClientDisconnected(str(exc)) from None
        elif kind == "websocket.close":
            await ws.close(message.get("code") or 1000, message.get("reason") or "")
        else:
            raise RuntimeError(f"ASGI websocket: unexpected message {kind!r}")


def _payload(message: dict[str, Any]) -> bytes | str:
    """A websocket.send message's data: its `bytes`, else its `text`."""
    data: bytes | str | None = message.get("bytes")
    if data is None:
        data = message.get("text")
        if data is None:
            raise RuntimeError("ASGI websocket.send needs 'bytes' or 'text'")
    return data
