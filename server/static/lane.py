"""The static lane: a cached file's plain 200 answered before any Request is made.

Theory of operation.  Most of what a browser sends to a static site is a GET or HEAD
of a file the site has served before, with no conditional and no Range.  Cookies,
User-Agent, the query string and the other fields select nothing, so its answer is
a function of the path — and, for a file with a compressed variant, of the
Accept-Encoding value, of which a site sees a handful (every browser of one kind
sends the same one).  That answer is the file's (or variant's) prebuilt entity block
and its mmap window.  Building a Request, routing it,
looking the route up again and wrapping the answer in a Message costs several times
what parsing the head costs; the lane skips all of it.

The site fills the lane (`keep`, `keep_variant`) when its own fast path has just
given that answer to a request that the application routed to it — the lane is therefore exactly
the set of paths the application sends to the static site, and only the application
may turn it on (`enabled`): it does not when request hooks, middleware or a callable
router could answer a path differently from request to request, and it empties the
lane when routes are reinstalled.  The HTTP session asks the lane (`answer`) for a
lone request on an idle connection after checking the head as it checks any other
(one Host, no Expect, size); on a miss it goes on as before, building the Request.

A hit still confirms the file as the site's own fast path does: the open-file cache
must return the very OpenFile the entry was made for (one `stat()` per loop turn;
a file replaced, truncated or made unreadable is seen by the next request, and the
entry is dropped so the site resolves the path again), and a variant must still be
live (the compression budget may have evicted it).  Files and variants are held
weakly, so the lane never keeps a descriptor or a memory file alive that its owner
let go of.  Only in-memory variants are kept; a precompressed sibling on disk is a
second file to check, and takes the site's path.  Nothing is copied: the
answer is the entity block and the window object the transmitter already lends to
the kernel for the general path, and the session puts the status, Server and Date
slice in front of them.
"""

from __future__ import annotations

import time
import weakref
from collections.abc import Callable
from typing import Any

from ..core.filecache import OpenFile, OpenFileCache
from ..http.wire import DATE
from .precompressed import RECHECK_SECONDS

__all__ = ["LaneEntry", "StaticLane"]

# Range and the conditionals may change a static answer too: the session leaves
# requests with Range or the rarer If-* fields to the site, and passes a browser's
# revalidation (If-None-Match, If-Modified-Since) here with the head as sent.
# Accept-Encoding selects among variants, and keys an entry's choices.
_ACCEPT = b"\r\naccept-encoding:"
_IF_NONE_MATCH = b"\r\nif-none-match:"
_IF_MODIFIED_SINCE = b"\r\nif-modified-since:"
_CHOICES_MAX = 16           # distinct Accept-Encoding values kept per path


def accept_encoding_of(lowered: bytes) -> bytes | None:
    """The lowered Accept-Encoding value exactly as sent, as the lane keys it: b"" when
    there is none (an empty value means the same: the plain file); None when the field
    is given more than once (then the site combines the fields itself)."""
    start = lowered.find(_ACCEPT)
    if start < 0:
        return b""
    start += len(_ACCEPT)
    end = lowered.find(b"\r\n", start)
    if lowered.find(_ACCEPT, end) >= 0:
        return None
    return lowered[start:end]


class LaneEntry:
    """What the 200 for one URL path is made of, while its file stays the same.

    Its prebuilt blocks are found again by presentation in the `extra` of the file
    (plain entries) or of the variant an Accept-Encoding value chose (`choices`).
    """

    __slots__ = ("lane", "key", "path", "route", "file", "presentation", "choices")

    def __init__(self, lane: StaticLane, key: bytes, route: Any, file: OpenFile,
                 presentation: Any) -> None:
        self.lane = lane
        self.key = key
        self.path: str = route.path
        self.route = route      # the site's _Route: checked_at says when siblings were sought
        self.file = weakref.ref(file)
        self.presentation = presentation    # the site's _Presentation: keys file.extra
        # Accept-Encoding value → (variant or None for the file itself, presentation);
        # None for an entry of a file without siblings.
        self.choices: dict[bytes, tuple[weakref.ref | None, Any]] | None = None

    def answer(self, head_only: bool, lowered: bytes, fresh: bool,
               block: bytes | None = None) -> list[Any] | None:
        """The whole answer for this request as slices to send, or None: the status,
        Server and Date slice, the entity block and the body as an mmap window or (the
        last slice) a FileRegion; or a 304's status slice and validator block.

        Asked by the HTTP session only for a keep-alive HTTP/1.1 GET or HEAD with one
        Host, no Expect and no Range; with `block` (the head as sent) it may also carry
        If-None-Match and If-Modified-Since, at most once each, and no other If-*
        (the session looked for all of them in one pass).  `lowered` is the head in
        lower case, `fresh` whether the request was in its socket when this loop
        turn's poll returned (filecache.py).  None means: answer it the general way.
        """
        lane = self.lane
        if lane.watches_siblings:
            route = self.route
            now = time.monotonic()
            if now - route.checked_at > RECHECK_SECONDS:
                # The site's own once-a-second look for precompressed siblings and
                # variants, whatever the request asks: if what the file may be
                # served as has changed, the site decides again.
                codings = route.codings
                lane.recheck(route, now)
                if route.codings != codings:
                    lane.entries.pop(self.key, None)
                    return None
        try:
            current = lane.cache.open(self.path, fresh=fresh)
        except OSError:
            current = None
        if current is None or current is not self.file():
            # Replaced, truncated, gone or unreadable: the site decides again.
            lane.entries.pop(self.key, None)
            return None
        choices = self.choices
        if choices is None:
            built = current.extra.get(self.presentation)
        else:
            accept = accept_encoding_of(lowered)
            if accept is None:
                return None
            choice = choices.get(accept)
            if choice is None:
                return None
            held, presentation = choice
            if held is None:          # this value takes none of our codings: the file itself
                built = current.extra.get(presentation)
            else:
                variant = held()
                if variant is None or not variant.live:
                    del choices[accept]   # evicted: the site builds or finds it again
                    return None
                variant.used = True
                built = variant.extra.get(presentation)
        if built is None:
            return None
        if block is not None:
            fresh_copy = _client_copy_is_current(built, block, lowered)
            if fresh_copy is None:
                return None           # a list, a weak tag, `*`, another date: conditional.py decides
            if fresh_copy:
                lane.hits += 1
                return [DATE.head(304), built.not_modified]
        lane.hits += 1
        whole = built.whole
        if head_only or not whole:
            return [DATE.head(200), built.entity]
        region = whole[0]
        # The transmitter's window of a region small enough to gather, once it has made
        # one; else the region itself (a large file's sendfile, a window not made yet,
        # or a TLS connection's copy path).
        view = region.view
        return [DATE.head(200), built.entity, region if view is None else view]


