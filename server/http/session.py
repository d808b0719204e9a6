"""HTTP/1.1 on one connection: httptools callbacks → Requests → app → Messages, in order.

Theory of operation.  The session knows HTTP meaning, not how bytes move: it is fed
raw bytes (`data_received`), and it hands finished Messages to its transmitter.  Its
I/O *driver* (a raw socket, or a TLS transport) only reads, pauses and closes.

* Parsing: httptools calls back per URL piece, header, body chunk.  A Request is
  built when its head is complete and queued on `_pipeline`; its body keeps flowing
  into its RequestBody.
* The bare parse: a read that ends a request head and starts at rest (what a
  browser or a crawler sends: one GET, or a few pipelined ones) goes first to a
  second parser that has no per-header callback.  httptools still validates every
  byte of it; the session keeps each raw head block on its Request, whose fields
  are found in it by one C-level search when somebody asks (request.py).  Ten
  header callbacks are most of what parsing a browser's request costs in Python,
  so this is what makes requests that never repeat cheap.  The bare parse is
  speculative: a body, an upgrade, a parse error or a head left unfinished makes
  it give up (its parser is replaced) and the same bytes go to the full parser,
  which therefore sees every byte of the stream exactly once in order.  With no
  body in the read, CRLFCRLF separates the heads, so each head block is exact.
* Quick answers: a lone keep-alive HTTP/1.1 request at rest is offered first to the
  application's quick answers (the static lane: a path's ready answer, sent before
  any Request exists) and, for a GET, to its quick routes (a handler called with
  the Request but without routing, whose dict comes back as the answer's slices).
  Both are the application's to keep correct; the session checks the same head
  rules first.
* Ordering: requests are answered strictly one after another (`_active`).  A
  synchronous answer (the static fast path) is queued on the transmitter at once, so
  twenty pipelined requests that arrive in one read are answered by twenty Messages
  that leave in one gather call, flushed when the read has been fully parsed.
* Exactly one final answer per request: once a request is answered
  (`Request.answered`), what still arrives of its body is discarded, and a body that
  then fails (too large, malformed, stalled) closes the connection without a second
  answer.  An answer sent before a body it cannot wait for (chunked, or more than
  DISCARD_LIMIT still owed) closes the connection after it, through the driver's
  lingering close.
* Phase: `OPEN` while requests are parsed; `LAST` once the last request is in hand
  (Connection: close, EOF, a refused request), so nothing more is parsed; `CLOSING`
  once the answer that ends the connection is queued (for a streamed answer: its
  last chunk); `CLOSED` when the driver is gone.
* Loans: before dispatching another request the session checks the bytes its
  transmitter still has on loan against the per-connection budget, and the global
  ledger; over budget it stops reading and dispatching until the transmitter drains.
* Limits: head over `max_header_bytes` → 431 (414 for a long URL); body over
  `max_body_bytes` → 413, at once when a Content-Length or the first chunk size
  says so; parse error → 400; method llhttp does not know → 501; an HTTP version
  other than 1.0/1.1 → 505; HTTP/1.1 without exactly one Host → 400; a transfer
  coding other than chunked → 501; Transfer-Encoding on HTTP/1.0 → 400 (RFC 9112
  §6.1).  An error response closes the connection (the byte stream can no longer
  be trusted).
* Timeouts: the session keeps no clocks.  `progress()` names the phase it is in and
  a token that changes only on real progress; the server's once-a-second sweeper
  notes when it first saw a token and fires `on_timeout(phase)` once the same token
  has stood for that phase's limit.  In the head phase the token is the request
  count, so it does not move while a slowloris client dribbles header bytes; in the
  body phase it is the bytes received; while idle, the responses sent.
"""

from __future__ import annotations

import asyncio
import enum
import inspect
import itertools
import logging
import re
import time
import traceback
from collections import deque
from collections.abc import Callable, Mapping
from functools import partial
from types import CoroutineType
from typing import Any, Protocol

import httptools

from ..core.message import FileRegion, Message
from .context import ServerContext
from .pushstream import PushedStream, PushResponse
from .request import BadRequest, BodyTooLarge, Request, RequestBody
from .responses import StreamResponse, error_response, header_block
from .upgrade import Handover, Upgrade
from .wire import DATE, STATUS_LINES, status_line

__all__ = ["Driver", "HttpSession", "Outlet", "Phase", "RelayedAnswer"]

log = logging.getLogger("pageloan.http")
_monotonic = time.monotonic

CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
_REQUEST_LINE = re.compile(rb"(?:\r\n)*[!#$%&'*+.^_`|~0-9A-Za-z-]+ [^ \r\n]+ HTTP/1\.[01]\r\n")
# A chunk-size line (RFC 9112 §7.1): hex digits, optional extensions, CRLF.
_CHUNK_SIZE = re.compile(rb"(?:\r\n)?([0-9A-Fa-f]{1,16})[ \t]*(?:;[^\r\n]*)?(?:\r\n|$)")
_NO_BODY_STATUSES = frozenset({204, 304})
_METHODS = {m.encode(): m for m in ("GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH")}
_END = b"\r\n\r\n"
# An answer sent while this much or less of its request's body is still owed keeps
# the connection: the rest is read and discarded.  More (or chunked: unknown) closes.
DISCARD_LIMIT = 256 << 10
# How much of an unfinished first line is kept to tell an HTTP/0.9 request apart.
_FIRST_LINE_MAX = 8 << 10


class Phase(enum.IntEnum):
    """Where a connection is in its life; ordered, so `phase < CLOSING` reads as asked."""

    OPEN = 0       # parsing and answering requests
    LAST = 1       # the last request is in hand: nothing more is parsed
    CLOSING = 2    # the answer that ends the connection is queued
    CLOSED = 3     # the driver is gone


OPEN, LAST, CLOSING, CLOSED = Phase.OPEN, Phase.LAST, Phase.CLOSING, Phase.CLOSED


class Driver(Protocol):
    """What the session needs of the connection that feeds it."""

    def pause_reading(self) -> None: ...

    def resume_reading(self) -> None: ...

    def close(self) -> None: ...

    def abort(self) -> None: ...

    # What the driver feeds; an upgrade hands the connection to another protocol.
    session: Any


