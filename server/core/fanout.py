"""Fan-out: one stream lent to many readers without a copy per reader (docs/design.md rule 6).

Theory of operation.  A `Channel` is one shared log of immutable chunks (`bytes`, or
read-only memoryviews of immutable memory), numbered by a sequence number `seq`.
A `Subscription` is nothing but a cursor into that log: the next seq it will take.
Reading hands out the *same objects* the producer published — a subscriber's HTTP
response queues them as payload slices of its own Messages, so the transmitter lends
each chunk to the kernel straight from the log and Python's reference count is the
loan count: a chunk is freed when the log has let go of it and the last reader's
transmitter has had it accepted by the kernel.  Memory is therefore one copy of the
data between the slowest reader's cursor and the head, never readers × data.

The log keeps two things and nothing more:

* the *replay window* — the newest `replay_chunks` chunks / `replay_bytes` bytes —
  so that a reader who reconnects (`Last-Event-ID`, `?from=SEQ`) gets what it missed;
* the tail the slowest reader still needs, bounded by the *lag limit*
  (`max_lag_chunks`, `max_lag_bytes`: how far behind the head a reader may fall).

A reader past the lag limit is handled by the channel's `policy`:

    "drop"   the reader is cut off: its iterator ends (SlowReader for in-process
             readers; the HTTP layer ends that one response cleanly), a log line and
             the dropped counter say so.  Everybody else carries on.
    "skip"   the reader jumps to the newest chunk; `skipped` says how many chunks it
             lost (an SSE subscriber sends that as a comment).
    "block"  nobody is dropped: `await publish()` waits until the slowest reader is
             back within the limit — back-pressure reaches the producer (and, for a
             producer feeding the channel from a request body, its TCP connection).

Finding the readers past the limit does not cost a scan per chunk: the channel keeps
`_floor`, the oldest seq a reader may still be at, and `_hint`, a lower bound on every
reader's cursor (readers only move forward, so a bound stays true until the next
scan).  Only when the floor passes the hint can a reader be over the limit; then one
scan enforces the policy and finds the new bound.

Newest-first: a late joiner starts at the live edge (the next chunk published)
unless it asks for an older seq, which it gets from the window if still there
(`missed` counts what was asked for but is gone).  `close()` ends the stream: readers
finish what the log still holds for them, then stop; when the last has gone the log
is released.

Readers waiting at the live edge are woken at most once per `coalesce` seconds (1 ms)
after the last round of wake-ups ended, or per 1 MiB (a quarter of the lag limit if
smaller): the first chunk after a pause wakes them at once, chunks that follow
closely gather and go out together, one send per reader for the lot — so a fast
stream costs a send per reader per batch, not per chunk, for at most a millisecond
of delay.  The pause is counted from the *end* of the last round: a round over a
thousand readers takes longer than a millisecond, and counted from its start every
chunk would find the readers due again, one send per reader per chunk.  A silent channel wakes its
waiting readers every `heartbeat` seconds with an empty batch, so that an event stream
can send a keep-alive comment — one timer per channel, not one per reader.

A reader waits in one of two ways.  `await wait()` parks a future (a task per
reader: in-process readers, the WebSocket layer).  `arm(callback)` parks a plain
callable instead, which the channel calls when the reader should take again: the
HTTP subscribers use it, so that a wake-up is one Python call that takes a batch and
hands it to that reader's transmitter — no task, no coroutine frame, no future per
reader per batch.  A callback runs inside whatever woke it (a publish, the
coalescing timer, close, a drop); one that raises is logged and does not stop the
others.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from . import spool as _spool
from .message import FileRegion
from .metrics import METRICS, Metrics

__all__ = ["Channel", "Subscription", "SlowReader", "POLICIES", "Chunk", "Framer"]

log = logging.getLogger("pageloan.fanout")
_monotonic = time.monotonic

POLICIES = ("drop", "skip", "block")
RESCAN_EVERY = 64     # chunks between scans that only tighten the bound on readers
WAKE_SLICE = 64       # readers woken per turn of the loop (see _wake_some)
BLOCK_SLACK = 16      # policy "block": how far inside the limit a held producer waits for
Chunk = bytes | memoryview
# Turns (seq, chunk) into the wire slices one kind of subscriber sends for it (an SSE
# event around the chunk, say); called once per chunk and remembered in the log.
Framer = Callable[[int, Chunk], tuple[Chunk, ...]]


class SlowReader(Exception):
    """This reader fell past the channel's lag limit and was dropped."""


