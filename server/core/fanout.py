"""Fan-out: one stream lent to many readers without a copy per reader (DESIGN.md rule 6).

Theory of operation: a `Channel` receives immutable chunks (`bytes`, or memoryviews
of immutable memory) from one producer and hands the *same object* to every
subscriber.  Nothing is copied per reader: each subscriber's connection puts that
one object in its own transmitter queue as a payload slice, and Python's reference
count is the loan count — the chunk is released when the last reader's kernel send
has taken it and every queue has let go.

A slow reader is bounded, never allowed to grow memory without limit: each
subscription holds at most `max_pending` chunks (and `max_pending_bytes`).  When a
publish would exceed that, the subscription is cut off — its iterator raises
`SlowReader`, and the HTTP layer ends that one response — while everyone else
carries on.  The producer never waits for the slowest reader.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator

__all__ = ["Channel", "Subscription", "SlowReader"]


class SlowReader(Exception):
    """This reader fell too far behind the stream and was cut off."""


class Subscription:
    """One reader's bounded view of a channel; async-iterate it for chunks."""

    __slots__ = ("_channel", "_chunks", "_bytes", "_waiter", "_closed", "_error",
                 "max_pending", "max_pending_bytes")

    def __init__(self, channel: Channel, max_pending: int, max_pending_bytes: int) -> None:
        self._channel = channel
        self._chunks: deque[bytes | memoryview] = deque()
        self._bytes = 0
        self._waiter: asyncio.Future | None = None
        self._closed = False
        self._error: BaseException | None = None
        self.max_pending = max_pending
        self.max_pending_bytes = max_pending_bytes

    def _offer(self, chunk: bytes | memoryview) -> bool:
        """Queue a chunk; False (and cut off) if this reader is too far behind."""
        if len(self._chunks) >= self.max_pending or self._bytes + len(chunk) > self.max_pending_bytes:
            self._cut(SlowReader(f"reader fell {len(self._chunks)} chunks / {self._bytes} bytes behind"))
            return False
        self._chunks.append(chunk)
        self._bytes += len(chunk)
        self._wake()
        return True

    def _cut(self, error: BaseException | None) -> None:
        self._error = error
        self._closed = True
        self._chunks.clear()
        self._bytes = 0
        self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    @property
    def pending(self) -> int:
        return len(self._chunks)

    def close(self) -> None:
        """Leave the channel (the reader went away)."""
        self._channel._subscribers.discard(self)
        self._cut(None)

    async def aclose(self) -> None:
        """Async-generator protocol: the HTTP layer calls this when the client leaves."""
        self.close()

    def __aiter__(self) -> AsyncIterator[bytes | memoryview]:
        return self

    async def __anext__(self) -> bytes | memoryview:
        while not self._chunks:
            if self._closed:
                self._channel._subscribers.discard(self)
                if self._error is not None:
                    raise self._error
                raise StopAsyncIteration
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        chunk = self._chunks.popleft()
        self._bytes -= len(chunk)
        return chunk


class Channel:
    """A stream published once and read by many."""

    def __init__(self, *, max_pending: int = 64, max_pending_bytes: int = 4 << 20) -> None:
        self._subscribers: set[Subscription] = set()
        self.max_pending = max_pending
        self.max_pending_bytes = max_pending_bytes
        self.published = 0
        self.cut_off = 0
        self.closed = False

    def subscribe(self) -> Subscription:
        sub = Subscription(self, self.max_pending, self.max_pending_bytes)
        if self.closed:
            sub._cut(None)
        else:
            self._subscribers.add(sub)
        return sub

    @property
    def readers(self) -> int:
        return len(self._subscribers)

    def publish(self, chunk: bytes | memoryview) -> int:
        """Lend `chunk` to every reader (the same object, no copies); returns readers reached."""
        if self.closed:
            raise RuntimeError("channel is closed")
        if isinstance(chunk, memoryview) and not chunk.readonly:
            raise TypeError("fan-out chunks must be immutable (bytes or a read-only view)")
        self.published += 1
        reached = 0
        for sub in list(self._subscribers):
            if sub._offer(chunk):
                reached += 1
            else:
                self._subscribers.discard(sub)
                self.cut_off += 1
        return reached

    def close(self) -> None:
        """End the stream: readers finish what they hold, then stop."""
        self.closed = True
        for sub in list(self._subscribers):
            sub._closed = True
            sub._wake()
        self._subscribers.clear()
