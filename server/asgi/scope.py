"""The ASGI `http` scope for one Request: every field the spec lists, as the spec says.

Theory of operation.  The session has already parsed the request; the scope is a
fresh dict per request (the application may keep or change it), built from the
Request's lazily derived pieces:

* `path` is percent-decoded as UTF-8 (a path that is not valid UTF-8 is a 400
  before the application is called), `raw_path` the bytes as sent; both carry
  `root_path` in front, as uvicorn does and Starlette >= 0.33 expects (it strips the
  prefix when routing);
* `query_string` stays percent-encoded bytes; `headers` are the raw pairs with the
  names lower-cased, values as sent but for the optional whitespace around them
  (RFC 9112 §5), whichever parser read the head.  Each head is split line by
  line, but a line equal to the line in the same place of the last head split (a
  browser repeats most of its fields: User-Agent, Accept, Accept-Language...) takes
  that line's pair, an immutable tuple, instead of a partition, a lowering and a
  strip; the list is new every time;
* `client` and `scheme` come from the socket, or — only when the peer is a trusted
  proxy — from its forwarding headers (server.http.forwarded);
* `state` is a shallow copy of the lifespan state, so a request may add keys
  without the next one seeing them, but shares the objects startup put there;
* `asgi.spec_version` is 2.4: `send` raises an OSError subclass once the client is
  gone, so Starlette streams without a second task listening for `http.disconnect`
  (RESEARCH.md §7);
* `extensions` advertises the zero-copy sends (zerocopy.py).
"""

from __future__ import annotations

from typing import Any

from ..http.forwarded import TrustedProxies, forwarded_peer
from ..http.request import Request

__all__ = ["ASGI_VERSION", "ScopeMaker"]

ASGI_VERSION = {"version": "3.0", "spec_version": "2.4"}


_FORWARDING = frozenset({b"forwarded", b"x-forwarded-for", b"x-forwarded-proto"})


def _forwarding(headers: list[tuple[bytes, bytes]]) -> bool:
    for name, _value in headers:
        if name in _FORWARDING:
            return True
    return False


class ScopeMaker:
    """Builds scopes for one server: its address, scheme, root path and trust."""

    __slots__ = ("server", "scheme", "root_path", "_raw_root", "trusted", "state", "_last")

    def __init__(self, *, scheme: str = "http", root_path: str = "",
                 trusted: TrustedProxies | None = None, state: dict[str, Any] | None = None) -> None:
        self.server: tuple[str, int] | None = None     # set once the listener is bound
        self.scheme = scheme
        self.root_path = root_path
        self._raw_root = root_path.encode("utf-8")
        self.trusted = trusted
        self.state = state if state is not None else {}
        # The field lines of the last head block split, and their pairs.
        self._last: tuple[list[bytes], tuple[tuple[bytes, bytes], ...]] = ([], ())

    def http(self, request: Request) -> dict[str, Any]:
        """The scope for `request`; BadRequest if its path cannot be decoded."""
        target = request.target
        try:
            text = target.decode("ascii")
        except UnicodeDecodeError:
            text = ""                        # not ASCII: Request.path decides
        path: str | None = None
        # The common origin-form target with nothing to decode (no fragment, no
        # escape in the path): path and query are its pieces, what Request.path and
        # .query_string would find.  (Tested on the decoded text: `in` on bytes tries
        # its argument as an integer first, and each bytes.find parses its arguments
        # the slow way, in CPython 3.11; the str tests cost less than the search.)
        if text[:1] == "/" and "#" not in text:
            if "?" in text:
                path = text.partition("?")[0]
                raw_path, _, query_string = target.partition(b"?")
            else:
                path, raw_path, query_string = text, target, b""
            if "%" in path:
                path = None
        if path is None:
            path = request.path              # raises BadRequest on broken UTF-8
            raw_path = request.raw_path
            query_string = request.query_string.encode("latin-1")
        head = request.head
        if head is not None:
            # The pairs depend only on what follows the request line.  (A head that
            # begins with the empty lines a client may send first is split on its own.)
            line_end = head.find(b"\r\n")
            if line_end > 0:
                lines, pairs = self._last
                headers, lines = _fields_like(head[line_end:], lines, pairs)
                self._last = (lines, tuple(headers))
            else:
                headers = _fields(head)
        else:
            # (llhttp hands values over with any trailing whitespace: trim it, as _fields does.)
            headers = [(name.lower(), value.rstrip(b" \t")) for name, value in request.raw_headers]
        client = request.client
        scheme = self.scheme
        trusted = self.trusted
        if trusted is not None and (head is None or request.lowered_head.find(b"forwarded") >= 0) \
                and _forwarding(headers):
            # Only a request that carries forwarding headers pays for the trust check
            # (one search of the lowered head rules them out for the others).
            found = forwarded_peer(client, request.raw_headers, trusted, scheme)
            client, scheme = found.client, found.scheme
        root_path = self.root_path
        if root_path:
            path = root_path + path
            raw_path = self._raw_root + raw_path
        return {
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": "2.4"},
            "http_version": request.version,
            "method": request.method,
            "scheme": scheme,
            "path": path,
            "raw_path": raw_path,
            "query_string": query_string,
            "root_path": root_path,
            "headers": headers,
            "client": client,
            "server": self.server,
            "state": self.state.copy(),
            "extensions": {"http.response.pathsend": {}, "http.response.zerocopysend": {}},
        }


def _fields_like(section: bytes, last_lines: list[bytes], last_pairs: tuple[tuple[bytes, bytes], ...]
                 ) -> tuple[list[tuple[bytes, bytes]], list[bytes]]:
    """The pairs of a field section (from the CRLF ending the request line), and its
    lines: a line equal to the last head's line in the same place takes that line's
    pair (a comparison costs less than a split, a lowering and a strip).  Values are
    stripped as `_fields` strips them (see there)."""
    lines = section.split(b"\r\n")
    del lines[0]                         # (before the section's first CRLF: nothing)
    try:
        del lines[lines.index(b""):]     # the empty line ending the head, and after
    except ValueError:
        pass
    fields = []
    known = len(last_lines)
    at = 0
    for line in lines:
        if at < known and line == last_lines[at]:
            fields.append(last_pairs[at])
        else:
            name, _, value = line.partition(b":")
            fields.append((name.lower(), value.strip()))
        at += 1
    return fields, lines


def _fields(head: bytes) -> list[tuple[bytes, bytes]]:
    """The scope's header pairs straight from a raw head block: names lowered, values
    without the optional whitespace around them (request.split_head, in one pass).

    The block is one httptools accepted (the bare parse): no value holds a CR, LF,
    VT or FF (llhttp refuses them), so strip() with no argument — cheaper than
    naming the set — removes exactly the spaces and tabs around it.
    """
    fields = []
    for line in head.lstrip(b"\r\n").split(b"\r\n")[1:]:
        if not line:
            break
        name, _, value = line.partition(b":")
        fields.append((name.lower(), value.strip()))
    return fields