class QuickAnswer(Protocol):
    """An application's ready answer for one path (static/lane.py's LaneEntry).

    Asked only for a keep-alive HTTP/1.1 GET or HEAD whose head has exactly one Host
    and no Expect, Range or If-* field — but for If-None-Match and If-Modified-Since,
    at most once each, when `block` (the head as sent) is given (the session looked).
    """

    def answer(self, head_only: bool, lowered: bytes, fresh: bool,
               block: bytes | None = None) -> list[Any] | None:
        """The whole keep-alive answer as slices (status line first; all memory but a
        last slice that may be a FileRegion), or None: ask the application."""


class QuickRoute(Protocol):
    """A handler the application lets the session call at once (no routing) for a
    keep-alive HTTP/1.1 GET of its path whose head broke no rule."""

    def answer(self, request: Request) -> Any:
        """The whole keep-alive answer as slices (status line first, all memory), or
        anything the application's `app(request)` may return."""


# The fields the bare path looks for in one pass.  A head with exactly one Host and
# none of the others breaks no rule the session checks (one Host, no Expect) and has
# nothing that could change a static answer (kind 0); a browser's revalidation adds
# If-None-Match and/or If-Modified-Since, once each (kind 1).  Anything else (an
# Expect, Range, another If-*, a field twice) is checked field by field.
_FIELDS = re.compile(rb"\r\n(?:host:|expect:|if-none-match:|if-modified-since:|if-|range:)")
_HOST, _INM, _IMS = b"\r\nhost:", b"\r\nif-none-match:", b"\r\nif-modified-since:"
_QUICK_KINDS: dict[Any, int] = {_HOST: 0, **{
    order: 1 for fields in ((_HOST, _INM), (_HOST, _IMS), (_HOST, _INM, _IMS))
    for order in itertools.permutations(fields)}}