def _immutable(chunk: Any) -> Chunk:
    """`chunk` as a slice the kernel may be lent for as long as it likes."""
    if type(chunk) is bytes:
        return chunk
    if isinstance(chunk, str):
        return chunk.encode("utf-8")
    if isinstance(chunk, memoryview):
        # Read-only is not enough: a read-only view of a bytearray changes when the
        # bytearray does.  The memory underneath must itself refuse writes.
        if not chunk.readonly or (chunk.obj is not None and not memoryview(chunk.obj).readonly):
            raise TypeError("fan-out chunks must be immutable: a memoryview of bytes or of a "
                            "read-only mapping, not of a writable buffer")
        if not chunk.c_contiguous:
            raise TypeError("fan-out chunks must be contiguous memory")
        return chunk if chunk.format == "B" and chunk.ndim == 1 else chunk.cast("B")
    if isinstance(chunk, bytes):
        return bytes(chunk)          # a bytes subclass: the plain immutable value
    raise TypeError(f"fan-out chunks must be bytes or a read-only memoryview, "
                    f"not {type(chunk).__name__} (a mutable buffer could change under a send)")


class Subscription:
    """One reader's cursor into a channel.  Async-iterate it for chunks, or `take`
    batches of slices (what the HTTP subscribers do)."""

    __slots__ = ("channel", "cursor", "skipped", "missed", "error", "_waiter", "_notify", "_beat",
                 "_left")

    def __init__(self, channel: Channel, cursor: int) -> None:
        self.channel = channel
        self.cursor = cursor            # the seq this reader takes next
        self.skipped = 0                # chunks jumped over (policy "skip"), not yet reported
        self.missed = 0                 # chunks asked for that had left the window
        self.error: SlowReader | None = None
        self._waiter: asyncio.Future | None = None
        self._notify: Callable[[bool], None] | None = None
        self._beat = False
        self._left = False

    @property
    def ended(self) -> bool:
        """True once nothing more will come: dropped, left, or the stream ended and
        everything it held has been taken."""
        ch = self.channel
        return self._left or self.error is not None or (ch.closed and self.cursor >= ch.next_seq)

    def ready(self) -> int:
        """Chunks available to take now."""
        return 0 if self._left or self.error is not None else self.channel.next_seq - self.cursor

    def _cut(self, max_chunks: int, max_bytes: int) -> tuple[int, int]:
        """The log indexes [base, end) of the next batch: up to `max_chunks` ready
        chunks, cut at `max_bytes` (keeping at least one chunk, whatever its size)."""
        ch = self.channel
        count = ch.next_seq - self.cursor
        if count > max_chunks:
            count = max_chunks
        base = self.cursor - ch._first_seq
        starts = ch._starts
        end = base + count
        limit = starts[base] + max_bytes
        if (starts[end] if end < len(starts) else ch._total) > limit:
            lo, hi = base + 1, end          # the largest i in [lo, hi] within the limit
            while lo < hi:
                mid = (lo + hi + 1) // 2
                if (starts[mid] if mid < len(starts) else ch._total) > limit:
                    hi = mid - 1
                else:
                    lo = mid
            end = lo
        return base, end

    def take(self, max_chunks: int = 64, max_bytes: int = 1 << 20,
             framer: Framer | None = None) -> tuple[int, tuple[Chunk, ...]]:
        """(seq of the first, slices) for up to `max_chunks` ready chunks (at least one if
        any is ready, whatever its size); the slices are the chunks themselves, or their
        framed form when `framer` is given.  Raises SlowReader once dropped."""
        if self.error is not None:
            raise self.error
        ch = self.channel
        first = self.cursor
        if ch.next_seq <= first or self._left:
            return first, ()
        base, end = self._cut(max_chunks, max_bytes)
        if framer is None:
            slices: tuple[Chunk, ...] = tuple(ch._chunks[base:end])
        else:
            frames = ch._frames.get(framer)
            if frames is None:
                frames = ch._frames[framer] = [None] * len(ch._chunks)
            parts: list[Chunk] = []
            chunks = ch._chunks
            for i in range(base, end):
                framed = frames[i]
                if framed is None:
                    framed = frames[i] = framer(ch._first_seq + i, chunks[i])
                parts.extend(framed)
            slices = tuple(parts)
        self.cursor = first + (end - base)
        if ch._behind is not None:
            ch._advanced(self)
        return first, slices

    def take_spooled(self, framer: Framer, max_chunks: int = 64,
                     max_bytes: int = 1 << 20) -> tuple[int, FileRegion | None] | None:
        """`take` as one FileRegion of the channel's spool for `framer` (spool.py): the
        chunks framed once, for every reader that frames them so, sent by sendfile.
        The region stops where a spool file does, so it may hold fewer chunks than
        `take` would.  (seq of the first, None) when nothing is ready; None when the
        channel cannot spool (then `take` with the framer gives the same bytes)."""
        if self.error is not None:
            raise self.error
        ch = self.channel
        spooled = ch._spooled(framer)
        if spooled is None:
            return None
        first = self.cursor
        if ch.next_seq <= first or self._left:
            return first, None
        base, end = self._cut(max_chunks, max_bytes)
        files = spooled.files
        file = files[base]
        stop = base + 1
        while stop < end and files[stop] is file:
            stop += 1
        at = spooled.at
        region = file.region(at[base], at[stop - 1] + spooled.lengths[stop - 1] - at[base])
        self.cursor = first + (stop - base)
        if ch._behind is not None:
            ch._advanced(self)
        return first, region

    async def wait(self) -> bool:
        """Until a chunk is ready, the stream ends, this reader is dropped, or the
        channel's heartbeat passes in silence (then True: time for a keep-alive)."""
        if self.ready() or self.ended:
            return False
        waiter = self._waiter = asyncio.get_running_loop().create_future()
        self.channel._waiting.append(self)
        try:
            await waiter
        finally:
            self._waiter = None
        beat, self._beat = self._beat, False
        return beat

    def arm(self, callback: Callable[[bool], None]) -> bool:
        """`wait` without a task: call `callback(beat)` once, when a chunk is ready, the
        stream ends, this reader is dropped, or the heartbeat passes in silence (then
        `beat` is True).  False, and nothing armed, if one of those is already so: take
        now instead."""
        if self.ready() or self.ended:
            return False
        if self._notify is None:
            self.channel._waiting.append(self)
        self._notify = callback
        return True

    def beat_passed(self) -> bool:
        """True once after the heartbeat woke an armed reader in silence."""
        beat, self._beat = self._beat, False
        return beat

    def _wake(self, beat: bool = False) -> None:
        notify = self._notify
        if notify is not None:
            self._notify = None
            self._beat = beat
            _call(notify, beat)
            return
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            self._beat = beat
            waiter.set_result(None)

    def close(self) -> None:
        """Leave the channel (the reader went away); nothing it had is kept for it."""
        if not self._left:
            self._left = True
            self._notify = None          # whoever armed it is the one leaving
            self.channel._leave(self)
            self._wake()

    async def aclose(self) -> None:
        """Async-generator protocol: the HTTP layer calls this when the response ends."""
        self.close()

    def __aiter__(self) -> AsyncIterator[Chunk]:
        return self

    async def __anext__(self) -> Chunk:
        while True:
            _seq, chunks = self.take(1)
            if chunks:
                return chunks[0]
            if self.ended:
                self.close()
                if self.error is not None:
                    raise self.error
                raise StopAsyncIteration
            await self.wait()


