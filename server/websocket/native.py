"""WebSockets for handler modules: `@websocket("/path")`, the `WebSocket`, `broadcast`.

Theory of operation.  `@websocket(pattern)` adds an ordinary GET route to the
module's registry (framework/registry.py), so path parameters, converters, 405s and
reloads work as for `@route`.  Its handler is a `WebSocketEndpoint`, which answers
the upgrade request in two steps:

1. the handshake is checked (handshake.py): a bad one is answered 400 / 426 and the
   handler never runs;
2. the user's handler starts in a task of its own, with a `WebSocket` in the
   CONNECTING state.  The endpoint waits for the handler's *decision*:
   `await ws.accept(...)` answers the request with an `Upgrade` (the session sends
   the 101 and hands the socket over, server/http/upgrade.py); closing, returning or
   raising before accepting answers with an HTTP response instead — a 403, the
   response the handler returned (`return "no", 401`), or the error answer for the
   exception (an `HTTPError`'s status, the app's error hooks, 500).

After the take-over the handler task keeps running on the WebSocketConnection
(connection.py).  When the handler returns, the socket is closed with 1000 (1011
if it raised).  When the client vanishes, `receive` raises `WebSocketDisconnect`
(1006) and `send` raises it too; a handler still busy elsewhere is cancelled after
`close_timeout`, so an abandoned socket leaves no task behind.

`broadcast(sockets, data)` frames the message once — one header, one immutable
payload — and queues that very pair on every socket's transmitter, so a thousand
readers hold one copy of the payload; it waits only for the sockets that are over
their send budget.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from ..framework.registry import current_registry
from ..framework.results import to_response
from ..framework.routing import Route
from ..http.errors import HTTPError
from ..http.request import Headers, Request
from ..http.responses import error_response
from ..http.upgrade import Handover, Upgrade
from .connection import Closed, ConnectionClosed, WebSocketConnection
from .frames import OP_TEXT, frame_header, frame_payload
from .handshake import Handshake, HandshakeRefused, check_handshake
from .options import WebSocketOptions

__all__ = ["WebSocket", "WebSocketDisconnect", "WebSocketEndpoint", "WebSocketService", "broadcast",
           "websocket"]

log = logging.getLogger("pageloan.websocket")

DEFAULT_OPTIONS = WebSocketOptions()
_RUNNING: set[asyncio.Task] = set()     # handler tasks: strong references until done

Header = tuple[str, str]


class WebSocketDisconnect(ConnectionError):
    """The WebSocket is closed: `code` (1000 normal, 1001 going away, 1006 vanished...).

    A ConnectionError (an OSError), so code that catches those for any connection —
    the ASGI adapter among them, as ASGI 2.4 asks — catches this too.
    """

    def __init__(self, code: int = 1000, reason: str = "") -> None:
        super().__init__(code, reason)
        self.code = code
        self.reason = reason


class WebSocket:
    """One WebSocket as a handler sees it.

    Before `accept()` it is an HTTP request (`request`, `headers`, `query`,
    `path_params`, `origin`, `subprotocols` offered); after it, a message channel:
    `receive()` → `str` or `bytes`, `send(str | bytes)`, `async for message in ws`,
    `close(code, reason)`.
    """

    def __init__(self, request: Request, handshake: Handshake, options: WebSocketOptions,
                 params: dict[str, Any]) -> None:
        self.request = request
        self.path_params = params
        self.options = options
        self._handshake = handshake
        self.state = "connecting"            # → "open" → "closed"
        self.subprotocol: str | None = None
        self.close_code: int | None = None
        self.close_reason = ""
        loop = asyncio.get_running_loop()
        self._decision: asyncio.Future = loop.create_future()   # Upgrade | answer
        self._opened: asyncio.Future = loop.create_future()     # set at take-over
        self._conn: WebSocketConnection | None = None
        self._task: asyncio.Task | None = None

    # -- the request -----------------------------------------------------------------------
    @property
    def headers(self) -> Headers:
        return self.request.headers

    @property
    def query(self) -> dict[str, list[str]]:
        return self.request.query

    @property
    def path(self) -> str:
        return self.request.path

    @property
    def origin(self) -> str | None:
        """The Origin header (browsers send it: check it to refuse cross-site sockets)."""
        return self._handshake.origin

    @property
    def subprotocols(self) -> list[str]:
        """The subprotocols the client offered, in its order of preference."""
        return list(self._handshake.subprotocols)

    @property
    def client(self) -> tuple[str, int] | None:
        return self.request.client

    @property
    def connection(self) -> WebSocketConnection | None:
        """The connection once the socket is open (None before): for an adapter that
        moves its messages itself instead of through `receive`/`send` (the ASGI one)."""
        return self._conn

    # -- the handshake -----------------------------------------------------------------------
    async def accept(self, subprotocol: str | None = None, headers: Iterable[Header] = ()) -> None:
        """Answer 101 (with `subprotocol`, one the client offered) and start talking."""
        if self.state != "connecting" or self._decision.done():
            raise RuntimeError(f"accept() on a WebSocket that is {self.state}")
        if subprotocol is not None and subprotocol not in self._handshake.subprotocols:
            raise ValueError(f"subprotocol {subprotocol!r} was not offered "
                             f"(offered: {', '.join(self._handshake.subprotocols) or 'none'})")
        extensions, agreed = self._handshake.negotiate_extensions(self.options)
        stack = self._handshake.response_headers(subprotocol, agreed, headers)
        self.subprotocol = subprotocol

        def take_over(handover: Handover) -> WebSocketConnection:
            conn = WebSocketConnection(handover, self.options, extensions, self._lost)
            self._conn = conn
            self.state = "open"
            if not self._opened.done():
                self._opened.set_result(None)
            return conn

        self._decision.set_result(Upgrade(stack, take_over, self._abandoned))
        await self._opened

    async def handshake_answer(self) -> Any:
        """What the upgrade request is answered with: an Upgrade once `accept()` is
        called, else the HTTP answer that refused it (`deny`, `close`, an error)."""
        try:
            return await asyncio.shield(self._decision)
        except asyncio.CancelledError:
            # The client left during the handshake.
            self._abandoned()
            raise

    def deny(self, answer: Any) -> None:
        """Refuse the handshake with this HTTP answer (a Message); for adapters — a
        handler simply returns the response instead."""
        self._deny(answer)

    def _abandoned(self) -> None:
        """The client left before the 101 could be sent."""
        self._ended(1006)
        self._never_opened(WebSocketDisconnect(1006, "client went away during the handshake"))

    def _deny(self, answer: Any) -> None:
        if not self._decision.done():
            self._decision.set_result(answer)
        self._ended(1006 if self.close_code is None else self.close_code)
        self._never_opened(WebSocketDisconnect(self.close_code or 1006, "the handshake was refused"))

    def _never_opened(self, exc: WebSocketDisconnect) -> None:
        opened = self._opened
        if not opened.done():
            opened.set_exception(exc)
            opened.exception()     # whoever waits gets it; nobody waiting is no error

    def _ended(self, code: int, reason: str = "") -> None:
        self.state = "closed"
        if self.close_code is None:
            self.close_code = code
            self.close_reason = reason

    def _lost(self, conn: WebSocketConnection) -> None:
        """The transport is gone; give a handler busy elsewhere `close_timeout` to notice."""
        self._ended(conn.close_code or 1006, conn.close_reason)
        task = self._task
        if task is not None and not task.done():
            asyncio.get_running_loop().call_later(self.options.close_timeout, _cancel_if_running, task)

    # -- messages ----------------------------------------------------------------------------
    async def _connection(self) -> WebSocketConnection:
        conn = self._conn
        if conn is None:
            opened = self._opened
            if opened.done() and opened.exception() is not None:
                raise opened.exception()  # type: ignore[misc]  # refused, or the client left
            if not self._decision.done():
                raise RuntimeError("the WebSocket is not accepted yet: await ws.accept() first")
            await self._opened            # accepted, 101 not handed over yet (or refused: raises)
            conn = self._conn
            assert conn is not None
        return conn

    async def receive(self) -> str | bytes:
        """The next message; WebSocketDisconnect once the socket is closed."""
        conn = self._conn or await self._connection()
        item = await conn.receive()
        if type(item) is Closed:
            self._ended(item.code, item.reason)
            raise WebSocketDisconnect(item.code, item.reason)
        return item  # type: ignore[return-value]

    async def receive_text(self) -> str:
        message = await self.receive()
        if not isinstance(message, str):
            raise TypeError("expected a text message, got a binary one")
        return message

    async def receive_bytes(self) -> bytes:
        message = await self.receive()
        if not isinstance(message, bytes):
            raise TypeError("expected a binary message, got a text one")
        return message

    async def receive_json(self) -> Any:
        return json.loads(await self.receive())

    async def send(self, data: str | bytes | bytearray | memoryview) -> None:
        """Send one message (str → text frame, bytes → binary); waits for a slow reader."""
        try:
            await (self._conn or await self._connection()).send(data)
        except ConnectionClosed as exc:
            raise WebSocketDisconnect(exc.code, exc.reason) from None

    async def send_text(self, data: str) -> None:
        await self.send(data)

    async def send_bytes(self, data: bytes) -> None:
        await self.send(data)

    async def send_json(self, obj: Any) -> None:
        await self.send(json.dumps(obj, separators=(",", ":"), ensure_ascii=False))

    async def close(self, code: int = 1000, reason: str = "") -> None:
        """Close with `code`; before accept() this refuses the handshake with 403."""
        if self.state == "connecting" and self._conn is None:
            self._ended(code, reason)
            self._deny(error_response(403, reason or None, close=True))
            return
        if self._conn is not None:
            self._conn.close(code, reason)
        self._ended(code, reason)

    def __aiter__(self) -> WebSocket:
        return self

    async def __anext__(self) -> str | bytes:
        try:
            return await self.receive()
        except WebSocketDisconnect:
            raise StopAsyncIteration from None

    @property
    def buffered(self) -> int:
        """Bytes sent but not yet taken by the kernel (what a fan-out lag policy reads)."""
        return self._conn.buffered if self._conn is not None else 0

    def __repr__(self) -> str:
        return f"<WebSocket {self.request.target!r} {self.state}>"


def _cancel_if_running(task: asyncio.Task) -> None:
    if not task.done():
        task.cancel()


class WebSocketEndpoint:
    """The route handler behind `@websocket`: handshake, then the user's handler."""

    __slots__ = ("handler", "__name__")

    def __init__(self, handler: Callable[..., Awaitable[Any]]) -> None:
        if not inspect.iscoroutinefunction(handler):
            raise TypeError(f"@websocket handler {getattr(handler, '__name__', handler)!r} "
                            f"must be an async def taking the WebSocket")
        self.handler = handler
        self.__name__ = getattr(handler, "__name__", "websocket")

    async def __call__(self, request: Request, **params: Any) -> Any:
        try:
            handshake = check_handshake(request)
        except HandshakeRefused as refused:
            log.info("%s: WebSocket handshake refused for %r: %d", request.client,
                     request.target, refused.answer.status)
            return refused.answer
        options = getattr(request.app, "websocket_options", None) or DEFAULT_OPTIONS
        ws = WebSocket(request, handshake, options, params)
        task = asyncio.get_running_loop().create_task(self._run(ws, params))
        ws._task = task
        _RUNNING.add(task)
        task.add_done_callback(_RUNNING.discard)
        try:
            return await ws.handshake_answer()
        except asyncio.CancelledError:
            task.cancel()          # the client left during the handshake: the handler goes too
            raise

    async def _run(self, ws: WebSocket, params: dict[str, Any]) -> None:
        request = ws.request
        try:
            result = await self.handler(ws, **params)
        except (WebSocketDisconnect, ConnectionClosed):
            result = None
        except asyncio.CancelledError:
            ws._deny(error_response(503, close=True))
            raise
        except Exception as exc:  # noqa: BLE001 - the handler's failure ends its socket only
            if ws._conn is None and not ws._decision.done():
                ws._deny(await _error_answer(request, exc))
                return
            log.exception("WebSocket handler %s for %r failed", self.__name__, request.target)
            if ws._conn is not None:
                ws._conn.close(1011, "internal error")
            ws._ended(1011)
            return
        if ws._conn is None:
            if not ws._decision.done():
                # Returned without accepting: its return value (or a 403) answers the request.
                ws._deny(to_response(result) if result is not None else error_response(403, close=True))
            return
        ws._conn.close(1000)
        ws._ended(1000)


