"""HTTP/1.1 on one connection: httptools callbacks → Requests → app → Messages, in order.

Theory of operation.  The session knows HTTP meaning, not how bytes move: it is fed
raw bytes (`data_received`), and it hands finished Messages to its transmitter.  Its
I/O *driver* (a raw socket, or a TLS transport) only reads, pauses and closes.

* Parsing: httptools calls back per URL piece, header, body chunk.  A Request is
  built when its head is complete and queued on `_pipeline`; its body keeps flowing
  into its RequestBody.
* Ordering: requests are answered strictly one after another (`_active`).  A
  synchronous answer (the static fast path) is queued on the transmitter at once, so
  twenty pipelined requests that arrive in one read are answered by twenty Messages
  that leave in one gather call, flushed when the read has been fully parsed.
* Replay: when a read is exactly one whole request, byte-identical to one answered
  before from the static site, and its files are unchanged, the answer laid out last
  time goes out again without parsing (answer_memo.py says what may be replayed).
* Loans: before dispatching another request the session checks the bytes its
  transmitter still has on loan against the per-connection budget, and the global
  ledger; over budget it stops reading and dispatching until the transmitter drains.
* Limits: head over `max_header_bytes` → 431 (414 for a long URL); body over
  `max_body_bytes` → 413; parse error → 400; method llhttp does not know → 501.  An
  error response closes the connection (the byte stream can no longer be trusted).
* Timeouts: the session keeps no clocks.  `progress()` names the phase it is in and
  a token that changes only on real progress; the server's once-a-second sweeper
  notes when it first saw a token and fires `on_timeout(phase)` once the same token
  has stood for that phase's limit.  In the head phase the token is the request
  count, so it does not move while a slowloris client dribbles header bytes; in the
  body phase it is the bytes received; while idle, the responses sent.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import re
import traceback
from collections import deque
from functools import partial
from types import CoroutineType
from typing import Any

import httptools

from ..core.message import Message
from .context import ReplayCache, ServerContext
from .request import BadRequest, BodyTooLarge, Request, RequestBody
from .responses import StreamResponse, error_response, header_block
from .upgrade import Handover, Upgrade
from .wire import DATE, status_line

__all__ = ["HttpSession", "Outlet", "RelayedAnswer"]

log = logging.getLogger("pageloan.http")

CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
_REQUEST_LINE = re.compile(rb"(?:^|\n)[!#$%&'*+.^_`|~0-9A-Za-z-]+ [^ \r\n]+ HTTP/1\.[01]\r?\n")
_NO_BODY_STATUSES = frozenset({204, 304})
_METHODS = {m.encode(): m for m in ("GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH")}


class _Reject(Exception):
    """Raised inside a parser callback to refuse the request with `status`."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


class _Rejection:
    """A queued error answer, kept in the pipeline so earlier answers go out first."""

    __slots__ = ("status", "reason", "version")

    def __init__(self, status: int, reason: str, version: str) -> None:
        self.status = status
        self.reason = reason
        self.version = version


