"""One WebSocket connection: the protocol that owns a socket after the 101.

Theory of operation.  The HTTP session hands over its driver and transmitter
(server/http/upgrade.py) and this object becomes the driver's `session`: the driver
feeds it bytes, the server's sweeper and drain call `progress`, `start_draining`.

* In: bytes go to wsproto, which unmasks and parses frames, checks UTF-8 and the
  rules of control frames, and yields events — except the whole, final data
  frames a read starts with, which are read here when wsproto holds nothing of a
  frame or a fragmented message (frames.plain_frame: what browsers send).  A data message may arrive in many
  partial events; the parts are kept until the message is finished and counted on
  the way, so a message over `max_message_size` — or a frame whose header declares
  more than `max_frame_size`, refused before its payload arrives — closes the
  connection with 1009 instead of being buffered.  Finished messages go to the one
  reader (`receive`) or into a small inbox; past `receive_buffer` unread bytes the
  driver stops reading (back-pressure, not buffering).
* Out: a data message is a Message of our own frame header and the untouched
  payload (frames.py), queued on the transmitter like any HTTP answer.  Control
  frames (pong, ping, close) are wsproto's few bytes.  `send` follows the loan rules
  (core/loans.py): when this socket has more than `send_budget` bytes on loan, or the
  global ledger is full while it has any, `send` waits until the kernel has taken
  them — a slow reader slows its sender, it never grows memory.
* Closing: a close frame from the peer is answered at once and the TCP connection
  closed once the answer is sent (RFC 6455 §7.1.1: the server closes first); a close
  we start waits `close_timeout` for the peer's reply.  A protocol error (bad UTF-8,
  a masked-bit violation, an unknown opcode) closes with wsproto's code (1002,
  1007).  Whatever way it ends, the reader sees one `Closed(code, reason)` — 1006
  when the connection simply vanished — and `send` raises `ConnectionClosed`.
* Keep-alive: a ping every `ping_interval`; no pong within `ping_timeout` closes with
  1011.  The sweeper's stall check still applies: a peer that reads nothing for
  `send_timeout` while we owe it bytes is dropped.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections import deque
from collections.abc import Callable
from typing import Any

from wsproto.connection import Connection, ConnectionState, ConnectionType
from wsproto.events import BytesMessage, CloseConnection, Ping, Pong, TextMessage
from wsproto.events import Message as WsMessage
from wsproto.extensions import Extension
from wsproto.utilities import LocalProtocolError

from ..core.message import Message
from ..http.upgrade import Handover
from .frames import data_frame, plain_frame, unmask
from .options import WebSocketOptions

__all__ = ["Closed", "ConnectionClosed", "WebSocketConnection", "STATS"]

log = logging.getLogger("pageloan.websocket")

OPEN = ConnectionState.OPEN
REMOTE_CLOSING = ConnectionState.REMOTE_CLOSING
CLOSED = ConnectionState.CLOSED


class Closed:
    """The end of a connection's input: the close code and reason (1006: it vanished)."""

    __slots__ = ("code", "reason")

    def __init__(self, code: int, reason: str = "") -> None:
        self.code = code
        self.reason = reason

    def __repr__(self) -> str:
        return f"Closed({self.code}, {self.reason!r})"


class ConnectionClosed(ConnectionError):
    """Sending on a WebSocket that is closing or closed."""

    def __init__(self, code: int, reason: str = "") -> None:
        super().__init__(f"WebSocket closed ({code}{': ' + reason if reason else ''})")
        self.code = code
        self.reason = reason


class WebSocketStats:
    """Process-wide counts, for tests and the benchmarks (`open` returns to 0)."""

    __slots__ = ("open", "total", "messages_in", "messages_out")

    def __init__(self) -> None:
        self.open = 0
        self.total = 0
        self.messages_in = 0
        self.messages_out = 0


STATS = WebSocketStats()


