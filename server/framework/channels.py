"""Channels for handlers: named fan-out streams, subscribed to over HTTP.

Theory of operation.  `channel(name)` returns the open channel of that name (made on
first use; core/fanout.py does the fan-out).  The registry holds channels weakly: a
channel lives as long as a producer, a subscriber or a handler module holds it, so
names asked for by passing clients do not pile up.  A closed channel is forgotten at
once, and the next `channel(name)` starts a new stream under that name.

Subscribing over HTTP is a streaming response whose body iterator takes *batches* of
chunks from its subscription and yields them as a tuple of slices: the session sends
the tuple as one HTTP chunk (one Message, one gather call) whose payload slices are
the published chunk objects themselves — the kernel reads every reader's bytes from
the same memory, nothing is joined or copied per reader.

* `channel_response(request, ch)`: the raw bytes, chunked.  `?from=SEQ` starts from
  that sequence number if the replay window still has it; the default is the live
  edge.  The response ends when the stream does (the producer closed the channel), or
  when the reader is dropped for falling behind.
* `channel_events(request, ch)`: server-sent events, one event per chunk, `id:` its
  sequence number, so an EventSource that reconnects sends `Last-Event-ID` and gets
  what it missed from the window.  Each chunk's event framing is made once per chunk
  and shared by every SSE reader: a chunk without line breaks is lent as it is
  between an `id:/data:` prefix and the blank line; one with line breaks needs a
  `data: ` before each line, so that one is encoded once (one copy, not one per
  reader).  Comments report what the stream could not give: chunks skipped by a slow
  reader, chunks asked for that had left the window, a drop.
* `publish_body(request, ch)` publishes a request body as it arrives, each received
  block one chunk, and ends the stream when the body ends.  The body is not stored,
  so the body size limit does not apply to a chunked one.
* `publish_from(ch, source)` does the same for any async iterable.
"""

from __future__ import annotations

import re
import sys
import weakref
from collections.abc import AsyncIterable, Callable
from typing import Any

from ..core.fanout import POLICIES, Channel, Chunk, SlowReader, Subscription
from ..core.message import Slice
from ..http.errors import HTTPError
from ..http.pushstream import PushResponse, http_chunk
from ..http.request import Request
from ..http.responses import StreamResponse

__all__ = ["channel", "channels", "channel_response", "channel_events", "publish_body",
           "publish_from", "CHANNEL_NAME"]

CHANNEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._~-]{0,127}")
BATCH_CHUNKS = 64           # chunks one gather call may carry to one reader
BATCH_BYTES = 1 << 20

_CHANNELS: weakref.WeakValueDictionary[str, Channel] = weakref.WeakValueDictionary()


def channel(name: str, **options: Any) -> Channel:
    """The open channel called `name`, made with `options` (Channel's keywords:
    policy, max_lag_chunks, max_lag_bytes, replay_chunks, replay_bytes, heartbeat, spool)
    if there is none.  The options of an existing channel are not changed."""
    if not CHANNEL_NAME.fullmatch(name):
        raise HTTPError(400, "a channel name is 1-128 letters, digits, '.', '_', '~' or '-'")
    existing = _CHANNELS.get(name)
    if existing is not None and not existing.closed:
        return existing
    made = Channel(name, **options)
    _CHANNELS[name] = made
    return made


def channels() -> list[Channel]:
    """The open channels, by name."""
    return sorted((ch for ch in list(_CHANNELS.values()) if not ch.closed), key=lambda ch: ch.name)


def _from_seq(request: Request, *, events: bool) -> int | None:
    value = request.query_value("from")
    if value is None and events:
        last = request.headers.get("last-event-id")
        if last:
            try:
                return int(last.strip()) + 1
            except ValueError:
                return None      # not one of our ids: start at the live edge
    if value is None:
        return None
    try:
        seq = int(value)
    except ValueError:
        raise HTTPError(400, "from must be a sequence number") from None
    if seq < 0:
        raise HTTPError(400, "from must be >= 0")
    return seq


def _limit(request: Request) -> int | None:
    value = request.query_value("limit")
    if value is None:
        return None
    if not value.isdigit() or int(value) < 1:
        raise HTTPError(400, "limit must be a number of chunks >= 1")
    return int(value)


