"""What a handler may return, and the Message (or StreamResponse) each becomes.

Theory of operation: handlers return plain values and the application turns them
into responses here, once, after the handler finished:

    dict / list            → 200 application/json
    str                    → 200 text/plain; charset=utf-8
    bytes / bytearray /
      memoryview           → 200 application/octet-stream
    None                   → 204 No Content
    async iterator         → 200 chunked stream (text/plain; charset=utf-8)
    (body, status)         → the body converted as above, with that status
    (body, status, headers)→ ... and extra header fields
    Message, StreamResponse→ sent as they are
    Upgrade                → passed through: the session switches protocols (WebSocket)

The JSON case is the hot one (`return {"hello": name}`), so it skips the general
builder: the C encoder of the json module is built once and called directly
(`json.dumps` with keyword arguments builds a new JSONEncoder per call, and even a
prebuilt JSONEncoder rebuilds its C encoder and a closure on every `encode`), and
the entity header block is formatted with one bytes `%`.
JSON is encoded strictly (`allow_nan=False`): NaN is not JSON, and a handler
returning it fails loudly (500) instead of sending what clients cannot parse.

What a handler answers is checked here, at the one door every handler result
passes: a final status is 200..599 (a 1xx is not a final response: `100` with a
body would desynchronise the client), and header fields are tokens and values free
of control bytes (`wire.header_block`; raw header slices of a hand-made Message
are checked for NUL).  A bad answer raises `InvalidResponse`, which the
application turns into a 500 with a log line naming the fault.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from ..core.message import Message
from ..http.responses import StreamResponse, empty_response, message_response
from ..http.upgrade import Upgrade
from ..http.wire import header_block

__all__ = ["to_response", "json_message", "encode_json", "JSON_HEAD", "NotAResponse", "InvalidResponse"]

_JSON = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False)


def _c_json_encoder() -> Any:
    """The json module's C encoder, called directly; None where it is unavailable.

    Its constructor is internal to the json module, so it is checked against the
    public encoder once, here, and not used if the two disagree.
    """
    make = getattr(json.encoder, "c_make_encoder", None)
    if make is None:
        return None
    try:
        # markers=None: no circular-reference check (a cycle ends in RecursionError).
        encoder = make(None, _JSON.default, json.encoder.encode_basestring, None, ":", ",",
                       False, False, False)
        sample = {"a": [1, 2.5, "é", None, True], "b": {"c": "\n"}}
        if "".join(encoder(sample, 0)) != _JSON.encode(sample):
            return None
    except Exception:  # noqa: BLE001 - a different internal signature: use the public path
        return None
    return encoder


_C_JSON = _c_json_encoder()


def encode_json(obj: Any) -> bytes:
    if _C_JSON is not None:
        return "".join(_C_JSON(obj, 0)).encode("utf-8")
    return _JSON.encode(obj).encode("utf-8")

STREAM_CONTENT_TYPE = "text/plain; charset=utf-8"
JSON_HEAD = b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n"
_TEXT_HEAD = b"Content-Type: text/plain; charset=utf-8\r\nContent-Length: %d\r\n\r\n"
_BYTES_HEAD = b"Content-Type: application/octet-stream\r\nContent-Length: %d\r\n\r\n"


class NotAResponse(TypeError):
    """The handler returned something that cannot be turned into a response."""


class InvalidResponse(ValueError):
    """The handler's answer would put a malformed response on the wire."""


def _check_status(status: object) -> None:
    if type(status) is not int or not 200 <= status <= 599:
        raise InvalidResponse(f"handler answered status {status!r}; a final status is 200..599")


def _checked(msg: Message) -> Message:
    """A hand-made Message: its status, and no NUL in its header slices."""
    status = msg.status
    if type(status) is not int or not 200 <= status <= 599:
        _check_status(status)
    for header in msg._stack:
        if b"\0" in header:
            raise InvalidResponse("handler answered a header containing NUL")
    return msg


def _checked_stream(resp: StreamResponse) -> StreamResponse:
    _check_status(resp.status)
    try:
        header_block([("Content-Type", resp.content_type), *resp.headers])
    except ValueError as exc:
        raise InvalidResponse(str(exc)) from None
    return resp


def json_message(obj: Any, status: int = 200) -> Message:
    body = encode_json(obj)
    return Message(status, (JSON_HEAD % len(body),), (body,))


def _body_message(head: bytes, body: bytes | memoryview, status: int = 200) -> Message:
    return Message(status, (head % len(body),), (body,) if len(body) else ())


def to_response(result: Any) -> Message | StreamResponse:
    """Turn a handler's return value into a response (see the table above)."""
    kind = type(result)
    if kind is Message:
        return _checked(result)
    if kind is dict or kind is list:
        return json_message(result)
    if kind is str:
        return _body_message(_TEXT_HEAD, result.encode("utf-8"))
    if kind is bytes:
        return _body_message(_BYTES_HEAD, result)
    if result is None:
        return empty_response(204, length=False)
    if isinstance(result, Message):
        return _checked(result)
    if isinstance(result, StreamResponse):
        return _checked_stream(result)
    if isinstance(result, Upgrade):
        return result  # type: ignore[return-value]
    if isinstance(result, tuple) and 2 <= len(result) <= 3 and isinstance(result[1], int):
        _check_status(result[1])
        return _with_status(*result)
    if isinstance(result, (dict, list)):
        return json_message(result)
    if isinstance(result, str):
        return _body_message(_TEXT_HEAD, result.encode("utf-8"))
    if isinstance(result, (bytes, bytearray, memoryview)):
        return _body_message(_BYTES_HEAD, bytes(result))
    if hasattr(result, "__aiter__"):
        # Most generators a handler returns yield text (lines, progress, logs); one
        # that yields binary says so by returning StreamResponse(..., content_type=).
        return StreamResponse(result, content_type=STREAM_CONTENT_TYPE)
    raise NotAResponse(f"handler returned {kind.__name__}; return a dict, list, str, bytes, None, "
                       f"a Message or a StreamResponse")


def _with_status(body: Any, status: int, headers: Iterable[tuple[str, str]] = ()) -> Message | StreamResponse:
    headers = list(headers)
    if body is None:
        return empty_response(status, headers, length=status >= 200 and status not in (204, 304))
    if isinstance(body, (dict, list)):
        return message_response(status, (encode_json(body),), "application/json", headers)
    if isinstance(body, str):
        return message_response(status, (body.encode("utf-8"),), "text/plain; charset=utf-8", headers)
    if isinstance(body, (bytes, bytearray, memoryview)):
        return message_response(status, (bytes(body),), "application/octet-stream", headers)
    inner = to_response(body)
    inner.status = status
    if isinstance(inner, StreamResponse):
        inner.headers.extend(headers)
        _checked_stream(inner)
    elif headers:
        inner.push(header_block(headers, end=False))
    return inner
