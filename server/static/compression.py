"""Compression once, lent to everyone: brotli, zstd and gzip variants built in memory.

Theory of operation.  A text file with no `.br`/`.zst`/`.gz` sibling on disk would
otherwise go out uncompressed, or be compressed on every request (what most Python
servers' middleware does), which costs CPU per request and defeats sendfile.  Here a
compressible file (text, JSON, JavaScript, SVG, XML, wasm, uncompressed fonts) of a
useful size is compressed **once per coding**, the first time a client asks for
that coding, and the result is kept as a sealed, immutable in-memory file (a
`memfd`, mapped read-only).  It is then presented exactly like a sibling on disk:
a `Variant` looks like an OpenFile (descriptor, mapping, identity, `extra`), so the
static site's prebuilt header blocks, ETags, ranges and multipart answers, and the
transmitter's gather/sendfile choice, all apply unchanged — a cached variant costs
the same dictionary hits as a precompressed sibling.

* Off the event loop.  The first request for a coding starts a build in a small
  thread pool (`workers`, default 2, at most `MAX_PENDING` builds queued) and is
  answered with the plain bytes; requests that arrive once the build is done get the
  variant.  The loop never waits for a compressor.
* Keyed by identity.  A variant belongs to (device, inode, size, mtime_ns) of the
  file it was made from, plus the coding.  A file changed in place or replaced by
  rename has a new identity: its old variants are dropped (counted) the first time
  the new one is seen, and new ones are built on demand.
* Bounded.  The cache holds at most `budget` bytes and `max_entries` variants
  (each costs two descriptors: the memfd and the mapping's dup); when full, the
  clock rule (second chance, as in the open-file cache) evicts.  A variant still
  being sent stays alive through its FileRegions, as any lent file does.
* Useless work is remembered.  When compression does not make a file smaller
  (already-compressed content in a text wrapper), that is noted, so it is not tried
  again for that identity.

`precompress(root)` (`pageloan precompress ROOT`) writes the same codings as
siblings ahead of time, at the libraries' highest levels, by atomic rename, and
skips siblings that are already up to date (mtime not older than the original's).
"""

from __future__ import annotations

import argparse
import mmap
import os
import queue
import stat as stat_mod
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator
from typing import Any

import brotli
import zstandard

from ..core.filecache import OpenDescriptor, OpenFile
from ..core.metrics import METRICS
from .mediatypes import media_type

__all__ = ["CODING_SUFFIXES", "Compressor", "Variant", "compress", "compressible", "precompress",
           "main"]

# Content-Encoding token → sibling suffix, in order of preference on equal q.
CODING_SUFFIXES: dict[str, str] = {"br": ".br", "zstd": ".zst", "gzip": ".gz"}
ORDER = tuple(CODING_SUFFIXES)

# Levels: on demand, a fast level that still compresses well (a few ms for a big
# stylesheet); ahead of time, the highest, since it is paid once at deploy time.
ON_DEMAND_LEVELS = {"br": 5, "zstd": 6, "gzip": 6}
PRECOMPRESS_LEVELS = {"br": 11, "zstd": 19, "gzip": 9}

DEFAULT_MIN_SIZE = 256             # below this, headers cost more than compression saves
DEFAULT_MAX_SIZE = 8 << 20         # above this, compress ahead of time (precompress)
DEFAULT_BUDGET = 32 << 20          # bytes of variants held per process
DEFAULT_MAX_ENTRIES = 512          # two descriptors each
DEFAULT_WORKERS = 2
MAX_PENDING = 32                   # builds queued at once; beyond, try again later

_COMPRESSIBLE_TYPES = frozenset({
    "application/javascript", "application/ecmascript", "application/json", "application/xml",
    "application/wasm", "application/xhtml+xml", "application/rss+xml", "application/atom+xml",
    "application/manifest+json", "application/ld+json", "application/geo+json",
    "application/x-javascript", "application/vnd.ms-fontobject", "application/x-font-ttf",
    "image/svg+xml", "image/x-icon", "image/vnd.microsoft.icon", "image/bmp",
    "font/ttf", "font/otf", "font/collection",
})


