"""Static files: URL path → file under the root → a Message of file regions.

Theory of operation.  A request is answered on one of two paths.

The *fast path* is a dictionary hit: the raw request path maps to a `_Route` (the
file path it resolved to last time, and how that file is presented), the open-file
cache confirms with one `stat()` that the file is the one it holds open, and the
answer is the file's prebuilt entity block plus one FileRegion — no path work, no
string formatting, no reads.  The request's header list is scanned once for the
fields that could change the answer (conditionals, Range, Accept-Encoding); when
there are none, that is all.  Otherwise the same route goes on to pick a
precompressed sibling (precompressed.py), evaluate preconditions (conditional.py)
and ranges (byteranges.py) — still without touching the file's bytes.

The *slow path* resolves a URL the first time (or after the file changed): the path
is decoded strictly (overlong UTF-8 → 400), encoded separators are refused (a `%2F`
or `%5C` can name no file, and is how lateral traversal got through Sanic,
CVE-2022-35920), `..` is refused rather than clamped, dotfiles are not served, and
the joined path must resolve inside the root (safepath.py) unless symlinks leaving
it are allowed.  After the file is opened, the descriptor itself is checked
(`/proc/self/fd`), which closes the window between the path check and the open.
A directory is redirected to its slash-terminated URL, then served by its index
file or, when enabled, an HTML listing (autoindex.py).

What a response says about a file is fixed per (file identity, presentation): the
200 entity block, the 304 validator block and the header lines shared by 206
answers are built once and kept with the open file, and they vanish with it when
the file changes.  HEAD gets the very same Message; the HTTP session drops the
payload (head_only).  Range is honoured for GET only (RFC 9110 §14.2 tells a server
to ignore it on other methods), so HEAD with a Range describes the 200 answer.
"""

from __future__ import annotations

import errno
import os
import re
import stat as stat_mod
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

from ..core.filecache import OpenFile, OpenFileCache
from ..core.message import FileRegion, Message
from ..core.safepath import UnsafePath, confine, virtual_parts
from ..http.request import BadRequest, Request
from ..http.responses import bytes_response, error_response, redirect_response
from ..http.wire import header_block, http_date
from .autoindex import listing_page
from .byteranges import content_range, multipart_slices, new_boundary, parse_range
from .cache_policy import CacheControlRules
from .compression import Compressor, Variant
from .conditional import NOT_MODIFIED, PRECONDITION_FAILED, evaluate, if_range_holds
from .error_pages import default_error_page
from .lane import StaticLane
from .mediatypes import media_type
from .precompressed import CODINGS, RECHECK_SECONDS, choose_coding, find_siblings, target_rule
from .rules import options_answer

__all__ = ["StaticSite", "INDEX_FILES"]

INDEX_FILES = ("index.html", "index.htm")
_RANGE_MEMO = "range-answers"     # f.extra key: (presentation, Range header) → (head, slices)
_RANGE_MEMO_SIZE = 32

# A percent-encoded "/" or "\" names no file on a POSIX file system; refuse it.
_ENCODED_SEPARATOR = re.compile(rb"%(?:2[fF]|5[cC])")

# A request whose head holds none of these fields gets the plain 200 answer (with a
# precompressed sibling or compressed variant when it also accepts one): the
# conditionals (If-*) and Range.
_SELECTORS = (b"\r\nif-", b"\r\nrange:")


class _Presentation:
    """How a file is presented, apart from its identity: fixed header values.

    Interned per site, so that it can key the per-file prebuilt blocks by identity.
    """

    __slots__ = ("content_type", "coding", "cache_control", "vary", "etag_suffix")

    def __init__(self, content_type: str, coding: str | None, cache_control: str | None,
                 vary: bool) -> None:
        self.content_type = content_type
        self.coding = coding
        self.cache_control = cache_control
        self.vary = vary
        self.etag_suffix = f"-{'gz' if coding == 'gzip' else coding}" if coding else ""


