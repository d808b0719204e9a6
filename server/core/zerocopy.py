"""MSG_ZEROCOPY: pages on loan until the kernel's completion notice (`--zerocopy`).

Theory of operation (DESIGN.md rule 3; Linux Documentation/networking/msg_zerocopy.rst).
An ordinary `sendmsg` copies the bytes into socket buffers before it returns, so a
slice's loan ends with the call.  With `SO_ZEROCOPY` set on the socket and
`MSG_ZEROCOPY` on the call, the kernel pins the pages instead and reads them when it
transmits; the loan lasts until a *completion notice* arrives on the socket's error
queue.  Each successful zerocopy call takes the next number of a 32-bit wrapping
counter (a call that fails or hits EAGAIN takes none); a notice is a
`sock_extended_err` with origin `SO_EE_ORIGIN_ZEROCOPY` saying that calls
`ee_info..ee_data` (inclusive) are done, with `SO_EE_CODE_ZEROCOPY_COPIED` when the
kernel copied after all — which it always does for a peer on the same host (the
loopback "deferred copy").  Three pieces live here:

* `ZeroCopySocket` — one socket's ledger of pending sends, keyed by that counter:
  the slices of each call stay referenced (so no mmap window can be unmapped or a
  cached file closed) and their bytes stay charged to the loan budgets until the
  notice arrives.  It applies the policy: a connection whose sends keep being copied
  falls back to the ordinary path; `ENOBUFS` (the per-socket optmem limit) sends that
  call without the flag.
* `ErrorQueueWatch` — one per event loop: a private epoll set holding every zerocopy
  socket *edge-triggered with no events requested*, so it reports exactly the edges
  the kernel always reports (EPOLLERR: "a notice was queued", EPOLLHUP), once each.
  Its fd sits in the event loop as an ordinary reader.  A socket is reaped even
  while its connection has stopped reading and has nothing to write (waiting for
  loans to come back — which only these notices do), and an undrained queue can
  never make the loop spin: the edge is reported once.
* `ZeroCopyLoop` — the event loop as the connection and transmitter of a zerocopy
  socket see it: it forwards add/remove reader/writer and remembers them.  A
  non-empty error queue makes *every* epoll registration of the socket report
  EPOLLERR (tcp_poll; the events mask cannot opt out), and libuv's uv_poll answers
  POLLERR by stopping the handle (src/unix/poll.c, `uv__poll_io`); uvloop then runs
  the reader and writer once and closes it (handles/poll.pyx, `_fatal_error`).  The
  connection would go deaf.  So after a reap that found notices, the registrations
  are re-armed on the next loop turn, after the I/O phase in which libuv stopped them.

Closing with notices pending (`retire`): a notice is only ever delivered to an open
socket (the kernel drops it once the socket is closed), so the fd is kept open, with
its slices referenced, until the last notice arrives — promptly when the peer reset
or read everything, since that frees the kernel's buffers — or `ORPHAN_TIMEOUT`
passes (a peer that vanished silently: the kernel would retransmit for many
minutes).  Only then is the fd closed and the slices dropped.  At that point the
kernel still holds its own references to the pinned pages, so dropping our mapping
cannot make it send freed memory; what is lost is only the knowledge of when.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import select
import socket
import struct
import sys
from collections.abc import Callable
from typing import Any, cast

from .loans import LoanLedger
from .message import FileRegion, Message
from .metrics import Metrics
from .transmitter import IOV_LIMIT, MSG_MORE, SocketTransmitter

__all__ = [
    "DEFAULT_MIN_BYTES", "DEFAULT_COPIED_LIMIT", "ORPHAN_TIMEOUT",
    "ErrorQueueWatch", "ZeroCopyLoop", "ZeroCopySocket", "ZeroCopyTransmitter", "attach",
    "note_unsupported",
]

log = logging.getLogger("pageloan.zerocopy")

# Python's socket module lacks these (3.11); the values are Linux's UAPI.
SO_ZEROCOPY = 60                  # asm-generic/socket.h
MSG_ZEROCOPY = 0x4000000          # linux/socket.h
MSG_ERRQUEUE = 0x2000
SO_EE_ORIGIN_ZEROCOPY = 5         # linux/errqueue.h
SO_EE_CODE_ZEROCOPY_COPIED = 1
_EXTENDED_ERR = struct.Struct("=IBBBBII")   # ee_errno, origin, type, code, pad, info, data
_ANCILLARY = socket.CMSG_SPACE(64) if hasattr(socket, "CMSG_SPACE") else 128
_MASK = 0xFFFFFFFF

DEFAULT_MIN_BYTES = 10 << 10      # the kernel doc: "generally only effective at writes over around 10 KB"
DEFAULT_COPIED_LIMIT = 8          # consecutive copied-anyway sends before a connection gives up
ORPHAN_TIMEOUT = 10.0             # a closed connection waits this long for its last notices
REAP_BATCH = 64                   # notices read per turn; the rest on the next turn

_logged: set[str] = set()


def _once(key: str, level: int, text: str, *args: object) -> None:
    if key not in _logged:
        _logged.add(key)
        log.log(level, text, *args)


def note_unsupported(reason: str) -> None:
    """`--zerocopy` cannot apply to some connections: say so once per process."""
    _once("unsupported:" + reason, logging.WARNING,
          "--zerocopy: not possible for %s; those connections use the ordinary send path", reason)


def attach(sock: socket.socket, loop: asyncio.AbstractEventLoop, metrics: Metrics,
           ledger: LoanLedger, copied_limit: int = DEFAULT_COPIED_LIMIT) -> ZeroCopySocket | None:
    """Turn zerocopy on for `sock`, or None (logged once) where it cannot be had."""
    if not sys.platform.startswith("linux"):
        note_unsupported(f"this platform ({sys.platform})")
        return None
    if sock.family not in (socket.AF_INET, socket.AF_INET6):
        note_unsupported(f"{socket.AddressFamily(sock.family).name} sockets")
        return None
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_ZEROCOPY, 1)
    except OSError as exc:
        note_unsupported(f"this kernel or socket (SO_ZEROCOPY: {exc.strerror})")
        return None
    return ZeroCopySocket(sock, loop, metrics, ledger, copied_limit)


class ErrorQueueWatch:
    """One loop's edge-triggered watch over the error queues of its zerocopy sockets."""

    _by_loop: dict[int, ErrorQueueWatch] = {}

    @classmethod
    def for_loop(cls, loop: asyncio.AbstractEventLoop) -> ErrorQueueWatch:
        watch = cls._by_loop.get(id(loop))
        if watch is None or watch._loop is not loop:
            watch = cls._by_loop[id(loop)] = cls(loop)
        return watch

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._epoll = select.epoll()
        self._sockets: dict[int, ZeroCopySocket] = {}
        loop.add_reader(self._epoll.fileno(), self._on_ready)

    def watch(self, zc: ZeroCopySocket) -> None:
        # No events asked for: epoll still reports EPOLLERR and EPOLLHUP, and with
        # EPOLLET each one once per edge, never again for a queue left unread.
        self._epoll.register(zc.fd, select.EPOLLET)
        self._sockets[zc.fd] = zc

    def unwatch(self, zc: ZeroCopySocket) -> None:
        """Before the fd is closed (its number may be reused at once)."""
        if self._sockets.get(zc.fd) is not zc:
            return
        del self._sockets[zc.fd]
        try:
            self._epoll.unregister(zc.fd)
        except OSError:
            pass
        if not self._sockets:
            # Nothing left to watch: give the fd back (tests start many loops).
            self._loop.remove_reader(self._epoll.fileno())
            self._epoll.close()
            if self._by_loop.get(id(self._loop)) is self:
                del self._by_loop[id(self._loop)]

    def _on_ready(self) -> None:
        for fd, _events in self._epoll.poll(0):
            zc = self._sockets.get(fd)
            if zc is not None:
                zc.reap()


