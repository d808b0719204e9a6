"""Saving a request body to disk: streamed, bounded, and renamed into place only when whole.

Theory of operation (DESIGN.md rule 7).  An HTTP body does not arrive on a socket
we could splice from: httptools parses it out of the bytes the connection reads, so
what a handler has are the parser's chunks, from `request.stream()`.  (The
socket → pipe → file path of server/receive.py is for FTP's raw data connections.)
`save_upload` writes those chunks as they come — never the whole body in memory —
to a temporary sibling of the destination, named like receive.py's partial files so
that listings hide it, and `os.replace`s it over the destination only after the last
byte: a client that disconnects, a body over the limit, or a cancelled handler
leaves the old file untouched and no temporary behind.

The writes run in a small thread pool (`os.writev` on a batch of chunks, so a
stream of small chunks does not cost one thread hop each), while the connection
keeps filling the request's bounded chunk queue; when that queue is full the
session stops reading the socket — back-pressure reaches the client, memory stays
bounded by the queue plus one batch.

A disk that fills up, a quota, or a file size limit (ENOSPC, EDQUOT, EFBIG) fails
the upload with `HTTPError(507)` — Insufficient Storage, RFC 4918 §11.5 — and the
temporary is removed like any abandoned upload's: the destination is untouched.

A write still running in a worker thread when the upload is abandoned owns the
descriptor until it returns; closing it under the thread could make the write land
in whatever file next reuses the number.  So the descriptor is closed, and the
temporary removed, by whichever finishes last: the upload or that write.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import errno
import logging
import os
import secrets
from pathlib import Path

from ..core.receive import PARTIAL_MARK, PARTIAL_SUFFIX, replace_in_background
from ..core.safepath import UnsafePath, confine, virtual_parts
from ..http.errors import HTTPError
from ..http.request import BodyTooLarge, Request

__all__ = ["save_upload", "upload_path", "WRITE_BATCH"]

log = logging.getLogger("pageloan.uploads")

# The storage is full (or we may not write more): the client's request was fine.
_NO_SPACE = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})

WRITE_BATCH = 256 << 10     # bytes gathered before one write in the thread pool
# Our own pool, not the loop's default: abandoning an upload needs the *thread's*
# future (still running or not), which run_in_executor's asyncio future hides.
_WRITERS = concurrent.futures.ThreadPoolExecutor(max_workers=4, thread_name_prefix="pageloan-upload")


def upload_path(directory: os.PathLike | str, name: str) -> Path:
    """`directory/name` for a client-supplied file `name`, or HTTPError 400.

    `name` must be one plain file name: no separators (in any spelling — the router
    has already decoded `%2F`), no "..", no NUL, not hidden (a leading "." would
    also collide with the uploads' own temporaries), and the result must resolve
    inside `directory` (a symlink planted there cannot lead out).
    """
    root = Path(os.path.realpath(directory))
    try:
        parts = virtual_parts(name)
        if len(parts) != 1 or parts[0] != name or name.startswith("."):
            raise UnsafePath("not a plain, visible file name")
        return confine(root, parts)
    except UnsafePath as exc:
        raise HTTPError(400, f"bad file name ({exc})") from None


def _open_temporary(dest: Path) -> tuple[int, Path]:
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
    for _attempt in range(16):
        temp = dest.with_name(f".{dest.name}{PARTIAL_MARK}{secrets.token_hex(4)}{PARTIAL_SUFFIX}")
        try:
            return os.open(temp, flags, 0o644), temp
        except FileExistsError:
            continue
    raise FileExistsError(f"no free temporary name next to {dest}")


def _write_all(fd: int, chunks: list[bytes]) -> None:
    """Write every byte of `chunks` (writev may take less than all of it)."""
    views = [memoryview(c) for c in chunks]
    while views:
        written = os.writev(fd, views)
        while views and written >= len(views[0]):
            written -= len(views[0])
            views.pop(0)
        if views and written:
            views[0] = views[0][written:]


def _discard(fd: int, temp: Path) -> None:
    try:
        os.close(fd)
    finally:
        try:
            os.unlink(temp)
        except FileNotFoundError:
            pass


async def save_upload(request: Request, dest: os.PathLike | str, *, max_bytes: int | None = None,
                      fsync: bool = False) -> int:
    """Stream the request body into `dest`; returns the number of bytes saved.

    `max_bytes` caps this upload below the server's body limit (BodyTooLarge → 413).
    `fsync=True` makes the data durable before the rename.
    """
    dest = Path(dest)
    if max_bytes is not None:
        # Refuse before reading (and before any 100 Continue) when the declared
        # length is already over.
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > max_bytes:
            raise BodyTooLarge(f"upload of {declared} bytes is over {max_bytes}")
    try:
        fd, temp = _open_temporary(dest)
    except OSError as exc:
        if exc.errno in _NO_SPACE:
            raise _storage_error(exc, dest) from exc
        raise
    in_thread: concurrent.futures.Future | None = None
    saved = 0
    batch: list[bytes] = []
    batched = 0
    committed = False
    try:
        async for chunk in request.stream():
            saved += len(chunk)
            if max_bytes is not None and saved > max_bytes:
                raise BodyTooLarge(f"upload over {max_bytes} bytes")
            batch.append(chunk)
            batched += len(chunk)
            if batched >= WRITE_BATCH:
                in_thread = _WRITERS.submit(_write_all, fd, batch)
                await asyncio.wrap_future(in_thread)
                batch, batched = [], 0
        if batch:
            in_thread = _WRITERS.submit(_write_all, fd, batch)
            await asyncio.wrap_future(in_thread)
        if fsync:
            in_thread = _WRITERS.submit(os.fsync, fd)
            await asyncio.wrap_future(in_thread)
        os.close(fd)
        fd = -1
        replace_in_background(temp, dest, asyncio.get_running_loop())
        committed = True
        return saved
    except OSError as exc:
        if exc.errno in _NO_SPACE:
            raise _storage_error(exc, dest) from exc
        raise
    finally:
        if not committed:
            if fd < 0:
                _unlink_quietly(temp)
            elif in_thread is not None and not in_thread.done():
                # A cancelled await does not stop the thread: let it finish first.
                in_thread.add_done_callback(lambda _f: _discard(fd, temp))
            else:
                _discard(fd, temp)


def _storage_error(exc: OSError, dest: Path) -> HTTPError:
    """507 for a full disk or a size limit, logged naming the file."""
    log.error("upload to %s failed: %s", dest, os.strerror(exc.errno or 0))
    return HTTPError(507, "not enough storage to save the upload")


def _unlink_quietly(path: Path) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