def compressible(content_type: str) -> bool:
    """Whether bytes of this media type usually shrink (text, JSON, JS, SVG, XML, wasm...).

    Already-compressed formats (images other than SVG/BMP/ICO, audio, video, archives,
    woff/woff2 fonts) are not: compressing them only costs CPU.
    """
    base = content_type.partition(";")[0].strip().lower()
    return (base.startswith("text/") or base in _COMPRESSIBLE_TYPES
            or base.endswith("+json") or base.endswith("+xml"))


def compress(data: bytes, coding: str, level: int | None = None) -> bytes:
    """`data` in `coding` ("br", "zstd" or "gzip") at `level` (the on-demand one by default)."""
    if level is None:
        level = ON_DEMAND_LEVELS[coding]
    if coding == "br":
        compressed: bytes = brotli.compress(data, quality=level)
        return compressed
    if coding == "zstd":
        # Content size in the frame header: a decoder can allocate once.
        return zstandard.ZstdCompressor(level=level, write_content_size=True).compress(data)
    if coding == "gzip":
        import gzip
        # mtime=0: the same input always gives the same bytes (a stable strong ETag).
        return gzip.compress(data, compresslevel=level, mtime=0)
    raise ValueError(f"unknown coding {coding!r}")


class Variant:
    """A compressed representation of one file identity, in a sealed memfd.

    Has the attributes the static site reads from an OpenFile (fd, handle, size,
    identity, `extra` for prebuilt blocks), so that it is served the same way.  The
    identity is the original's; `size` is the compressed size.
    """

    __slots__ = ("fd", "handle", "size", "mtime_ns", "mtime", "ino", "dev", "path", "extra",
                 "vetted", "used", "live", "coding", "key", "__weakref__")

    def __init__(self, handle: OpenDescriptor, source: tuple[int, int, int, int], path: str,
                 mtime: float, coding: str) -> None:
        self.handle = handle
        self.fd = handle.fd
        self.size = handle.size
        self.dev, self.ino, _source_size, self.mtime_ns = source
        self.mtime = mtime
        self.path = path + CODING_SUFFIXES[coding]        # a name for logs; never opened
        self.extra: dict[Any, Any] = {}
        self.vetted = True
        self.used = False
        self.live = True              # False once evicted or dropped
        self.coding = coding
        self.key = (*source, coding)

    def window(self, offset: int, count: int) -> memoryview | None:
        return self.handle.window(offset, count)

    def __repr__(self) -> str:
        return f"<Variant {self.path!r} {self.coding} size={self.size}>"


_NO_GAIN = object()                    # compression did not help (or the read failed)
_EXTRA_KEYS = {coding: ("compressed-variant", coding) for coding in ORDER}


def _sealed_memory_file(data: bytes, name: str) -> OpenDescriptor:
    """An immutable in-memory file holding `data`, mapped read-only."""
    flags = getattr(os, "MFD_CLOEXEC", 0) | getattr(os, "MFD_ALLOW_SEALING", 0)
    if hasattr(os, "memfd_create"):
        fd = os.memfd_create(name, flags)
    else:                                              # not Linux: an unlinked temp file
        fd, tmp = tempfile.mkstemp(prefix="pageloan-variant-")
        os.unlink(tmp)
    try:
        view = memoryview(data)
        while view:
            written = os.write(fd, view)
            view = view[written:]
        try:
            import fcntl
            # Sealed: nobody (not even this process) can change, grow or shrink it, so
            # pages lent to the kernel cannot change under a send (docs/design.md rule 3).
            fcntl.fcntl(fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_WRITE | fcntl.F_SEAL_SHRINK
                        | fcntl.F_SEAL_GROW | fcntl.F_SEAL_SEAL)
        except (ImportError, AttributeError, OSError):
            pass
        mapping = memoryview(mmap.mmap(fd, len(data), prot=mmap.PROT_READ))
    except BaseException:
        os.close(fd)
        raise
    return OpenDescriptor(fd, len(data), mapping)