class HttpSession:
    """One client connection's HTTP state."""

    def __init__(self, ctx: ServerContext, driver: Any, transmitter: Any,
                 client: tuple[str, int] | None) -> None:
        self.ctx = ctx
        self.config = ctx.config
        self.driver = driver
        self.transmitter = transmitter
        self.client = client
        self.loop = ctx.loop
        self._parser = httptools.HttpRequestParser(self)
        # llhttp >= 9 refuses bytes after a `Connection: close` request; we simply
        # stop parsing there, so let it through instead of raising (uvicorn #2238).
        self._parser.set_dangerous_leniencies(lenient_data_after_close=True)
        self._url = b""
        self._raw_headers: list[tuple[bytes, bytes]] = []
        self._head_bytes = 0
        self._expect_continue = False
        self._in_head = False
        self._current: Request | None = None      # being parsed
        self._pipeline: deque[Request | _Rejection] = deque()
        self._active: Request | None = None      # being answered
        self._task: asyncio.Task | None = None
        self._stop_parsing = False
        self._closing = False                   # a close-after message is queued
        self._waiting_room = False
        self._room_waiter: asyncio.Future | None = None
        self.closed = False
        self.draining = False
        self._metrics = ctx.metrics
        self._app = ctx.app
        self._max_head = ctx.config.max_header_bytes
        self._budget = ctx.config.connection_loan_budget
        self.requests_started = 0
        self._content_length: int | None = None
        self._chunked = False
        # Static answers replayed for byte-identical requests; set by the raw-socket
        # driver, whose transmitter the layouts are made for (answer_memo.py).
        self.memo: ReplayCache | None = None
        self._memo_candidate: tuple[Message, float] | None = None
        self._remembering = False         # this read's answer is to be remembered
        # An upgrade request and the bytes read past its head, until it is answered.
        self._upgrade: Request | None = None
        self._upgrade_data: list[bytes] = []
        self._outlet: Outlet | None = None  # the active request's, if it relays itself

    # -- input -------------------------------------------------------------------------
    def data_received(self, data: bytes) -> None:
        if self._stop_parsing or self.closed:
            if self._upgrade is not None and not self.closed:
                self._upgrade_data.append(data)     # early frames: kept for the new protocol
                self.driver.pause_reading()
            return
        memo = self.memo
        # At rest: between requests, nothing owed — a read that is one whole request
        # may be answered by replay, and a new answer may be remembered for replay.
        at_rest = (memo is not None and self._current is None and not self._in_head
                   and self._active is None and not self._pipeline and not self._closing
                   and not self.draining)
        if at_rest:
            layout = memo.lookup(data)
            if layout.__class__ is tuple:
                outstanding = self.transmitter.outstanding
                if not outstanding or (outstanding <= self._budget and not self.ctx.ledger.full):
                    # A byte-identical repeat of a static request whose files have not
                    # changed: the answer laid out last time goes out again, unparsed.
                    self.requests_started += 1
                    self._metrics.responses_total += 1
                    self.transmitter.replay(layout)
                    return
                layout = False
            # Else lookup said whether this request is worth remembering (asked before).
            self._remembering = layout
            started = self.requests_started
            self._memo_candidate = None
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            # Answer the request in hand, then close -- unless the application answers
            # with an Upgrade (upgrade.py): then the bytes past the head are the new
            # protocol's, so keep them and read no more until it takes over.
            self._stop_parsing = True
            if self._pipeline and isinstance(self._pipeline[-1], Request):
                self._pipeline[-1].keep_alive = False
                self._upgrade = self._pipeline[-1]
                self._upgrade_data.append(data[exc.args[0]:] if exc.args else b"")
                self.driver.pause_reading()
        except httptools.HttpParserCallbackError as exc:
            cause = exc.__context__
            if isinstance(cause, _Reject):
                self._reject(cause.status, cause.reason)
            else:
                log.exception("parser callback failed", exc_info=cause)
                self._reject(500, "internal error while parsing")
        except httptools.HttpParserInvalidMethodError:
            # llhttp refuses both unknown methods and binary garbage (a TLS hello on
            # the plain port): only a well-formed request line earns 501.
            if _REQUEST_LINE.search(data):
                self._reject(501, "unknown method")
            else:
                self._reject(400, "malformed request line")
        except httptools.HttpParserError as exc:
            self._reject(400, f"malformed request ({exc})")
        self._dispatch()
        self.transmitter.flush()
        if at_rest:
            self._remembering = False
            if self._memo_candidate is not None:
                self._remember(data, started)

    def _remember(self, data: bytes, started: int) -> None:
        """Keep the answer just sent for replay, if `data` was that one request, whole."""
        msg, stale_at = self._memo_candidate
        self._memo_candidate = None
        if (self.requests_started == started + 1 and self._current is None
                and not self._in_head and self._active is None and not self._pipeline
                and not self._closing and not self._stop_parsing):
            self.memo.store(data, msg, stale_at, self.transmitter)

    def eof_received(self) -> None:
        """The client finished sending; answer what is in hand, then close."""
        self._stop_parsing = True
        if self._current is not None and self._current.body_stream is not None:
            self._current.body_stream.fail(ConnectionError("client closed before the body ended"))
        last = self._pipeline[-1] if self._pipeline else None
        outlet = self._outlet
        if outlet is not None and outlet.on_gone is not None and last is None \
                and self._current is None:
            outlet.on_gone(False)     # a relaying answer may take EOF as a disconnect
        if isinstance(last, Request):
            last.keep_alive = False          # its answer closes the connection
        elif last is None and self._active is not None:
            self._active.keep_alive = False
        elif last is None and not self._closing:
            # Nothing left to answer: close once what is queued has been sent.
            if self.transmitter.idle:
                self.driver.close()
            else:
                self._closing = True
                self.transmitter.enqueue(Message(0, ()), self._closed_after_send)

    # -- httptools callbacks -------------------------------------------------------------
    def on_message_begin(self) -> None:
        self._url = b""
        self._raw_headers = []
        self._head_bytes = 0
        self._expect_continue = False
        self._content_length = None
        self._chunked = False
        self._in_head = True
        self.requests_started += 1

    def on_url(self, url: bytes) -> None:
        self._url += url
        self._head_bytes += len(url)
        if self._head_bytes > self._max_head:
            raise _Reject(414, "request target too long")

    def on_header(self, name: bytes, value: bytes) -> None:
        self._head_bytes += len(name) + len(value) + 4
        if self._head_bytes > self._max_head:
            raise _Reject(431, "request header block too large")
        size = len(name)
        if size == 14 or size == 17 or size == 6:
            self._framing_header(name.lower(), value)
        self._raw_headers.append((name, value))

    def _framing_header(self, name: bytes, value: bytes) -> None:
        """Headers the session itself needs: body framing and expectations."""
        if name == b"content-length":
            try:
                self._content_length = int(value)
            except ValueError:
                raise _Reject(400, "bad Content-Length") from None
        elif name == b"transfer-encoding":
            self._chunked = b"chunked" in value.lower()
        elif name == b"expect":
            if value.lower() != b"100-continue":
                raise _Reject(417, f"unsupported expectation {value!r}")
            self._expect_continue = True

    def on_headers_complete(self) -> None:
        self._in_head = False
        parser = self._parser
        raw_method = parser.get_method()
        method = _METHODS.get(raw_method) or raw_method.decode("ascii")
        keep_alive = parser.should_keep_alive() and not self.draining
        length = self._content_length
        body = None
        if length or self._chunked:
            if length is not None and length > self.config.max_body_bytes:
                raise _Reject(413, f"declared body of {length} bytes is over the limit")
            body = RequestBody(self.config.max_body_bytes, self.driver.pause_reading,
                               self._resume_reading,
                               self._send_continue if self._expect_continue else None)
        request = Request(method, self._url, parser.get_http_version(), self._raw_headers,
                          keep_alive, self.client, body)
        request.app = self.ctx.app
        request.expect_continue = self._expect_continue and body is not None
        self._current = request
        self._pipeline.append(request)

    def on_body(self, chunk: bytes) -> None:
        request = self._current
        if request is None or request.body_stream is None:
            return
        try:
            request.body_stream.feed(chunk)
        except BodyTooLarge as exc:
            request.body_stream.fail(exc)
            raise _Reject(413, str(exc)) from None

    def on_message_complete(self) -> None:
        request = self._current
        self._current = None
        if request is not None:
            if request.body_stream is not None:
                request.body_stream.finish()
            if not request.keep_alive:
                self._stop_parsing = True

    # -- refusing ------------------------------------------------------------------------
    def _reject(self, status: int, reason: str) -> None:
        """Answer `status` after the answers already owed, then close."""
        self._metrics.requests_rejected += 1
        peer = self.client[0] if self.client else "-"
        log.warning("%s: %d %s", peer, status, reason)
        self._stop_parsing = True
        version = "1.1"
        current = self._current
        if current is not None:
            version = current.version
            if current is self._active:
                # Its handler is running: it sees the failure through its body stream
                # (a 413 answer by the app), and the connection closes after it.
                current.keep_alive = False
                return
            try:
                self._pipeline.remove(current)
            except ValueError:
                pass
        self._pipeline.append(_Rejection(status, reason, version))

    # -- answering -----------------------------------------------------------------------
    def _dispatch(self) -> None:
        """Answer queued requests in order, as long as loans allow."""
        pipeline = self._pipeline
        while pipeline and self._active is None and not self.closed and not self._closing:
            outstanding = self.transmitter.outstanding
            # Over the connection budget, or the global ledger full while this
            # connection already has bytes on loan: wait for the transmitter to drain.
            # A connection with nothing on loan may always send one message, so a few
            # slow readers holding the global budget cannot starve everybody else.
            if outstanding and (outstanding > self._budget or self.ctx.ledger.full):
                self._wait_for_room()
                return
            item = pipeline.popleft()
            if type(item) is _Rejection:
                msg = error_response(item.status, item.reason, close=True)
                self._send(None, msg, item.version)
                continue
            self._active = item
            try:
                result = self._app(item)
            except Exception as exc:  # noqa: BLE001 - the app's own error handling failed
                result = self._internal_error(item, exc)
            if type(result) is Message:
                self._send(item, result, item.version)
            elif type(result) is CoroutineType or inspect.isawaitable(result):
                # The answer's own coroutine becomes the task (no wrapper frame); the
                # session picks its result up in a done-callback.
                task = self.loop.create_task(
                    result if type(result) is CoroutineType else _awaited(result))
                task.add_done_callback(partial(self._answered_later, item))
                self._task = task
                return
            else:
                self._respond_other(item, result)
                if self._active is not None:
                    return

    def _answered_later(self, request: Request, task: asyncio.Task) -> None:
        if task.cancelled():          # the connection went away under the handler
            self._task = None
            self._active = None
            return
        exc = task.exception()
        result = self._internal_error(request, exc) if exc is not None else task.result()
        self._task = None
        if self.closed:
            self._active = None
            return
        if type(result) is Message:
            self._send(request, result, request.version)
        else:
            self._respond_other(request, result)
            if self._active is not None:
                return
        self._dispatch()
        self.transmitter.flush()

    def _respond_other(self, request: Request, result: Any) -> None:
        if isinstance(result, StreamResponse):
            self._task = self.loop.create_task(self._stream(request, result))
        elif type(result) is Upgrade and request is self._upgrade:
            self._switch_protocols(request, result)
        elif isinstance(result, RelayedAnswer):
            # The answer sends itself (the ASGI adapter): it gets this request's
            # Outlet, and the request stays active until it says `end` or `abort`.
            self._outlet = Outlet(self, request)
            result.relay(self._outlet)
        else:
            exc = TypeError(f"handler returned {type(result).__name__}, not a Message")
            self._send(request, self._internal_error(request, exc), request.version)

    def _internal_error(self, request: Request, exc: BaseException) -> Message:
        if isinstance(exc, BadRequest):
            return error_response(400, str(exc))
        if isinstance(exc, BodyTooLarge):
            return error_response(413, str(exc), close=True)
        log.error("error answering %s %r\n%s", request.method, request.target,
                  "".join(traceback.format_exception(exc)))
        detail = "".join(traceback.format_exception(exc)) if self.config.debug else None
        return error_response(500, detail)

    def _send(self, request: Request | None, msg: Message, version: str,
              *, streaming: bool = False) -> None:
        """Push the status line and connection headers, and queue the message."""
        close = msg.close or self.draining or request is None or not request.keep_alive
        if request is not None and request.body_stream is not None \
                and not request.body_stream.complete:
            if request.expect_continue and request.body_stream._on_first_read is not None:
                close = True   # we never said 100 Continue: the body is not coming
            if not streaming:
                request.body_stream.discard()
        stack = msg._stack
        date = DATE.line()
        if close:
            stack.append(date + b"Connection: close\r\n")
        else:
            stack.append(date + b"Connection: keep-alive\r\n" if version == "1.0" else date)
            if self._remembering and request.body_stream is None:
                self._memo_candidate = (msg, DATE.until)
        status = msg.status
        stack.append(status_line(status))
        if status in _NO_BODY_STATUSES or (request is not None and request.method == "HEAD"):
            msg.head_only = True
        self._metrics.responses_total += 1
        if self.ctx.access_log is not None:
            self.ctx.access_log(request, msg, self.client)
        if close:
            self._closing = True
            self._stop_parsing = True
            self._pipeline.clear()
            # A streamed head has its body still to come: the close waits for the end.
            self.transmitter.enqueue(msg, None if streaming else self._closed_after_send)
        else:
            self.transmitter.enqueue(msg)
        if not streaming:
            self._active = None

    def _switch_protocols(self, request: Request, upgrade: Upgrade) -> None:
        """Queue the 101, then hand the connection to the protocol that takes over."""
        msg = Message(101, upgrade._stack)
        msg.push(DATE.line())
        msg.push(status_line(101))
        self._metrics.responses_total += 1
        if self.ctx.access_log is not None:
            self.ctx.access_log(request, msg, self.client)
        self._closing = True                  # this session answers nothing more
        self._pipeline.clear()
        self._active = None
        self._upgrade = None
        self.transmitter.wants_idle = False
        self.transmitter.enqueue(msg)
        data, self._upgrade_data = b"".join(self._upgrade_data), []
        protocol = upgrade.take_over(Handover(self.driver, self.transmitter, data,
                                              self.client, self.ctx, request))
        self.driver.session = protocol        # the driver now feeds the new protocol
        self.driver.resume_reading()

    def _abandon_upgrade(self) -> None:
        """The client left after the app chose to upgrade but before the 101 went out."""
        self._upgrade = None
        task = self._task
        if task is not None and task.done() and not task.cancelled() and task.exception() is None:
            answer = task.result()
            if type(answer) is Upgrade and answer.abandon is not None:
                answer.abandon()

    def _closed_after_send(self, exc: BaseException | None) -> None:
        self.driver.close()

    async def _stream(self, request: Request, resp: StreamResponse) -> None:
        """Send a StreamResponse: a head, then one small Message per chunk."""
        chunked = request.version != "1.0"
        fields = [("Content-Type", resp.content_type), *resp.headers]
        if chunked:
            fields.append(("Transfer-Encoding", "chunked"))
        head = Message(resp.status, (header_block(fields),), close=not chunked)
        self._send(request, head, request.version, streaming=True)
        self.transmitter.flush()
        iterator = resp.body.__aiter__()
        try:
            if request.method != "HEAD":
                async for chunk in iterator:
                    if self.closed:
                        break
                    if type(chunk) is tuple:
                        # Several slices sent as one chunk without joining them: fan-out
                        # lends every reader the same chunk objects (core/fanout.py).
                        size = sum(map(len, chunk))
                        if not size:
                            continue
                        payload = (b"%x\r\n" % size, *chunk, b"\r\n") if chunked else chunk
                    else:
                        if isinstance(chunk, str):
                            chunk = chunk.encode("utf-8")
                        if not chunk:
                            continue
                        payload = (b"%x\r\n" % len(chunk), chunk, b"\r\n") if chunked else (chunk,)
                    self.transmitter.enqueue(Message(0, (), payload))
                    self.transmitter.flush()
                    if self.transmitter.outstanding > self.config.connection_loan_budget:
                        await self._room()
                if chunked and not self.closed:
                    self.transmitter.enqueue(Message(0, (), (b"0\r\n\r\n",)))
        except asyncio.CancelledError:
            raise
        except Exception:  # noqa: BLE001 - the body generator failed mid-stream
            log.exception("streaming body of %s %r failed", request.method, request.target)
            self._closing = True
        finally:
            aclose = getattr(iterator, "aclose", None)
            if aclose is not None:
                try:
                    await aclose()
                except Exception:  # noqa: BLE001
                    pass
        self._task = None
        if request.body_stream is not None and not request.body_stream.complete:
            request.body_stream.discard()
        self._active = None
        if not self.closed and (self._closing or not request.keep_alive):
            # A closing head, a failed body, or the client half-closed during the
            # stream: close once it is all sent.
            self._close_when_sent()
        if not self.closed:
            self._dispatch()
            self.transmitter.flush()

    def _close_when_sent(self) -> None:
        self._closing = True
        self._stop_parsing = True
        if self.transmitter.idle:
            self.driver.close()
        else:
            self.transmitter.enqueue(Message(0, ()), self._closed_after_send)

    def _send_continue(self) -> None:
        # The handler asked for the body: tell the client to send it.
        self.transmitter.enqueue(Message(0, (), (CONTINUE,)))
        self.transmitter.flush()

    # -- loans ---------------------------------------------------------------------------
    def _wait_for_room(self) -> None:
        if self._waiting_room:
            return
        self._waiting_room = True
        self.transmitter.wants_idle = True
        self.driver.pause_reading()

    async def _room(self) -> None:
        """Wait until the transmitter has drained (for streaming producers)."""
        if self.transmitter.idle or self.closed:
            return
        self._room_waiter = self.loop.create_future()
        self.transmitter.wants_idle = True
        try:
            await self._room_waiter
        finally:
            self._room_waiter = None

    def on_transmit_idle(self) -> None:
        """Called by the transmitter when it has handed everything to the kernel and
        `wants_idle` is set (loan budget, streaming producer, drain)."""
        self.transmitter.wants_idle = self.draining
        waiter = self._room_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
        if self._waiting_room:
            self._waiting_room = False
            self._resume_reading()
            self._dispatch()
            self.transmitter.flush()
        if self.draining and not self._closing and self._active is None \
                and not self._pipeline and self._current is None and not self._in_head:
            self.driver.close()

    def _resume_reading(self) -> None:
        if not self._waiting_room and not self.closed:
            self.driver.resume_reading()

    # -- lifecycle -------------------------------------------------------------------------
    def progress(self) -> tuple | None:
        """(phase, token) for the sweeper, or None while the server owes the next move."""
        if self._in_head:
            return ("head", self.requests_started)
        current = self._current
        if current is not None and current.body_stream is not None:
            return ("body", self.requests_started, current.body_stream.received)
        if self._active is None and not self._pipeline and self.transmitter.idle:
            return ("idle", self.requests_started)
        return None

    def on_timeout(self, phase: str) -> None:
        """The sweeper saw no progress in `phase` for that phase's limit."""
        if phase == "idle":
            log.debug("closing idle keep-alive connection from %s", self.client)
            self.driver.close()
            return
        log.warning("closing connection from %s: %s timeout", self.client, phase)
        self._metrics.requests_rejected += 1
        if self._current is not None and self._current.body_stream is not None:
            self._current.body_stream.fail(TimeoutError("request body timeout"))
        if self._active is None and self.transmitter.idle:
            self._stop_parsing = True
            self._pipeline.clear()
            self._send(None, error_response(408, f"{phase} timeout", close=True), "1.1")
            self.transmitter.flush()
        else:
            self.driver.abort()

    def start_draining(self) -> None:
        """Graceful shutdown: finish what is in flight, then close."""
        self.draining = True
        self.transmitter.wants_idle = True
        if self._active is None and not self._pipeline and self.transmitter.idle:
            self.driver.close()

    def connection_lost(self) -> None:
        self.closed = True
        self._stop_parsing = True
        outlet, self._outlet = self._outlet, None
        if outlet is not None:
            outlet.closed = True
            if outlet.on_gone is not None:
                outlet.on_gone(True)
        for item in (self._current, self._active):
            if item is not None and item.body_stream is not None:
                item.body_stream.fail(ConnectionError("client disconnected"))
        if self._task is not None and not self._task.done():
            self._task.cancel()
        if self._upgrade is not None:
            self._abandon_upgrade()
        # Let go of the task: its CancelledError's traceback holds the streaming frame,
        # whose locals (the last chunks sent) would otherwise wait for the cyclic GC.
        self._task = None
        waiter = self._room_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    @property
    def busy(self) -> bool:
        return self._active is not None or bool(self._pipeline) or not self.transmitter.idle