class _Spooled:
    """One framer's spool: where each chunk of the log lies in the spool files."""

    __slots__ = ("framer", "files", "at", "lengths", "current")

    def __init__(self, framer: Framer) -> None:
        self.framer = framer
        self.files: list[_spool.SpoolFile] = []   # per chunk of the log, like _starts
        self.at: list[int] = []
        self.lengths: list[int] = []
        self.current: _spool.SpoolFile | None = None

    def add(self, seq: int, chunk: Chunk) -> None:
        pieces = self.framer(seq, chunk)
        size = sum(map(len, pieces))
        file = self.current
        if file is None or (file.size and file.size + size > _spool.SEGMENT):
            file = self.current = _spool.SpoolFile()
        self.at.append(file.append(pieces))
        self.files.append(file)
        self.lengths.append(size)

    def trim(self, drop: int) -> None:
        del self.files[:drop]
        del self.at[:drop]
        del self.lengths[:drop]

    def clear(self) -> None:
        self.files.clear()
        self.at.clear()
        self.lengths.clear()
        self.current = None


def _call(notify: Callable[[bool], None], beat: bool) -> None:
    try:
        notify(beat)
    except Exception:  # noqa: BLE001 - one reader's failure must not stop the others
        log.exception("fan-out reader callback %r failed", notify)


