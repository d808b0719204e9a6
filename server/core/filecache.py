"""The open-file cache: descriptors, stat results and mmap windows reused across requests.

In the manner of nginx's open_file_cache, but checked on every use: a hit costs one
`stat()` of the path, compared with what the cached descriptor was opened as
(device, inode, size, mtime, ctime: `identity_of`).  A file changed in place,
truncated, chmod'ed or replaced by an atomic rename therefore misses at once, and
the new file is opened; the old descriptor stays open exactly as long as a response
still sending from it holds a reference.

One stat per file per event-loop turn serves the *fresh* requests of that turn
(`open(..., fresh=True)`): a request whose first byte was already in its socket when
the turn's poll returned — the first request of a read that began between requests.
It was sent before the poll returned, so a change made before the client sent it
was made before any stat taken after the poll, and a stat taken while answering an
earlier fresh request of the same turn sees it.  Stats are shared only among
answers made while the turn's reads are handled (`fresh` requests), and the set is
emptied by a callback queued before the next poll.  (libuv polls again within one
turn when a poll returns its maximum of 1024 events, so sharing is on only while
fewer than TURN_SHARING_LIMIT connections are open.)

`OpenDescriptor` is the loan owner of file regions (rule 3): the fd and its mapping,
closed and unmapped only when the last reference is gone — the OpenFile that cached
it, or any FileRegion still being sent — never under a send in progress.  It is a
separate object from the OpenFile so that answers cached *on* an OpenFile (whole-
file and range payloads) can hold their regions without a reference cycle, which
would leave a replaced file's descriptor open until the garbage collector's next
full pass.  Small files are
mapped once (`window()`), so the transmitter can gather them with their header in
one writev; the pages are read by the kernel only.  The size is taken from `fstat`
of the open descriptor, never from the path, so the mapping never extends past what
the file held when it was opened; a later truncation makes the kernel's copy fail
with EFAULT for that one send instead of raising SIGBUS in this process.

Entries do not outstay their use, as with nginx's `open_file_cache inactive=`: the
server's once-a-second sweep (`sweep_open_file_caches`, through the HTTP server's
tick interface) closes an entry nobody has used for `inactive` seconds (20 by
default), and at once an entry whose file has been unlinked (`st_nlink == 0` on
the open descriptor) — else a deleted file's disk space stays allocated for as
long as the server runs.  The check costs one `fstat` per cached file per second.

The cache is bounded by `max_entries`; when full, an eighth is evicted by the clock
(second-chance) rule, so files in use stay open.  Each mapped file costs two
descriptors (Python's mmap keeps a dup of the fd), so plan on up to 2 × max_entries
descriptors, plus those of evicted files still being sent.
"""

from __future__ import annotations

import asyncio
import mmap
import os
import stat as stat_mod
import time
import weakref
from typing import Any

from .metrics import METRICS

__all__ = ["DEFAULT_INACTIVE", "OpenDescriptor", "OpenFile", "OpenFileCache", "identity_of",
           "sweep_open_file_caches"]

DEFAULT_INACTIVE = 20.0       # seconds unused before an entry is closed (nginx's example value)
# libuv polls again, without returning to the loop's idle phase, when one epoll_wait
# fills its 1024-event array; under that many open connections it never can.
TURN_SHARING_LIMIT = 900

# Every live cache, for the server's sweep (the HTTP layer never imports static).
_CACHES: weakref.WeakSet[OpenFileCache] = weakref.WeakSet()


