"""The transmitter: the only code that hands response bytes to the kernel.

Theory of operation (docs/design.md rule 2, after nginx's sendfile chain):
a transmitter owns one socket and a queue of Messages.  `flush()` walks the queue
front to back the way nginx walks its chain of buffers:

* neighbouring memory slices — header slices, `bytes`, mmap windows, across as many
  pipelined Messages as are queued — go out in ONE `sendmsg` (writev) call;
* a file region goes out by `os.sendfile`, in steps of at most `sendfile_step` bytes.
  The header slices just before it are sent with `MSG_MORE`, so the kernel holds them
  back and the header shares a segment with the first file bytes;
* a small file region whose owner keeps an mmap of the file is turned into a
  memoryview window at enqueue time and gathered like any memory slice, so a small
  file leaves with its header in a single writev (the seeds' "headers and the first
  chunk of the file" case).  Python never touches those pages: only the kernel does.

"Try the syscall first, wait only on EAGAIN" (curio): a call that the kernel does not
take in full means the socket buffer is full, so the transmitter registers for
writability and resumes from exactly where the kernel stopped.  Partial progress is
accounted slice by slice; nothing is ever re-sent or skipped.

Loans (rule 3): a queued slice stays referenced here until the kernel has accepted
its bytes; that reference is what keeps an mmap window mapped and an fd open.  The
bytes on loan are charged to the global LoanLedger and to `self.outstanding`, which
the connection checks against its own budget before taking on more work (rule 4).

Failure: `sendfile` returning 0 while bytes are owed means the file shrank under us,
and a writev over an mmap window past the new end of a truncated file fails with
EFAULT in the kernel (no SIGBUS: the fault happens in kernel mode and is fixed up).
Either way the promised Content-Length can no longer be kept, so the connection is
failed and closed — never treated as a short success, which would desync keep-alive
framing for the next response.

`CopyTransmitter` is the one copy path (rule 5): a transport that cannot gather
(TLS) gets every slice copied into contiguous `bytes`, file regions read with
`os.pread` off the event loop (aiofiles' executor wrapper), and every copied byte is
counted.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import socket
from collections import deque
from collections.abc import Callable

import aiofiles.os

from . import writable
from .loans import LoanLedger
from .message import FileRegion, Message
from .metrics import METRICS, Metrics

__all__ = ["SocketTransmitter", "CopyTransmitter", "TruncatedFileError", "Done"]

log = logging.getLogger("pageloan.transmitter")

Done = Callable[[BaseException | None], None]

MSG_MORE = getattr(socket, "MSG_MORE", 0)
# Linux IOV_MAX is 1024; stay well below so one gather call never fails with EINVAL.
IOV_LIMIT = 512
DEFAULT_SENDFILE_STEP = 2 << 20      # nginx's sendfile_max_chunk default (2 MiB)
DEFAULT_GATHER_MAX = 64 << 10        # file regions up to this size go out as mmap windows
FLUSH_QUOTA = 8 << 20                # bytes one flush may send before yielding the loop


class TruncatedFileError(OSError):
    """The file shrank while it was being sent: the promised length cannot be kept."""


class SocketTransmitter:
    """Gather/sendfile transmitter over a non-blocking socket it does not own.

    The queue is one flat list of slices in wire order (header slices of a message
    followed by its payload, then the next message), so a flush can hand a run of
    neighbouring memory slices to one sendmsg without rebuilding anything.  Progress
    is kept as stream positions: `_queued` bytes ever queued and `accepted` bytes the
    kernel has taken; a message's completion callback fires when `accepted` passes the
    position where that message ended.

    Slotted, and its list of completion marks is a plain list (rarely more than one
    entry; a deque would allocate a 64-slot block per connection): a thousand
    readers of one stream hold a thousand of these.
    """

    __slots__ = ("_sock", "_fd", "_loop", "_metrics", "_ledger", "_slices", "_marks", "_queued",
                 "_regions", "_on_error", "_on_idle", "wants_idle", "_step", "_gather_max",
                 "_waiting_writable", "_writer_registered", "_flushing", "_resume_scheduled",
                 "outstanding", "accepted", "closed")

    def __init__(
        self,
        sock: socket.socket,
        loop: asyncio.AbstractEventLoop,
        *,
        ledger: LoanLedger | None = None,
        metrics: Metrics | None = None,
        on_error: Callable[[BaseException], None] | None = None,
        on_idle: Callable[[], None] | None = None,
        sendfile_step: int = DEFAULT_SENDFILE_STEP,
        gather_max: int = DEFAULT_GATHER_MAX,
    ) -> None:
        self._sock = sock
        self._fd = sock.fileno()
        self._loop: asyncio.AbstractEventLoop | writable.WritablePoll = loop
        self._metrics = metrics or METRICS
        self._ledger = ledger or self._metrics.ledger
        self._slices: list = []                         # owed to the kernel, front first
        self._marks: list[tuple[int, Done]] = []        # (end position, completion callback)
        self._queued = 0                                # stream position: bytes ever queued
        self._regions = 0                               # FileRegions among _slices
        self._on_error = on_error
        self._on_idle = on_idle
        # Set by the owner while it waits for the queue to empty (loan budget, drain,
        # a streaming producer); otherwise an empty queue is not worth a call.
        self.wants_idle = False
        self._step = sendfile_step
        self._gather_max = gather_max
        self._waiting_writable = False
        self._writer_registered = False
        self._flushing = False
        self._resume_scheduled = False
        self.outstanding = 0     # bytes on loan through this transmitter
        self.accepted = 0        # bytes the kernel has taken, ever
        self.closed = False

    # -- queueing --------------------------------------------------------------------
    def enqueue(self, message: Message, done: Done | None = None) -> None:
        """Queue a message; its slices are on loan from now until the kernel takes them."""
        if self.closed:
            if done is not None:
                done(ConnectionError("transmitter closed"))
            return
        slices = self._slices
        stack = message._stack
        slices.extend(stack[::-1])                  # top of the stack goes first
        size = charge = sum(map(len, stack))
        if not message.head_only:
            n, lent, regions = self._lay_payload(message.payload, slices.append)
            size += n
            charge += lent
            self._regions += regions
        self._lend(size, charge)
        if done is not None:
            self._marks.append((self._queued, done))

    def transmit(self, message: Message) -> None:
        """Queue a message and flush: `enqueue` then `flush`, with a shortcut.

        The shortcut is the common answer — one message of memory slices (header
        slices, bytes, the mmap window of a small file) to a socket with nothing
        queued: the slices go straight into one sendmsg.  When the kernel takes them
        all, which it usually does, the loan opened and closed inside this call, so
        nothing is queued, charged or repaid.  Anything else (a file region for
        sendfile, a window not yet made, a short write, a busy socket) takes the
        general path, which accounts every slice as a loan until the kernel has it.
        """
        if self._slices or self._waiting_writable or self.closed or self._flushing:
            self.enqueue(message)
            self.flush()
            return
        payload = message.payload
        if len(payload) == 1 and not message._stack and type(payload[0]) is FileRegion \
                and not message.head_only:
            self._transmit_region(message, payload[0])
            return
        iov: list = message._stack[::-1]            # top of the stack goes first
        if not message.head_only:
            gather_max = self._gather_max
            for s in message.payload:
                if type(s) is FileRegion:
                    view = s.view
                    if view is None or s.count > gather_max:
                        self.enqueue(message)       # sendfile, or a window to make first
                        self.flush()
                        return
                    iov.append(view)
                elif len(s):
                    iov.append(s)
        self.transmit_slices(iov)

    def transmit_slices(self, iov: list) -> None:
        """Send an answer already laid out as memory slices (bytes, memoryviews).

        The static lane's answers come this way (no Message is built for them), and
        `transmit`'s shortcut ends here.  To an idle socket the slices go straight into
        one sendmsg; only what the kernel does not take is lent, queued and charged.
        """
        total = sum(map(len, iov))
        if self._slices or self._waiting_writable or self.closed or self._flushing:
            self._slices.extend(iov)
            self._lend(total, total)
            self.flush()
            return
        try:
            sent = self._sock.sendmsg(iov)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError as exc:
            self._fail(exc)
            return
        self._metrics.bytes_gather += sent
        if sent == total:
            self._queued += total
            self.accepted += total
            if self.wants_idle and self._on_idle is not None:
                self._on_idle()
            return
        # A short write: what the kernel did not take is on loan from now on.
        slices = self._slices
        slices.extend(iov)
        self._lend(total, total)
        self._retire(sent, len(slices))
        self._accept(sent, sent)
        self._wait_writable()

    def _transmit_region(self, message: Message, region: FileRegion) -> None:
        """`transmit`'s shortcut for a message that is one file region and no header
        (a fan-out reader's batch from its channel's spool): one sendfile, and nothing
        queued or charged when the kernel takes it all."""
        count = region.count
        step = self._step
        if not count or (count <= self._gather_max and getattr(region.owner, "window", None) is not None):
            self.enqueue(message)          # nothing to send, or an mmap window to gather
            self.flush()
            return
        try:
            sent = os.sendfile(self._fd, region.fd, region.offset, count if count < step else step)
        except (BlockingIOError, InterruptedError):
            sent = -1
        except OSError as exc:
            self._fail(exc)
            return
        if sent <= 0:
            # The socket is full, or the file is shorter than promised: the general
            # path waits for room, or fails the connection (TruncatedFileError).
            self.enqueue(message)
            self.flush()
            return
        self._metrics.bytes_sendfile += sent
        self._queued += sent
        self.accepted += sent
        if sent == count:
            if self.wants_idle and self._on_idle is not None:
                self._on_idle()
            return
        # The rest is on loan from now on, charged a step at a time like any region.
        left = count - sent
        self._slices.append(FileRegion(region.fd, region.offset + sent, left, region.owner))
        self._regions += 1
        self._lend(left, left if left < step else step)
        if sent < step:
            self._wait_writable()          # a short sendfile: the socket is full
        else:
            self.flush()                   # a whole step went: go on with the next

    def _lend(self, size: int, charge: int) -> None:
        """`size` more bytes queued; `charge` of them on loan until the kernel takes them."""
        self._queued += size
        self.outstanding += charge
        ledger = self._ledger
        ledger.outstanding += charge
        if ledger.outstanding > ledger.peak:
            ledger.peak = ledger.outstanding

    def _lay_payload(self, payload: tuple, append: Callable) -> tuple[int, int, int]:
        """Append the wire slices of `payload`; return (bytes, loan charge, file regions).

        A region small enough to gather, of a file its owner keeps mapped, becomes a
        memoryview window of the mapping (memoised on the region, which is immutable
        and may be shared by many answers); any other region stays a FileRegion for
        sendfile, charged one sendfile step at a time.
        """
        size = charge = regions = 0
        step = self._step
        gather_max = self._gather_max
        for s in payload:
            if type(s) is FileRegion:
                n = s.count
                if not n:
                    continue          # sendfile/mmap of 0 bytes fail; nothing to send anyway
                size += n
                if n <= gather_max:
                    view = s.view
                    if view is None:
                        window = getattr(s.owner, "window", None)
                        view = s.view = window(s.offset, n) if window is not None else None
                    if view is not None:
                        append(view)
                        charge += n
                        continue
                append(s)
                regions += 1
                charge += n if n < step else step
            else:
                n = len(s)
                if n:
                    append(s)
                    size += n
                    charge += n
        return size, charge, regions

    @property
    def idle(self) -> bool:
        return not self._slices

    def set_idle_listener(self, on_idle: Callable[[], None] | None) -> None:
        """Who hears `on_idle` from now on (the protocol that took the connection over)."""
        self._on_idle = on_idle

    def share_writable_poll(self) -> None:
        """Wait for writability in the loop's shared poll (writable.py), not with a poll
        handle of this socket's own: for the many readers of a fan-out."""
        if not self._writer_registered and not isinstance(self._loop, writable.WritablePoll) \
                and writable.available():
            self._loop = writable.for_loop(self._loop)

    def when_sent(self, done: Done) -> None:
        """Call `done` once the kernel has taken everything queued so far (now if idle)."""
        if self.closed:
            done(ConnectionError("transmitter closed"))
        elif not self._slices:
            done(None)
        else:
            self._marks.append((self._queued, done))

    async def send(self, message: Message) -> None:
        """Queue, flush, and wait until the kernel has accepted the whole message."""
        fut = self._loop.create_future()

        def done(exc: BaseException | None) -> None:
            if fut.done():
                return
            if exc is None:
                fut.set_result(None)
            else:
                fut.set_exception(exc)

        self.enqueue(message, done)
        if not self._slices and self._marks and self._marks[-1][0] <= self.accepted:
            self._fire_marks()            # an empty message: nothing to wait for
        self.flush()
        await fut

    # -- moving bytes ----------------------------------------------------------------
    def flush(self) -> None:
        """Hand the kernel as much of the queue as it takes now; wait only on EAGAIN."""
        slices = self._slices
        if not slices or self._flushing or self._waiting_writable or self.closed:
            return
        if not self._regions and len(slices) <= IOV_LIMIT:
            # The common case, inline: only memory queued (one response, or a batch
            # of pipelined ones) — one sendmsg, and usually the kernel takes it all.
            sent = self._gather(slices)
            if sent < 0:
                return
            if sent and sent == self._queued - self.accepted:
                # Everything queued was memory, and the kernel took it all.
                self._metrics.bytes_gather += sent
                slices.clear()
                self._accept(sent, sent)
                if self.wants_idle and not self.closed and self._on_idle is not None:
                    self._on_idle()
                return
            if sent:
                self._metrics.bytes_gather += sent
                self._retire(sent, len(slices))
                self._accept(sent, sent)
            self._wait_writable()
            return
        self._flush_queue()

    def _flush_queue(self) -> None:
        """The general flush: file regions and long queues, one syscall after another."""
        self._flushing = True
        try:
            self._flush_some()
        except OSError as exc:
            self._fail(exc)
        finally:
            self._flushing = False
        self._idle_check()

    def _idle_check(self) -> None:
        # The owner asked to hear when the queue is empty (a loan budget, a drain).
        on_idle = self._on_idle
        if self.wants_idle and not self._slices and not self.closed and on_idle is not None:
            on_idle()

    def _gather(self, slices: list | tuple) -> int:
        """One sendmsg of memory slices: bytes taken, 0 if the socket is full, -1 if the
        connection failed (already handled)."""
        try:
            return self._sock.sendmsg(slices)
        except (BlockingIOError, InterruptedError):
            return 0
        except OSError as exc:
            self._fail(exc)
            return -1

    def _flush_some(self) -> None:
        quota = FLUSH_QUOTA
        slices = self._slices
        while slices:
            if quota <= 0:
                # One fast client must not starve the others (nginx's sendfile_max_chunk):
                # yield to the loop and continue on the next iteration.
                if not self._resume_scheduled:
                    self._resume_scheduled = True
                    self._loop.call_soon(self._resume)
                return
            if type(slices[0]) is FileRegion:
                sent = self._send_file_step(slices[0])
            else:
                sent = self._send_gathered()
            if sent < 0:
                self._wait_writable()
                return
            quota -= sent

    def _send_gathered(self) -> int:
        """One sendmsg of the run of memory slices at the front; -1 when the kernel is full."""
        slices = self._slices
        count = len(slices)
        end = 0
        limit = min(count, IOV_LIMIT)
        while end < limit and type(slices[end]) is not FileRegion:
            end += 1
        iov = slices if end == count else slices[:end]
        try:
            if end < count and type(slices[end]) is FileRegion:
                # Hold the header back so it shares a segment with the file data behind it.
                sent = self._sock.sendmsg(iov, (), MSG_MORE)
            else:
                sent = self._sock.sendmsg(iov)
        except (BlockingIOError, InterruptedError):
            return -1
        self._metrics.bytes_gather += sent
        complete = self._retire(sent, end)
        self._accept(sent, sent)
        # A short write means the socket buffer is full: the next call would EAGAIN.
        return sent if complete else -1

    def _retire(self, nbytes: int, end: int) -> bool:
        """Drop what the kernel took from the first `end` slices; True if all of them went."""
        slices = self._slices
        i = 0
        while i < end:
            size = len(slices[i])
            if nbytes < size:
                break
            nbytes -= size
            i += 1
        if i == len(slices):
            slices.clear()
        elif i:
            del slices[:i]
        if i < end and nbytes:
            # A partly taken slice is re-viewed, never copied.
            slices[0] = memoryview(slices[0])[nbytes:]
        return i == end

    def _send_file_step(self, region: FileRegion) -> int:
        step = self._step
        total = region.count
        try:
            sent = os.sendfile(self._fd, region.fd, region.offset, total if total < step else step)
        except (BlockingIOError, InterruptedError):
            return -1
        if sent == 0:
            raise TruncatedFileError(errno.EIO, f"file shrank during send ({total} bytes owed)")
        self._metrics.bytes_sendfile += sent
        left = total - sent
        if left:
            self._slices[0] = FileRegion(region.fd, region.offset + sent, left, region.owner)
        else:
            del self._slices[0]
            self._regions -= 1
        # The region was charged one step; charge what is left of it the same way.
        repaid = min(total, step) - min(left, step)
        self._accept(sent, repaid)
        # Linux may return early from sendfile (signals, 4.3+); only EAGAIN means "full".
        return sent

    def _accept(self, nbytes: int, repaid: int) -> None:
        """The kernel took `nbytes`: repay their loan and complete finished messages."""
        self.accepted += nbytes
        if repaid:
            self.outstanding -= repaid
            self._ledger.repay(repaid)
        if self._marks and self._marks[0][0] <= self.accepted:
            self._fire_marks()

    def _fire_marks(self) -> None:
        marks = self._marks
        accepted = self.accepted
        while marks and marks[0][0] <= accepted:
            marks.pop(0)[1](None)

    # -- waiting ---------------------------------------------------------------------
    def _wait_writable(self) -> None:
        self._waiting_writable = True
        if not self._writer_registered:
            self._writer_registered = True
            self._loop.add_writer(self._fd, self._on_writable)

    def _on_writable(self) -> None:
        self._waiting_writable = False
        self.flush()
        # Stay registered while a long send keeps hitting EAGAIN: re-arming the poll
        # every round would cost two epoll_ctl calls per socket-buffer's worth of data.
        if not self._waiting_writable and self._writer_registered:
            self._writer_registered = False
            self._loop.remove_writer(self._fd)

    def _resume(self) -> None:
        self._resume_scheduled = False
        self.flush()

    # -- failure and shutdown ----------------------------------------------------------
    def _fail(self, exc: BaseException) -> None:
        if isinstance(exc, TruncatedFileError) or getattr(exc, "errno", None) == errno.EFAULT:
            log.error("send failed, file changed under the response: %s", exc)
        elif not isinstance(exc, (ConnectionError, TimeoutError)):
            log.warning("send failed: %r", exc)
        self._metrics.send_errors += 1
        self.close(exc)
        if self._on_error is not None:
            self._on_error(exc)

    def close(self, exc: BaseException | None = None) -> None:
        """Stop sending; repay every loan still queued and fail its message."""
        if self.closed:
            return
        self.closed = True
        self._waiting_writable = False
        if self._writer_registered:
            self._writer_registered = False
            try:
                self._loop.remove_writer(self._fd)
            except (ValueError, OSError):
                pass
        self._slices = []
        self._regions = 0
        self._ledger.repay(self.outstanding)
        self.outstanding = 0
        marks, self._marks = self._marks, []
        for _end, done in marks:
            done(exc or ConnectionError("connection closed"))