class _Prebuilt:
    """The header blocks one (file, presentation) pair needs, built once."""

    __slots__ = ("entity", "not_modified", "shared", "content_type", "etag",
                 "last_modified", "last_modified_text", "whole")

    def __init__(self, f: OpenFile | Variant, p: _Presentation) -> None:
        # The ETag comes from identity, never from content: inode, size and mtime (ns).
        # It changes when the file is rewritten or replaced, and costs no read.
        self.etag = f'"{f.ino:x}-{f.size:x}-{f.mtime_ns:x}{p.etag_suffix}"'.encode("ascii")
        self.last_modified = f.mtime_ns // 1_000_000_000
        self.last_modified_text = http_date(self.last_modified).encode("ascii")
        validators = [("ETag", self.etag.decode("ascii")),
                      ("Last-Modified", self.last_modified_text.decode("ascii"))]
        if p.cache_control:
            validators.append(("Cache-Control", p.cache_control))
        if p.vary:
            validators.append(("Vary", "Accept-Encoding"))
        shared = [("Content-Encoding", p.coding)] if p.coding else []
        shared += [("Accept-Ranges", "bytes"), *validators]
        self.content_type = p.content_type
        # Lines every 200/206 answer carries after its own Content-* lines.
        self.shared = header_block(shared, end=False)
        self.entity = (header_block([("Content-Type", p.content_type),
                                     ("Content-Length", str(f.size))], end=False)
                       + self.shared + b"\r\n")
        # A 304 carries the validators and caching fields, no Content-Length/Type.
        self.not_modified = header_block(validators)
        # The 200 payload: one region of the whole file, shared by every answer (regions
        # are immutable).  A zero-length file has none: never a sendfile of 0 bytes.
        self.whole = (FileRegion(f.fd, 0, f.size, f.handle),) if f.size else ()


def _prebuilt(f: OpenFile | Variant, p: _Presentation) -> _Prebuilt:
    built = f.extra.get(p)
    if built is None:
        built = f.extra[p] = _Prebuilt(f, p)
    return built


def _whole(f: OpenFile | Variant, built: _Prebuilt) -> Message:
    # A zero-length file has no payload slice at all: never a sendfile of 0 bytes.
    return Message(200, (built.entity,), built.whole)


class _Route:
    """What a raw URL path resolved to: the file path and its presentations."""

    __slots__ = ("path", "url_path", "plain", "plain_vary", "encoded", "siblings", "codings",
                 "checked_at")

    def __init__(self, path: str, url_path: str) -> None:
        self.path = path
        self.url_path = url_path
        self.plain: _Presentation
        self.plain_vary: _Presentation
        self.encoded: dict[str, _Presentation] = {}
        self.siblings: tuple[tuple[str, str], ...] = ()
        self.codings: tuple[str, ...] = ()
        self.checked_at = 0.0


