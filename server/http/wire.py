"""Prebuilt HTTP/1.1 wire fragments: status lines, the Date header, header blocks.

Everything that is the same for many responses is built once, as bytes, so that
the per-request work is picking slices, not formatting strings.  The Date header is
rebuilt at most once a second (`DateHeader`), as RFC 9110 §6.6.1 allows.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterable
from email.utils import formatdate
from http import HTTPStatus

__all__ = ["DATE", "REASONS", "STATUS_LINES", "header_block", "http_date", "status_line"]

REASONS: dict[int, str] = {s.value: s.phrase for s in HTTPStatus}
REASONS.setdefault(425, "Too Early")

SERVER_NAME = b"pageloan"

_STATUS_LINES: dict[int, bytes] = {
    code: f"HTTP/1.1 {code} {phrase}\r\nServer: pageloan\r\n".encode("latin-1")
    for code, phrase in REASONS.items()
}


# Read-only for the session's hot path (a dict hit instead of a call).
STATUS_LINES = _STATUS_LINES


def status_line(code: int) -> bytes:
    """`HTTP/1.1 <code> <reason>` plus the Server header, prebuilt."""
    line = _STATUS_LINES.get(code)
    if line is None:
        line = f"HTTP/1.1 {code} Unknown\r\nServer: pageloan\r\n".encode("latin-1")
        _STATUS_LINES[code] = line
    return line


def http_date(timestamp: float) -> str:
    """An IMF-fixdate (`Sun, 06 Nov 1994 08:49:37 GMT`)."""
    return formatdate(timestamp, usegmt=True)


class DateHeader:
    """`Date: ...\r\n`, recomputed only when the second changes.

    `until` is when the current line goes stale (the next whole second); an answer
    that embeds the line can be reused until then.
    """

    __slots__ = ("until", "_line", "_heads")

    def __init__(self) -> None:
        self.until = 0.0
        self._line = b""
        self._heads: dict[int, bytes] = {}

    def line(self) -> bytes:
        now = time.time()
        if now >= self.until:
            self._advance(now)
        return self._line

    def head(self, status: int) -> bytes:
        """The status line, Server and Date of a keep-alive answer: one slice, made
        at most once a second per status (the common answer's whole connection part)."""
        now = time.time()
        if now >= self.until:
            self._advance(now)
        head = self._heads.get(status)
        if head is None:
            head = self._heads[status] = status_line(status) + self._line
        return head

    def _advance(self, now: float) -> None:
        second = int(now)
        self.until = second + 1.0
        self._line = b"Date: " + http_date(second).encode("ascii") + b"\r\n"
        self._heads = {}


DATE = DateHeader()


_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")


def header_block(headers: Iterable[tuple[str, str]], *, end: bool = True) -> bytes:
    """Encode header fields as one slice; `end` appends the blank line closing the head.

    Names must be RFC 9110 tokens, and values free of control characters (CR, LF,
    NUL, ...; HTAB is allowed): a handler must never be able to split a response or
    send bytes a client's parser refuses.
    """
    out = []
    for name, value in headers:
        value = str(value)
        if _TOKEN.fullmatch(name) is None or _CONTROL.search(value) is not None:
            raise ValueError(f"invalid header field {name!r}: {value[:80]!r}")
        out.append(f"{name}: {value}\r\n")
    if end:
        out.append("\r\n")
    return "".join(out).encode("latin-1")
