"""Building Messages for the common kinds of response.

Each builder returns a Message whose header stack holds one *entity block* (the
header fields that describe the payload, ending with the blank line); the HTTP
session pushes the status line and connection headers on top when it sends it.
`StreamResponse` is the one response that is not a single Message: its body is an
async iterator, sent with chunked transfer coding, one small Message per chunk.
"""

from __future__ import annotations

import json as _json
from collections.abc import AsyncIterable, Iterable
from typing import Any

from ..core.message import Message, Slice
from .wire import REASONS, header_block

__all__ = [
    "message_response", "text_response", "json_response", "bytes_response",
    "redirect_response", "error_response", "empty_response", "StreamResponse",
]

Header = tuple[str, str]


def message_response(status: int, payload: Iterable[Slice], content_type: str | None,
                     headers: Iterable[Header] = (), *, close: bool = False) -> Message:
    """A Message with Content-Type/Content-Length derived from its payload."""
    payload = tuple(payload)
    fields: list[Header] = []
    if content_type is not None:
        fields.append(("Content-Type", content_type))
    fields.append(("Content-Length", str(sum(len(s) for s in payload))))
    fields.extend(headers)
    return Message(status, (header_block(fields),), payload, close=close)


def bytes_response(body: bytes, status: int = 200,
                   content_type: str = "application/octet-stream",
                   headers: Iterable[Header] = ()) -> Message:
    return message_response(status, (body,) if body else (), content_type, headers)


def text_response(body: str, status: int = 200, content_type: str = "text/plain; charset=utf-8",
                  headers: Iterable[Header] = ()) -> Message:
    return bytes_response(body.encode("utf-8"), status, content_type, headers)


def json_response(obj: Any, status: int = 200, headers: Iterable[Header] = ()) -> Message:
    body = _json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    return bytes_response(body, status, "application/json", headers)


def empty_response(status: int, headers: Iterable[Header] = (), *, length: bool = True) -> Message:
    """No payload; `length=False` omits Content-Length (304, 1xx, 204)."""
    fields = list(headers)
    if length:
        fields.append(("Content-Length", "0"))
    return Message(status, (header_block(fields),))


def redirect_response(location: str, status: int = 302, headers: Iterable[Header] = ()) -> Message:
    body = f"Redirecting to {location}\n"
    return text_response(body, status, headers=[("Location", location), *headers])


def error_response(status: int, detail: str | None = None, *, close: bool = False,
                   headers: Iterable[Header] = ()) -> Message:
    """A small plain-text error page: status, reason and an optional one-line detail."""
    reason = REASONS.get(status, "Error")
    text = f"{status} {reason}\n" + (f"{detail}\n" if detail else "")
    msg = text_response(text, status, headers=headers)
    msg.close = close
    return msg


class StreamResponse:
    """A response whose body is produced by an async iterator (chunked encoding).

    An item of `body` may be a tuple of memory slices: they go out as one chunk
    without being joined (fan-out lends each reader the published chunk objects).
    `head` is the entity header block without Content-Length; the session adds
    `Transfer-Encoding: chunked` (HTTP/1.1) or closes the connection after the body
    (HTTP/1.0 clients, which cannot parse chunks).
    """

    __slots__ = ("status", "headers", "body", "content_type")

    def __init__(self, body: AsyncIterable[bytes | str | tuple[Slice, ...]], status: int = 200,
                 content_type: str = "application/octet-stream",
                 headers: Iterable[Header] = ()) -> None:
        self.status = status
        self.body = body
        self.content_type = content_type
        self.headers = list(headers)