class _Reject(Exception):
    """Raised inside a parser callback to refuse the request with `status`."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


class _Rejection:
    """A queued error answer, kept in the pipeline so earlier answers go out first."""

    __slots__ = ("status", "reason", "version")

    def __init__(self, status: int, reason: str, version: str) -> None:
        self.status = status
        self.reason = reason
        self.version = version


class _GiveUp(Exception):
    """The bare parser met what only the full parser handles (a body)."""


class _Callbacks:
    """The object a parser calls back: the session's own methods, bound once.

    httptools looks its callbacks up when the parser is made, so the bare parser is
    simply given an object without `on_header`.
    """

    on_url: Callable[[bytes], Any]
    on_body: Callable[..., None]
    on_chunk_header: Callable[..., None]
    on_message_complete: Callable[[], Any]

    def __init__(self, session: HttpSession, *, bare: bool) -> None:
        if bare:
            # One URL span per message: a whole head is in the one buffer fed.
            self.on_url = partial(setattr, session, "_url")
            self.on_headers_complete = session.on_bare_headers_complete
            # (A C callable, no Python frame: each message complete adds one entry.)
            self.on_message_complete = partial(list.append, session._bare_done, None)
            self.on_body = self.on_chunk_header = session.on_bare_body
        else:
            self.on_url = session.on_url
            self.on_message_begin = session.on_message_begin
            self.on_header = session.on_header
            self.on_headers_complete = session.on_headers_complete
            self.on_body = session.on_body
            self.on_message_complete = session.on_message_complete
            self.on_chunk_header = session.on_chunk_header
            self.on_chunk_complete = session.on_chunk_complete


class HttpSession:
    """One client connection's HTTP state."""

    def __init__(self, ctx: ServerContext, driver: Driver, transmitter: Any,
                 client: tuple[str, int] | None) -> None:
        self.ctx = ctx
        self.config = ctx.config
        self.driver = driver
        self.transmitter = transmitter
        self.client = client
        self.loop = ctx.loop
        # One entry per message the bare parser completed in the read being parsed.
        self._bare_done: list[None] = []
        self._full = _parser(_Callbacks(self, bare=False))
        self._bare = _parser(_Callbacks(self, bare=True))
        self.phase = OPEN
        # The head being parsed (full parser): URL pieces, fields, framing facts.
        self._url = b""
        self._raw_headers: list[tuple[bytes, bytes]] = []
        self._head_bytes = 0
        self._length: int | None = None
        self._chunked = False
        self._coding_ok = True
        self._expects = False
        self._hosts = 0
        self._in_head = False
        self._first_line = b""          # an unfinished first line (HTTP/0.9 check)
        # The bare parser's requests in this read: (url, method, version, keep-alive).
        self._bare_heads: list[tuple[bytes, str, str, bool]] = []
        self._at_chunk_line = False     # the parser is at the start of a chunk-size line
        self._chunk_line_next = False   # ... and the next read begins with it
        self._current: Request | None = None      # being parsed
        self._pipeline: deque[Request | _Rejection] = deque()
        self._active: Request | None = None      # being answered
        self._task: asyncio.Task | None = None
        self._waiting_room = False
        self._room_waiter: asyncio.Future | None = None
        self.draining = False
        self._metrics = ctx.metrics
        self._app = ctx.app
        self._max_head = ctx.config.max_header_bytes
        self._max_body = ctx.config.max_body_bytes
        self._budget = ctx.config.connection_loan_budget
        self.requests_started = 0
        # Requests are timed (a clock read each) only for the access log's request time.
        self._timed = ctx.access_log is not None
        # An upgrade request and the bytes read past its head, until it is answered.
        self._upgrade: Request | None = None
        self._upgrade_data: list[bytes] = []
        self._outlet: Outlet | None = None  # the active request's, if it relays itself
        # The application's quick answers (its static lane, static/lane.py): raw path →
        # an entry asked for the answer before any Request is built.  Not when every
        # request must reach the access log.
        self._quick: Mapping[bytes, QuickAnswer] | None = \
            getattr(ctx.app, "quick_answers", None) if ctx.access_log is None else None
        # Its quick routes (framework/application.py): raw path → a handler called for
        # a lone keep-alive GET without routing.  Not with an access log either.
        self._routes: Mapping[bytes, QuickRoute] | None = \
            getattr(ctx.app, "quick_routes", None) if ctx.access_log is None else None

    @property
    def closed(self) -> bool:
        return self.phase is CLOSED

    # -- input -------------------------------------------------------------------------
    def data_received(self, data: bytes) -> None:
        if self.phase is not OPEN:
            if self._upgrade is not None and self.phase is not CLOSED:
                self._upgrade_data.append(data)     # early frames: kept for the new protocol
                self.driver.pause_reading()
            return
        at_rest = self._current is None and not self._in_head
        if at_rest:
            if data.endswith(_END) and self._parse_bare(data):
                if self._pipeline:
                    self._dispatch()
                self.transmitter.flush()
                return
            self._chunk_line_next = False
        elif self._chunk_line_next:
            # The previous read ended where a chunk ended: this one starts with the
            # next chunk's size line, so an oversized chunk is known at once.
            self._chunk_line_next = False
            self._check_chunk_size(data, 0)
            if self.phase is not OPEN:
                self._dispatch()
                self.transmitter.flush()
                return
        started = self.requests_started
        try:
            self._full.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            # Answer the request in hand, then close -- unless the application answers
            # with an Upgrade (upgrade.py): then the bytes past the head are the new
            # protocol's, so keep them and read no more until it takes over.
            self.phase = LAST
            if self._pipeline and isinstance(self._pipeline[-1], Request):
                self._pipeline[-1].keep_alive = False
                self._upgrade = self._pipeline[-1]
                self._upgrade_data.append(data[exc.args[0]:] if exc.args else b"")
                self.driver.pause_reading()
        except httptools.HttpParserCallbackError as exc:
            cause = exc.__context__
            if isinstance(cause, _Reject):
                self._reject(cause.status, cause.reason)
            else:
                log.exception("parser callback failed", exc_info=cause)
                self._reject(500, "internal error while parsing")
        except httptools.HttpParserInvalidMethodError:
            # llhttp refuses both unknown methods and binary garbage (a TLS hello on
            # the plain port): only a well-formed request line earns 501, looked for
            # where the refused request begins (after the heads answered from this read).
            if _REQUEST_LINE.match(data, self._refused_at(data, started)):
                self._reject(501, "unknown method")
            else:
                self._reject(400, "malformed request line")
        except httptools.HttpParserError as exc:
            self._reject(400, f"malformed request ({exc})")
        else:
            current = self._current
            if current is not None and self._chunked and current.body_stream is not None \
                    and self.phase is OPEN:
                self._chunk_sizes_seen(data, at_rest and self.requests_started == started + 1)
            elif self._in_head and self.phase is OPEN:
                self._unfinished_head(data, at_rest)
        self._dispatch()
        self.transmitter.flush()

    def _refused_at(self, data: bytes, started: int) -> int:
        """Where in `data` the request llhttp refused begins, as far as can be told.

        Requests it accepted from this read came first; their heads end at CRLFCRLF
        (a body among them makes this a guess, which costs a 400 instead of a 501).
        """
        at = 0
        for _ in range(max(0, self.requests_started - started - 1)):
            end = data.find(_END, at)
            if end < 0:
                break
            at = end + 4
        return at

    def _unfinished_head(self, data: bytes, started_here: bool) -> None:
        """A read ended inside a head: refuse an HTTP/0.9 request line at once.

        llhttp would wait for a version that never comes (`GET /` then CRLF).
        """
        if started_here:
            self._first_line = data[:_FIRST_LINE_MAX]
        elif self._first_line and b"\n" not in self._first_line:
            self._first_line = (self._first_line + data)[:_FIRST_LINE_MAX]
        else:
            return
        # RFC 9112 §2.2: empty lines before a request line are ignored.
        line, newline, _rest = self._first_line.lstrip(b"\r\n").partition(b"\n")
        if newline and b" HTTP/" not in line:
            self._reject(400, "request line without an HTTP version (HTTP/0.9 is not served)")

    def eof_received(self) -> None:
        """The client finished sending; answer what is in hand, then close."""
        if self.phase is OPEN:
            self.phase = LAST
        if self._current is not None and self._current.body_stream is not None:
            self._current.body_stream.fail(ConnectionError("client closed before the body ended"))
        last = self._pipeline[-1] if self._pipeline else None
        outlet = self._outlet
        if outlet is not None and outlet.on_gone is not None and last is None \
                and self._current is None:
            outlet.on_gone(False)     # a relaying answer may take EOF as a disconnect
        if isinstance(last, Request):
            last.keep_alive = False          # its answer closes the connection
        elif last is None and self._active is not None:
            self._active.keep_alive = False
        elif last is None and self.phase is LAST:
            # Nothing left to answer: close once what is queued has been sent.
            self.phase = CLOSING
            self.transmitter.when_sent(self._closed_after_send)

    # -- httptools callbacks -------------------------------------------------------------
    def on_message_begin(self) -> None:
        self._url = b""
        self._raw_headers = []
        self._head_bytes = 0
        self._length = None
        self._chunked = False
        self._coding_ok = True
        self._expects = False
        self._hosts = 0
        self._in_head = True
        self.requests_started += 1

    def on_url(self, url: bytes) -> None:
        self._url += url
        self._head_bytes += len(url)
        if self._head_bytes > self._max_head:
            raise _Reject(414, "request target too long")

    def on_header(self, name: bytes, value: bytes) -> None:
        self._head_bytes += len(name) + len(value) + 4
        if self._head_bytes > self._max_head:
            raise _Reject(431, "request header block too large")
        size = len(name)
        if size == 4 or size == 14 or size == 17 or size == 6:
            self._framing_header(name.lower(), value)
        self._raw_headers.append((name, value))

    def _framing_header(self, name: bytes, value: bytes) -> None:
        """Headers the session itself needs: body framing, expectations, Host."""
        if name == b"host":
            self._hosts += 1
        elif name == b"content-length":
            try:
                self._length = int(value)
            except ValueError:
                raise _Reject(400, "bad Content-Length") from None
        elif name == b"transfer-encoding":
            self._chunked = True
            self._coding_ok = self._coding_ok and value.strip(b" \t").lower() == b"chunked"
        elif name == b"expect":
            if value.lower() != b"100-continue":
                raise _Reject(417, f"unsupported expectation {value!r}")
            self._expects = True

    def on_headers_complete(self) -> None:
        self._in_head = False
        request = self._new_request()
        if self._length or self._chunked:
            self._attach_body(request, self._length, self._chunked, self._coding_ok, self._expects)
            self._at_chunk_line = self._chunked
        if self._hosts != 1 and (self._hosts or request.version == "1.1"):
            raise _Reject(400, "HTTP/1.1 needs exactly one Host header")

    # -- the bare parse ------------------------------------------------------------------
    def _parse_bare(self, data: bytes) -> bool:
        """Parse a read of whole bodiless heads without header callbacks; False: give up."""
        heads = self._bare_heads = []
        done = self._bare_done
        done.clear()
        try:
            self._bare.feed_data(data)
        except (httptools.HttpParserError, httptools.HttpParserUpgrade):
            # A body (_GiveUp), an upgrade, or an error the full parser will report.
            self._bare = _parser(_Callbacks(self, bare=True))
            return False
        count = len(heads)
        if not count or len(done) != count:
            self._bare = _parser(_Callbacks(self, bare=True))
            return False
        # Answered right away, in this read's handling (nothing queued ahead of it),
        # the first request may share this turn's stat of its file (filecache.py).
        fresh = not self._pipeline and self._active is None and not self._waiting_room
        if count == 1:
            # After a request that closes the connection llhttp ignores what follows
            # (lenient_data_after_close): only then can the read hold more than its head.
            head = heads[0]
            block = data if head[3] else data[:data.find(_END) + 4]
            if fresh and not self.transmitter.outstanding:
                # The common case: nothing to wait for.  A static file's plain answer
                # needs no Request at all (static/lane.py).
                url, method, version, keep_alive = head
                lowered = block.lower()
                self.requests_started += 1
                query = url.find(b"?")
                path = url if query < 0 else url[:query]
                quick = self._quick
                if quick is not None and keep_alive and version == "1.1" \
                        and (method == "GET" or method == "HEAD"):
                    entry = quick.get(path)
                    if entry is not None and len(block) <= self._max_head:
                        # One pass over the head finds what the rules check (one Host, no
                        # Expect) and what could change a static answer (If-*, Range).
                        found = _FIELDS.findall(lowered)
                        kind = _QUICK_KINDS.get(found[0] if len(found) == 1 else tuple(found))
                        if kind is not None:
                            answer = entry.answer(method == "HEAD", lowered, True, block if kind else None)
                            if answer is not None:
                                self._metrics.responses_total += 1
                                if type(answer[-1]) is FileRegion:    # sendfile, or the copy path
                                    self.transmitter.transmit(Message(200, (), tuple(answer)))
                                else:
                                    self.transmitter.transmit_slices(answer)
                                return True
                if self._bare_refused(url, version, block, lowered):
                    return True
                request = self._bare_made(head, block, lowered, True)
                if url[:1] == b"/" and url.find(b"#") < 0:
                    request._raw_path = path        # what raw_path would find (request.py)
                    routes = self._routes
                    if routes and method == "GET" and keep_alive and version == "1.1":
                        route = routes.get(path)
                        if route is not None:
                            # A handler the application lets us call at once (no routing);
                            # a dict's answer comes back as its slices, Date line first.
                            self._active = request
                            result = route.answer(request)
                            if type(result) is list:
                                request.answered = True
                                self._active = None
                                self._metrics.responses_total += 1
                                self.transmitter.transmit_slices(result)
                            else:
                                self._take(request, result)
                            return True
                self._answer(request)
            else:
                queued = self._bare_request(head, block, fresh)
                if queued is not None:
                    self._pipeline.append(queued)
            return True
        at = 0
        for head in heads:
            while data.startswith(b"\r\n", at):     # empty lines between requests
                at += 2
            end = data.find(_END, at) + 4
            queued = self._bare_request(head, data[at:end], fresh)
            if queued is None:
                break
            self._pipeline.append(queued)
            if not queued.keep_alive:
                break
            fresh = False
            at = end
        return True

    def _bare_request(self, head: tuple[bytes, str, str, bool], block: bytes, fresh: bool) -> Request | None:
        """The request whose whole head is `block`; None if it was refused (queued as such)."""
        self.requests_started += 1
        lowered = block.lower()
        if self._bare_refused(head[0], head[2], block, lowered):
            return None
        return self._bare_made(head, block, lowered, fresh)

    def _bare_refused(self, url: bytes, version: str, block: bytes, lowered: bytes) -> bool:
        """Refuse (queue the error answer for) a bare head that breaks a rule; True if so."""
        hosts = lowered.count(b"\r\nhost:")
        if hosts != 1 or version != "1.1":        # the common case passes one test
            if version != "1.1" and version != "1.0":
                self._reject(505, f"HTTP/{version} is not supported")
                return True
            if hosts > 1 or (not hosts and version == "1.1"):
                self._reject(400, "HTTP/1.1 needs exactly one Host header")
                return True
        if len(block) > self._max_head:
            self._reject(414 if len(url) > self._max_head else 431, "request header block too large")
            return True
        expect = lowered.find(b"\r\nexpect:")
        if expect >= 0 and lowered[expect + 9:lowered.find(b"\r\n", expect + 9)].strip(b" \t") != b"100-continue":
            self._reject(417, "unsupported expectation")
            return True
        return False

    def _bare_made(self, head: tuple[bytes, str, str, bool], block: bytes, lowered: bytes,
                   fresh: bool) -> Request:
        url, method, version, keep_alive = head
        request = Request(method, url, version, None, keep_alive, self.client, None, block, lowered,
                          self._app, fresh)
        if self._timed:
            request.started = _monotonic()
        if not keep_alive:
            self.phase = LAST
        return request

    def on_bare_headers_complete(self) -> None:
        parser = self._bare
        raw_method = parser.get_method()
        self._bare_heads.append((self._url, _METHODS.get(raw_method) or raw_method.decode("ascii"),
                                 parser.get_http_version(),
                                 parser.should_keep_alive() and not self.draining))

    def on_bare_body(self, *_chunk: bytes) -> None:
        raise _GiveUp()

    def _new_request(self) -> Request:
        parser = self._full
        version = parser.get_http_version()
        if version != "1.1" and version != "1.0":
            raise _Reject(505, f"HTTP/{version} is not supported")
        raw_method = parser.get_method()
        method = _METHODS.get(raw_method) or raw_method.decode("ascii")
        keep_alive = parser.should_keep_alive() and not self.draining
        request = Request(method, self._url, version, self._raw_headers, keep_alive, self.client, None)
        request.app = self._app
        if self._timed:
            request.started = _monotonic()
        self._current = request
        self._pipeline.append(request)
        return request

    def _attach_body(self, request: Request, length: int | None, chunked: bool,
                     coding_ok: bool, expects: bool) -> None:
        if chunked:
            if request.version == "1.0":
                raise _Reject(400, "Transfer-Encoding in an HTTP/1.0 request")
            if not coding_ok:
                raise _Reject(501, "transfer codings other than chunked are not supported")
        if length is not None and length > self._max_body:
            raise _Reject(413, f"declared body of {length} bytes is over the limit")
        request.body_stream = RequestBody(self._max_body, self.driver.pause_reading,
                                          self._resume_reading,
                                          self._send_continue if expects else None)
        request.expect_continue = expects

    def on_chunk_header(self) -> None:
        self._at_chunk_line = False

    def on_chunk_complete(self) -> None:
        self._at_chunk_line = True

    def on_body(self, chunk: bytes) -> None:
        request = self._current
        if request is None or request.body_stream is None:
            return
        try:
            request.body_stream.feed(chunk)
        except BodyTooLarge as exc:
            request.body_stream.fail(exc)
            raise _Reject(413, str(exc)) from None

    def on_message_complete(self) -> None:
        request = self._current
        self._current = None
        self._chunk_line_next = False
        if request is not None:
            if request.body_stream is not None:
                request.body_stream.finish()
            if not request.keep_alive:
                self.phase = LAST

    def _chunk_sizes_seen(self, data: bytes, head_in_this_read: bool) -> None:
        """After a read into a chunked body: check the chunk sizes whose place is known.

        llhttp tells when a chunk header was parsed, not where, so the size lines
        checked are those at a known offset: the first one, right after a head that
        began this read, and one that begins the next read after a chunk ended here.
        Any other oversized chunk is still refused, as its bytes pass the limit.
        """
        if head_in_this_read:
            self._check_chunk_size(data, data.find(_END) + 4)
        if self._at_chunk_line and self.phase is OPEN:
            self._chunk_line_next = True

    def _check_chunk_size(self, data: bytes, at: int) -> None:
        """Refuse at once a chunk that alone would take the body over its limit."""
        request = self._current
        if request is None or request.body_stream is None:
            return
        match = _CHUNK_SIZE.match(data, at)
        if match is not None:
            size = int(match.group(1), 16)
            # The body's own limit: a handler may lift it (a channel's producer streams
            # an unbounded body that is never stored, framework/channels.py).
            if request.body_stream.received + size > request.body_stream.limit:
                request.body_stream.fail(BodyTooLarge(f"chunk of {size} bytes is over the body limit"))
                self._reject(413, f"chunk of {size} bytes is over the body limit")

    # -- refusing ------------------------------------------------------------------------
    def refuse(self, status: int, reason: str) -> None:
        """Answer `status` now (after anything owed) and close: for the server's guards."""
        self._reject(status, reason)
        self._dispatch()
        self.transmitter.flush()

    def _reject(self, status: int, reason: str) -> None:
        """Answer `status` after the answers already owed, then close."""
        self._metrics.requests_rejected += 1
        peer = self.client[0] if self.client else "-"
        log.warning("%s: %d %s", peer, status, reason)
        if self.phase is OPEN:
            self.phase = LAST
        version = "1.1"
        current = self._current
        if current is not None:
            version = current.version
            if current.answered or current is self._active:
                # Its final answer is queued, or its handler is running and sees the
                # failure through its body stream: no second answer, and the
                # connection closes after the one it gets.
                current.keep_alive = False
                if current.answered and self._active is not current:
                    self._close_when_sent()
                return
            try:
                self._pipeline.remove(current)
            except ValueError:
                pass
        self._pipeline.append(_Rejection(status, reason, version))

    def _close_when_sent(self) -> None:
        if self.phase is OPEN or self.phase is LAST:
            self.phase = CLOSING
            self._pipeline.clear()
            self.transmitter.when_sent(self._closed_after_send)

    # -- answering -----------------------------------------------------------------------
    def _dispatch(self) -> None:
        """Answer queued requests in order, as long as loans allow."""
        pipeline = self._pipeline
        while pipeline and self._active is None and self.phase < CLOSING:
            outstanding = self.transmitter.outstanding
            # Over the connection budget, or the global ledger full while this
            # connection already has bytes on loan: wait for the transmitter to drain.
            # A connection with nothing on loan may always send one message, so a few
            # slow readers holding the global budget cannot starve everybody else.
            if outstanding and (outstanding > self._budget or self.ctx.ledger.full):
                self._wait_for_room()
                return
            item = pipeline.popleft()
            if isinstance(item, _Rejection):
                self._send(None, error_response(item.status, item.reason, close=True), item.version)
            elif not self._answer(item):
                return

    def _answer(self, request: Request) -> bool:
        """Ask the application; True if the answer was sent (the next may follow)."""
        self._active = request
        try:
            result = self._app(request)
        except Exception as exc:  # noqa: BLE001 - the app's own error handling failed
            result = self._internal_error(request, exc)
        return self._take(request, result)

    def _take(self, request: Request, result: Any) -> bool:
        """Send or start the application's answer to the active `request`; True if
        it was sent (the next request may follow)."""
        if isinstance(result, Message):
            self._send(request, result, request.version)
            return True
        if isinstance(result, RelayedAnswer):
            # The answer sends itself (the ASGI adapter): it gets this request's
            # Outlet, and the request stays active until it says `end` or `abort`.
            # (Asked before the awaitable checks: it is never awaited, and
            # isawaitable's ABC check costs more.)
            outlet = self._outlet = Outlet(self, request)
            result.relay(outlet)
            return self._active is None
        if type(result) is CoroutineType or inspect.isawaitable(result):
            # The answer's own coroutine becomes the task (no wrapper frame); the
            # session picks its result up in a done-callback.
            task = self.loop.create_task(result if type(result) is CoroutineType else _awaited(result))
            task.add_done_callback(partial(self._answered_later, request))
            self._task = task
            return False
        self._respond_other(request, result)
        return self._active is None

    def _answered_later(self, request: Request, task: asyncio.Task) -> None:
        if task.cancelled():          # the connection went away under the handler
            self._task = None
            self._active = None
            return
        exc = task.exception()
        result = self._internal_error(request, exc) if exc is not None else task.result()
        self._task = None
        if self.phase is CLOSED:
            self._active = None
            return
        if isinstance(result, Message):
            self._send(request, result, request.version)
        else:
            self._respond_other(request, result)
            if self._active is not None:
                return
        self._dispatch()
        self.transmitter.flush()

    def _respond_other(self, request: Request, result: Any) -> None:
        if isinstance(result, StreamResponse):
            if type(result) is PushResponse and self._can_push(request):
                self._push(request, result)
            else:
                self._task = self.loop.create_task(self._stream(request, result))
        elif type(result) is Upgrade and request is self._upgrade:
            self._switch_protocols(request, result)
        elif isinstance(result, RelayedAnswer):
            # The answer sends itself (the ASGI adapter): it gets this request's
            # Outlet, and the request stays active until it says `end` or `abort`.
            self._outlet = Outlet(self, request)
            result.relay(self._outlet)
        else:
            exc = TypeError(f"handler returned {type(result).__name__}, not a Message")
            self._send(request, self._internal_error(request, exc), request.version)

    def _internal_error(self, request: Request, exc: BaseException) -> Message:
        if isinstance(exc, BadRequest):
            return error_response(400, str(exc))
        if isinstance(exc, BodyTooLarge):
            return error_response(413, str(exc), close=True)
        log.error("error answering %s %r\n%s", request.method, request.target,
                  "".join(traceback.format_exception(exc)))
        detail = "".join(traceback.format_exception(exc)) if self.config.debug else None
        return error_response(500, detail)

    def _send(self, request: Request | None, msg: Message, version: str,
              *, streaming: bool = False) -> None:
        """Push the status line and connection headers, and queue the message.

        For a streamed answer (`streaming`) this is its head: a connection that
        closes after it closes after the last chunk, which `_stream` queues.
        """
        stack = msg._stack
        if request is not None and request.keep_alive and request.body_stream is None \
                and version == "1.1" and not msg.close and not self.draining:
            # The common answer: HTTP/1.1 keep-alive, no request body still owed.
            request.answered = True
            status = msg.status
            stack.append(DATE.head(status))
            close = False
        else:
            close = self._connection_fields(request, msg, version, streaming)
            status = msg.status
            stack.append(STATUS_LINES.get(status) or status_line(status))
        if status in _NO_BODY_STATUSES or (request is not None and request.method == "HEAD"):
            msg.head_only = True
        self._metrics.responses_total += 1
        if self.ctx.access_log is not None:
            self.ctx.access_log(request, msg, self.client)
        if close:
            self.transmitter.enqueue(msg)
            if streaming and request is not None:
                # The body still has to go out (and the request's own body may still
                # be arriving): `_stream` closes after the last chunk.
                request.keep_alive = False
            else:
                self._close_when_sent()
        elif streaming or self._pipeline:
            # A streamed head waits for its first chunk; pipelined answers leave
            # together in the one flush after the read is handled.
            self.transmitter.enqueue(msg)
        else:
            self.transmitter.transmit(msg)
        if not streaming:
            self._active = None

    def _connection_fields(self, request: Request | None, msg: Message, version: str,
                           streaming: bool) -> bool:
        """Push Date and Connection for any other answer; True if it closes the connection."""
        close = msg.close or self.draining or request is None or not request.keep_alive
        if request is not None:
            request.answered = True
            body = request.body_stream
            if body is not None and not body.complete:
                if request.expect_continue and body._on_first_read is not None:
                    close = True   # we never said 100 Continue: the body is not coming
                elif not streaming and (self._chunked_in_flight(request)
                                        or self._owed(request) > DISCARD_LIMIT):
                    close = True   # too much still owed to read it only to drop it
                if not streaming:
                    body.discard()
        date = DATE.line()
        if close:
            msg._stack.append(date + b"Connection: close\r\n")
        else:
            msg._stack.append(date + b"Connection: keep-alive\r\n" if version == "1.0" else date)
        return close

    @staticmethod
    def _owed(request: Request) -> int:
        """Bytes of the body still to come, by its declared length (0 if unknown)."""
        body = request.body_stream
        length = request.header(b"content-length")
        try:
            return max(0, int(length) - body.received) if length is not None and body is not None else 0
        except ValueError:
            return 0

    @staticmethod
    def _chunked_in_flight(request: Request) -> bool:
        return request.header(b"transfer-encoding") is not None

    def _switch_protocols(self, request: Request, upgrade: Upgrade) -> None:
        """Queue the 101, then hand the connection to the protocol that takes over."""
        msg = Message(101, upgrade._stack)
        msg.push(DATE.line())
        msg.push(status_line(101))
        self._metrics.responses_total += 1
        if self.ctx.access_log is not None:
            self.ctx.access_log(request, msg, self.client)
        self.phase = CLOSING                  # this session answers nothing more
        self._pipeline.clear()
        self._active = None
        self._upgrade = None
        self.transmitter.wants_idle = False
        self.transmitter.enqueue(msg)
        data, self._upgrade_data = b"".join(self._upgrade_data), []
        protocol = upgrade.take_over(Handover(self.driver, self.transmitter, data,
                                              self.client, self.ctx, request))
        self.driver.session = protocol        # the driver now feeds the new protocol
        self.driver.resume_reading()

    def _abandon_upgrade(self) -> None:
        """The client left after the app chose to upgrade but before the 101 went out."""
        self._upgrade = None
        task = self._task
        if task is not None and task.done() and not task.cancelled() and task.exception() is None:
            answer = task.result()
            if type(answer) is Upgrade and answer.abandon is not None:
                answer.abandon()

    def _closed_after_send(self, exc: BaseException | None) -> None:
        self.driver.close()

    @staticmethod
    def _stream_head(request: Request, resp: StreamResponse) -> Message:
        """A streamed answer's head.  HTTP/1.0 has no chunked coding: the body is
        delimited by the close, so the connection closes once the last chunk is sent
        (never after the head alone)."""
        chunked = request.version != "1.0"
        fields = [("Content-Type", resp.content_type), *resp.headers]
        if chunked:
            fields.append(("Transfer-Encoding", "chunked"))
        return Message(resp.status, (header_block(fields),), close=not chunked)

    def _can_push(self, request: Request) -> bool:
        """A PushResponse may take the connection over when nothing else is owed on it:
        no request body, nothing parsed behind the request, no upgrade, no drain."""
        return (request.method != "HEAD" and request.body_stream is None and not self._pipeline
                and self._current is None and not self._in_head and self._upgrade is None
                and self._outlet is None and self.phase < CLOSING and not self.draining)

    def _push(self, request: Request, resp: PushResponse) -> None:
        """Send the head, then hand the connection to a PushedStream (pushstream.py):
        this session, its parsers and the request are let go while the body streams."""
        self._send(request, self._stream_head(request, resp), request.version, streaming=True)
        self.phase = CLOSING                  # this session answers nothing more
        self._active = None
        driver = self.driver
        driver.pause_reading()
        stream = PushedStream(self.ctx, driver, self.transmitter, self.client, resp.source,
                              chunked=request.version != "1.0", keep_alive=request.keep_alive,
                              app=self._app, resume=_resume_http)
        driver.session = stream
        # The parsers call back into this session and it holds them: a cycle only the
        # cyclic GC would free, long after, from its oldest generation.  Break it now.
        del self._full, self._bare
        stream.start()

    async def _stream(self, request: Request, resp: StreamResponse) -> None:
        """Send a StreamResponse: a head, then one small Message per chunk."""
        chunked = request.version != "1.0"
        self._send(request, self._stream_head(request, resp), request.version, streaming=True)
        self.transmitter.flush()
        iterator = resp.body.__aiter__()
        failed = False
        payload: tuple[Any, ...]
        try:
            if request.method != "HEAD":
                async for chunk in iterator:
                    if self.phase is CLOSED:
                        break
                    if type(chunk) is tuple:
                        # Several slices sent as one chunk without joining them: fan-out
                        # lends every reader the same chunk objects (core/fanout.py).
                        size = sum(map(len, chunk))
                        if not size:
                            continue
                        payload = (b"%x\r\n" % size, *chunk, b"\r\n") if chunked else chunk
                    else:
                        if isinstance(chunk, str):
                            chunk = chunk.encode("utf-8")
                        if not chunk:
                            continue
                        payload = (b"%x\r\n" % len(chunk), chunk, b"\r\n") if chunked else (chunk,)
                    self.transmitter.enqueue(Message(0, (), payload))
                    self.transmitter.flush()
                    if self.transmitter.outstanding > self._budget:
                        await self._room()
                if chunked and self.phase is not CLOSED:
                    self.transmitter.enqueue(Message(0, (), (b"0\r\n\r\n",)))
        except asyncio.CancelledError:
            raise
        except Exception:  # noqa: BLE001 - the body generator failed mid-stream
            # The body is cut short: the client must see a broken framing (no last
            # chunk), and the connection is closed at once after what is queued.
            log.exception("streaming body of %s %r failed", request.method, request.target)
            failed = True
        finally:
            aclose = getattr(iterator, "aclose", None)
            if aclose is not None:
                try:
                    await aclose()
                except Exception:  # noqa: BLE001 - a failing cleanup must not hide the answer
                    log.debug("closing the body iterator of %r failed", request.target, exc_info=True)
        self._task = None
        if request.body_stream is not None and not request.body_stream.complete:
            request.body_stream.discard()
            if not failed and (self._chunked_in_flight(request) or self._owed(request) > DISCARD_LIMIT):
                request.keep_alive = False
        self._active = None
        if self.phase is CLOSED:
            return
        if failed or not request.keep_alive:
            # HTTP/1.0, Connection: close, a half-close during the stream, or a
            # failed body: close once everything queued has gone out.
            self._close_when_sent()
        self.transmitter.flush()
        if self.phase is not CLOSING:
            self._dispatch()
            self.transmitter.flush()

    def _send_continue(self) -> None:
        # The handler asked for the body: tell the client to send it.
        self.transmitter.enqueue(Message(0, (), (CONTINUE,)))
        self.transmitter.flush()

    # -- loans ---------------------------------------------------------------------------
    def _wait_for_room(self) -> None:
        if self._waiting_room:
            return
        self._waiting_room = True
        self.transmitter.wants_idle = True
        self.driver.pause_reading()

    async def _room(self) -> None:
        """Wait until the transmitter has drained (for streaming producers)."""
        if self.transmitter.idle or self.phase is CLOSED:
            return
        self._room_waiter = self.loop.create_future()
        self.transmitter.wants_idle = True
        try:
            await self._room_waiter
        finally:
            self._room_waiter = None

    def on_transmit_idle(self) -> None:
        """Called by the transmitter when it has handed everything to the kernel and
        `wants_idle` is set (loan budget, streaming producer, drain)."""
        self.transmitter.wants_idle = self.draining
        waiter = self._room_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
        if self._waiting_room:
            self._waiting_room = False
            self._resume_reading()
            self._dispatch()
            self.transmitter.flush()
        if self.draining and self.phase is not CLOSING and self.phase is not CLOSED \
                and self._active is None and not self._pipeline and self._current is None \
                and not self._in_head:
            self.driver.close()

    def _resume_reading(self) -> None:
        if not self._waiting_room and self.phase is not CLOSED:
            self.driver.resume_reading()

    # -- lifecycle -------------------------------------------------------------------------
    def progress(self) -> tuple | None:
        """(phase, token) for the sweeper, or None while the server owes the next move."""
        if self._in_head:
            return ("head", self.requests_started)
        current = self._current
        if current is not None and current.body_stream is not None:
            return ("body", self.requests_started, current.body_stream.received)
        if self._active is None and not self._pipeline and self.transmitter.idle:
            return ("idle", self.requests_started)
        return None

    def on_timeout(self, phase: str) -> None:
        """The sweeper saw no progress in `phase` for that phase's limit."""
        if phase == "idle":
            log.debug("closing idle keep-alive connection from %s", self.client)
            self.driver.close()
            return
        log.warning("closing connection from %s: %s timeout", self.client, phase)
        self._metrics.requests_rejected += 1
        current = self._current
        if current is not None and current.body_stream is not None:
            current.body_stream.fail(TimeoutError("request body timeout"))
        if current is not None and current.answered:
            # Answered already: no second answer, just stop waiting for the body.
            self.driver.abort()
            return
        if self._active is None and self.transmitter.idle:
            self.phase = LAST
            self._pipeline.clear()
            self._send(None, error_response(408, f"{phase} timeout", close=True), "1.1")
            self.transmitter.flush()
        else:
            self.driver.abort()

    def start_draining(self) -> None:
        """Graceful shutdown: finish what is in flight, then close."""
        self.draining = True
        self.transmitter.wants_idle = True
        if self._active is None and not self._pipeline and self.transmitter.idle:
            self.driver.close()

    def connection_lost(self) -> None:
        self.phase = CLOSED
        outlet, self._outlet = self._outlet, None
        if outlet is not None:
            outlet.closed = True
            if outlet.on_gone is not None:
                outlet.on_gone(True)
        for item in (self._current, self._active):
            if item is not None and item.body_stream is not None:
                item.body_stream.fail(ConnectionError("client disconnected"))
        if self._task is not None and not self._task.done():
            self._task.cancel()
        if self._upgrade is not None:
            self._abandon_upgrade()
        # Let go of the task: its CancelledError's traceback holds the streaming frame,
        # whose locals (the last chunks sent) would otherwise wait for the cyclic GC.
        self._task = None
        waiter = self._room_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    @property
    def busy(self) -> bool:
        return self._active is not None or bool(self._pipeline) or not self.transmitter.idle