def _client_copy_is_current(built: Any, block: bytes, lowered: bytes) -> bool | None:
    """What a browser's revalidation asks, decided the way conditional.py decides it
    for the plain cases: True (304), False (the 200), None (ask conditional.py).

    If-None-Match, when present, alone decides (RFC 9110 §13.2.2): our own ETag
    exactly → 304; one other strong tag → 200.  Only If-Modified-Since: our own
    Last-Modified text exactly → 304.  Values are read from the head as sent (an
    entity-tag is case-sensitive), at the offsets found in its lowered copy.
    """
    start = lowered.find(_IF_NONE_MATCH)
    if start >= 0:
        start += len(_IF_NONE_MATCH)
        value = block[start:lowered.find(b"\r\n", start)].strip(b" \t")
        if value == built.etag:
            return True
        if value[:1] != b'"' or value.find(b",") >= 0 or value.count(b'"') != 2:
            return None
        return False
    start = lowered.find(_IF_MODIFIED_SINCE)
    if start < 0:
        return None
    start += len(_IF_MODIFIED_SINCE)
    value = block[start:lowered.find(b"\r\n", start)].strip(b" \t")
    return True if value == built.last_modified_text else None


class StaticLane:
    """Raw URL path → LaneEntry, for the paths the application routes to the site.

    The HTTP session looks a request's path (the target up to any "?") up in
    `entries` itself — a miss costs one dictionary lookup — and asks the entry for
    the answer once it has seen that the head has no conditional or Range.
    """

    def __init__(self, cache: OpenFileCache, *, limit: int, watches_siblings: bool) -> None:
        self.cache = cache
        # Cleared in place, never rebound: the HTTP sessions hold on to this dict.
        self.entries: dict[bytes, LaneEntry] = {}
        self._limit = limit
        # With precompressed siblings or compression on, a sibling may appear later:
        # an entry is trusted only as long as the site's own sibling check is recent.
        self.watches_siblings = watches_siblings
        # The site's sibling check, `recheck(route, now)`: it sets the route's siblings,
        # codings and checked_at (site.py, precompressed.py).
        self.recheck: Callable[[Any, float], None] = lambda route, now: None
        self.enabled = False
        self.hits = 0

    def __len__(self) -> int:
        return len(self.entries)

    def _entry(self, raw_path: bytes, route: Any, f: OpenFile, presentation: Any,
               variants: bool) -> LaneEntry:
        entries = self.entries
        kept = entries.get(raw_path)
        if kept is not None and kept.file() is f and (kept.choices is not None) == variants \
                and (variants or kept.presentation is presentation):
            return kept
        if kept is None and len(entries) >= self._limit:
            del entries[next(iter(entries))]          # the oldest entry makes room
        entry = entries[raw_path] = LaneEntry(self, raw_path, route, f, presentation)
        if variants:
            entry.choices = {}
        return entry

    def keep(self, raw_path: bytes, route: Any, f: OpenFile, presentation: Any) -> None:
        """The site just answered `raw_path` with this file's plain 200 in `presentation`
        (a file with no siblings: nothing in the request selects another answer)."""
        if self.enabled:
            self._entry(raw_path, route, f, presentation, False)

    def keep_variant(self, raw_path: bytes, route: Any, f: OpenFile, lowered: bytes,
                     variant: Any, presentation: Any) -> None:
        """The site just answered `raw_path` with `variant` of file `f` (None: the file
        itself, which is all this Accept-Encoding value takes of ours), chosen by the
        request's Accept-Encoding (found again in `lowered`)."""
        if not self.enabled:
            return
        accept = accept_encoding_of(lowered)
        if accept is None:
            return
        choices = self._entry(raw_path, route, f, presentation, True).choices
        assert choices is not None
        if accept in choices or len(choices) < _CHOICES_MAX:
            choices[accept] = (None if variant is None else weakref.ref(variant), presentation)

    def forget_all(self) -> None:
        self.entries.clear()
