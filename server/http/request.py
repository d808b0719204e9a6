"""The Request a handler sees: what the client asked, and its body as a stream.

The HTTP session fills a Request from httptools callbacks and hands it to the
application as soon as the head is complete; the body keeps arriving behind it.
Everything derived (decoded path, parsed query, header lookup, cookies) is computed
lazily, because the hot static path needs almost none of it.

A request whose whole head arrived in one read is parsed by httptools without a
callback per header field (session.py): it keeps the raw head block (`head`), and
its header list is split out of that block only if somebody asks for it.  Single
fields are found in the lowered block with one C-level search (`header`), which is
all the static site needs (conditionals, Range, Accept-Encoding).  httptools has
already validated the block's syntax, so splitting it at CRLF and the first colon
gives exactly the fields it saw.

The body is a bounded stream (`RequestBody`): chunks from the parser are queued, and
when more than `PAUSE_ABOVE` bytes wait unread the session stops reading the socket
— back-pressure, not buffering.  `Expect: 100-continue` is answered the first time
the handler asks for the body, so a handler that refuses an upload never receives it.
"""

from __future__ import annotations

import asyncio
import json as _json
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from types import MappingProxyType
from typing import Any
from urllib.parse import parse_qs, unquote

from .cookies import parse_cookie_header
from .forms import FormData, FormLimits, parse_form

__all__ = ["Headers", "Request", "RequestBody", "BodyTooLarge", "BadRequest"]

PAUSE_ABOVE = 64 << 10
_NO_PARAMS: Mapping[str, Any] = MappingProxyType({})   # shared, read-only: no dict per request



_JSON_KINDS = {dict: "an object", list: "an array", str: "a string", int: "a number",
               float: "a number", bool: "a boolean", type(None): "null"}


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


class BodyTooLarge(Exception):
    """The request body went past the configured limit (→ 413)."""


class BadRequest(Exception):
    """The request cannot be understood (→ 400)."""


class Headers:
    """Case-insensitive, multi-valued view of the request header fields."""

    __slots__ = ("_raw", "_index")

    def __init__(self, raw: list[tuple[bytes, bytes]]) -> None:
        self._raw = raw
        self._index: dict[str, list[str]] | None = None

    def _build(self) -> dict[str, list[str]]:
        index: dict[str, list[str]] = {}
        for name, value in self._raw:
            index.setdefault(name.decode("latin-1").lower(), []).append(value.decode("latin-1"))
        self._index = index
        return index

    def get(self, name: str, default: str | None = None) -> str | None:
        values = (self._index or self._build()).get(name.lower())
        return ", ".join(values) if values else default

    def getall(self, name: str) -> list[str]:
        return list((self._index or self._build()).get(name.lower(), ()))

    def __getitem__(self, name: str) -> str:
        value = self.get(name)
        if value is None:
            raise KeyError(name)
        return value

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.lower() in (self._index or self._build())

    def items(self) -> Iterator[tuple[str, str]]:
        for name, value in self._raw:
            yield name.decode("latin-1").lower(), value.decode("latin-1")

    def keys(self) -> list[str]:
        return list(self._index or self._build())

    def __iter__(self) -> Iterator[str]:
        return iter(self.keys())

    def __len__(self) -> int:
        return len(self._raw)

    def __repr__(self) -> str:
        return f"Headers({list(self.items())!r})"


class RequestBody:
    """The request body as a bounded queue of chunks, fed by the parser."""

    __slots__ = ("_chunks", "_buffered", "received", "complete", "_waiter", "_error",
                 "_pause", "_resume", "_on_first_read", "consumed", "limit")

    def __init__(self, limit: int, pause: Callable[[], None], resume: Callable[[], None],
                 on_first_read: Callable[[], None] | None = None) -> None:
        self._chunks: deque[bytes] = deque()
        self._buffered = 0
        self.received = 0
        self.complete = False
        self.consumed = False
        self.limit = limit
        self._waiter: asyncio.Future | None = None
        self._error: BaseException | None = None
        self._pause = pause
        self._resume = resume
        self._on_first_read = on_first_read

    # -- parser side -------------------------------------------------------------------
    def feed(self, chunk: bytes) -> None:
        self.received += len(chunk)
        if self.received > self.limit:
            raise BodyTooLarge(f"request body over {self.limit} bytes")
        if self.consumed:
            return            # the handler is done with this request: discard the rest
        self._chunks.append(chunk)
        self._buffered += len(chunk)
        if self._buffered > PAUSE_ABOVE:
            self._pause()
        self._wake()

    def finish(self) -> None:
        self.complete = True
        self._wake()

    def fail(self, exc: BaseException) -> None:
        self._error = exc
        self._wake()

    @property
    def error(self) -> BaseException | None:
        """Why the body ended early (ConnectionError: the client left), or None."""
        return self._error

    def discard(self) -> None:
        """The handler has answered: drop what is queued and whatever still arrives."""
        self.consumed = True
        self._chunks.clear()
        if self._buffered:
            self._buffered = 0
            self._resume()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    # -- handler side ------------------------------------------------------------------
    async def read_chunk(self) -> bytes:
        """The next chunk, or b"" at the end of the body."""
        if self._on_first_read is not None:
            first, self._on_first_read = self._on_first_read, None
            first()
        while True:
            if self._chunks:
                chunk = self._chunks.popleft()
                self._buffered -= len(chunk)
                if self._buffered <= PAUSE_ABOVE // 2:
                    self._resume()
                return chunk
            if self._error is not None:
                raise self._error
            if self.complete:
                return b""
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None