class WebSocketConnection:
    """RFC 6455 over a handed-over socket: wsproto parses, the transmitter sends."""

    def __init__(self, handover: Handover, options: WebSocketOptions,
                 extensions: list[Extension] | None = None,
                 on_lost: Callable[[WebSocketConnection], None] | None = None) -> None:
        self.driver = handover.driver
        self.transmitter = handover.transmitter
        self.client = handover.client
        self.ctx = handover.ctx
        self.loop: asyncio.AbstractEventLoop = handover.ctx.loop
        self.options = options
        self._ws = Connection(ConnectionType.SERVER, extensions or [])
        self._compress = bool(extensions)
        # wsproto's frame decoder, to read a frame's declared length from its header
        # (wsproto has no frame-size limit of its own); None if its insides change.
        proto = getattr(self._ws, "_proto", None)
        self._decoder: Any = getattr(proto, "_frame_decoder", None)
        # wsproto's message decoder holds an opcode while a fragmented message is under way.
        self._assembler: Any = getattr(proto, "_message_decoder", None)
        # Whole data frames skip wsproto only with nothing negotiated (a compressed
        # frame is wsproto's to inflate) and wsproto's insides as expected.
        self._plain = not extensions and hasattr(getattr(self._decoder, "buffer", None), "buffer") \
            and hasattr(self._assembler, "opcode")
        self._max_message = options.max_message_size
        self._max_frame = options.max_frame_size
        self._plain_limit = min(options.max_frame_size, options.max_message_size)
        self._budget = options.send_budget
        self._parts: list[Any] = []
        self._part_size = 0
        self._inbox: deque[str | bytes] = deque()
        self._inbox_bytes = 0
        self._reader: asyncio.Future | None = None
        self._paused = False          # reading paused: the inbox is full
        self._throttled = False       # reading paused: our replies are not being read
        self._final: Closed | None = None
        self.close_code: int | None = None
        self.close_reason = ""
        self.open = True          # data may still be sent
        self.closed = False       # the transport is gone
        self._transport_closing = False
        self._ping_timer: asyncio.TimerHandle | None = None
        self._pong_timer: asyncio.TimerHandle | None = None
        self._close_timer: asyncio.TimerHandle | None = None
        self._on_lost = on_lost
        STATS.open += 1
        STATS.total += 1
        # The driver's `session` becomes this object only after take_over returns:
        # bytes that came with the head are parsed on the next loop turn.
        self.loop.call_soon(self._start, handover.data)

    def _start(self, data: bytes) -> None:
        if self.closed:
            return
        self._schedule_ping()
        if data:
            self.data_received(data)

    # -- in ------------------------------------------------------------------------------
    def data_received(self, data: bytes) -> None:
        ws = self._ws
        if self.closed or ws.state is CLOSED:
            return
        if self._plain and ws.state is OPEN and self.open:
            decoder = self._decoder
            if decoder.header is None and not decoder.buffer.buffer and self._assembler.opcode is None:
                data = self._plain_frames(data)
        if data:
            self._parse(data)
        transmitter = self.transmitter
        transmitter.flush()
        if transmitter.outstanding > self._budget and not self._throttled and not self.closed:
            # What the peer makes us send (pongs to a ping flood, a close) while it
            # reads nothing: stop reading until the kernel has taken it (loan rule 4).
            self._throttled = True
            self.driver.pause_reading()
            transmitter.enqueue(Message(0, ()), self._unthrottle)

    def _plain_frames(self, data: bytes) -> bytes:
        """Deliver the whole final data frames `data` starts with; return the rest.

        wsproto has nothing buffered and no message under way, so it loses nothing by
        not seeing them, and sees the rest from a frame boundary.  A text frame that
        is not UTF-8 is left to it too, so that it closes with 1007 as always.
        """
        at = 0
        limit = self._plain_limit
        while True:
            frame = plain_frame(data, at, limit)
            if frame is None:
                break
            opcode, start, n = frame
            payload = unmask(data, start, n)
            if opcode == 0x1:
                try:
                    text = payload.decode("utf-8")
                except UnicodeDecodeError:
                    break
                self._deliver(text)
            else:
                self._deliver(payload)
            at = start + n
        return data[at:] if at else data

    def _parse(self, data: bytes) -> None:
        ws = self._ws
        try:
            ws.receive_data(data)
        except LocalProtocolError:
            return
        for event in ws.events():
            if isinstance(event, (BytesMessage, TextMessage)):
                if not self.open:
                    continue              # we are closing: data no longer delivered
                chunk: Any = event.data     # bytes, or str (wsproto checked the UTF-8)
                n = len(chunk.encode()) if isinstance(chunk, str) and not chunk.isascii() else len(chunk)
                size = self._part_size + n
                if size > self._max_message:
                    self._fail(1009, f"message over {self._max_message} bytes")
                    break
                if event.message_finished:
                    if self._parts:
                        self._parts.append(chunk)
                        chunk = ("" if isinstance(chunk, str) else b"").join(self._parts)
                        self._parts = []
                        self._part_size = 0
                    self._deliver(chunk)
                else:
                    self._parts.append(chunk)
                    self._part_size = size
            elif isinstance(event, Ping):
                if ws.state is OPEN:
                    self._send_control(ws.send(event.response()))
            elif isinstance(event, Pong):
                self._pong_received()
            elif isinstance(event, CloseConnection):
                self._close_frame(event)
                break
        else:
            decoder = self._decoder
            header = decoder.header if decoder is not None else None
            if header is not None and header.payload_len > self._max_frame:
                self._fail(1009, f"frame over {self._max_frame} bytes")

    def _unthrottle(self, exc: BaseException | None) -> None:
        self._throttled = False
        if exc is None and not self._paused and not self.closed:
            self.driver.resume_reading()

    def _deliver(self, message: str | bytes) -> None:
        STATS.messages_in += 1
        reader = self._reader
        if reader is not None and not self._inbox:
            self._reader = None
            if not reader.done():
                reader.set_result(message)
                return
        self._inbox.append(message)
        self._inbox_bytes += len(message)
        if self._inbox_bytes > self.options.receive_buffer and not self._paused:
            self._paused = True
            self.driver.pause_reading()

    def _close_frame(self, event: CloseConnection) -> None:
        ws = self._ws
        code, reason = int(event.code), event.reason or ""
        if ws.state is REMOTE_CLOSING:
            # The peer began the closing handshake: answer it, then close TCP.
            self._record(code, reason)
            self._send_control(ws.send(event.response()))
            self._close_transport_after_send()
        elif ws.state is CLOSED:
            # The reply to the close frame we sent.
            if self._close_timer is not None:
                self._close_timer.cancel()
                self._close_timer = None
            self._close_transport_after_send()
        else:
            # wsproto failed to parse what the peer sent (code 1002, 1007, ...).
            self._fail(code, reason)
            return
        self._finish_input()

    def _record(self, code: int, reason: str) -> None:
        self.open = False
        if self.close_code is None:
            self.close_code = code
            self.close_reason = reason

    def _finish_input(self) -> None:
        """No more messages: the reader gets Closed once it has read the inbox."""
        if self._final is not None:
            return
        self._parts = []
        self._final = Closed(self.close_code if self.close_code is not None else 1006,
                             self.close_reason)
        reader = self._reader
        if reader is not None and not self._inbox:
            self._reader = None
            if not reader.done():
                reader.set_result(self._final)

    async def receive(self) -> str | bytes | Closed:
        """The next message, or `Closed` (again on every later call)."""
        inbox = self._inbox
        if inbox:
            message = inbox.popleft()
            self._inbox_bytes -= len(message)
            if self._paused and self._inbox_bytes <= self.options.receive_buffer // 2:
                self._paused = False
                if not self.closed and not self._throttled:
                    self.driver.resume_reading()
            return message
        if self._final is not None:
            return self._final
        if self._reader is not None:
            raise RuntimeError("another coroutine is already waiting to receive on this WebSocket")
        reader: asyncio.Future[str | bytes | Closed] = self.loop.create_future()
        self._reader = reader
        try:
            return await reader
        finally:
            if self._reader is reader:
                self._reader = None

    # -- out -----------------------------------------------------------------------------
    async def send(self, data: str | bytes | bytearray | memoryview) -> None:
        """Send one message; waits while this socket is over its send budget."""
        if not self.open:
            raise ConnectionClosed(self.close_code or 1006, self.close_reason)
        if self._compress:
            # permessage-deflate: compressed per connection, so wsproto frames it.
            text_or_bytes: Any = data if isinstance(data, str) else bytes(data)
            frame = self._ws.send(WsMessage(data=text_or_bytes))
            message = Message(0, (), (bytes(frame),))
        else:
            message = data_frame(data)
        await self.send_message(message)

    def queue_frame(self, header: bytes, payload: bytes | memoryview, text: bool) -> bool:
        """Queue a frame whose header and payload other sockets share (broadcast).

        True when this socket is now over its send budget: await `drained()`.
        """
        if not self.open:
            return False
        if self._compress:
            data: Any = bytes(payload).decode("utf-8") if text else bytes(payload)
            frame = self._ws.send(WsMessage(data=data))
            return self.queue(Message(0, (), (bytes(frame),)))
        return self.queue(Message(0, (header,), (payload,) if len(payload) else ()))

    def queue(self, message: Message) -> bool:
        """Queue and flush one frame; True when over budget (the caller should wait)."""
        transmitter = self.transmitter
        transmitter.enqueue(message)
        STATS.messages_out += 1
        transmitter.flush()
        outstanding = transmitter.outstanding
        return bool(outstanding) and (outstanding > self._budget or self.ctx.ledger.full)

    async def send_message(self, message: Message) -> None:
        if self.queue(message):
            await self.drained()

    @property
    def buffered(self) -> int:
        """Bytes queued on this socket that the kernel has not taken yet."""
        return int(self.transmitter.outstanding)

    async def drained(self) -> None:
        """Wait until the kernel has taken everything queued so far."""
        if self.transmitter.idle:
            if self.closed:
                raise ConnectionClosed(self.close_code or 1006, self.close_reason)
            return
        done = self.loop.create_future()

        def sent(exc: BaseException | None) -> None:
            if not done.done():
                if exc is None:
                    done.set_result(None)
                else:
                    done.set_exception(ConnectionClosed(self.close_code or 1006, self.close_reason))

        self.transmitter.enqueue(Message(0, ()), sent)
        await done

    def when_drained(self, callback: Callable[[BaseException | None], None]) -> bool:
        """Call `callback` once the kernel has taken everything queued so far (or the
        connection failed); False, and no call, if nothing is queued."""
        if self.transmitter.idle:
            return False
        self.transmitter.enqueue(Message(0, ()), callback)
        return True

    def _send_control(self, frame: bytes | bytearray) -> None:
        if frame:
            self.transmitter.enqueue(Message(0, (), (bytes(frame),)))

    def close(self, code: int = 1000, reason: str = "") -> None:
        """Start the closing handshake; the TCP connection closes on the peer's reply."""
        if self._ws.state is not OPEN or self.closed:
            return
        self._record(code, reason)
        self._send_control(self._ws.send(CloseConnection(code=code, reason=reason or None)))
        self.transmitter.flush()
        self._finish_input()
        self._close_timer = self.loop.call_later(self.options.close_timeout, self._close_timed_out)

    def _close_timed_out(self) -> None:
        self._close_timer = None
        log.debug("websocket %s: no close reply within %.1f s", self.client, self.options.close_timeout)
        self.driver.abort()

    def _fail(self, code: int, reason: str) -> None:
        """Close at once for a limit or protocol error: close frame, then TCP."""
        if not self.closed and self._ws.state is OPEN:
            log.info("websocket %s: closing with %d: %s", self.client, code, reason)
            self._send_control(self._ws.send(CloseConnection(code=code, reason=reason)))
        self._record(code, reason)
        self._finish_input()
        self._close_transport_after_send()
        # A peer that reads nothing cannot be sent even the close frame: do not wait.
        if self._close_timer is None and not self.closed:
            self._close_timer = self.loop.call_later(self.options.close_timeout, self._close_timed_out)

    def _close_transport_after_send(self) -> None:
        if self._transport_closing or self.closed:
            return
        self._transport_closing = True
        transmitter = self.transmitter
        if transmitter.idle:
            self.driver.close()
        else:
            transmitter.enqueue(Message(0, ()), lambda exc: self.driver.close())
            transmitter.flush()

    # -- keep-alive ----------------------------------------------------------------------
    def _schedule_ping(self) -> None:
        interval = self.options.ping_interval
        if interval and self._ping_timer is None and not self.closed:
            self._ping_timer = self.loop.call_later(interval, self._ping)

    def _ping(self) -> None:
        self._ping_timer = None
        if self.closed or self._ws.state is not OPEN:
            return
        self._send_control(self._ws.send(Ping(payload=os.urandom(4))))
        self.transmitter.flush()
        timeout = self.options.ping_timeout
        if timeout:
            if self._pong_timer is None:
                self._pong_timer = self.loop.call_later(timeout, self._ping_timed_out)
        else:
            self._schedule_ping()

    def _pong_received(self) -> None:
        if self._pong_timer is not None:
            self._pong_timer.cancel()
            self._pong_timer = None
            self._schedule_ping()

    def _ping_timed_out(self) -> None:
        self._pong_timer = None
        if not self.closed:
            self._fail(1011, "keepalive ping timeout")
            self.transmitter.flush()

    # -- what the driver, the sweeper and drain call --------------------------------------
    def eof_received(self) -> None:
        """TCP half-closed by the peer: without a close frame that is an abnormal end."""
        if self._ws.state is OPEN:
            self._record(1006, "")
        self.open = False
        self._finish_input()
        self._close_transport_after_send()

    def connection_lost(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.open = False
        for timer in (self._ping_timer, self._pong_timer, self._close_timer):
            if timer is not None:
                timer.cancel()
        self._ping_timer = self._pong_timer = self._close_timer = None
        if self.close_code is None:
            self.close_code = 1006
        self._finish_input()
        STATS.open -= 1
        if self._on_lost is not None:
            on_lost, self._on_lost = self._on_lost, None
            on_lost(self)

    def progress(self) -> tuple | None:
        # No HTTP phase timeouts here: keep-alive is the ping's job; the sweeper's
        # stall check (no send progress for send_timeout) still applies.
        return None

    def on_timeout(self, phase: str) -> None:
        self.driver.abort()

    def start_draining(self) -> None:
        """Graceful shutdown: 1001 Going Away, then close on the reply (or the timeout)."""
        if self._ws.state is OPEN and not self.closed:
            self.close(1001, "server shutting down")
        elif not self._transport_closing and not self.closed:
            self._close_transport_after_send()

    @property
    def busy(self) -> bool:
        return not self.closed

    def __repr__(self) -> str:
        return f"<WebSocketConnection {self.client} {self._ws.state.name}>"