class _Feed:
    """A subscription as a streaming body: tuples of chunk slices, a batch at a time.

    Pushed (`take`/`arm`, pushstream.py) when the session can, iterated otherwise."""

    __slots__ = ("sub", "remaining")

    def __init__(self, sub: Subscription, limit: int | None) -> None:
        self.sub = sub
        self.remaining = limit if limit is not None else sys.maxsize

    def take(self, chunked: bool = False) -> tuple[Slice, ...] | None:
        """The next batch, () for none yet, None at the end.  `chunked`: framed as HTTP
        chunks — one region of the channel's spool, each chunk framed once for every
        reader (core/spool.py), or where it cannot spool the published chunk objects
        between a size line and a CRLF; else the chunk objects themselves."""
        sub = self.sub
        if self.remaining > 0:
            try:
                spooled = sub.take_spooled(http_chunk_frame, min(BATCH_CHUNKS, self.remaining),
                                           BATCH_BYTES) if chunked else None
                if spooled is not None:
                    first, region = spooled
                    if region is not None:
                        self.remaining -= sub.cursor - first
                        return (region,)
                    slices: tuple[Slice, ...] = ()
                else:
                    _seq, slices = sub.take(min(BATCH_CHUNKS, self.remaining), BATCH_BYTES)
            except SlowReader:
                slices = ()
                sub.close()                    # dropped: the response ends cleanly
                return None
            if slices:
                self.remaining -= len(slices)  # one slice per chunk
                return http_chunk(slices) if chunked else slices
            if not sub.ended:
                return ()
        sub.close()
        return None

    def arm(self, callback: Callable[[bool], None]) -> bool:
        return self.sub.arm(callback)

    def close(self) -> None:
        self.sub.close()

    def __aiter__(self) -> _Feed:
        return self

    async def __anext__(self) -> tuple[Slice, ...]:
        while True:
            slices = self.take()
            if slices is None:
                raise StopAsyncIteration
            if slices:
                return slices
            await self.sub.wait()

    async def aclose(self) -> None:
        self.sub.close()


def channel_response(request: Request, ch: Channel, *,
                     content_type: str = "application/octet-stream",
                     limit: int | None = None) -> StreamResponse:
    """Subscribe `request` to `ch` as a raw chunked stream (see the module comment).

    `?from=SEQ` starts at that chunk if the window has it; `?limit=N` (or `limit`)
    ends the response after N chunks.
    """
    from_seq = _from_seq(request, events=False)
    limit = limit if limit is not None else _limit(request)
    sub = ch.subscribe(from_seq)
    headers = [("Cache-Control", "no-store"), ("X-Accel-Buffering", "no"),
               ("X-Channel-Seq", str(sub.cursor))]
    return PushResponse(_Feed(sub, limit), content_type=content_type, headers=headers)


def http_chunk_frame(seq: int, chunk: Chunk) -> tuple[Chunk, ...]:
    """One published chunk as one HTTP chunk: what the spool holds for raw readers."""
    return (b"%x\r\n" % len(chunk), chunk, b"\r\n")


_LINE_BREAK = re.compile(rb"\r\n|\r|\n")
_TRAILING_BREAK = re.compile(rb"(?:\r\n|\r|\n)\Z")
_EVENT_END = b"\n\n"


def sse_frame(seq: int, chunk: Chunk) -> tuple[Chunk, ...]:
    """The event for one chunk: `id: seq`, the chunk as data (made once per chunk)."""
    head = b"id: %d\ndata: " % seq
    raw = bytes(chunk) if type(chunk) is not bytes else chunk
    if b"\n" not in raw and b"\r" not in raw:
        return (head, chunk, _EVENT_END)      # the chunk itself, lent to every reader
    lines = _LINE_BREAK.split(_TRAILING_BREAK.sub(b"", raw))
    return (head + b"\ndata: ".join(lines) + _EVENT_END,)


def sse_http_frame(seq: int, chunk: Chunk) -> tuple[Chunk, ...]:
    """One chunk's event as one HTTP chunk: what the spool holds for event readers."""
    event = sse_frame(seq, chunk)
    return (b"%x\r\n" % sum(map(len, event)), *event, b"\r\n")


def _comment(text: str) -> bytes:
    return b": " + text.encode("utf-8") + b"\n\n"


_KEEP_ALIVE = _comment("keep-alive")