async def _error_answer(request: Request, exc: Exception) -> Any:
    """The HTTP answer for a handler that raised before accepting."""
    app = request.app
    answer_for = getattr(app, "exception_answer", None)
    if answer_for is not None:
        answer = answer_for(request, exc)
        if inspect.isawaitable(answer):
            answer = await answer
        return answer
    if isinstance(exc, HTTPError):
        return error_response(exc.status, exc.detail, close=True, headers=exc.headers)
    log.error("WebSocket handler for %r failed before accepting", request.target, exc_info=exc)
    return error_response(500, close=True)


class WebSocketService:
    """Opens WebSockets for answers that are not `@websocket` routes (the ASGI
    `websocket` scope): the handshake checked, a WebSocket in the CONNECTING state."""

    def __init__(self, options: WebSocketOptions | None = None) -> None:
        self.options = options or DEFAULT_OPTIONS

    def open(self, request: Request) -> WebSocket | Any:
        """A WebSocket for `request`, or the HTTP answer refusing its handshake.

        Call it from a coroutine: the WebSocket's futures belong to the running loop.
        """
        try:
            handshake = check_handshake(request)
        except HandshakeRefused as refused:
            log.info("%s: WebSocket handshake refused for %r: %d", request.client,
                     request.target, refused.answer.status)
            return refused.answer
        return WebSocket(request, handshake, self.options, {})


