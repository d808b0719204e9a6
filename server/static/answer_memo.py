"""The answer memo: a byte-identical repeat of a request gets the answer built last time.

Theory of operation.  Browsers and load generators repeat themselves: over a
keep-alive connection the request for `/style.css` is the same bytes every time.  A
static answer is a pure function of those bytes, of the identity of the files it
looked at, and of the second (through `Date`).  So the process keeps a map from
request bytes to the answer's wire layout (the transmitter's slices: one head with
status line and Date, then mmap windows or file regions), with the OpenFiles it
depends on.  A repeat is answered without parsing, routing or building anything: a
dictionary lookup, the open-file cache's identity check (a `stat()`, shared by the
replays of one event-loop turn, see below: a file changed or replaced by rename is
still seen at once), and one gather call.

What may be replayed is decided narrowly, elsewhere:

* only the answer that the Application's static branch noted last
  (`StaticSite.last_replayable`, with the files it looked at), never a handler's, whose answer may depend on time, state or the peer;
* only while the Application wraps requests in no hooks or middleware and has no
  old-style router callable, and no access log is written (a replay builds no
  Request to log); reinstalling routes (a handler reload) empties the memo;
* only a request that arrived whole in one read, with no body, answered at once by
  one Message on a connection that stays open (the session checks this).

One stat per file per event-loop turn.  A repeat is answered only when one read
holds exactly that one request, and each connection is read once per turn.  Its
socket was reported readable by the poll that began the turn, so the request had
been sent before the poll returned: any change to a file made before the client sent
it was made before any stat taken during the turn.  So a file found current by one
replay may be trusted by the other replays of the same turn (the set is emptied
before the next turn's I/O callbacks), and a rename is still seen by every request
sent after it.  (One caveat makes this conditional: libuv polls again within the same
turn when a poll returns its maximum of 1024 events, so sharing is on only while the
loop serves fewer than TURN_SHARING_LIMIT connections and nothing else, i.e. no FTP.)  The cheap half of the check — is this still the file the open-file
cache holds — is made on every replay, so a change the full path noticed earlier in
the turn is never replayed over.

An entry is dropped when the Date second changes (the full path then renders it
again, and re-checks precompressed siblings as it does once a second), or when a file
it depends on has changed, been replaced or left the open-file cache.  The server's
once-a-second sweep drops stale entries, so the descriptor of a replaced file is not
held open by an entry nobody asks for again.  The memo is bounded in entries and key
size; when full it is emptied, which only costs rebuilds.  An answer is remembered
the second time its request is seen (`lookup` says when), so traffic that never
repeats pays for a set entry per request, not for a layout.
"""

from __future__ import annotations

import asyncio
import os
from time import time
from typing import TYPE_CHECKING

from ..core.metrics import METRICS

if TYPE_CHECKING:
    from ..core.filecache import OpenFile
    from ..core.message import Message
    from ..core.transmitter import SocketTransmitter
    from .site import StaticSite

__all__ = ["AnswerMemo"]

MAX_ENTRIES = 256
MAX_REQUEST_BYTES = 4096
ASKED_ONCE_MAX = 4096          # hashes of requests seen once, waiting for a repeat
# libuv polls again, without returning to the loop's idle phase, when one epoll_wait
# fills its 1024-event array; under that many open connections it never can.
TURN_SHARING_LIMIT = 900

Layout = tuple[tuple, int, int, int]
_stat = os.stat


class AnswerMemo:
    """request bytes → (stale-at time, files depended on, wire layout)."""

    __slots__ = ("enabled", "max_entries", "loop", "metrics", "_entries", "_files",
                 "_seen", "_asked_once", "replays", "_site")

    def __init__(self, site: StaticSite, *, max_entries: int = MAX_ENTRIES) -> None:
        self._site = site
        self._files = site.cache.by_path
        self.enabled = True
        self.max_entries = max_entries
        self._entries: dict[bytes, tuple] = {}
        # Set by `share_stats_on`: with a loop, a file found current is trusted for
        # the rest of the event-loop turn (`_seen`), see the header.
        self.loop: asyncio.AbstractEventLoop | None = None
        self.metrics = METRICS
        self._seen: set[OpenFile] = set()
        self._asked_once: set[int] = set()
        self.replays = 0

    def lookup(self, request: bytes) -> Layout | bool:
        """The layout to send for this exact request, if its answer is still current.

        Otherwise whether the answer about to be built is worth remembering: only from
        the second time a request is seen, so traffic that never repeats (a changing
        query string or cookie) costs a set entry per request, not a layout.  The
        hash is the one the dictionary lookup has just computed (bytes keep theirs).
        """
        entry = self._entries.get(request)
        if entry is None:
            if not self.enabled:
                return False
            key = hash(request)
            asked = self._asked_once
            if key in asked:
                return True
            if len(asked) >= ASKED_ONCE_MAX:
                asked.clear()
            asked.add(key)
            return False
        if time() < entry[0]:         # its Date line is still this second's
            files = self._files
            seen = self._seen
            for f, path in entry[1]:
                # The open-file cache's own hit test, inline: still the cached file, and
                # the path still names it (one stat; a bytes path skips the encoding).
                if files.get(f.path) is not f:
                    break
                if f in seen:
                    continue          # stat'ed after this turn's poll: see the header
                try:
                    st = _stat(path)
                except OSError:
                    break
                if (st.st_ino != f.ino or st.st_mtime_ns != f.mtime_ns
                        or st.st_size != f.size or st.st_dev != f.dev):
                    break
                f.used = True
                if self.loop is not None and self.metrics.connections_open < TURN_SHARING_LIMIT:
                    if not seen:
                        # Forget before the next turn's I/O callbacks (call_soon runs
                        # ahead of them, on uvloop and on asyncio's own loop alike).
                        self.loop.call_soon(seen.clear)
                    seen.add(f)
            else:
                self.replays += 1
                return entry[2]
        # Stale: the full path's answer will overwrite it (or the sweep drops it).
        return True

    def store(self, request: bytes, message: Message, stale_at: float,
              transmitter: SocketTransmitter) -> None:
        """Remember `message` (already sent for `request`, its head pushed) for repeats.

        `stale_at` is when the Date line in its head stops being current.
        """
        noted = self._site.last_replayable
        self._site.last_replayable = None
        depends_on = noted[1] if noted is not None and noted[0] is message else None
        if not self.enabled or len(request) > MAX_REQUEST_BYTES or depends_on is None:
            return
        entries = self._entries
        if request not in entries and len(entries) >= self.max_entries:
            entries.clear()
        checks = tuple((f, os.fsencode(f.path)) for f in depends_on)
        entries[request] = (stale_at, checks, transmitter.lay_out(message))

    def share_stats_on(self, loop: asyncio.AbstractEventLoop | None) -> None:
        """Trust a file found current for the rest of `loop`'s turn (None: never)."""
        self.loop = loop

    def drop_stale(self) -> None:
        """Forget entries whose Date second has passed (they would miss anyway)."""
        now = time()
        entries = self._entries
        for request in [r for r, entry in entries.items() if entry[0] <= now]:
            del entries[request]

    def reset(self, *, enabled: bool) -> None:
        self._entries.clear()
        self._asked_once.clear()
        self.enabled = enabled

    def __len__(self) -> int:
        return len(self._entries)