class ZeroCopyLoop:
    """The event loop, remembering one socket's reader and writer so they can be re-armed."""

    def __init__(self, loop: asyncio.AbstractEventLoop, fd: int) -> None:
        self._loop = loop
        self._fd = fd
        self._reader: tuple[Callable[..., Any], tuple] | None = None
        self._writer: tuple[Callable[..., Any], tuple] | None = None
        self._rearm_scheduled = False
        self.closed = False
        # Only libuv stops a handle on POLLERR; a selector loop keeps polling (and the
        # watch drains the queue within the same turn).
        self._needs_rearm = "uvloop" in type(loop).__module__

    def __getattr__(self, name: str) -> Any:
        return getattr(self._loop, name)

    def add_reader(self, fd: int, callback: Callable[..., Any], *args: Any) -> None:
        if fd == self._fd:
            self._reader = (callback, args)
        self._loop.add_reader(fd, callback, *args)

    def remove_reader(self, fd: int) -> bool:
        if fd == self._fd:
            self._reader = None
        return self._loop.remove_reader(fd)

    def add_writer(self, fd: int, callback: Callable[..., Any], *args: Any) -> None:
        if fd == self._fd:
            self._writer = (callback, args)
        self._loop.add_writer(fd, callback, *args)

    def remove_writer(self, fd: int) -> bool:
        if fd == self._fd:
            self._writer = None
        return self._loop.remove_writer(fd)

    def schedule_rearm(self) -> None:
        if self._needs_rearm and not self._rearm_scheduled and not self.closed:
            self._rearm_scheduled = True
            # Next turn: after the I/O phase in which libuv may have stopped the handle.
            self._loop.call_soon(self._rearm)

    def _rearm(self) -> None:
        self._rearm_scheduled = False
        if self.closed:
            return          # the fd may already belong to another connection
        reader, writer, loop, fd = self._reader, self._writer, self._loop, self._fd
        # Removing both drops the handle libuv stopped (uvloop keeps it in its fd map,
        # closed, and would refuse to start it again); adding makes a fresh one.
        loop.remove_reader(fd)
        loop.remove_writer(fd)
        if reader is not None:
            loop.add_reader(fd, reader[0], *reader[1])
        if writer is not None:
            loop.add_writer(fd, writer[0], *writer[1])