class _EventFeed:
    """A subscription as an event stream: each chunk one event, plus comments.

    Pushed (`take`/`arm`, pushstream.py) when the session can, iterated otherwise."""

    __slots__ = ("sub", "remaining", "done", "first", "beat")

    def __init__(self, sub: Subscription, limit: int | None, first: bytes | None = None) -> None:
        self.sub = sub
        self.remaining = limit if limit is not None else sys.maxsize
        self.done = False
        self.first = first       # sent before any event (the `retry:` field)
        self.beat = False        # the heartbeat passed in silence: send a keep-alive

    def take(self, chunked: bool = False) -> tuple[Slice, ...] | None:
        """The next slices to send, () for none yet, None at the end.  `chunked`: framed
        as HTTP chunks — comments as one, then the events as one region of the
        channel's spool (each event framed once for every reader), or where it cannot
        spool the events' slices in one chunk with the comments."""
        sub = self.sub
        if self.done:
            return None
        notes: list[Chunk] = []
        if self.first is not None:
            notes.append(self.first)
            self.first = None
        if self.remaining > 0:
            if sub.missed:
                notes.append(_comment(f"missed {sub.missed} chunks: no longer in the replay window"))
                sub.missed = 0
            if sub.skipped:
                notes.append(_comment(f"skipped {sub.skipped} chunks: this reader fell behind"))
                sub.skipped = 0
            count = min(BATCH_CHUNKS, self.remaining)
            try:
                spooled = sub.take_spooled(sse_http_frame, count, BATCH_BYTES) if chunked else None
                if spooled is not None:
                    first, region = spooled
                    if region is not None:
                        self.beat = False
                        self.remaining -= sub.cursor - first
                        return (*http_chunk(tuple(notes)), region) if notes else (region,)
                    slices: tuple[Slice, ...] = ()
                else:
                    first, slices = sub.take(count, BATCH_BYTES, sse_frame)
            except SlowReader as exc:
                self.done = True
                sub.close()
                return self._framed((*notes, _comment(f"dropped: {exc}")), chunked)
            if slices:
                self.beat = False
                self.remaining -= sub.cursor - first
                return self._framed((*notes, *slices) if notes else slices, chunked)
            if notes:
                return self._framed(tuple(notes), chunked)
            if self.beat or sub.beat_passed():
                self.beat = False
                return self._framed((_KEEP_ALIVE,), chunked)
            if not sub.ended:
                return ()
        self.done = True
        sub.close()
        return None

    @staticmethod
    def _framed(slices: tuple[Slice, ...], chunked: bool) -> tuple[Slice, ...]:
        return http_chunk(slices) if chunked else slices

    def arm(self, callback: Callable[[bool], None]) -> bool:
        return self.sub.arm(callback)

    def close(self) -> None:
        self.done = True
        self.sub.close()

    def __aiter__(self) -> _EventFeed:
        return self

    async def __anext__(self) -> tuple[Slice, ...]:
        while True:
            slices = self.take()
            if slices is None:
                raise StopAsyncIteration
            if slices:
                return slices
            self.beat = await self.sub.wait()

    async def aclose(self) -> None:
        self.sub.close()


def channel_events(request: Request, ch: Channel, *, limit: int | None = None,
                   retry: int | None = None) -> StreamResponse:
    """Subscribe `request` to `ch` as server-sent events (see the module comment).

    Resumes after `Last-Event-ID` (or from `?from=SEQ`) when the window still has
    those chunks; `retry` (ms) tells an EventSource how soon to reconnect.
    """
    from_seq = _from_seq(request, events=True)
    limit = limit if limit is not None else _limit(request)
    sub = ch.subscribe(from_seq)
    feed = _EventFeed(sub, limit, None if retry is None else b"retry: %d\n\n" % int(retry))
    headers = [("Cache-Control", "no-cache"), ("X-Accel-Buffering", "no")]
    return PushResponse(feed, content_type="text/event-stream; charset=utf-8", headers=headers)


async def publish_from(ch: Channel, source: AsyncIterable[Any], *, close: bool = True) -> tuple[int, int]:
    """Publish every chunk of `source` (bytes, str or read-only memoryviews) to `ch`;
    close the channel at the end (or on error) when `close`.  Returns (chunks, bytes)."""
    count = size = 0
    try:
        async for chunk in source:
            if len(chunk):
                await ch.publish(chunk)
                count += 1
                size += len(chunk)
    finally:
        if close:
            ch.close()
    return count, size


async def publish_body(request: Request, ch: Channel, *, close: bool = True,
                       policy: str | None = None) -> tuple[int, int]:
    """Publish `request`'s body to `ch` as it arrives (each received block one chunk)
    and end the stream when the body ends.  409 if the channel already has a
    producer.  Returns (chunks, bytes)."""
    if policy is not None:
        if policy not in POLICIES:
            raise HTTPError(400, f"policy must be one of {', '.join(POLICIES)}")
        ch.policy = policy
    if ch.producer is not None:
        raise HTTPError(409, f"channel {ch.name!r} already has a producer")
    ch.producer = request
    body = request.body_stream
    if body is not None and request.headers.get("content-length") is None:
        # Nothing is stored, so a chunked live stream may run past the body limit.
        body.limit = sys.maxsize
    try:
        return await publish_from(ch, request.stream(), close=close)
    finally:
        ch.producer = None