def websocket(pattern: str, *, name: str | None = None) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator: serve WebSocket connections at `pattern` with `async def handler(ws, **params)`."""
    def register(handler: Callable[..., Any]) -> Callable[..., Any]:
        endpoint = WebSocketEndpoint(handler)
        current_registry().routes.append(Route(pattern, endpoint, ("GET",), name=name or endpoint.__name__))
        return handler
    return register


async def broadcast(sockets: Iterable[WebSocket | WebSocketConnection],
                    data: str | bytes | memoryview) -> int:
    """Send one message to every open socket, the same header and payload to each.

    Returns how many sockets it was queued on; waits for those over their send budget.
    """
    opcode, payload = frame_payload(data)
    header = frame_header(opcode, len(payload))
    text = opcode == OP_TEXT
    slow: list[WebSocketConnection] = []
    count = 0
    for ws in sockets:
        conn = ws._conn if isinstance(ws, WebSocket) else ws
        if conn is None or not conn.open:
            continue
        if conn.queue_frame(header, payload, text):
            slow.append(conn)
        count += 1
    if slow:
        # One future for all of them, counted down by the transmitters' completion
        # callbacks: no task per slow socket (a thousand readers, a thousand tasks).
        done = asyncio.get_running_loop().create_future()
        waiting = 1            # held until every callback is registered (a failed one fires at once)

        def drained(_exc: BaseException | None) -> None:
            nonlocal waiting
            waiting -= 1
            if waiting == 0 and not done.done():
                done.set_result(None)

        for conn in slow:
            waiting += 1
            if not conn.when_drained(drained):
                waiting -= 1
        drained(None)
        await done
    return count