# File reads on the copy path have no kernel shortcut to a TLS socket and may block
# on the disk, so they run in the loop's executor.  `pread`, not seek + read: the
# descriptor comes from the shared open-file cache and other connections read it at
# their own offsets at the same time (aiofiles' file objects would move its offset).
_pread = aiofiles.os.wrap(os.pread)


class CopyTransmitter:
    """The copy path for transports that cannot gather (TLS): counted copies.

    Same queue/flush/outstanding contract as SocketTransmitter.  Memory slices are
    copied to `bytes` and written to the transport; file regions are read with
    `os.pread` in the default executor in 256 KiB blocks, waiting while the
    transport's buffer is above its high-water mark.  A short read means the file
    shrank: the connection fails.
    """

    BLOCK = 256 << 10

    def __init__(
        self,
        transport: asyncio.WriteTransport,
        loop: asyncio.AbstractEventLoop,
        *,
        ledger: LoanLedger | None = None,
        metrics: Metrics | None = None,
        on_error: Callable[[BaseException], None] | None = None,
        on_idle: Callable[[], None] | None = None,
    ) -> None:
        self._transport = transport
        self._loop = loop
        self._metrics = metrics or METRICS
        self._ledger = ledger or self._metrics.ledger
        self._on_error = on_error
        self._on_idle = on_idle
        # Set by the owner while it waits for the queue to empty (loan budget, drain,
        # a streaming producer); otherwise an empty queue is not worth a call.
        self.wants_idle = False
        self._queue: deque[tuple[list[bytes | memoryview | FileRegion], Done | None, int]] = deque()
        self._writable = asyncio.Event()
        self._writable.set()
        self._pump: asyncio.Task[None] | None = None
        self.outstanding = 0
        self.accepted = 0
        self.closed = False

    @property
    def idle(self) -> bool:
        return not self._queue and self._pump is None

    def set_idle_listener(self, on_idle: Callable[[], None] | None) -> None:
        """Who hears `on_idle` from now on (the protocol that took the connection over)."""
        self._on_idle = on_idle

    def enqueue(self, message: Message, done: Done | None = None) -> None:
        if self.closed:
            if done is not None:
                done(ConnectionError("transmitter closed"))
            return
        slices = [s for s in message.wire_slices() if len(s)]
        charge = sum(map(len, slices))
        self.outstanding += charge
        self._ledger.lend(charge)
        self._queue.append((slices, done, charge))

    def transmit(self, message: Message) -> None:
        self.enqueue(message)
        self.flush()

    def transmit_slices(self, iov: list) -> None:
        self.transmit(Message(0, (), tuple(iov)))

    def when_sent(self, done: Done) -> None:
        """Call `done` once everything queued so far has been written (now if idle)."""
        if self.closed:
            done(ConnectionError("transmitter closed"))
        elif self.idle:
            done(None)
        else:
            self._queue.append(([], done, 0))
            self.flush()

    def flush(self) -> None:
        if self._pump is None and self._queue and not self.closed:
            self._pump = self._loop.create_task(self._run())

    async def send(self, message: Message) -> None:
        fut: asyncio.Future[None] = self._loop.create_future()

        def sent(exc: BaseException | None) -> None:
            if fut.done():
                return
            if exc is not None:
                fut.set_exception(exc)
            else:
                fut.set_result(None)

        self.enqueue(message, sent)
        self.flush()
        await fut

    def pause_writing(self) -> None:
        self._writable.clear()

    def resume_writing(self) -> None:
        self._writable.set()

    async def _run(self) -> None:
        try:
            while self._queue and not self.closed:
                slices, done, charge = self._queue[0]
                for s in slices:
                    if isinstance(s, FileRegion):
                        await self._copy_region(s)
                    else:
                        self._transport.write(bytes(s))   # the counted copy
                        self._metrics.bytes_copy += len(s)
                        self.accepted += len(s)
                    await self._writable.wait()
                self._queue.popleft()
                self.outstanding -= charge
                self._ledger.repay(charge)
                if done is not None:
                    done(None)
        except Exception as exc:  # noqa: BLE001 - any failure ends this one connection
            self._pump = None
            log.error("copy send failed: %s", exc)
            self._metrics.send_errors += 1
            self.close(exc)
            if self._on_error is not None:
                self._on_error(exc)
            return
        self._pump = None
        if self.wants_idle and not self._queue and not self.closed and self._on_idle is not None:
            self._on_idle()

    async def _copy_region(self, region: FileRegion) -> None:
        offset, left = region.offset, region.count
        while left:
            block = await _pread(region.fd, min(left, self.BLOCK), offset)
            if not block:
                raise TruncatedFileError(errno.EIO, f"file shrank during send ({left} bytes owed)")
            self._transport.write(block)
            self._metrics.bytes_copy += len(block)
            self.accepted += len(block)
            offset += len(block)
            left -= len(block)
            await self._writable.wait()

    def close(self, exc: BaseException | None = None) -> None:
        if self.closed:
            return
        self.closed = True
        if self._pump is not None and self._pump is not asyncio.current_task():
            self._pump.cancel()
        self._pump = None
        queue, self._queue = self._queue, deque()
        for _slices, done, charge in queue:
            self.outstanding -= charge
            self._ledger.repay(charge)
            if done is not None:
                done(exc or ConnectionError("connection closed"))
