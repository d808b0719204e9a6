"""The receive path: bulk bytes from a socket into a file, renamed into place when complete.

Theory of operation (docs/design.md rule 7, "receive is the hard side"):

* **Where the bytes go.**  On Linux the bytes move socket → pipe → file with
  `os.splice`, so they travel as page references inside the kernel and never become
  Python objects.  The socket side uses SPLICE_F_NONBLOCK on a non-blocking socket:
  EAGAIN means "nothing to read yet", and we wait for readability with
  `loop.add_reader` ("try the syscall first, wait only on EAGAIN").  Where splice is
  missing or refused (EINVAL: a file system without splice_write, a socket type
  without splice_read) the fallback is `recv_into` one reused page-aligned buffer
  (an anonymous mmap is page-aligned) followed by `os.pwrite`: one copy in, one copy
  out, no allocation per chunk.

* **Where they land.**  Never in the destination itself: in a temporary sibling
  `.NAME.pageloan-XXXXXXXX.part`, created with O_EXCL in the destination's directory
  (same file system, so the final `os.replace` is an atomic rename).  The temporary
  replaces the destination only after the transfer ended cleanly; any error,
  timeout or cancellation deletes it.  An interrupted upload therefore never damages
  an existing file, and a reader that has the old file open keeps reading the old
  inode.

* **Resume and append without reading.**  A resumed upload (offset N) starts its
  temporary as a copy of the destination's first N bytes; an append starts it as a
  copy of the whole destination.  The copy is `os.copy_file_range` (in-kernel, and a
  reflink on file systems that share extents), else `os.sendfile` file → file —
  never a Python read.  It runs in a worker thread on a dup'd descriptor, so a
  cancellation meanwhile cannot make the thread write into a recycled fd number.

* **Durability.**  `fsync=False` by default: the rename is atomic for every reader
  whether or not the data reached the disk, and an fsync per upload costs a disk
  flush.  Callers that must survive a power cut pass `fsync=True` (file data is
  synced before the rename).

Stream framing: with `limit=None` the sender's EOF ends the data (FTP stream mode);
with a limit (an HTTP Content-Length) exactly that many bytes are taken — never more,
so pipelined bytes behind the body stay in the socket — and an EOF before the limit
is an `IncompleteReceive`.  Every wait has `stall_timeout`: a sender that stops
sending raises TimeoutError and the temporary is deleted.
"""

from __future__ import annotations

import asyncio
import errno
import fcntl
import mmap
import os
import secrets
import socket
import stat
from collections.abc import Awaitable, Callable
from pathlib import Path

from .metrics import METRICS

__all__ = ["receive_to_file", "IncompleteReceive", "ResumeOffsetError", "is_partial_name",
           "splice_available", "PARTIAL_MARK", "PARTIAL_SUFFIX",
           "replace_in_background", "receive_stream_to_file"]

# Temporary names are `.NAME` + PARTIAL_MARK + 8 hex digits + PARTIAL_SUFFIX; other
# writers (the HTTP upload handler) use the same shape so listings hide theirs too.
PARTIAL_MARK = ".pageloan-"
PARTIAL_SUFFIX = ".part"
PIPE_SIZE = 1 << 20          # asked of F_SETPIPE_SZ; the kernel may give less (pipe-max-size)
BUFFER_SIZE = 256 << 10      # the fallback's reused buffer, a multiple of the page size
YIELD_EVERY = 8 << 20        # bytes moved before giving other connections a turn
F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)
F_GETPIPE_SZ = getattr(fcntl, "F_GETPIPE_SZ", 1032)
# errnos that mean "this pair of descriptors cannot splice / copy in kernel", not "I/O failed".
_NO_KERNEL_PATH = {errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.EXDEV, errno.EBADF}


class IncompleteReceive(ConnectionError):
    """The sender stopped (EOF) before the promised number of bytes arrived."""


class ResumeOffsetError(ValueError):
    """A resume offset lies beyond the end of the existing file (or there is no file)."""


def splice_available() -> bool:
    return hasattr(os, "splice") and hasattr(os, "SPLICE_F_NONBLOCK")


def is_partial_name(name: str) -> bool:
    """True for the name of an upload still in progress (listings hide these)."""
    return name.startswith(".") and PARTIAL_MARK in name and name.endswith(PARTIAL_SUFFIX)


# -- the temporary file ------------------------------------------------------------------

