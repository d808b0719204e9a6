"""Server-sent events: an async generator of events → a text/event-stream response.

Theory of operation.  An event stream is an ordinary streaming response (the session
sends it with chunked transfer coding, one chunk per event, flushed at once) whose
body follows the EventSource format (WHATWG HTML §9.2): each event is a few
`field: value` lines and a blank line.  `encode_event` writes that format — one
`data:` line per line of data, since a newline inside a field would end it — and
refuses newlines in `event` and `id`, where they would let data forge fields.

The handler writes a plain async generator and yields what it has:

    str              the data of one event
    Event(...)       data with event name, id, retry
    bytes            sent as it is (already in the wire format)
    anything else    JSON-encoded as the data of one event

`sse_response(events, heartbeat=15)` sends a comment line (`: keep-alive`) whenever
the generator has been silent that long, so that proxies and load balancers do not
close an idle stream, and so that a client that has gone away is noticed at the
next write (the session cancels the stream when the connection is lost, and the
generator's `finally` runs).  The heartbeat must not cancel the generator's pending
step — cancelling `__anext__` would kill the generator — so that step runs as its
own task, and the heartbeat just waits for it with a timeout.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterable, AsyncIterator, Iterable
from typing import Any

from ..http.responses import StreamResponse
from .results import encode_json

__all__ = ["Event", "encode_event", "sse_response", "HEARTBEAT"]

HEARTBEAT = b": keep-alive\n\n"
_LINE_BREAK = re.compile(r"\r\n|\r|\n")


class Event:
    """One server-sent event."""

    __slots__ = ("data", "event", "id", "retry")

    def __init__(self, data: Any = None, *, event: str | None = None, id: str | None = None,
                 retry: int | None = None) -> None:
        self.data = data
        self.event = event
        self.id = id
        self.retry = retry

    def encode(self) -> bytes:
        return encode_event(self.data, event=self.event, id=self.id, retry=self.retry)


def _one_line(name: str, value: str) -> str:
    if "\n" in value or "\r" in value:
        raise ValueError(f"an event's {name} cannot contain a line break")
    return value


def encode_event(data: Any = None, *, event: str | None = None, id: str | None = None,
                 retry: int | None = None, comment: str | None = None) -> bytes:
    """The wire form of one event; `data` that is not a str is JSON-encoded."""
    lines: list[str] = []
    if comment is not None:
        lines.extend(": " + line for line in _LINE_BREAK.split(comment))
    if event is not None:
        lines.append("event: " + _one_line("event", event))
    if id is not None:
        if "\0" in id:
            raise ValueError("an event id cannot contain NUL")
        lines.append("id: " + _one_line("id", id))
    if retry is not None:
        lines.append(f"retry: {int(retry)}")
    if data is not None:
        text = data if isinstance(data, str) else encode_json(data).decode("utf-8")
        lines.extend("data: " + line for line in _LINE_BREAK.split(text))
    return ("\n".join(lines) + "\n\n").encode("utf-8")


def _encoded(item: Any) -> bytes:
    if isinstance(item, bytes):
        return item
    if isinstance(item, Event):
        return item.encode()
    return encode_event(item)


async def _events(source: AsyncIterable[Any], retry: int | None) -> AsyncIterator[bytes]:
    if retry is not None:
        yield encode_event(retry=retry)
    async for item in source:
        yield _encoded(item)


async def _with_heartbeat(source: AsyncIterable[Any], interval: float, retry: int | None) -> AsyncIterator[bytes]:
    if retry is not None:
        yield encode_event(retry=retry)
    iterator = source.__aiter__()
    pending: asyncio.Future | None = None
    try:
        while True:
            if pending is None:
                pending = asyncio.ensure_future(iterator.__anext__())
            done, _ = await asyncio.wait((pending,), timeout=interval)
            if not done:
                yield HEARTBEAT
                continue
            step, pending = pending, None
            try:
                item = step.result()
            except StopAsyncIteration:
                return
            yield _encoded(item)
    finally:
        if pending is not None:
            pending.cancel()
            # Wait for the cancelled step to unwind before closing the generator:
            # aclose() on a generator that is still running raises.
            await asyncio.wait((pending,))
        aclose = getattr(iterator, "aclose", None)
        if aclose is not None:
            await aclose()


def sse_response(events: AsyncIterable[Any], *, heartbeat: float | None = 15.0,
                 retry: int | None = None, status: int = 200,
                 headers: Iterable[tuple[str, str]] = ()) -> StreamResponse:
    """A text/event-stream response fed by `events` (see the module comment).

    `retry` (milliseconds) tells the client how long to wait before reconnecting.
    """
    body = _with_heartbeat(events, heartbeat, retry) if heartbeat else _events(events, retry)
    fields = [("Cache-Control", "no-cache"), ("X-Accel-Buffering", "no"), *headers]
    return StreamResponse(body, status, "text/event-stream; charset=utf-8", fields)