def identity_of(st: os.stat_result) -> tuple[int, int, int, int, int]:
    """What makes a cached descriptor still the file at its path: the one check."""
    return (st.st_ino, st.st_dev, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def sweep_open_file_caches(now: float | None = None) -> None:
    """Close idle and deleted entries of every open-file cache (called once a second)."""
    when = time.monotonic() if now is None else now
    for cache in list(_CACHES):
        cache.sweep(when)

# O_NONBLOCK: if a path is swapped for a FIFO between our stat() and open(), open must
# not block the event loop waiting for a writer (it has no effect on regular files).
_O_FLAGS = (os.O_RDONLY | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NOCTTY", 0)
            | getattr(os, "O_NONBLOCK", 0))


class OpenDescriptor:
    """An open fd and its optional read-only mapping: the owner of file regions."""

    __slots__ = ("fd", "size", "_view", "__weakref__")

    def __init__(self, fd: int, size: int, view: memoryview | None) -> None:
        self.fd = fd
        self.size = size
        self._view = view

    def window(self, offset: int, count: int) -> memoryview | None:
        """A view of the mapped pages (for the kernel to read), or None if unmapped."""
        view = self._view
        if view is None or offset + count > self.size:
            return None
        if offset == 0 and count == self.size:
            return view
        return view[offset:offset + count]

    def __del__(self) -> None:
        # Last reference gone: no response is sending from this descriptor any more.
        fd = getattr(self, "fd", -1)
        if fd >= 0:
            self.fd = -1
            try:
                os.close(fd)
            except OSError:
                pass


class OpenFile:
    """An open regular file, its identity at open time, and an optional mapping."""

    __slots__ = ("fd", "handle", "size", "mtime_ns", "mtime", "ino", "dev", "path",
                 "identity", "extra", "vetted", "used", "idle_since", "__weakref__")

    def __init__(self, path: str, map_max: int) -> None:
        fd = os.open(path, _O_FLAGS)
        try:
            st = os.fstat(fd)
            if not stat_mod.S_ISREG(st.st_mode):
                raise IsADirectoryError(path) if stat_mod.S_ISDIR(st.st_mode) else PermissionError(path)
            # One read-only view of the whole mapping, made once: whole-file answers lend
            # this very object, ranges lend slices of it (no copy either way).  The view
            # keeps the mapping alive for as long as any response still holds it.
            view: memoryview | None = None
            if 0 < st.st_size <= map_max:
                view = memoryview(mmap.mmap(fd, st.st_size, prot=mmap.PROT_READ))
        except BaseException:
            os.close(fd)
            raise
        # The descriptor's owner: regions lend it, not this OpenFile (see the header).
        self.handle = OpenDescriptor(fd, st.st_size, view)
        self.fd = fd
        self.path = path
        self.size = st.st_size
        self.mtime_ns = st.st_mtime_ns
        self.identity = identity_of(st)
        self.mtime = st.st_mtime
        self.ino = st.st_ino
        self.dev = st.st_dev
        # Per-file data other layers derive once (prebuilt headers, ETag, type).
        self.extra: dict[Any, Any] = {}
        # Set by the layer that serves the file once it has checked where the open
        # descriptor really leads (containment in a root); a reopen starts unvetted.
        self.vetted = False
        # Second-chance bit for eviction: set on every hit, cleared by the sweeps.
        self.used = False
        # When the once-a-second sweep first found it unused (None: in use).
        self.idle_since: float | None = None

    def matches(self, st: os.stat_result) -> bool:
        return identity_of(st) == self.identity

    def window(self, offset: int, count: int) -> memoryview | None:
        """A view of the mapped pages (for the kernel to read), or None if unmapped."""
        return self.handle.window(offset, count)

    def __repr__(self) -> str:
        return f"<OpenFile {self.path!r} fd={self.fd} size={self.size}>"


class OpenFileCache:
    """path → OpenFile, bounded, revalidated by one stat() per lookup."""

    def __init__(self, max_entries: int = 1024, map_max: int = 256 << 10,
                 inactive: float = DEFAULT_INACTIVE) -> None:
        self.max_entries = max_entries
        self.map_max = map_max
        self.inactive = inactive
        self._files: dict[str, OpenFile] = {}
        self.by_path = self._files       # read-only for others: what is cached, unchecked
        self.hits = 0
        self.misses = 0
        self.closed_idle = 0
        self.closed_deleted = 0
        _CACHES.add(self)
        # Files found current by a stat taken while this loop turn's reads are handled
        # (see the header); emptied before the next poll.
        self._trusted: set[OpenFile] = set()
        self._loop: asyncio.AbstractEventLoop | None = None

    def open(self, path: str, st: os.stat_result | None = None, *, fresh: bool = False) -> OpenFile:
        """The open file at `path`; raises OSError (FileNotFoundError, ...) like os.open.

        `st` may be passed when the caller has just stat'ed the path.  `fresh` says the
        request being answered was in its socket when this loop turn's poll returned.
        """
        cached = self._files.get(path)
        if cached is not None:
            if st is None:
                if fresh and cached in self._trusted:
                    self.hits += 1
                    cached.used = True
                    return cached
                try:
                    st = os.stat(path)
                except OSError:
                    self._files.pop(path, None)     # (pop: a handler thread may race us)
                    raise
            if cached.matches(st):
                self.hits += 1
                cached.used = True
                if fresh:
                    self._trust(cached)
                return cached
            self._files.pop(path, None)
        self.misses += 1
        opened = OpenFile(path, self.map_max)
        if len(self._files) >= self.max_entries:
            self._evict()
        self._files[path] = opened
        return opened

    def _trust(self, f: OpenFile) -> None:
        trusted = self._trusted
        if METRICS.connections_open >= TURN_SHARING_LIMIT:
            return
        if not trusted:
            loop = self._loop
            if loop is None or loop.is_closed():
                # Looked up once: asyncio checks getpid() on every lookup (a syscall).
                loop = self._loop = asyncio._get_running_loop()
                if loop is None:
                    return
            # Queued now, during this turn's reads: it runs before the next poll
            # (on uvloop and asyncio alike), ahead of the next turn's I/O callbacks.
            loop.call_soon(trusted.clear)
        trusted.add(f)

    def _evict(self) -> None:
        # Second chance (the clock algorithm over insertion order): walk from the
        # oldest entry; one used since the last sweep loses its bit and moves to the
        # back, an unused one is dropped, until an eighth of the cache is free.  Hot
        # files therefore stay open; in-flight responses keep an evicted OpenFile
        # alive through their FileRegions regardless.
        files = self._files
        want = max(1, self.max_entries // 8)
        dropped = 0
        for key in list(files):
            entry = files[key]
            if entry.used:
                entry.used = False
                del files[key]
                files[key] = entry
                continue
            del files[key]
            dropped += 1
            if dropped >= want:
                return
        # Everything was in use: drop the oldest anyway, or the cache would grow.
        for key in list(files)[: want - dropped]:
            del files[key]

    def sweep(self, now: float) -> None:
        """Drop entries unused for `inactive` seconds, and those whose file was unlinked.

        Dropping only removes the cache's reference: a response still sending from
        the file keeps its descriptor open until it is done (OpenDescriptor).
        """
        files = self._files
        for path, entry in list(files.items()):
            try:
                gone = os.fstat(entry.fd).st_nlink == 0
            except OSError:
                gone = True
            if gone:
                del files[path]
                self.closed_deleted += 1
                continue
            if entry.used:
                entry.used = False
                entry.idle_since = None
            elif entry.idle_since is None:
                entry.idle_since = now
            elif now - entry.idle_since >= self.inactive:
                del files[path]
                self.closed_idle += 1

    def forget(self, path: str) -> None:
        self._files.pop(path, None)

    def clear(self) -> None:
        self._files.clear()

    def __len__(self) -> int:
        return len(self._files)