class _Builders:
    """A few daemon threads that run build jobs from a queue.

    Daemon threads, not a ThreadPoolExecutor: a build is disposable (the next request
    asks again), so stopping the server must not wait for queued compressions.
    """

    def __init__(self, workers: int) -> None:
        self.jobs: queue.SimpleQueue = queue.SimpleQueue()
        self.threads = [threading.Thread(target=self._run, name=f"pageloan-compress-{n}", daemon=True)
                        for n in range(max(1, workers))]
        for thread in self.threads:
            thread.start()

    def submit(self, job: Callable[..., None], *args: Any) -> None:
        self.jobs.put((job, args))

    def _run(self) -> None:
        while True:
            item = self.jobs.get()
            if item is None:
                return
            job, args = item
            job(*args)

    def close(self) -> None:
        for _thread in self.threads:
            self.jobs.put(None)


class Compressor:
    """The per-site cache of compressed variants and the pool that builds them."""

    def __init__(self, *, budget: int = DEFAULT_BUDGET, max_entries: int = DEFAULT_MAX_ENTRIES,
                 min_size: int = DEFAULT_MIN_SIZE, max_size: int = DEFAULT_MAX_SIZE,
                 workers: int = DEFAULT_WORKERS, codings: tuple[str, ...] = ORDER) -> None:
        self.budget = budget
        self.max_entries = max_entries
        self.min_size = min_size
        self.max_size = max_size
        self.workers = workers
        self.codings = tuple(c for c in ORDER if c in codings)
        self.metrics = METRICS
        self._entries: dict[tuple, Any] = {}          # key → Variant or _NO_GAIN
        self._identity_of: dict[str, tuple] = {}       # path → latest identity seen
        self._pending: set[tuple] = set()
        self._lock = threading.Lock()                  # builds finish on pool threads
        self._pool: _Builders | None = None            # started on first use (after any fork)
        self.bytes_held = 0
        self.built = 0
        self.dropped = 0

    # -- hooks for the static site -------------------------------------------------------
    def add_codings(self, path: str, siblings: tuple[tuple[str, Any], ...]) -> tuple[tuple[str, Any], ...]:
        """`siblings` plus (coding, None) for each coding this file can be given in memory.

        Called where the site looks for siblings (once a second per route), so the
        stat here is paid at that rate, not per request.
        """
        if not self.codings or not compressible(media_type(path)):
            return siblings
        try:
            size = os.stat(path).st_size
        except OSError:
            return siblings
        if not self.min_size <= size <= self.max_size:
            return siblings
        on_disk = dict(siblings)
        merged = [(c, on_disk[c]) if c in on_disk else (c, None) for c in ORDER
                  if c in on_disk or c in self.codings]
        merged += [(c, p) for c, p in siblings if c not in CODING_SUFFIXES]
        return tuple(merged)

    def variant(self, f: OpenFile, coding: str) -> Variant | None:
        """The `coding` variant of open file `f` if built, else None (and start a build)."""
        extra_key = _EXTRA_KEYS[coding]
        known = f.extra.get(extra_key)
        if known is not None:
            if known is _NO_GAIN:
                return None
            if known.live:
                known.used = True
                held: Variant = known
                return held
            del f.extra[extra_key]
        identity = (f.dev, f.ino, f.size, f.mtime_ns)
        key = (*identity, coding)
        with self._lock:
            found = self._entries.get(key)
            if found is None:
                self._note_identity(f.path, identity)
                if not self.min_size <= f.size <= self.max_size:
                    found = _NO_GAIN
                elif key not in self._pending and len(self._pending) < MAX_PENDING:
                    self._pending.add(key)
                    self._submit(key, f, coding)
        if found is None:
            return None                 # being built: the plain bytes this time
        f.extra[extra_key] = found
        if not isinstance(found, Variant):       # _NO_GAIN
            return None
        found.used = True
        return found

    # -- building ----------------------------------------------------------------------------
    def _submit(self, key: tuple, f: OpenFile, coding: str) -> None:
        if self._pool is None:
            self._pool = _Builders(self.workers)
        # The job holds the descriptor's owner, so the fd stays open while it reads
        # even if the open-file cache lets the file go meanwhile.
        self._pool.submit(self._build, key, f.handle, f.path, f.mtime, coding)

    def _build(self, key: tuple, handle: OpenDescriptor, path: str, mtime: float, coding: str) -> None:
        result: Any = _NO_GAIN
        try:
            size = key[2]
            data = os.pread(handle.fd, size, 0) if size else b""
            if len(data) == size:       # shorter: truncated under us; this identity is dead
                blob = compress(data, coding)
                if len(blob) < size:
                    memory = _sealed_memory_file(blob, os.path.basename(path) + CODING_SUFFIXES[coding])
                    result = Variant(memory, key[:4], path, mtime, coding)
        except Exception:  # noqa: BLE001 - a failed build only means: no variant
            result = _NO_GAIN
        finally:
            del handle
        self._install(key, path, result)

    def _install(self, key: tuple, path: str, result: Any) -> None:
        with self._lock:
            self._pending.discard(key)
            if self._identity_of.get(path) != key[:4]:
                # The file changed while this was being built: it describes nothing now.
                if isinstance(result, Variant):
                    result.live = False
                return
            if isinstance(result, Variant):
                self._make_room(result.size)
                self.bytes_held += result.size
                self.built += 1
                self.metrics.variants_built += 1
                self.metrics.variant_bytes_held = self.bytes_held
            elif len(self._entries) >= 4 * self.max_entries:
                self._evict_markers()
            self._entries[key] = result

    def _make_room(self, incoming: int) -> None:
        entries = self._entries
        variants = sum(1 for v in entries.values() if v is not _NO_GAIN) if len(entries) >= self.max_entries else 0
        if self.bytes_held + incoming <= self.budget and variants < self.max_entries:
            return
        # Clock rule over insertion order: a variant used since the last sweep gets a
        # second chance at the back; an unused one goes.
        for key in list(entries):
            if self.bytes_held + incoming <= self.budget and variants < self.max_entries:
                return
            entry = entries[key]
            if entry is _NO_GAIN:
                continue
            if entry.used:
                entry.used = False
                del entries[key]
                entries[key] = entry
                continue
            self._release(key)
            variants -= 1
        for key in [k for k, v in entries.items() if v is not _NO_GAIN]:
            if self.bytes_held + incoming <= self.budget:
                return
            self._release(key)

    def _evict_markers(self) -> None:
        for key in [k for k, v in self._entries.items() if v is _NO_GAIN]:
            del self._entries[key]

    def _release(self, key: tuple) -> None:
        entry = self._entries.pop(key, None)
        if isinstance(entry, Variant):
            entry.live = False
            self.bytes_held -= entry.size
            self.metrics.variant_bytes_held = self.bytes_held

    def _note_identity(self, path: str, identity: tuple) -> None:
        """Remember `path`'s identity; if it changed, drop the old identity's variants."""
        old = self._identity_of.get(path)
        if old == identity:
            return
        if old is not None:
            for coding in ORDER:
                old_key = (*old, coding)
                if isinstance(self._entries.get(old_key), Variant):
                    self.dropped += 1
                    self.metrics.variants_dropped += 1
                self._release(old_key)
        if len(self._identity_of) >= 8 * self.max_entries:
            self._identity_of.clear()
        self._identity_of[path] = identity

    def close(self) -> None:
        if self._pool is not None:
            self._pool.close()
            self._pool = None

    def __len__(self) -> int:
        return sum(1 for v in self._entries.values() if v is not _NO_GAIN)


