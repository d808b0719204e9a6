"""Saving a request body to disk: streamed, bounded, and renamed into place only when whole.

Theory of operation (docs/design.md rule 7).  An HTTP body does not arrive on a socket
we could splice from: httptools parses it out of the bytes the connection reads, so
what a handler has are the parser's chunks, from `request.stream()`.  (The
socket → pipe → file path of server/receive.py is for FTP's raw data connections.)
`save_upload` writes those chunks as they come — never the whole body in memory —
to a temporary sibling of the destination, named like receive.py's partial files so
that listings hide it, and `os.replace`s it over the destination only after the last
byte: a client that disconnects, a body over the limit, or a cancelled handler
leaves the old file untouched and no temporary behind.

The writes have no kernel shortcut (the bytes are already in Python) and may block
on the disk, so they run off the loop through aiofiles: the temporary is an aiofiles
file with a WRITE_BATCH buffer, and chunks are handed over a batch at a time
(`writelines`, one thread hop per batch, one write call per full buffer), while the
connection keeps filling the request's bounded chunk queue; when that queue is full
the session stops reading the socket — back-pressure reaches the client, memory
stays bounded by the queue plus one batch.

A disk that fills up, a quota, or a file size limit (ENOSPC, EDQUOT, EFBIG) fails
the upload with `HTTPError(507)` — Insufficient Storage, RFC 4918 §11.5 — and the
temporary is removed like any abandoned upload's: the destination is untouched.

Abandoning an upload (client gone, body over the limit, handler cancelled) must not
close the descriptor under a write still running in a worker thread: that write
could then land in whatever file next reuses the number.  The buffered file object
serialises the two — its `close` takes the lock the running write holds — so an
abandoned upload unlinks the temporary at once and lets `close` run in the
background, after the write.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import secrets
from collections.abc import Iterable
from pathlib import Path
from typing import Protocol

import aiofiles
import aiofiles.os

from ..core.receive import PARTIAL_MARK, PARTIAL_SUFFIX, replace_in_background
from ..core.safepath import UnsafePath, confine, virtual_parts
from ..http.errors import HTTPError
from ..http.request import BodyTooLarge, Request

__all__ = ["save_upload", "upload_path", "WRITE_BATCH"]

log = logging.getLogger("pageloan.uploads")

# The storage is full (or we may not write more): the client's request was fine.
_NO_SPACE = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})

WRITE_BATCH = 256 << 10     # bytes gathered before one hop to a worker thread (and its buffer)
_fsync = aiofiles.os.wrap(os.fsync)


class _AsyncWriter(Protocol):
    """What an upload needs of the aiofiles file it writes through."""

    async def writelines(self, lines: Iterable[bytes], /) -> None: ...

    async def flush(self) -> None: ...

    async def close(self) -> None: ...


# Closes of abandoned uploads still running (a reference keeps each task alive).
_CLOSING: set[asyncio.Task[None]] = set()


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


async def _close_after_writes(file: _AsyncWriter, fd: int) -> None:
    try:
        await file.close()          # waits for a write still running in its thread
    except OSError as exc:          # the buffer's last write failed: nothing to keep anyway
        log.debug("closing an abandoned upload's temporary: %s", exc)
    finally:
        os.close(fd)


def _abandon(file: _AsyncWriter | None, fd: int, temp: Path) -> None:
    """Remove the temporary now; close its descriptor once no write holds it."""
    _unlink_quietly(temp)
    if file is None:                # never wrapped: nothing else can be using fd
        os.close(fd)
        return
    task = asyncio.get_running_loop().create_task(_close_after_writes(file, fd))
    _CLOSING.add(task)
    task.add_done_callback(_CLOSING.discard)


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
    # fd stays ours (closefd=False): it is closed exactly once, by us, after the file
    # object — and so any write running in its thread — is done with it.
    file: _AsyncWriter | None = None
    saved = 0
    batch: list[bytes] = []
    batched = 0
    committed = False
    try:
        file = opened = await aiofiles.open(fd, "wb", buffering=WRITE_BATCH, closefd=False)
        async for chunk in request.stream():
            saved += len(chunk)
            if max_bytes is not None and saved > max_bytes:
                raise BodyTooLarge(f"upload over {max_bytes} bytes")
            batch.append(chunk)
            batched += len(chunk)
            if batched >= WRITE_BATCH:
                await opened.writelines(batch)
                batch, batched = [], 0
        if batch:
            await opened.writelines(batch)
        await opened.flush()
        if fsync:
            await _fsync(fd)
        await opened.close()
        file = None
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
            else:
                _abandon(file, fd, temp)


def _storage_error(exc: OSError, dest: Path) -> HTTPError:
    """507 for a full disk or a size limit, logged naming the file."""
    log.error("upload to %s failed: %s", dest, os.strerror(exc.errno or 0))
    return HTTPError(507, "not enough storage to save the upload")


def _unlink_quietly(path: Path) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