def _resume_http(ctx: ServerContext, driver: Driver, transmitter: Any,
                 client: tuple[str, int] | None, app: Any, data: bytes) -> None:
    """After a pushed stream on a keep-alive connection: a fresh session reads on."""
    session = HttpSession(ctx, driver, transmitter, client)
    session._app = app
    transmitter.set_idle_listener(session.on_transmit_idle)
    transmitter.wants_idle = False
    driver.session = session
    driver.resume_reading()
    if data:
        session.data_received(data)


def _parser(callbacks: _Callbacks) -> httptools.HttpRequestParser:
    parser = httptools.HttpRequestParser(callbacks)
    # llhttp >= 9 refuses bytes after a `Connection: close` request; we simply stop
    # parsing there, so let it through instead of raising (uvicorn #2238).
    parser.set_dangerous_leniencies(lenient_data_after_close=True)
    return parser


class RelayedAnswer:
    """Base of answers that send themselves: `relay(outlet)` is called once, at once.

    For producers whose answer is not one Message nor an async iterator of chunks —
    the ASGI adapter, whose application pushes head and body pieces when it likes.
    `relay` must not block: it starts whatever task it needs and returns.
    """

    __slots__ = ()

    def relay(self, outlet: Outlet) -> None:
        raise NotImplementedError