# -- ahead of time -----------------------------------------------------------------------------
def _candidates(root: str, min_size: int) -> Iterator[tuple[str, os.stat_result]]:
    suffixes = tuple(CODING_SUFFIXES.values())
    for directory, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            if name.startswith(".") or name.endswith(suffixes):
                continue
            path = os.path.join(directory, name)
            try:
                st = os.lstat(path)
            except OSError:
                continue
            if stat_mod.S_ISREG(st.st_mode) and st.st_size >= min_size and compressible(media_type(name)):
                yield path, st


def _write_sibling(path: str, blob: bytes, st: os.stat_result) -> None:
    """Write `blob` at `path` by atomic rename, with the original's times."""
    directory, name = os.path.split(path)
    # A dot name: never served by the static site, even for the instant it exists.
    fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(blob)
            out.flush()
            os.fsync(out.fileno())
        os.chmod(tmp, stat_mod.S_IMODE(st.st_mode))
        os.utime(tmp, ns=(st.st_atime_ns, st.st_mtime_ns))
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def precompress(root: str | os.PathLike, *, codings: tuple[str, ...] = ORDER,
                min_size: int = DEFAULT_MIN_SIZE, force: bool = False,
                report: Callable[[str], None] | None = None) -> dict[str, int]:
    """Write `.br`/`.zst`/`.gz` siblings for the compressible files under `root`.

    A sibling whose mtime is not older than its original's is up to date and kept
    (unless `force`); a sibling that would not be smaller is not written, and a stale
    one is removed (it would otherwise be served for the changed original).
    """
    counts = {"written": 0, "up_to_date": 0, "not_smaller": 0, "failed": 0}
    for path, st in _candidates(os.fspath(root), min_size):
        data: bytes | None = None
        for coding in codings:
            sibling = path + CODING_SUFFIXES[coding]
            try:
                sib = os.lstat(sibling)
                current = stat_mod.S_ISREG(sib.st_mode) and sib.st_mtime_ns >= st.st_mtime_ns
            except OSError:
                sib, current = None, False
            if current and not force:
                counts["up_to_date"] += 1
                continue
            try:
                if data is None:
                    with open(path, "rb") as source:
                        data = source.read()
                blob = compress(data, coding, PRECOMPRESS_LEVELS[coding])
                if len(blob) >= len(data):
                    counts["not_smaller"] += 1
                    if sib is not None:
                        os.unlink(sibling)
                    continue
                _write_sibling(sibling, blob, st)
            except OSError as exc:
                counts["failed"] += 1
                if report is not None:
                    report(f"precompress: {sibling}: {exc}")
                continue
            counts["written"] += 1
            if report is not None:
                report(f"{sibling} ({len(data)} -> {len(blob)} bytes)")
    return counts


