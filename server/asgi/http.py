"""One ASGI `http` exchange: the application's receive/send over the session's Outlet.

Theory of operation.  The session calls the adapter with a Request; the adapter
answers with an HttpExchange, a RelayedAnswer: the session lends it the request's
Outlet and keeps the request active until the exchange ends it.  The exchange runs
the application in a task of its own, in a fresh copy of the server's context (so
context variables never leak from one request to the next on a connection).

Response (`send`):
* `http.response.start` is held, not written: the head goes out with the first body
  piece, so a whole answer — start plus one final `http.response.body` — is ONE
  Message (head block and body in one gather call), with a Content-Length computed
  when the application gave none, exactly like a native handler's answer.
* A body with `more_body` streams: the head goes out first, then one Message per
  piece, framed by the application's Content-Length, else chunked (HTTP/1.1), else
  delimited by closing the connection (HTTP/1.0).  While the transmitter holds more
  than the connection's loan budget, `send` waits for it to drain: back-pressure
  reaches the application as a slow `await send(...)`, never as buffering.
* Body bytes are handed to the transmitter as they are when they are `bytes`
  (immutable); a bytearray or memoryview may be reused by the application as soon
  as `send` returns, so it is copied once (rule 1: payload slices never change).
* `http.response.pathsend` / `http.response.zerocopysend` put a FileRegion in the
  Message instead of bytes (zerocopy.py).
* Exactly one final answer: an application that raises, or returns without
  answering, before anything is on the wire gets a 500 (with `--debug`, the
  traceback); once the head is out, the connection is aborted instead, so the client
  can never take a truncated body for a whole one.  A body longer than the declared
  Content-Length is refused the same way.

Request (`receive`): the body arrives as `http.request` messages straight from the
session's RequestBody — its bounded queue pauses the socket when the application
reads slowly, and the first `receive` answers `Expect: 100-continue`.  The last
piece carries `more_body=False`.  After the body, `receive` waits until the
response is complete or the client is gone, then returns `http.disconnect`.  A body
over the size limit (413) or too slow (408) also ends in `http.disconnect`, and the
answer is that status if the application has not answered yet.

Disconnect: when the connection is lost, a `send` raises ClientDisconnected (an
OSError, as ASGI 2.4 asks) and `receive` returns `http.disconnect`; the application
task is not cancelled, so its `finally` blocks and background tasks run as on
uvicorn.  EOF from the client (it finished sending) also makes `receive` report
`http.disconnect`, while the answer can still be written.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import re
import traceback
from collections.abc import Callable
from typing import Any

from ..core.message import FileRegion, Message
from ..http.request import BodyTooLarge, Request
from ..http.responses import error_response
from ..http.session import Outlet, RelayedAnswer
from .zerocopy import FileSource

__all__ = ["ClientDisconnected", "ExchangeSettings", "HttpExchange"]

log = logging.getLogger("pageloan.asgi")

_DISCONNECT = {"type": "http.disconnect"}
_NO_BODY_STATUSES = frozenset({204, 304})
_DROPPED_HEADERS = frozenset({b"connection", b"transfer-encoding", b"date"})
# A response header that could split the response or smuggle another one is refused.
_BAD_NAME = re.compile(rb"[\r\n\0 \t:]")
_BAD_VALUE = re.compile(rb"[\r\n\0]")
# Response header names applications send all the time, known to be well formed and
# of no concern to the adapter: only other names are lowered and checked.
_PLAIN_NAMES = frozenset({
    b"content-type", b"etag", b"last-modified", b"cache-control", b"set-cookie", b"location",
    b"vary", b"accept-ranges", b"content-encoding", b"content-disposition", b"content-range",
    b"content-language", b"expires", b"server", b"x-content-type-options", b"x-frame-options",
    b"access-control-allow-origin", b"access-control-allow-credentials", b"strict-transport-security",
    b"referrer-policy", b"content-security-policy", b"allow", b"retry-after", b"www-authenticate",
    b"link", b"age", b"pragma", b"x-request-id",
})
# What `_start` does with a response header name, by its exact (lower-case) spelling:
# 0 take it as it is, 1 Content-Length, 2 drop it.  One lookup classifies the names
# applications send; any other spelling is lowered and looked up again, and a name
# still unknown is checked.
_PLAIN, _LENGTH, _DROPPED = 0, 1, 2
_NAME_KINDS = {**dict.fromkeys(_PLAIN_NAMES, _PLAIN), b"content-length": _LENGTH,
               **dict.fromkeys(_DROPPED_HEADERS, _DROPPED)}
_LAST_CHUNK = b"0\r\n\r\n"

# Response phases: nothing yet, start held, head on the wire, answer complete.
_IDLE, _STARTED, _STREAMING, _COMPLETE = range(4)


class ClientDisconnected(OSError):
    """`send` after the client went away (ASGI 2.4: an OSError subclass)."""


class ExchangeSettings:
    """What every exchange of one adapter shares."""

    __slots__ = ("files", "debug", "context", "tasks")

    def __init__(self, files: FileSource, *, debug: bool = False) -> None:
        self.files = files
        self.debug = debug
        # Each application task starts from a copy of this (the server's) context.
        self.context = contextvars.copy_context()
        # Running application tasks: referenced here so none is collected mid-run,
        # and so shutdown can wait for them.
        self.tasks: set[asyncio.Task] = set()


class HttpExchange(RelayedAnswer):
    """One request/response cycle of an ASGI application."""

    __slots__ = ("app", "scope", "request", "settings", "outlet", "_task", "_phase", "_status",
                 "_headers", "_length", "_left", "_chunked", "_no_body", "_close",
                 "_body_read", "_body_done", "_gone", "_over", "_lost", "_ended", "_refusal",
                 "_trailers", "__weakref__")

    def __init__(self, app: Callable[..., Any], scope: dict[str, Any], request: Request,
                 settings: ExchangeSettings) -> None:
        self.app = app
        self.scope = scope
        self.request = request
        self.settings = settings
        self.outlet: Outlet | None = None
        self._task: asyncio.Task | None = None   # running the application (relay to _run's end)
        self._phase = _IDLE
        self._status = 200
        self._headers = b""                  # the application's fields, validated
        self._length: int | None = None      # declared Content-Length
        self._left = 0                       # body bytes still owed under it
        self._chunked = False
        self._no_body = False
        self._close = False
        self._body_read = 0
        self._body_done = False
        self._gone: asyncio.Future | None = None   # what a waiting receive awaits
        self._over = False                   # answered, or the client gone: http.disconnect
        self._lost = False                   # the connection is gone: send raises
        self._ended = False                  # the session's request is finished
        self._refusal: Message | None = None  # 413/408 owed instead of the app's answer
        self._trailers = False

    # -- the session side -------------------------------------------------------------
    def relay(self, outlet: Outlet) -> None:
        self.outlet = outlet
        outlet.on_gone = self._client_gone
        settings = self.settings
        # The task lets itself go when it ends (_run): no done-callback to schedule.
        task = self._task = outlet.loop.create_task(self._run(), context=settings.context.copy())
        settings.tasks.add(task)

    def _client_gone(self, lost: bool) -> None:
        if lost:
            self._lost = True
            self._ended = True
        self._wake_receivers()

    def _wake_receivers(self) -> None:
        self._over = True
        gone = self._gone
        if gone is not None and not gone.done():
            gone.set_result(None)

    async def _run(self) -> None:
        try:
            await self.app(self.scope, self.receive, self.send)
        except BaseException as exc:  # noqa: BLE001 - every failure becomes an answer or an abort
            self._failed(exc)
            if not isinstance(exc, Exception):
                raise
        else:
            if self._phase != _COMPLETE and not self._lost:
                log.error("ASGI application returned without completing the response to %s %r",
                          self.request.method, self.request.target)
                self._fail_answer(None)
        finally:
            # The outlet's hook is the one reference back to this exchange: without it
            # the exchange, its request and scope are freed by reference counting at
            # once instead of waiting, as a cycle, for the collector.
            outlet = self.outlet
            if outlet is not None:
                outlet.on_gone = None
            # The exchange and its task refer to each other until now (relay kept it
            # to spare a current_task() call here).
            task, self._task = self._task, None
            self.settings.tasks.discard(task)

    def _failed(self, exc: BaseException) -> None:
        request = self.request
        if self._lost:
            log.info("%s %r: client went away: %r", request.method, request.target, exc)
            return
        if self._refusal is not None and self._phase < _STREAMING:
            log.info("%s %r: request body refused: %r", request.method, request.target, exc)
        else:
            log.error("Exception in ASGI application answering %s %r\n%s", request.method,
                      request.target, "".join(traceback.format_exception(exc)))
        if self._phase != _COMPLETE:
            self._fail_answer(exc)

    def _fail_answer(self, exc: BaseException | None) -> None:
        """The one final answer of a broken exchange: an error page, or an abort."""
        outlet = self.outlet
        if outlet is None or self._ended:
            return
        streaming = self._phase == _STREAMING
        self._ended = True
        self._phase = _COMPLETE
        self._wake_receivers()
        if streaming:
            outlet.abort()             # a body is under way: never let it look complete
            return
        answer = self._refusal
        if answer is None:
            detail = None
            if self.settings.debug and exc is not None:
                detail = "".join(traceback.format_exception(exc))
            answer = error_response(500, detail)
        outlet.respond(answer)

    # -- receive ---------------------------------------------------------------------
    async def receive(self) -> dict[str, Any]:
        if not self._body_done:
            stream = self.request.body_stream
            if stream is None:
                self._body_done = True      # no body: one empty http.request, as the spec asks
                return {"type": "http.request", "body": b"", "more_body": False}
            if not self._lost:
                try:
                    chunk = await stream.read_chunk()
                except BodyTooLarge as exc:
                    return self._body_failed(413, str(exc))
                except TimeoutError:
                    return self._body_failed(408, "request body timeout")
                except OSError:
                    # The client stopped sending mid-body (EOF or reset): if the
                    # connection still stands, the answer is a 400 that closes it.
                    return self._body_failed(400, "request body incomplete")
                self._body_read += len(chunk)
                more = bool(chunk) and not (stream.complete and self._body_read >= stream.received)
                if not more:
                    self._body_done = True
                return {"type": "http.request", "body": chunk, "more_body": more}
        if self._over:
            return _DISCONNECT
        gone = self._gone
        if gone is None or gone.done():
            # (A receive cancelled while waiting — Starlette's `is_disconnected()` polls
            # that way — cancels the future it awaited: the next one waits on a new one.)
            self._gone = gone = asyncio.get_running_loop().create_future()
        await gone
        return _DISCONNECT

    def _body_failed(self, status: int, reason: str) -> dict[str, Any]:
        self._body_done = True
        self._refusal = error_response(status, reason, close=True)
        return _DISCONNECT

    # -- send ------------------------------------------------------------------------
    async def send(self, message: dict[str, Any]) -> None:
        kind = message["type"]
        if kind == "http.response.body" and self._phase == _STARTED and not self._lost:
            # The common case first: the body after the start.  A final one makes the
            # whole answer (one Message) without another coroutine frame.
            body = message.get("body", b"")
            if type(body) is not bytes:
                body = _copied(body)
            if not message.get("more_body", False):
                self._respond_whole(self.outlet, body, len(body), False)  # type: ignore[arg-type]
                return
            await self._piece(body, len(body), True)
            return
        if self._phase == _COMPLETE:
            if self._lost:
                raise ClientDisconnected("client disconnected")
            if kind == "http.response.trailers" and self._trailers:
                return
            raise RuntimeError(f"ASGI message {kind!r} sent after the response was complete")
        if self._lost:
            raise ClientDisconnected("client disconnected")
        if kind == "http.response.start":
            if self._phase != _IDLE:
                raise RuntimeError("ASGI message 'http.response.start' sent twice")
            self._start(message)
            return
        if self._phase == _IDLE:
            raise RuntimeError(f"ASGI message {kind!r} sent before 'http.response.start'")
        if kind == "http.response.body":
            body = message.get("body", b"")
            if type(body) is not bytes:
                body = _copied(body)
            more = bool(message.get("more_body", False))
            await self._piece(body, len(body), more)
        elif kind == "http.response.pathsend":
            region = self._open(lambda: self.settings.files.path_region(message["path"]))
            await self._piece(region, region.count, False, file=True)
        elif kind == "http.response.zerocopysend":
            region = self._open(lambda: self.settings.files.descriptor_region(
                message["file"], message.get("offset"), message.get("count")))
            await self._piece(region, region.count, bool(message.get("more_body", False)))
        else:
            raise RuntimeError(f"unexpected ASGI message {kind!r} in an http exchange")

    def _open(self, opener: Callable[[], FileRegion]) -> FileRegion:
        try:
            return opener()
        except OSError as exc:
            # Not a ClientDisconnected: the application's file is at fault.
            raise RuntimeError(f"cannot send the file: {exc}") from exc

    def _start(self, message: dict[str, Any]) -> None:
        status = message["status"]
        if type(status) is not int or not 200 <= status <= 999:
            raise RuntimeError(f"http.response.start status must be an int 200-999, not {status!r}")
        headers = message.get("headers", ())
        if type(headers) is not tuple:
            headers = tuple(headers)     # (an iterator is read once, here)
        block, length, close = self._fields(headers)
        if close:
            self._close = True
        self._status = status
        self._headers = block
        self._length = length
        self._no_body = status in _NO_BODY_STATUSES or self.request.method == "HEAD"
        self._trailers = bool(message.get("trailers", False))
        self._phase = _STARTED

    @staticmethod
    def _fields(headers: tuple) -> tuple[bytes, int | None, bool]:
        """The application's header fields checked: (block, Content-Length, close)."""
        parts: list[bytes] = []
        length: int | None = None
        close = False
        kinds = _NAME_KINDS
        for pair in headers:
            name, value = pair
            if type(name) is not bytes or type(value) is not bytes:
                name, value = _as_bytes(name), _as_bytes(value)
            kind = kinds.get(name)
            if kind is None:
                kind = kinds.get(name.lower())
                if kind is None:
                    # A name of the application's own: it must not split the head.
                    if not name or _BAD_NAME.search(name) is not None:
                        raise RuntimeError(f"invalid response header {name!r}: {value!r}")
                    kind = _PLAIN
            if kind:
                if kind == _LENGTH:
                    # Digits only: the value goes on the wire as it is, so what int()
                    # would also take ("+5", " 5", "1_0") must not frame the body.
                    if not value.isdigit() or length is not None and length != int(value):
                        raise RuntimeError(f"invalid Content-Length {value!r}")
                    if length is not None:
                        continue
                    length = int(value)
                else:
                    if _BAD_VALUE.search(value) is not None:
                        raise RuntimeError(f"invalid response header {name!r}: {value!r}")
                    if name.lower() == b"connection" and b"close" in value.lower():
                        close = True
                    continue
            parts += (name, b": ", value, b"\r\n")
        block = b"".join(parts)
        # The values are checked all at once: the block holds exactly one CR LF per
        # field, so no value carries a CR, LF (a smuggled line) or NUL.
        if len(block) - len(block.translate(None, b"\r\n\0")) != len(parts) >> 1:
            raise RuntimeError(f"invalid response header value in {list(headers)!r}")
        return block, length, close

    async def _piece(self, payload: bytes | FileRegion, size: int, more: bool, *,
                     file: bool = False) -> None:
        """One body piece: the whole answer, the head and first piece, or a piece after."""
        outlet = self.outlet
        assert outlet is not None
        if self._phase == _STARTED and not more:
            self._respond_whole(outlet, payload, size, file)
            return
        if self._phase == _STARTED:
            self._send_head(outlet)
        if not self._no_body and size:
            if self._length is not None:
                if size > self._left:
                    raise RuntimeError("response body longer than its Content-Length")
                self._left -= size
                outlet.send(Message(0, (), (payload,)))
            elif self._chunked:
                outlet.send(Message(0, (), (b"%x\r\n" % size, payload, b"\r\n")))
            else:
                outlet.send(Message(0, (), (payload,)))
        if more:
            if outlet.over_budget:
                await outlet.room()
                if self._lost:
                    raise ClientDisconnected("client disconnected")
            return
        self._finish(outlet)

    def _respond_whole(self, outlet: Outlet, payload: bytes | FileRegion, size: int, file: bool) -> None:
        length = self._length
        if self._no_body:
            payload_slices: tuple = ()
            if length is None and size and self.request.method == "HEAD" \
                    and self._status not in _NO_BODY_STATUSES:
                # What the GET would carry (the application rendered it, or it is a file).
                head = self._headers + b"content-length: %d\r\n\r\n" % size
            else:
                head = self._headers + b"\r\n"
        else:
            if length is None:
                head = self._headers + b"content-length: %d\r\n\r\n" % size
            else:
                head = self._headers + b"\r\n"
                if length != size:
                    if file and isinstance(payload, FileRegion) and length < size:
                        # The file grew since the application measured it: send what it declared.
                        payload = FileRegion(payload.fd, payload.offset, length, payload.owner)
                    else:
                        raise RuntimeError(f"response body is {size} bytes, its Content-Length says {length}")
            payload_slices = (payload,) if size else ()
        msg = Message(self._status, (head,), payload_slices)
        if self._close:
            msg.close = True                 # (set, not passed: a keyword costs more)
        self._phase = _COMPLETE
        self._ended = True
        self._over = True                    # _wake_receivers, inline: the common answer's
        gone = self._gone
        if gone is not None and not gone.done():
            gone.set_result(None)
        outlet.respond(msg)

    def _send_head(self, outlet: Outlet) -> None:
        head = self._headers
        if not self._no_body:
            if self._length is not None:
                self._left = self._length
            elif self.request.version != "1.0":
                self._chunked = True
                head += b"transfer-encoding: chunked\r\n"
            else:
                self._close = True     # HTTP/1.0 without a length: the close ends the body
        self._phase = _STREAMING
        outlet.start(Message(self._status, (head + b"\r\n",), close=self._close))

    def _finish(self, outlet: Outlet) -> None:
        if self._length is not None and self._left and not self._no_body:
            log.error("ASGI response to %s %r ended %d bytes short of its Content-Length",
                      self.request.method, self.request.target, self._left)
            self._phase = _COMPLETE
            self._ended = True
            self._wake_receivers()
            outlet.abort()
            return
        if self._chunked and not self._no_body:
            outlet.send(Message(0, (), (_LAST_CHUNK,)))
        self._phase = _COMPLETE
        self._ended = True
        self._wake_receivers()
        outlet.end()


def _copied(body: Any) -> bytes:
    """A body that is not bytes: the application may reuse its buffer, so copy it once."""
    if not isinstance(body, (bytearray, memoryview)):
        raise TypeError(f"http.response.body 'body' must be bytes, not {type(body).__name__}")
    return bytes(body)


def _as_bytes(value: Any) -> bytes:
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    raise TypeError(f"ASGI header names and values must be bytes, not {type(value).__name__}")