def replace_in_background(src: Path | str, dest: Path | str, loop: asyncio.AbstractEventLoop) -> None:
    """`os.replace(src, dest)`, leaving the freeing of the old `dest` to a thread.

    Renaming over a large file frees its page cache and blocks inside the rename
    (about 0.1 s for 256 MiB on ext4 here), which would stall every connection on
    the loop.  Holding the old file open across the rename turns the rename into a
    name change only; the freeing happens when that descriptor is closed, in the
    default executor.  Readers that had the old file open keep reading it either way.
    """
    try:
        old = os.open(dest, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError:
        old = -1              # nothing there (or unreadable): a plain rename
    try:
        os.replace(src, dest)
    finally:
        if old >= 0:
            loop.run_in_executor(None, os.close, old)


class _PartialFile:
    """A temporary sibling of `dest` that becomes `dest` only on commit."""

    def __init__(self, dest: Path) -> None:
        self.dest = dest
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
        for _attempt in range(16):   # O_EXCL collisions on 32 random bits: bounded retries
            path = dest.with_name(f".{dest.name}{PARTIAL_MARK}{secrets.token_hex(4)}{PARTIAL_SUFFIX}")
            try:
                self.fd = os.open(path, flags, 0o644)
            except FileExistsError:
                continue
            self.path = path
            return
        raise FileExistsError(errno.EEXIST, "no free temporary name", str(dest.parent))

    def commit(self, loop: asyncio.AbstractEventLoop) -> None:
        os.close(self.fd)
        self.fd = -1
        replace_in_background(self.path, self.dest, loop)

    def discard(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass


def _copy_range(src_fd: int, dst_fd: int, count: int) -> None:
    """Copy the first `count` bytes of src to the start of dst, inside the kernel."""
    done = 0
    use_copy_file_range = hasattr(os, "copy_file_range")
    while done < count:
        want = min(count - done, 1 << 30)
        if use_copy_file_range:
            try:
                n = os.copy_file_range(src_fd, dst_fd, want, done, done)
            except OSError as exc:
                if exc.errno not in _NO_KERNEL_PATH:
                    raise
                use_copy_file_range = False
                continue
        else:
            # sendfile writes at dst's file position: keep it in step with `done`.
            os.lseek(dst_fd, done, os.SEEK_SET)
            n = os.sendfile(dst_fd, src_fd, done, want)
        if n == 0:
            raise OSError(errno.EIO, "source file shrank while being copied")
        done += n


def _seed_from_existing(dest: Path, dst_fd: int, offset: int, append: bool) -> int:
    """Start the temporary as a copy of dest's head; return where new bytes go.

    Runs in a worker thread and owns (closes) `dst_fd`, a dup of the temporary's fd.
    """
    try:
        try:
            src_fd = os.open(dest, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            if offset:
                raise ResumeOffsetError(f"cannot resume at {offset}: {dest.name} does not exist") from None
            return 0
        try:
            st = os.fstat(src_fd)
            if not stat.S_ISREG(st.st_mode):
                raise IsADirectoryError(errno.EISDIR, "not a regular file", str(dest))
            # The replacement keeps the permissions of the file it replaces.
            os.fchmod(dst_fd, stat.S_IMODE(st.st_mode))
            keep = st.st_size if append else offset
            if keep > st.st_size:
                raise ResumeOffsetError(f"cannot resume at {offset}: file has {st.st_size} bytes")
            if keep:
                _copy_range(src_fd, dst_fd, keep)
            return keep
        finally:
            os.close(src_fd)
    finally:
        os.close(dst_fd)


def _fsync_owned(fd: int) -> None:
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _pwrite_all(fd: int, data: bytes | memoryview, pos: int) -> None:
    view = memoryview(data)
    while view:
        n = os.pwrite(fd, view, pos)
        pos += n
        view = view[n:]


# -- waiting -------------------------------------------------------------------------------

class _Readiness:
    """Readability of one socket, watched for a whole transfer.

    One epoll registration for the transfer, not one per wait: a fast sender makes
    us wait after nearly every socket-buffer's worth, and re-arming each time would
    cost two epoll_ctl calls a round.  The stall timeout is a single repeating timer
    that checks for progress, instead of a timer per wait.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, fd: int, timeout: float | None) -> None:
        self._loop = loop
        self._fd = fd
        self._waiter: asyncio.Future | None = None
        self._timeout = timeout
        self.progress = 0            # bumped by the mover; read by the stall check
        self._seen = -1
        self._timer = loop.call_later(timeout, self._check_stall) if timeout else None
        loop.add_reader(fd, self._wake)

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _check_stall(self) -> None:
        if self.progress == self._seen:
            waiter = self._waiter
            if waiter is not None and not waiter.done():
                waiter.set_exception(TimeoutError(f"no data received for {self._timeout} s"))
        self._seen = self.progress
        self._timer = self._loop.call_later(self._timeout, self._check_stall)  # type: ignore[arg-type]

    async def wait(self) -> None:
        self._waiter = self._loop.create_future()
        try:
            await self._waiter
        finally:
            self._waiter = None

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._loop.remove_reader(self._fd)


# -- the two movers ------------------------------------------------------------------------

class _SpliceMover:
    """socket → pipe → file with os.splice: the bytes stay in the kernel."""

    def __init__(self) -> None:
        self.r, self.w = os.pipe2(os.O_CLOEXEC)
        try:
            fcntl.fcntl(self.w, F_SETPIPE_SZ, PIPE_SIZE)
        except OSError:
            pass   # above /proc/sys/fs/pipe-max-size: keep the default 64 KiB
        self.chunk = fcntl.fcntl(self.w, F_GETPIPE_SZ)

    def take(self, sock: socket.socket, want: int) -> int:
        """Move up to `want` bytes socket → pipe; 0 at EOF; BlockingIOError if none."""
        return os.splice(sock.fileno(), self.w, min(want, self.chunk),
                         flags=os.SPLICE_F_MOVE | os.SPLICE_F_NONBLOCK)

    def put(self, fd: int, count: int, pos: int) -> None:
        """Move exactly `count` bytes pipe → file at `pos`."""
        while count:
            n = os.splice(self.r, fd, count, offset_dst=pos, flags=os.SPLICE_F_MOVE)
            pos += n
            count -= n

    def rescue(self, fd: int, count: int, pos: int) -> None:
        """Write out `count` bytes stranded in the pipe when pipe → file was refused."""
        while count:
            data = os.read(self.r, count)
            _pwrite_all(fd, data, pos)
            pos += len(data)
            count -= len(data)

    def close(self) -> None:
        os.close(self.r)
        os.close(self.w)


class _BufferMover:
    """recv_into one reused page-aligned buffer, then pwrite: the portable path."""

    def __init__(self) -> None:
        self._map = mmap.mmap(-1, BUFFER_SIZE)   # anonymous maps start on a page boundary
        self._view = memoryview(self._map)
        self._held = 0

    def take(self, sock: socket.socket, want: int) -> int:
        self._held = sock.recv_into(self._view, min(want, BUFFER_SIZE))
        return self._held

    def put(self, fd: int, count: int, pos: int) -> None:
        _pwrite_all(fd, self._view[:count], pos)

    def close(self) -> None:
        self._view.release()
        self._map.close()


async def _pump(sock: socket.socket, fd: int, pos: int, want: int | None,
                stall_timeout: float | None, use_splice: bool,
                loop: asyncio.AbstractEventLoop) -> int:
    """Move bytes until EOF (want None) or `want` bytes; return the count moved."""
    mover: _SpliceMover | _BufferMover = _SpliceMover() if use_splice else _BufferMover()
    readiness = _Readiness(loop, sock.fileno(), stall_timeout)
    received = 0
    since_yield = 0
    try:
        # Bounded: each pass moves >= 1 byte, or waits at most stall_timeout, or ends.
        while want is None or received < want:
            asked = (1 << 30) if want is None else want - received
            try:
                n = mover.take(sock, asked)
            except (BlockingIOError, InterruptedError):
                since_yield = 0
                await readiness.wait()
                continue
            except OSError as exc:
                if isinstance(mover, _SpliceMover) and exc.errno in _NO_KERNEL_PATH and not received:
                    mover.close()
                    mover = _BufferMover()     # this socket cannot splice: copy instead
                    continue
                raise
            if n == 0:
                break
            try:
                mover.put(fd, n, pos)
            except OSError as exc:
                if not isinstance(mover, _SpliceMover) or exc.errno not in _NO_KERNEL_PATH:
                    raise
                # This file system cannot take splice writes: save what is in the pipe,
                # then continue on the copying path.
                mover.rescue(fd, n, pos)
                mover.close()
                mover = _BufferMover()
            pos += n
            received += n
            since_yield += n
            readiness.progress = received
            if isinstance(mover, _SpliceMover):
                METRICS.bytes_received_splice += n
            else:
                METRICS.bytes_received_copy += n
            if since_yield >= YIELD_EVERY:
                since_yield = 0
                await asyncio.sleep(0)
    finally:
        readiness.close()
        mover.close()
    return received


# -- the public entry ----------------------------------------------------------------------

async def receive_to_file(
    sock: socket.socket,
    dest: Path | str,
    *,
    offset: int = 0,
    append: bool = False,
    limit: int | None = None,
    initial: bytes = b"",
    stall_timeout: float | None = None,
    fsync: bool = False,
    use_splice: bool | None = None,
    loop: asyncio.AbstractEventLoop | None = None,
) -> int:
    """Receive from non-blocking `sock` into `dest`; return the new bytes written.

    `offset`: keep dest's first `offset` bytes and write the new bytes after them
    (a resumed upload; ResumeOffsetError if dest is shorter).  `append`: keep all of dest.
    `limit`: take exactly this many bytes, counting `initial` (bytes the caller has
    already read off the socket); None means until EOF.  `use_splice` None picks
    splice where the platform has it.  On any failure or cancellation the temporary
    file is deleted and dest is untouched; the exception propagates.
    """
    if append and offset:
        raise ValueError("offset and append are exclusive")
    if offset < 0 or (limit is not None and (limit < 0 or len(initial) > limit)):
        raise ValueError("bad offset or limit")
    if sock.getblocking():
        raise ValueError("receive_to_file needs a non-blocking socket")
    loop = loop or asyncio.get_running_loop()
    dest = Path(dest)
    if use_splice is None:
        use_splice = splice_available()
    partial = _PartialFile(dest)
    try:
        pos = await loop.run_in_executor(
            None, _seed_from_existing, dest, os.dup(partial.fd), offset, append)
        if initial:
            _pwrite_all(partial.fd, initial, pos)
        want = None if limit is None else limit - len(initial)
        received = 0
        if want is None or want > 0:
            received = await _pump(sock, partial.fd, pos + len(initial), want,
                                   stall_timeout, use_splice, loop)
        if want is not None and received < want:
            raise IncompleteReceive(f"connection ended after {received} of {want} bytes")
        if fsync:
            await loop.run_in_executor(None, _fsync_owned, os.dup(partial.fd))
        partial.commit(loop)
    except BaseException:
        partial.discard()
        raise
    return len(initial) + received


async def receive_stream_to_file(
    pour: Callable[[Callable[[bytes], None]], Awaitable[None]],
    dest: Path | str,
    *,
    offset: int = 0,
    append: bool = False,
    fsync: bool = False,
    loop: asyncio.AbstractEventLoop | None = None,
) -> int:
    """Like `receive_to_file`, for a source that is not a socket we can splice from.

    `pour(write)` calls `write(chunk)` with each chunk as it arrives and returns at
    the stream's clean end (raising when it ends otherwise); it owns the stall
    timeout.  For sources whose bytes already are Python objects (a TLS data
    connection decrypts in userspace), each chunk is written where it belongs with
    `pwrite` as soon as it is handed over — the one copy the decryption forced,
    counted as received by copy — so nothing waits in a queue between the two.
    Same temporary file, same resume/append seeding, same commit-only-on-success
    as `receive_to_file`.
    """
    if append and offset:
        raise ValueError("offset and append are exclusive")
    if offset < 0:
        raise ValueError("bad offset")
    loop = loop or asyncio.get_running_loop()
    dest = Path(dest)
    partial = _PartialFile(dest)
    received = 0
    try:
        if offset or append:
            pos = await loop.run_in_executor(
                None, _seed_from_existing, dest, os.dup(partial.fd), offset, append)
        else:
            # Nothing to copy (an fstat and an fchmod at most): done here, so that the
            # source starts pouring with no wait in between (tls.py says why that
            # matters: what a paused TLS reader holds is lost when the client closes).
            pos = _seed_from_existing(dest, os.dup(partial.fd), offset, append)

        def write(chunk: bytes) -> None:
            nonlocal received
            _pwrite_all(partial.fd, chunk, pos + received)
            received += len(chunk)
            METRICS.bytes_received_copy += len(chunk)

        await pour(write)
        if fsync:
            await loop.run_in_executor(None, _fsync_owned, os.dup(partial.fd))
        partial.commit(loop)
    except BaseException:
        partial.discard()
        raise
    return received
