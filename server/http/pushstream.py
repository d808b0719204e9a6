"""Pushed streams: a streamed answer whose source lends batches straight to the socket.

Theory of operation.  A `StreamResponse` is pulled: a task per response iterates
its body and queues one Message per item.  For a reader of a fan-out channel that
is a task, a coroutine chain and a future per reader, woken per batch — most of
what a thousand idle readers hold, and most of the Python work per batch.  A
`PushResponse` is a StreamResponse whose body can also be *pushed*: it is a
`PushSource` with three plain methods — `take()` the next batch of wire slices,
`arm(callback)` to be called back when there may be more, `close()` — so no task
is needed at all.

When the session answers a request with a PushResponse and nothing else is owed on
the connection (no request body, nothing pipelined behind it, not HEAD), it sends
the head and hands the connection to a `PushedStream`, the way an upgrade hands it
over (upgrade.py): the PushedStream becomes the driver's protocol and the
transmitter's idle listener, and the session, its two parsers and the request are
let go.  What a reader then holds is the socket, its driver and transmitter, this
small object and its source's cursor.  Reading stops while the stream runs — a
reader has nothing to say until the stream ends, and an idle socket registered for
reading costs the event loop a poll handle per reader; a client that goes away is
noticed by the next send (which fails), a stalled one by the sweeper's send timeout.

The pump is one loop, run when the stream starts, when the source calls back and
when the transmitter has handed everything to the kernel: while the transmitter is
idle, take a batch — already framed as HTTP chunks by the source: a channel's
readers get one region of its spool, framed once for all of them (core/spool.py),
or the chunk objects between a size line and a CRLF (nothing joined) — and hand it
to the transmitter: one call into the kernel per reader per batch.  Taking only when the transmitter is idle keeps a reader's cursor
where its kernel is, so a reader that cannot keep up falls behind in the source
(whose policy deals with it) instead of queueing here.

When the source ends, the last chunk is queued; a keep-alive connection then gets
a fresh HTTP session (made by the session module, which this one does not import)
and reading resumes, so pipelined requests are answered as usual.  Otherwise, or
while the server drains, the connection closes once everything has gone out.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, Callable, Iterable
from typing import Any, Protocol

from ..core.message import Message, Slice
from .responses import StreamResponse

__all__ = ["PushResponse", "PushSource", "PushedStream", "http_chunk"]

_LAST_CHUNK = b"0\r\n\r\n"
HELD_MAX = 64 << 10          # client bytes kept for the session after the stream
_CRLF = b"\r\n"


def http_chunk(slices: tuple[Slice, ...]) -> tuple[Slice, ...]:
    """`slices` framed as one HTTP chunk: size line, the slices themselves, CRLF."""
    size = 0
    for piece in slices:
        size += len(piece)
    return (b"%x\r\n" % size, *slices, _CRLF)


class PushSource(Protocol):
    """A streamed body that can be pushed as well as iterated."""

    def take(self, chunked: bool) -> tuple[Slice, ...] | None:
        """The next slices to send — with `chunked`, already framed as HTTP chunks (a
        source may have framed them once for all its readers, `http_chunk` does it
        for one), else the body bytes — () if none is ready now, None once ended."""

    def arm(self, callback: Callable[[bool], None]) -> bool:
        """Call `callback` once more may be taken (False, nothing armed: take now)."""

    def close(self) -> None:
        """The reader is gone or done: let go of whatever the source holds for it."""


class PushResponse(StreamResponse):
    """A StreamResponse whose body is also a PushSource (see the module comment).

    Where it cannot be pushed (a HEAD, a pipelined request behind it, a test client)
    the body is iterated like any StreamResponse's, so `body` must also be an async
    iterator of the same items.
    """

    __slots__ = ("source",)

    def __init__(self, source: Any, status: int = 200,
                 content_type: str = "application/octet-stream",
                 headers: Iterable[tuple[str, str]] = ()) -> None:
        body: AsyncIterable[Any] = source
        super().__init__(body, status, content_type, headers)
        self.source: PushSource = source


class PushedStream:
    """The protocol of a connection while a PushResponse streams (see the module comment).

    `resume(ctx, driver, transmitter, client, app, data)` is how the session module gives
    a keep-alive connection a fresh HTTP session after the stream (`data`: bytes the
    client sent meanwhile, for that session to parse first).
    """

    __slots__ = ("ctx", "driver", "transmitter", "client", "source", "_app", "_resume", "_chunked",
                 "_keep_alive", "_draining", "_done", "_pumping", "_ready", "_held")

    def __init__(self, ctx: Any, driver: Any, transmitter: Any, client: tuple[str, int] | None,
                 source: PushSource, *, chunked: bool, keep_alive: bool, app: Any,
                 resume: Callable[[Any, Any, Any, tuple[str, int] | None, Any, bytes], None]) -> None:
        self.ctx = ctx
        self.driver = driver
        self.transmitter = transmitter
        self.client = client
        self.source = source
        self._app = app
        self._resume = resume
        self._chunked = chunked
        self._keep_alive = keep_alive
        self._draining = False
        self._done = False
        self._pumping = False
        self._ready = self._pump       # bound once: armed again and again
        self._held = b""               # what a driver that cannot pause delivered meanwhile

    # -- sending -------------------------------------------------------------------------
    def start(self) -> None:
        """Take the transmitter over (the head is queued on it) and begin."""
        transmitter = self.transmitter
        transmitter.set_idle_listener(self.on_transmit_idle)
        share = getattr(transmitter, "share_writable_poll", None)
        if share is not None:
            share()     # a thousand readers waiting for room: one poll, not a thousand
        transmitter.flush()
        self._pump()

    def _pump(self, _beat: bool = False) -> None:
        if self._pumping:
            return          # called back from inside take/flush: the loop below goes on
        self._pumping = True
        try:
            transmitter = self.transmitter
            source = self.source
            chunked = self._chunked
            while not self._done:
                if not transmitter.idle:
                    transmitter.wants_idle = True      # on_transmit_idle pumps again
                    return
                batch = source.take(chunked)
                if batch is None:
                    self._finish()
                    return
                if not batch:
                    if source.arm(self._ready):
                        return
                    continue
                transmitter.transmit(Message(0, (), batch))
        finally:
            self._pumping = False

    def on_transmit_idle(self) -> None:
        """The transmitter handed everything to the kernel: room for the next batch."""
        self.transmitter.wants_idle = False
        if not self._done:
            self._pump()

    def _finish(self) -> None:
        self._done = True
        self.source.close()
        transmitter = self.transmitter
        if self._chunked:
            transmitter.enqueue(Message(0, (), (_LAST_CHUNK,)))
        if self._keep_alive and not self._draining and not transmitter.closed:
            self._resume(self.ctx, self.driver, transmitter, self.client, self._app, self._held)
            transmitter.flush()
            return
        transmitter.when_sent(self._closed_after_send)
        transmitter.flush()

    def _closed_after_send(self, exc: BaseException | None) -> None:
        self.driver.close()

    # -- what the driver, the sweeper and drain call -------------------------------------
    def data_received(self, data: bytes) -> None:
        # Reading is paused while the stream runs, but a TLS transport may still hand
        # over what it had decrypted: a request pipelined behind the stream, kept for
        # the session that follows (within reason; beyond that, close after the stream).
        self.driver.pause_reading()
        if len(self._held) + len(data) <= HELD_MAX:
            self._held += data
        else:
            self._keep_alive = False

    def eof_received(self) -> None:
        self._keep_alive = False

    def connection_lost(self) -> None:
        if not self._done:
            self._done = True
            self.source.close()

    def progress(self) -> tuple | None:
        return None          # the server owes the next move; the send timeout applies

    def on_timeout(self, phase: str) -> None:
        self.driver.abort()

    def start_draining(self) -> None:
        self._draining = True

    @property
    def busy(self) -> bool:
        return not self._done