class Outlet:
    """One active request's way out, lent to a RelayedAnswer until it ends.

    `respond(msg)` sends a whole answer (head and payload in one Message) and ends
    the request; or `start(head)` sends a head, `send(msg)` body pieces (framed by
    the caller), and `end()` finishes it.  `abort()` cuts the connection (a broken
    answer: the client must not take a truncated body for a whole one).  While the
    transmitter holds more than the connection's loan budget, `over_budget` is true
    and `room()` waits for it to drain.  `on_gone(lost)` is called once when the
    client has finished sending (False: EOF, it may still read) or the connection is
    gone (True); `closed` says the latter.  `loop` is the connection's event loop.
    """

    __slots__ = ("_session", "request", "loop", "closed", "on_gone", "_ended")

    def __init__(self, session: HttpSession, request: Request) -> None:
        self._session = session
        self.request = request
        # The connection's loop, for the answer's tasks: asyncio.get_running_loop()
        # costs a getpid() system call each time (CPython's check for a fork).
        self.loop = session.loop
        self.closed = False
        self.on_gone: Any = None
        self._ended = False

    def respond(self, msg: Message) -> None:
        session = self._session
        if self._ended or self.closed:
            return
        self._ended = True
        session._outlet = None
        request = self.request
        session._send(request, msg, request.version)
        if session._pipeline:        # (nothing parsed behind it: nothing to dispatch)
            session._dispatch()
        session.transmitter.flush()

    def start(self, head: Message) -> None:
        if self._ended or self.closed:
            return
        session = self._session
        session._send(self.request, head, self.request.version, streaming=True)
        session.transmitter.flush()

    def send(self, msg: Message) -> None:
        if self._ended or self.closed:
            return
        transmitter = self._session.transmitter
        transmitter.enqueue(msg)
        transmitter.flush()

    @property
    def over_budget(self) -> bool:
        return bool(self._session.transmitter.outstanding > self._session.config.connection_loan_budget)

    async def room(self) -> None:
        if not self.closed:
            await self._session._room()

    def end(self) -> None:
        """The streamed answer is complete: close if owed, else on to the next request."""
        if self._ended or self.closed:
            return
        self._ended = True
        session = self._session
        session._outlet = None
        request = self.request
        if request.body_stream is not None and not request.body_stream.complete:
            request.body_stream.discard()
        session._active = None
        if not request.keep_alive:
            session._close_when_sent()
        if session.phase < CLOSING:
            session._dispatch()
            session.transmitter.flush()

    def abort(self) -> None:
        if self.closed:
            return
        self._ended = True
        self._session.driver.abort()


async def _awaited(awaitable: Any) -> Any:
    """Wrap a non-coroutine awaitable so it can run as a task."""
    return await awaitable