def add_precompress_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("root", help="directory whose compressible files get siblings")
    parser.add_argument("--codings", default=",".join(ORDER),
                        help="comma-separated codings to write (default br,zstd,gzip)")
    parser.add_argument("--min-size", type=int, default=DEFAULT_MIN_SIZE,
                        help=f"skip files smaller than this many bytes (default {DEFAULT_MIN_SIZE})")
    parser.add_argument("--force", action="store_true", help="rewrite siblings that are up to date")
    parser.add_argument("--quiet", action="store_true", help="print only the summary")


def main(args: argparse.Namespace) -> int:
    """`pageloan precompress ROOT`: exit 0, 1 if some file failed, 2 on bad usage."""
    codings = tuple(c.strip() for c in args.codings.split(",") if c.strip())
    unknown = [c for c in codings if c not in CODING_SUFFIXES]
    if unknown or not codings:
        print(f"pageloan precompress: unknown coding(s) {unknown}; choose from {', '.join(ORDER)}",
              file=sys.stderr)
        return 2
    if not os.path.isdir(args.root):
        print(f"pageloan precompress: {args.root} is not a directory", file=sys.stderr)
        return 2
    counts = precompress(args.root, codings=codings, min_size=args.min_size, force=args.force,
                         report=None if args.quiet else print)
    print(f"precompress: {counts['written']} written, {counts['up_to_date']} up to date, "
          f"{counts['not_smaller']} not smaller, {counts['failed']} failed")
    return 1 if counts["failed"] else 0