class Channel:
    """A stream published once and read by many (see the module comment)."""

    def __init__(self, name: str = "", *, policy: str = "drop", max_lag_chunks: int = 1024,
                 max_lag_bytes: int = 8 << 20, replay_chunks: int = 256,
                 replay_bytes: int = 1 << 20, heartbeat: float | None = 15.0,
                 coalesce: float = 0.001, spool: bool = True,
                 metrics: Metrics | None = None) -> None:
        if policy not in POLICIES:
            raise ValueError(f"policy must be one of {', '.join(POLICIES)}, not {policy!r}")
        if max_lag_chunks < 1 or max_lag_bytes < 1 or replay_chunks < 0 or replay_bytes < 0:
            raise ValueError("lag limits must be >= 1 and replay window sizes >= 0")
        self.name = name
        self.policy = policy
        self.max_lag_chunks = max_lag_chunks
        self.max_lag_bytes = max_lag_bytes
        self.replay_chunks = replay_chunks
        self.replay_bytes = replay_bytes
        self.heartbeat = heartbeat
        self.coalesce = coalesce       # at most one wake-up of the readers per this many s
        self._woken_at = float("-inf")
        # ... or sooner, once this much has gathered: well inside the lag limit, so
        # that coalescing never makes a reader that keeps up look slow.
        self._wake_bytes = min(1 << 20, max(1, max_lag_bytes // 4))
        self._wake_chunks = max(1, min(64, max_lag_chunks // 4))
        self._total_at_wake = 0
        self._seq_at_wake = 1
        self._wake_handle: asyncio.TimerHandle | None = None
        self._waking = False           # a round of wake-ups is under way (in slices)
        self._deferred = False         # ... and chunks were published meanwhile
        self.metrics = metrics or METRICS
        self.next_seq = 1              # seq of the next chunk published
        self.closed = False
        self.producer: object | None = None   # who publishes, when somebody claims it
        self.dropped = 0               # readers cut off (policy "drop")
        self.skipped = 0               # chunks skipped by readers (policy "skip")
        # The log: chunks from _first_seq on, with each chunk's stream offset.
        self._chunks: list[Chunk] = []
        self._starts: list[int] = []
        self._frames: dict[Framer, list[Any]] = {}
        self._spools: dict[Framer, _Spooled] = {}
        # False: readers that would send from a spool (spool.py) are lent the chunks.
        self._spool_failed = not (spool and _spool.available())
        self._first_seq = 1
        self._total = 0                # bytes ever published
        self._floor = 1                # readers below this seq are past the lag limit
        self._window = 1               # oldest seq the replay window keeps
        self._hint = 1                 # no reader's cursor is below this
        self._scanned = 1              # next_seq at the last scan of the readers
        self._subscribers: set[Subscription] = set()
        self._waiting: list[Subscription] = []
        # Back-pressure (policy "block"): readers still below `_need`, and the producer.
        self._behind: set[Subscription] | None = None
        self._need = 0
        self._held_at = 1              # the floor when the producer was held
        self._producer: asyncio.Future | None = None
        self._beat_handle: asyncio.TimerHandle | None = None
        self._published_since_beat = False
        self.metrics.channels.add(self)

    # -- what is held ----------------------------------------------------------------
    @property
    def readers(self) -> int:
        return len(self._subscribers)

    @property
    def chunks_held(self) -> int:
        return len(self._chunks)

    @property
    def bytes_held(self) -> int:
        return self._total - self._starts[0] if self._starts else 0

    @property
    def oldest_seq(self) -> int:
        """The oldest seq still in the log (== next_seq when it is empty)."""
        return self._first_seq

    def _start(self, seq: int) -> int:
        """Stream offset where chunk `seq` begins (seq within the log, or next_seq)."""
        i = seq - self._first_seq
        return self._starts[i] if i < len(self._starts) else self._total

    # -- readers -----------------------------------------------------------------------
    def subscribe(self, from_seq: int | None = None) -> Subscription:
        """A reader at the live edge, or from `from_seq` if the log still has it
        (older than that: from the oldest chunk kept, with `missed` set)."""
        start = self.next_seq
        missed = 0
        if from_seq is not None and from_seq < self.next_seq:
            oldest = max(self._first_seq, self._floor)
            start = max(from_seq, oldest)
            missed = start - max(from_seq, 1)
        sub = Subscription(self, start)
        sub.missed = missed
        if self.closed and start >= self.next_seq:
            sub._left = True        # the stream is over and nothing is left to read
            return sub
        self._subscribers.add(sub)
        if start < self._hint:
            self._hint = start
        self._arm_heartbeat()
        return sub

    def _leave(self, sub: Subscription) -> None:
        self._subscribers.discard(sub)
        if self._behind is not None and sub in self._behind:
            self._behind.discard(sub)
            if not self._behind:
                self._room()
        if not self._subscribers:
            if self._beat_handle is not None:
                self._beat_handle.cancel()
                self._beat_handle = None
            if self.closed:
                self._release()
        self._trim()

    # -- the producer ------------------------------------------------------------------
    async def publish(self, chunk: Chunk) -> int:
        """Lend `chunk` to every reader (the same object, no copies); returns the number
        of readers.  With policy "block", waits while a reader is past the lag limit."""
        readers = self.publish_nowait(chunk)
        if self._behind is not None:
            await self._wait_for_readers()
        return readers

    def publish_nowait(self, chunk: Chunk) -> int:
        """`publish` for code that cannot wait (a protocol callback).  With policy
        "block" the chunk is accepted anyway; `await drained()` before the next."""
        if self.closed:
            raise RuntimeError(f"channel {self.name!r} is closed")
        chunk = _immutable(chunk)
        size = len(chunk)
        if not size:
            return len(self._subscribers)
        seq = self.next_seq
        self._chunks.append(chunk)
        self._starts.append(self._total)
        for frames in self._frames.values():
            frames.append(None)
        if self._spools:
            self._spool_chunk(seq, chunk)
        self._total += size
        self.next_seq = seq + 1
        self._published_since_beat = True
        # The oldest cursor that is not past the lag limit (the newest chunk is never
        # "too far behind", whatever its size), and the oldest seq the window keeps.
        floor = max(self._floor, self._first_seq)
        total = self._total
        while floor < seq and (seq + 1 - floor > self.max_lag_chunks
                               or total - self._start(floor) > self.max_lag_bytes):
            floor += 1
        self._floor = floor
        window = max(self._window, self._first_seq)
        while window <= seq and (seq + 1 - window > self.replay_chunks
                                 or total - self._start(window) > self.replay_bytes):
            window += 1
        self._window = window
        # Rescan when a reader may be past the limit, and now and then when the log
        # holds more than the window only because the bound on readers is stale.
        if floor > self._hint or (window - self._hint >= RESCAN_EVERY
                                  and seq - self._scanned >= RESCAN_EVERY):
            self._enforce(floor)
        self._trim()
        if self._waking:
            self._deferred = True       # the round under way ends by looking again
        elif self._waiting:
            if self._total - self._total_at_wake >= self._wake_bytes \
                    or seq - self._seq_at_wake >= self._wake_chunks:
                if self._wake_handle is not None:
                    self._wake_handle.cancel()
                self._wake_readers()
                return len(self._subscribers)
            if self._wake_handle is not None:
                return len(self._subscribers)
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                self._wake_readers()
                return len(self._subscribers)
            # A real clock: the loop's time stands still during the round of wake-ups.
            wait = self._woken_at + self.coalesce - _monotonic()
            if wait <= 0:
                self._wake_readers()
            else:
                # Woken a moment ago: let the next chunks gather, so each reader
                # takes them in one batch (one send) instead of one send per chunk.
                self._wake_handle = loop.call_later(wait, self._wake_readers)
        return len(self._subscribers)

    def _wake_readers(self) -> None:
        self._wake_handle = None
        waiting, self._waiting = self._waiting, []
        if waiting:
            self._total_at_wake = self._total
            self._seq_at_wake = self.next_seq
            self._wake_some(waiting, 0)

    def _wake_some(self, waiting: list[Subscription], start: int) -> None:
        """Wake WAKE_SLICE readers, and the rest on the loop's next turns.

        A round over a thousand pushed readers (a send each) is long; done in one go,
        nothing else runs meanwhile — not even the producer's connection, whose
        socket then fills and stops it, so every reader takes a small batch next time.
        In slices the producer keeps feeding the log between them, and the readers
        woken later take what arrived meanwhile in the same send."""
        end = start + WAKE_SLICE
        for i in range(start, min(end, len(waiting))):
            waiting[i]._wake()
        if end < len(waiting):
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                loop = None
            if loop is not None and not self.closed:
                self._waking = True
                loop.call_soon(self._wake_some, waiting, end)
                return
            for i in range(end, len(waiting)):
                waiting[i]._wake()
        self._waking = False
        self._woken_at = _monotonic()
        if self._deferred:
            # Chunks came during the round: readers that were done early and armed
            # again take them after the usual pause.
            self._deferred = False
            if self._waiting and not self.closed and self._wake_handle is None:
                try:
                    loop = asyncio.get_running_loop()
                except RuntimeError:
                    self._wake_readers()
                    return
                self._wake_handle = loop.call_later(self.coalesce, self._wake_readers)

    def _enforce(self, floor: int) -> None:
        """Apply the policy to readers below `floor`; recompute the lower bound."""
        lowest = self.next_seq
        newest = self.next_seq - 1
        behind: set[Subscription] = set()
        for sub in list(self._subscribers):
            cursor = sub.cursor
            if cursor < floor:
                if self.policy == "drop":
                    self._drop(sub)
                    continue
                if self.policy == "skip":
                    lost = newest - cursor
                    sub.cursor = cursor = newest
                    sub.skipped += lost
                    self.skipped += lost
                    self.metrics.fanout_skipped += lost
                else:
                    behind.add(sub)
            if cursor < lowest:
                lowest = cursor
        self._hint = lowest
        self._scanned = self.next_seq
        if behind:
            # Wait until they are a few chunks inside the limit, not just at it, so the
            # producer is held (and the readers scanned) once per few chunks, not per chunk.
            self._behind = behind
            self._need = min(floor + BLOCK_SLACK, self.next_seq)
            self._held_at = floor

    def _drop(self, sub: Subscription) -> None:
        behind = self.next_seq - sub.cursor
        nbytes = self._total - self._start(sub.cursor)
        sub.error = SlowReader(f"reader fell {behind} chunks / {nbytes} bytes behind "
                               f"channel {self.name!r} (limit {self.max_lag_chunks} chunks / "
                               f"{self.max_lag_bytes} bytes)")
        self._subscribers.discard(sub)
        self.dropped += 1
        self.metrics.fanout_dropped += 1
        log.warning("channel %r: dropped a slow reader %d chunks / %d bytes behind",
                    self.name, behind, nbytes)
        sub._wake()

    def _advanced(self, sub: Subscription) -> None:
        behind = self._behind
        if behind is not None and sub.cursor >= self._need and sub in behind:
            behind.discard(sub)
            if not behind:
                self._room()

    def _room(self) -> None:
        self._behind = None
        # Every reader is now at or past the floor it was held at (the ones that were
        # behind reached `_need`; the others were not below that floor).
        self._hint = max(self._hint, self._held_at)
        producer = self._producer
        if producer is not None and not producer.done():
            producer.set_result(None)
        self._trim()

    async def _wait_for_readers(self) -> None:
        while self._behind:
            self._producer = asyncio.get_running_loop().create_future()
            try:
                await self._producer
            finally:
                self._producer = None
        self._behind = None

    async def drained(self) -> None:
        """Until no reader is past the lag limit (policy "block")."""
        if self._behind is not None:
            await self._wait_for_readers()

    def close(self) -> None:
        """End the stream: readers take what the log holds for them, then stop."""
        if self.closed:
            return
        self.closed = True
        if self._beat_handle is not None:
            self._beat_handle.cancel()
            self._beat_handle = None
        if self._wake_handle is not None:
            self._wake_handle.cancel()
            self._wake_handle = None
        self._behind = None
        if self._producer is not None and not self._producer.done():
            self._producer.set_result(None)
        for sub in list(self._subscribers):
            sub._wake()
        self._waiting.clear()
        if not self._subscribers:
            self._release()

    # -- memory --------------------------------------------------------------------------
    def _trim(self) -> None:
        """Let go of chunks neither the window nor any reader needs."""
        keep = self.next_seq if self.closed else self._window
        if self._subscribers and self._hint < keep:
            keep = self._hint
        drop = keep - self._first_seq
        if drop > 0:
            del self._chunks[:drop]
            del self._starts[:drop]
            for frames in self._frames.values():
                del frames[:drop]
            for spooled in self._spools.values():
                spooled.trim(drop)
            self._first_seq = keep

    def _release(self) -> None:
        self._chunks.clear()
        self._starts.clear()
        self._frames.clear()
        for spooled in self._spools.values():
            spooled.clear()
        self._spools.clear()
        self._first_seq = self.next_seq

    # -- spools (spool.py) ---------------------------------------------------------------
    def _spooled(self, framer: Framer) -> _Spooled | None:
        """The spool for `framer`, begun (with the chunks the log holds) on first use."""
        spooled = self._spools.get(framer)
        if spooled is None and not self._spool_failed:
            spooled = _Spooled(framer)
            try:
                for i, chunk in enumerate(self._chunks):
                    spooled.add(self._first_seq + i, chunk)
            except OSError as exc:
                self._spool_lost(exc)
                return None
            self._spools[framer] = spooled
        return spooled

    def _spool_chunk(self, seq: int, chunk: Chunk) -> None:
        try:
            for spooled in self._spools.values():
                spooled.add(seq, chunk)
        except OSError as exc:
            self._spool_lost(exc)

    def _spool_lost(self, exc: OSError) -> None:
        # Out of memory or descriptors: stop spooling; readers lend the chunks instead.
        log.warning("channel %r: spooling stopped (%s); readers are sent the chunks themselves",
                    self.name, exc)
        self._spool_failed = True
        self._spools.clear()

    @property
    def spool_bytes(self) -> int:
        """Bytes in the spool files the log still refers to."""
        files = {id(f): f for spooled in self._spools.values() for f in spooled.files}
        return sum(f.size for f in files.values())

    # -- heartbeat -----------------------------------------------------------------------
    def _arm_heartbeat(self) -> None:
        if self.heartbeat and self._beat_handle is None and not self.closed:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                return
            self._beat_handle = loop.call_later(self.heartbeat, self._beat)

    def _beat(self) -> None:
        self._beat_handle = None
        if not self._published_since_beat:
            waiting, self._waiting = self._waiting, []
            for sub in waiting:
                sub._wake(True)
        self._published_since_beat = False
        if self._subscribers:
            self._arm_heartbeat()

    def __repr__(self) -> str:
        return (f"<Channel {self.name!r} seq={self.next_seq} readers={self.readers} "
                f"held={self.chunks_held}/{self.bytes_held}B policy={self.policy}>")