class StaticSite:
    """Serves the files under `root` (GET and HEAD), nginx-style.

    Options (all keyword): `cache` (the OpenFileCache; one per site), `autoindex`
    (HTML listings of directories without an index), `follow_symlinks` (serve
    symlinks that lead out of the root), `show_dotfiles`, `cache_control` (a
    CacheControlRules, or one value for every file), `precompressed` (serve
    `.br`/`.zst`/`.gz` siblings), `compression` (a Compressor: variants built in
    memory for compressible files without siblings, compression.py).
    """

    def __init__(self, root: Path | str, *, cache: OpenFileCache | None = None,
                 autoindex: bool = False, follow_symlinks: bool = False,
                 show_dotfiles: bool = False,
                 cache_control: CacheControlRules | str | None = None,
                 precompressed: bool = True, compression: Compressor | None = None) -> None:
        self.root = Path(os.path.realpath(root))
        self._root_text = str(self.root)
        self._root_prefix = self._root_text.rstrip("/") + "/"
        # A symlinked .br/.gz sibling's target is held to the rule its own URL would be.
        self._sibling_allowed = target_rule(self._root_text, show_dotfiles)
        # Not `cache or ...`: an empty OpenFileCache has len() 0 and is falsy.
        self.cache = cache if cache is not None else OpenFileCache()
        self.autoindex = autoindex
        self.follow_symlinks = follow_symlinks
        self.show_dotfiles = show_dotfiles
        if cache_control is None:
            cache_control = CacheControlRules()
        elif isinstance(cache_control, str):
            cache_control = CacheControlRules([("*", cache_control)], defaults=False)
        self.cache_control = cache_control
        self.precompressed = precompressed
        self.compression = compression
        # True when nothing answers after this site (the Application's last branch): then
        # rules may answer a miss themselves (404 with CORS headers, SPA fallback for any
        # client).  In front of an ASGI app a miss must fall through to the app.
        self.last_resort = False
        # The SiteRules installed in front of `respond` (rules.py), if any.
        self.rules: Any = None
        self._routes: dict[bytes, _Route] = {}
        self._file_routes: dict[tuple[str, str], _Route] = {}     # serve_file's
        self._route_limit = max(1024, 4 * self.cache.max_entries)
        self._presentations: dict[tuple, _Presentation] = {}
        # Plain 200s answered before a Request is made (lane.py); off until the
        # application that owns this site says nothing else can answer its paths.
        self.lane = StaticLane(self.cache, limit=self._route_limit,
                               watches_siblings=bool(precompressed or compression is not None))
        self.lane.recheck = self._look_for_siblings

    def __call__(self, request: Request) -> Message | None:
        return self.respond(request)

    # -- the fast path -------------------------------------------------------------------
    def respond(self, request: Request, *, keep: bool = False) -> Message | None:
        """A response for the request, or None if the path names nothing here.

        `keep`: the application routed this request here by its path alone, so a
        plain answer may be kept in the lane for that path (lane.py).  Anybody else
        asking (a mount, a rule's rewrite, an OPTIONS probe) leaves the lane alone.
        """
        method = request.method
        if method != "GET" and method != "HEAD":
            # OPTIONS * and OPTIONS /path: 204 with Allow (rules.py); others are not ours.
            return options_answer(self, request) if method == "OPTIONS" else None
        raw = request.raw_path
        route = self._routes.get(raw)
        if route is not None:
            try:
                f = self.cache.open(route.path, fresh=request.fresh)
            except OSError:
                f = None
            if f is not None and f.vetted:
                return self._serve(request, route, f, raw if keep else None)
            # Gone, or replaced by a file not yet checked: resolve the URL again.
            del self._routes[raw]
        return self._resolve(request, keep)

    def _serve(self, request: Request, route: _Route, f: OpenFile,
               lane_key: bytes | None = None) -> Message:
        """The answer for a resolved route: a few searches of the lowered head decide it.

        Only Accept-Encoding (when siblings or variants exist), the conditionals and
        Range can change it; Cookie, User-Agent, the query string and the rest
        cannot, so they are never looked at.  A plain answer for a URL path
        (`lane_key`) of a file with no siblings is kept in the lane (lane.py).
        """
        lowered = request.lowered_head
        chosen = None
        # find(), not `in`: bytes.__contains__ first tries the needle as an integer
        # and raises and clears a TypeError each time (CPython 3.11).
        if (self.precompressed or self.compression is not None) \
                and lowered.find(b"\r\naccept-encoding:") >= 0:
            chosen = self._pick_sibling(route, request, f)
        if chosen is None:
            p = route.plain_vary if route.siblings else route.plain
            served: OpenFile | Variant = f
        else:
            served, p = chosen
        built = served.extra.get(p) or _prebuilt(served, p)
        if lane_key is not None and self.lane.enabled:
            # What this path is served as, whatever this request's conditionals or
            # Range make of it: a browser that only revalidates fills the lane too.
            if not route.siblings:
                self.lane.keep(lane_key, route, f, p)
            elif type(served) is Variant:
                self.lane.keep_variant(lane_key, route, f, lowered, served, p)
            elif chosen is None and self._takes_no_coding(route, request):
                self.lane.keep_variant(lane_key, route, f, lowered, None, p)
        if lowered.find(_SELECTORS[0]) < 0 and lowered.find(_SELECTORS[1]) < 0:
            return Message(200, (built.entity,), built.whole)
        return self._conditional(request, served, built)

    def _conditional(self, request: Request, f: OpenFile | Variant, built: _Prebuilt) -> Message:
        """Preconditions (RFC 9110 §13.2.2 order), then Range, for a request that has some."""
        header = request.header
        if_match, if_unmodified = header(b"if-match"), header(b"if-unmodified-since")
        if_none_match, if_modified = header(b"if-none-match"), header(b"if-modified-since")
        if if_match is not None or if_unmodified is not None or if_none_match is not None \
                or if_modified is not None:
            verdict = evaluate(if_match, if_unmodified, if_none_match, if_modified,
                               built.etag, built.last_modified)
            if verdict == NOT_MODIFIED:
                return Message(304, (built.not_modified,))
            if verdict == PRECONDITION_FAILED:
                return error_response(412)
        range_header = header(b"range")
        if range_header is not None and request.method == "GET":
            if_range = header(b"if-range")
            if if_range is None or if_range_holds(if_range, built.etag, built.last_modified_text):
                answer = self._ranged(f, built, range_header)
                if answer is not None:
                    return answer
        return _whole(f, built)

    def _ranged(self, f: OpenFile | Variant, built: _Prebuilt, header: bytes) -> Message | None:
        """206 (one part or multipart/byteranges), 416, or None to send the whole."""
        # The same Range asked of the same file (a download manager's or a player's
        # repeated request) gets the same head and slices: memoised with the file,
        # so they vanish when it changes.  FileRegions are immutable, safe to share.
        memo = f.extra.get(_RANGE_MEMO)
        if memo is None:
            memo = f.extra[_RANGE_MEMO] = {}
        key = (built, header)
        hit = memo.get(key)
        if hit is not None:
            return Message(206, (hit[0],), hit[1])
        answer = self._ranged_answer(f, built, header)
        if answer is not None and answer.status == 206 and len(memo) < _RANGE_MEMO_SIZE:
            memo[key] = (answer.header_slices()[0], answer.payload)
        return answer

    def _ranged_answer(self, f: OpenFile | Variant, built: _Prebuilt, header: bytes) -> Message | None:
        size = f.size
        ranges = parse_range(header, size)
        if ranges is None:
            return None
        if not isinstance(ranges, list):         # UNSATISFIABLE
            return error_response(416, headers=[("Content-Range", f"bytes */{size}")])
        if len(ranges) == 1:
            first, last = ranges[0]
            count = last - first + 1
            head = (f"Content-Type: {built.content_type}\r\nContent-Length: {count}\r\n"
                    f"Content-Range: {content_range(first, last, size)}\r\n").encode("latin-1")
            return Message(206, (head + built.shared + b"\r\n",), (FileRegion(f.fd, first, count, f.handle),))
        boundary = new_boundary()
        slices, length = multipart_slices(f.fd, f.handle, ranges, size, built.content_type, boundary)
        head = (f"Content-Type: multipart/byteranges; boundary={boundary}\r\n"
                f"Content-Length: {length}\r\n").encode("latin-1")
        return Message(206, (head + built.shared + b"\r\n",), slices)

    @staticmethod
    def _takes_no_coding(route: _Route, request: Request) -> bool:
        """The request's Accept-Encoding (or its absence) takes none of the route's
        codings: the plain file is its answer for as long as the siblings stay.  (A
        variant still being built is not that: the next answer may be compressed.)"""
        accept = request.header(b"accept-encoding")
        return accept is None or choose_coding(accept, route.codings) is None

    def _pick_sibling(self, route: _Route, request: Request,
                      f: OpenFile) -> tuple[OpenFile | Variant, _Presentation] | None:
        now = time.monotonic()
        if now - route.checked_at > RECHECK_SECONDS:
            self._look_for_siblings(route, now)
        if not route.siblings:
            return None
        accept = request.header(b"accept-encoding")
        if accept is None:
            return None
        coding = choose_coding(accept, route.codings)
        if coding is None:
            return None
        path = next(path for c, path in route.siblings if c == coding)
        if path is None:              # no sibling: a variant built in memory (compression.py)
            variant = self.compression.variant(f, coding) if self.compression is not None else None
            return None if variant is None else (variant, route.encoded[coding])
        try:
            sibling = self.cache.open(path)
        except OSError:
            self._look_for_siblings(route, now)       # it went away: look again now
            return None
        if not sibling.vetted and not self._vet(sibling):
            return None
        return sibling, route.encoded[coding]

    def _look_for_siblings(self, route: _Route, now: float) -> None:
        route.siblings = find_siblings(route.path, self._sibling_allowed) if self.precompressed else ()
        if self.compression is not None:
            route.siblings = self.compression.add_codings(route.path, route.siblings)
        route.codings = tuple(coding for coding, _path in route.siblings)
        route.checked_at = now

    # -- the slow path ---------------------------------------------------------------------
    def _resolve(self, request: Request, keep: bool = False) -> Message | None:
        raw = request.raw_path
        if _ENCODED_SEPARATOR.search(raw):
            return error_response(400, "bad path")
        try:
            text = request.path
            parts = virtual_parts(text)
        except (UnsafePath, BadRequest):
            return error_response(400, "bad path")
        if not self.show_dotfiles and any(part.startswith(".") for part in parts):
            return None
        try:
            path = confine(self.root, parts, follow_outside_links=self.follow_symlinks)
        except UnsafePath:
            return None               # a link out of the root: as if it were not there
        try:
            st = os.stat(path)
        except PermissionError:
            return self._forbidden()
        except OSError:               # missing, ENOTDIR, ELOOP, ENAMETOOLONG ...
            return None
        asked_for_directory = text.endswith("/") or text.endswith("/.")
        url_path = "/" + "/".join(parts)
        if stat_mod.S_ISDIR(st.st_mode):
            if not asked_for_directory:
                return self._to_slash(parts, request.query_string)
            directory_url = url_path.rstrip("/") + "/"
            for name in INDEX_FILES:
                index = path / name
                try:
                    index_st = os.stat(index)
                except OSError:
                    continue
                if stat_mod.S_ISREG(index_st.st_mode):
                    path, st, url_path = index, index_st, directory_url + name
                    break
            else:
                return self._listing(path, directory_url) if self.autoindex else None
        elif asked_for_directory:
            return None               # "/file.txt/" names a directory that is not there
        if not stat_mod.S_ISREG(st.st_mode):
            return None
        file_path = str(path)
        try:
            f = self.cache.open(file_path, st)
        except PermissionError:
            return self._forbidden()
        except OSError as exc:
            if exc.errno in (errno.EMFILE, errno.ENFILE):
                # Out of descriptors: the file is there, we cannot open it now.
                return error_response(503, "out of file descriptors; try again",
                                      headers=[("Retry-After", "1")])
            return None
        if not f.vetted and not self._vet(f):
            return None
        route = self._route_for(file_path, url_path)
        if len(self._routes) >= self._route_limit:
            self._routes.clear()
        self._routes[raw] = route
        return self._serve(request, route, f, raw if keep else None)

    def _route_for(self, file_path: str, url_path: str) -> _Route:
        route = _Route(file_path, url_path)
        ctype = media_type(file_path)
        policy = self.cache_control.for_path(url_path)
        route.plain = self._presentation(ctype, None, policy, False)
        route.plain_vary = self._presentation(ctype, None, policy, True)
        route.encoded = {coding: self._presentation(ctype, coding, policy, True)
                         for coding, _suffix in CODINGS}
        self._look_for_siblings(route, time.monotonic())
        return route

    def _presentation(self, ctype: str, coding: str | None, policy: str | None,
                      vary: bool) -> _Presentation:
        key = (ctype, coding, policy, vary)
        p = self._presentations.get(key)
        if p is None:
            p = self._presentations[key] = _Presentation(ctype, coding, policy, vary)
        return p

    def _to_slash(self, parts: list[str], query: str) -> Message:
        # Built from the normalised parts, never from the raw path: "//evil.example"
        # must not become a protocol-relative Location (an open redirect).
        location = "/" + "".join(quote(part) + "/" for part in parts)
        if query:
            location += "?" + query
        return redirect_response(location, 301)

    def _listing(self, directory: Path, url_path: str) -> Message | None:
        try:
            page = listing_page(str(directory), url_path, show_dotfiles=self.show_dotfiles,
                                visible=None if self.follow_symlinks else self._listable)
        except PermissionError:
            return self._forbidden()
        except OSError:
            return None
        return bytes_response(page, content_type="text/html; charset=utf-8",
                              headers=[("Cache-Control", "no-cache")])

    def _listable(self, entry: os.DirEntry) -> bool:
        return not entry.is_symlink() or self._inside_root(os.path.realpath(entry.path))

    # -- containment -----------------------------------------------------------------------
    def _inside_root(self, real_path: str) -> bool:
        return real_path == self._root_text or real_path.startswith(self._root_prefix)

    def _vet(self, f: OpenFile) -> bool:
        """Check where an open descriptor really leads; remember a pass on the file."""
        if not self.follow_symlinks:
            try:
                # The kernel's name for the open file: no race with the path check.
                real = os.readlink(f"/proc/self/fd/{f.fd}")
            except OSError:
                real = os.path.realpath(f.path)
            if not self._sibling_allowed(real):     # out of the root, or a dotfile's
                self.cache.forget(f.path)
                return False
        f.vetted = True
        return True

    # -- one file, for handlers --------------------------------------------------------------
    def serve_file(self, request: Request, path: str | os.PathLike, url_path: str | None = None) -> Message:
        """Answer `request` with the file at `path`, with this site's semantics.

        Validators, conditionals, ranges, precompressed siblings (inside the root) and
        the Cache-Control rule for `url_path` (default: the request's path) — whatever
        URL asked.  No confinement: the caller chose the path.  Raises OSError
        (FileNotFoundError, IsADirectoryError, PermissionError) if it cannot be opened.
        """
        file_path = os.path.abspath(os.fspath(path))
        f = self.cache.open(file_path)
        if url_path is None:
            url_path = request.path
        key = (file_path, url_path)
        route = self._file_routes.get(key)
        if route is None:
            if len(self._file_routes) >= self._route_limit:
                self._file_routes.clear()
            route = self._file_routes[key] = self._route_for(file_path, url_path)
        return self._serve(request, route, f)

    # -- error pages -----------------------------------------------------------------------
    def error_page(self, status: int) -> Message | None:
        """The site's own page for `status` (`404.html`, `403.html`, ... in the root).

        A new Message each call (callers may push headers on it); None when the root
        has no such page.
        """
        if not 400 <= status <= 599:
            return None
        path = os.path.join(self._root_text, f"{status}.html")
        try:
            f = self.cache.open(path)
        except OSError:
            return None
        if not f.vetted and not self._vet(f):
            return None
        key = ("error-page", status)
        entity = f.extra.get(key)
        if entity is None:
            entity = f.extra[key] = header_block([("Content-Type", "text/html; charset=utf-8"),
                                                  ("Content-Length", str(f.size))])
        return Message(status, (entity,), (FileRegion(f.fd, 0, f.size, f.handle),) if f.size else ())

    def not_found(self, request: Request) -> Message:
        """A 404 answer: the site's 404.html, else the built-in page (error_pages.py)."""
        return self.error_page(404) or default_error_page(404)

    def _forbidden(self) -> Message:
        return self.error_page(403) or default_error_page(403)

    def __repr__(self) -> str:
        return f"<StaticSite {self._root_text!r}>"