class RelayedAnswer:
    """Base of answers that send themselves: `relay(outlet)` is called once, at once.

    For producers whose answer is not one Message nor an async iterator of chunks —
    the ASGI adapter, whose application pushes head and body pieces when it likes.
    `relay` must not block: it starts whatever task it needs and returns.
    """

    __slots__ = ()

    def relay(self, outlet: Outlet) -> None:
        raise NotImplementedError


class Outlet:
    """One active request's way out, lent to a RelayedAnswer until it ends.

    `respond(msg)` sends a whole answer (head and payload in one Message) and ends
    the request; or `start(head)` sends a head, `send(msg)` body pieces (framed by
    the caller), and `end()` finishes it.  `abort()` cuts the connection (a broken
    answer: the client must not take a truncated body for a whole one).  While the
    transmitter holds more than the connection's loan budget, `over_budget` is true
    and `room()` waits for it to drain.  `on_gone(lost)` is called once when the
    client has finished sending (False: EOF, it may still read) or the connection is
    gone (True); `closed` says the latter.
    """

    __slots__ = ("_session", "request", "closed", "on_gone", "_ended")

    def __init__(self, session: HttpSession, request: Request) -> None:
        self._session = session
        self.request = request
        self.closed = False
        self.on_gone: Any = None
        self._ended = False

    def respond(self, msg: Message) -> None:
        session = self._session
        if self._ended or self.closed:
            return
        self._ended = True
        session._outlet = None
        session._send(self.request, msg, self.request.version)
        session._dispatch()
        session.transmitter.flush()

    def start(self, head: Message) -> None:
        if self._ended or self.closed:
            return
        session = self._session
        session._send(self.request, head, self.request.version, streaming=True)
        session.transmitter.flush()

    def send(self, msg: Message) -> None:
        if self._ended or self.closed:
            return
        transmitter = self._session.transmitter
        transmitter.enqueue(msg)
        transmitter.flush()

    @property
    def over_budget(self) -> bool:
        return self._session.transmitter.outstanding > self._session.config.connection_loan_budget

    async def room(self) -> None:
        if not self.closed:
            await self._session._room()

    def end(self) -> None:
        """The streamed answer is complete: close if owed, else on to the next request."""
        if self._ended or self.closed:
            return
        self._ended = True
        session = self._session
        session._outlet = None
        request = self.request
        if request.body_stream is not None and not request.body_stream.complete:
            request.body_stream.discard()
        session._active = None
        if session._closing or not request.keep_alive:
            session._close_when_sent()
        if not session.closed:
            session._dispatch()
            session.transmitter.flush()

    def abort(self) -> None:
        if self.closed:
            return
        self._ended = True
        self._session.driver.abort()


async def _awaited(awaitable: Any) -> Any:
    """Wrap a non-coroutine awaitable so it can run as a task."""
    return await awaitable