def split_head(head: bytes) -> list[tuple[bytes, bytes]]:
    """The (name, value) fields of a raw request head (request line first, CRLF lines)."""
    fields = []
    for line in head.lstrip(b"\r\n").split(b"\r\n")[1:]:
        if not line:
            break
        name, _, value = line.partition(b":")
        fields.append((name, value.strip(b" \t")))
    return fields


class Request:
    """One HTTP request, as handed to the application."""

    # What every request sets lives in slots; what is derived on demand (or set by
    # hooks and routing) starts as a class-level default and lands in the instance
    # dict only when somebody asks: the hot static path never does.
    __slots__ = ("method", "target", "version", "_raw_headers", "head", "_lowered", "keep_alive",
                 "client", "body_stream", "app", "_raw_path", "answered", "fresh",
                 "__dict__", "__weakref__")

    _state: dict[str, Any] | None = None
    route_params: Mapping[str, Any] = _NO_PARAMS
    expect_continue = False
    _headers: Headers | None = None
    _path: str | None = None
    _query_string: str | None = None
    _query: dict[str, list[str]] | None = None
    _cookies: dict[str, str] | None = None
    _form: FormData | None = None
    # When the head was complete (monotonic), for the access log's request time; the
    # session sets it only when an access log is written (no clock read otherwise).
    started = 0.0

    def __init__(self, method: str, target: bytes, version: str,
                 raw_headers: list[tuple[bytes, bytes]] | None, keep_alive: bool,
                 client: tuple[str, int] | None, body_stream: RequestBody | None,
                 head: bytes | None = None, lowered: bytes | None = None, app: Any = None,
                 fresh: bool = False) -> None:
        self.method = method
        self.target = target
        self.version = version
        # Either the field list (collected by callbacks) or the raw head block it is
        # split out of on demand; `head` stays None for a list-built request.
        self._raw_headers = raw_headers
        self.head = head
        self._lowered = lowered
        self.keep_alive = keep_alive
        self.client = client
        self.body_stream = body_stream
        self.app: Any = app
        self._raw_path: bytes | None = None
        # Set by the session once this request's final answer is queued: whatever of
        # its body arrives later is discarded, never answered a second time.
        self.answered = False
        # Its first byte was in the socket when this loop turn's poll returned (the
        # first request of a read that began between requests): the open-file cache
        # may answer it with a stat taken during this turn (filecache.py).
        self.fresh = fresh

    @property
    def state(self) -> dict[str, Any]:
        """Per-request scratch space for hooks and handlers (made on first use)."""
        if self._state is None:
            self._state = {}
        return self._state

    # -- the target --------------------------------------------------------------------
    def _split_target(self) -> None:
        target = self.target
        if not target.startswith(b"/"):
            # absolute-form ("GET http://host/path") or "*": keep only path and query
            if target == b"*":
                self._raw_path, self._query_string = b"*", ""
                return
            scheme_end = target.find(b"://")
            if scheme_end < 0:
                raise BadRequest("request target is neither a path nor an absolute URL")
            slash = target.find(b"/", scheme_end + 3)
            target = target[slash:] if slash >= 0 else b"/"
        target = target.split(b"#", 1)[0]
        path, _, query = target.partition(b"?")
        self._raw_path = path
        self._query_string = query.decode("latin-1")

    @property
    def raw_path(self) -> bytes:
        """The path exactly as sent, still percent-encoded."""
        raw = self._raw_path
        if raw is None:
            target = self.target
            # find(), not `in`: bytes.__contains__ first tries its argument as an
            # integer, and raises and clears a TypeError each time (CPython 3.11).
            if target[:1] == b"/" and target.find(b"#") < 0:
                # The common origin-form target: the path is what precedes any query.
                query = target.find(b"?")
                self._raw_path = raw = target if query < 0 else target[:query]
            else:
                self._split_target()
                raw = self._raw_path
        return raw  # type: ignore[return-value]

    @property
    def path(self) -> str:
        """The percent-decoded path (strict UTF-8: overlong or broken sequences → 400)."""
        if self._path is None:
            raw = self.raw_path
            try:
                text = raw.decode("ascii")
                self._path = unquote(text, errors="strict") if "%" in text else text
            except UnicodeDecodeError as exc:
                raise BadRequest("path is not valid UTF-8") from exc
        return self._path

    @property
    def query_string(self) -> str:
        if self._query_string is None:
            self._split_target()
        return self._query_string  # type: ignore[return-value]

    @property
    def query(self) -> dict[str, list[str]]:
        """Parsed query: name → list of values (blank values kept)."""
        if self._query is None:
            self._query = parse_qs(self.query_string, keep_blank_values=True)
        return self._query

    def query_value(self, name: str, default: str | None = None) -> str | None:
        values = self.query.get(name)
        return values[0] if values else default

    # -- headers -----------------------------------------------------------------------
    @property
    def raw_headers(self) -> list[tuple[bytes, bytes]]:
        """The header fields as sent: (name, value) bytes pairs, in order."""
        raw = self._raw_headers
        if raw is None:
            raw = self._raw_headers = split_head(self.head or b"")
        return raw

    @property
    def headers(self) -> Headers:
        if self._headers is None:
            self._headers = Headers(self.raw_headers)
        return self._headers

    @property
    def lowered_head(self) -> bytes:
        """The head lowered, for presence tests: `b"\\r\\nrange:" in request.lowered_head`.

        Every field line in it starts with CRLF and its name ends with a colon, so a
        search for `b"\\r\\n" + name + b":"` finds exactly the fields of that name.
        """
        lowered = self._lowered
        if lowered is None:
            head = self.head
            if head is not None:
                lowered = head.lower()
            else:
                lowered = b"".join([b"\r\n" + name.lower() + b":" + value
                                    for name, value in self._raw_headers or ()])
            self._lowered = lowered
        return lowered

    def header(self, name: bytes) -> bytes | None:
        """One header by lower-case bytes name; repeated fields joined by ", "."""
        head = self.head
        if head is None:
            found = [value for key, value in self._raw_headers or ()
                     if len(key) == len(name) and key.lower() == name]
            return b", ".join(found) if found else None
        lowered = self.lowered_head
        marker = b"\r\n" + name + b":"
        at = lowered.find(marker)
        if at < 0:
            return None
        values = []
        while at >= 0:
            start = at + len(marker)
            end = lowered.find(b"\r\n", start)
            if end < 0:       # the last field: the block ends without its CRLF
                end = len(lowered)
            values.append(head[start:end].strip(b" \t"))
            at = lowered.find(marker, end)
        return values[0] if len(values) == 1 else b", ".join(values)

    @property
    def cookies(self) -> dict[str, str]:
        """The Cookie header as name → value (lenient, as browsers send it: cookies.py)."""
        if self._cookies is None:
            jar: dict[str, str] = {}
            for value in self.headers.getall("cookie"):
                for name, val in parse_cookie_header(value).items():
                    jar.setdefault(name, val)
            self._cookies = jar
        return self._cookies

    # -- the body ----------------------------------------------------------------------
    async def stream(self) -> AsyncIterator[bytes]:
        """The body, chunk by chunk, as it arrives (never buffered whole)."""
        if self.body_stream is None:
            return
        while True:
            chunk = await self.body_stream.read_chunk()
            if not chunk:
                return
            yield chunk

    async def body(self) -> bytes:
        """The whole body (bounded by the server's body limit)."""
        parts = [chunk async for chunk in self.stream()]
        return b"".join(parts)

    async def json(self, expect: type | tuple[type, ...] | None = None) -> Any:
        """The body parsed as JSON (None if empty); BadRequest (400) if it is not.

        Strict RFC 8259: NaN and Infinity are refused, and nesting deeper than the
        decoder's recursion bound is a 400, not a crash.  `expect=dict` (or `list`,
        or a tuple of types) also refuses a document of any other kind, so a handler
        that indexes the result cannot fail with a 500 on `3` or `"x"`.
        """
        data = await self.body()
        if not data:
            if expect is not None:
                raise BadRequest("body is empty, JSON expected")
            return None
        try:
            # RFC 8259 §8.1: JSON text is UTF-8; json.loads(bytes) would also take
            # UTF-16/32 and let encoded surrogates through.
            value = _json.loads(data.decode("utf-8"), parse_constant=_refuse_constant)
        except RecursionError:
            raise BadRequest("body is not valid JSON: nested too deeply") from None
        except ValueError as exc:
            raise BadRequest(f"body is not valid JSON: {exc}") from None
        if expect is not None and not isinstance(value, expect):
            wanted = expect if isinstance(expect, tuple) else (expect,)
            names = " or ".join(_JSON_KINDS.get(t, t.__name__) for t in wanted)
            raise BadRequest(f"JSON body must be {names}, not {_JSON_KINDS.get(type(value), type(value).__name__)}")
        return value

    async def text(self) -> str:
        return (await self.body()).decode("utf-8", errors="replace")

    async def form(self, *, max_fields: int = 1000, max_files: int = 1000,
                   max_part_size: int = 1 << 20, max_file_size: int | None = None,
                   upload_dir: Any = None) -> FormData:
        """The body as a form (urlencoded or multipart), parsed as it arrives; file
        parts are streamed to temporary files (forms.py).  Over a limit → 413,
        malformed → 400, not a form → 415.  Parsed once: later calls return it again."""
        if self._form is None:
            limits = FormLimits(max_fields, max_files, max_part_size, max_file_size)
            self._form = await parse_form(self.headers.get("content-type"), self.stream(),
                                          limits=limits, upload_dir=upload_dir)
        return self._form

    def __repr__(self) -> str:
        return f"<Request {self.method} {self.target!r}>"