class ZeroCopySocket:
    """One socket's zerocopy sends awaiting their notices, and the policy around them."""

    def __init__(self, sock: socket.socket, loop: asyncio.AbstractEventLoop, metrics: Metrics,
                 ledger: LoanLedger, copied_limit: int = DEFAULT_COPIED_LIMIT) -> None:
        self.sock = sock
        self.fd = sock.fileno()
        self._loop = loop
        self._proxy = ZeroCopyLoop(loop, self.fd)
        # The loop as this socket's connection and transmitter must use it.
        self.loop = cast(asyncio.AbstractEventLoop, self._proxy)
        self._metrics = metrics
        self._ledger = ledger
        self._copied_limit = copied_limit
        # counter value → (the call's slices, bytes the call took); insertion = send order
        self._pending: dict[int, tuple[tuple, int]] = {}
        self._next_id = 0
        self.pending_bytes = 0
        self.active = True          # still sending with MSG_ZEROCOPY
        self._starved = False       # ENOBUFS: plain sends until the next notice
        self._copied_run = 0
        # Called with the bytes whose loans a notice ended (the transmitter's repay).
        self.on_repaid: Callable[[int], None] | None = None
        self._retired = False
        self._closed = False
        self._orphan_timer: asyncio.TimerHandle | None = None
        self._watch = ErrorQueueWatch.for_loop(loop)
        self._watch.watch(self)

    @property
    def usable(self) -> bool:
        return self.active and not self._starved

    # -- sending -----------------------------------------------------------------------
    def sendmsg(self, iov: list | tuple, flags: int) -> int:
        """One gather call with MSG_ZEROCOPY; its slices stay referenced until the notice.

        BlockingIOError propagates (no counter value was taken).  ENOBUFS — the
        socket's optmem (or locked-page) budget is spent — sends this call without
        the flag, and the next calls too until a notice frees room.
        """
        try:
            sent = self.sock.sendmsg(iov, (), flags | MSG_ZEROCOPY)
        except OSError as exc:
            if exc.errno != errno.ENOBUFS:
                raise
            self._starved = True
            self._metrics.zerocopy_enobufs += 1
            _once("enobufs", logging.INFO, "--zerocopy: ENOBUFS (net.core.optmem_max or the "
                  "locked-memory limit): sending without MSG_ZEROCOPY until completions free room")
            return self.sock.sendmsg(iov, (), flags)
        send_id = self._next_id
        self._next_id = (send_id + 1) & _MASK
        # A copy of the iov: the caller's list is trimmed as the kernel takes bytes.
        self._pending[send_id] = (tuple(iov), sent)
        self.pending_bytes += sent
        metrics = self._metrics
        metrics.zerocopy_sends += 1
        metrics.zerocopy_pending_bytes += sent
        return sent

    # -- notices -----------------------------------------------------------------------
    def reap(self) -> int:
        """Read the error queue; end the loans of completed sends.  Returns notices read."""
        found = 0
        recvmsg = self.sock.recvmsg
        while found < REAP_BATCH:
            try:
                _data, ancdata, _flags, _addr = recvmsg(0, _ANCILLARY, MSG_ERRQUEUE)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:
                # EBADF after a close, or an error we cannot read: nothing to wait for.
                log.debug("error queue read failed: %s", exc)
                break
            found += 1
            for _level, _type, data in ancdata:
                if len(data) >= _EXTENDED_ERR.size:
                    ee_errno, origin, _t, code, _p, first, last = _EXTENDED_ERR.unpack_from(data)
                    if origin == SO_EE_ORIGIN_ZEROCOPY and ee_errno == 0:
                        self._complete(first, last, code & SO_EE_CODE_ZEROCOPY_COPIED)
        if found:
            self._starved = False
            self._proxy.schedule_rearm()
            if found >= REAP_BATCH:
                # More may be queued; the edge was already reported, so come back.
                self._loop.call_soon(self.reap)
            if self._retired and not self._pending:
                self._close_now()
        return found

    def _complete(self, first: int, last: int, copied: int) -> None:
        count = ((last - first) & _MASK) + 1
        pending = self._pending
        freed = done = 0
        if count <= len(pending):
            for i in range(count):
                entry = pending.pop((first + i) & _MASK, None)
                if entry is not None:
                    freed += entry[1]
                    done += 1
        else:
            for send_id in [k for k in pending if ((k - first) & _MASK) < count]:
                freed += pending.pop(send_id)[1]
                done += 1
        metrics = self._metrics
        metrics.zerocopy_completions += done
        if copied:
            metrics.zerocopy_copied += done
            self._copied_run += done
            if self.active and self._copied_limit and self._copied_run >= self._copied_limit:
                self.active = False
                metrics.zerocopy_fallbacks += 1
                _once("copied", logging.INFO, "--zerocopy: the kernel copied %d sends in a row "
                      "(a peer on this host?); such connections fall back to the ordinary path",
                      self._copied_run)
        else:
            self._copied_run = 0
        if freed:
            self.pending_bytes -= freed
            metrics.zerocopy_pending_bytes -= freed
            if self.on_repaid is not None:
                self.on_repaid(freed)
            else:
                self._ledger.repay(freed)

    # -- closing -----------------------------------------------------------------------
    def retire(self) -> None:
        """The connection is done with the socket: close it once no notice is owed."""
        if self._retired:
            return
        self._retired = True
        self._proxy.closed = True
        self.on_repaid = None        # the transmitter is gone: repay the ledger directly
        self.reap()                  # closes the socket if that was the last notice
        if self._closed:
            return
        if not self._pending:
            self._close_now()
            return
        self._orphan_timer = self._loop.call_later(ORPHAN_TIMEOUT, self._give_up)

    def _give_up(self) -> None:
        self._orphan_timer = None
        if self._pending:
            log.info("--zerocopy: %d sends (%d bytes) of a closed connection still unconfirmed "
                     "after %.0fs; closing the socket anyway", len(self._pending),
                     self.pending_bytes, ORPHAN_TIMEOUT)
        self._close_now()

    def _close_now(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._orphan_timer is not None:
            self._orphan_timer.cancel()
            self._orphan_timer = None
        if self._pending:
            # Only on give-up: the kernel keeps its own page references from here on.
            self._metrics.zerocopy_pending_bytes -= self.pending_bytes
            self._ledger.repay(self.pending_bytes)
            self._pending.clear()
            self.pending_bytes = 0
        self._watch.unwatch(self)
        try:
            self.sock.close()
        except OSError:
            pass


# Regions of mapped files are gathered as windows whatever their size: the file cache
# maps files up to --map-max, so that is the bound in practice.
WINDOW_ALL = 1 << 62


class ZeroCopyTransmitter(SocketTransmitter):
    """SocketTransmitter whose large gather calls lend pages until the kernel's notice.

    Chosen per connection at accept time, so the ordinary transmitter's hot path does
    not test for zerocopy at all.  Loans: a slice's bytes are charged from enqueue as
    usual; when a zerocopy call takes them they stay charged — `outstanding` and the
    global ledger — as bytes waiting on completions, until `ZeroCopySocket` reads the
    notice and calls `_repaid`.  The base class's inline one-sendmsg fast path repays
    at return of the call, so it is not used here: every flush goes through
    `_flush_some`.
    """

    def __init__(self, sock: socket.socket, zc: ZeroCopySocket, *, min_bytes: int = DEFAULT_MIN_BYTES,
                 **kwargs: Any) -> None:
        kwargs["gather_max"] = WINDOW_ALL
        super().__init__(sock, zc.loop, **kwargs)
        self.zc = zc
        self._zc_min = min_bytes
        zc.on_repaid = self._repaid

    def flush(self) -> None:
        if not self._slices or self._flushing or self._waiting_writable or self.closed:
            return
        # Not the base class's memory-only shortcut: every gather call goes through
        # _send_gathered, which decides whether it is sent with MSG_ZEROCOPY.
        self._flush_queue()

    def share_writable_poll(self) -> None:
        """Not here: this transmitter's loop is the wrapper that watches the error queue."""

    def transmit(self, message: Message) -> None:
        # The base class's shortcut sends without a loan; here a large gather lends
        # pages until the kernel's notice, so every message takes the queue.
        self.enqueue(message)
        self.flush()

    def transmit_slices(self, iov: list) -> None:
        self.transmit(Message(0, (), tuple(iov)))

    def _send_gathered(self) -> int:
        slices = self._slices
        count = len(slices)
        end = 0
        limit = min(count, IOV_LIMIT)
        size = 0
        while end < limit and type(slices[end]) is not FileRegion:
            size += len(slices[end])
            end += 1
        iov = slices if end == count else slices[:end]
        flags = MSG_MORE if end < count and type(slices[end]) is FileRegion else 0
        zc = self.zc
        try:
            if size >= self._zc_min and zc.usable:
                before = zc.pending_bytes
                sent = zc.sendmsg(iov, flags)
                lent = zc.pending_bytes - before     # 0 if ENOBUFS sent it the ordinary way
                if lent:
                    # Still on loan, now to the kernel: charged until the notice.
                    self.outstanding += lent
                    self._ledger.lend(lent)
            else:
                sent = self._sock.sendmsg(iov, (), flags)
        except (BlockingIOError, InterruptedError):
            return -1
        self._metrics.bytes_gather += sent
        complete = self._retire(sent, end)
        self._accept(sent, sent)
        return sent if complete else -1

    def _repaid(self, nbytes: int) -> None:
        """A notice ended the loans of `nbytes` (called by ZeroCopySocket)."""
        self.outstanding -= nbytes
        self._ledger.repay(nbytes)
        self._idle_check()

    def close(self, exc: BaseException | None = None) -> None:
        if self.closed:
            return
        # What waits on notices stays charged (ZeroCopySocket repays it); the base
        # class repays only what was never handed to the kernel.
        self.outstanding -= self.zc.pending_bytes
        super().close(exc)
