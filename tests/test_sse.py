"""Server-sent events: the wire format, and streams read from a raw socket.

The raw-socket reader undoes the chunked transfer coding itself and splits the
event stream on blank lines, so the test sees exactly what an EventSource would.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from polling import until

from server.framework.sse import HEARTBEAT, Event, encode_event

REPO = Path(__file__).resolve().parent.parent



def test_encode_event_fields_and_multiline_data():
    assert encode_event("hi") == b"data: hi\n\n"
    assert encode_event("a\nb\r\nc", event="note", id="7", retry=1500) == \
        b"event: note\nid: 7\nretry: 1500\ndata: a\ndata: b\ndata: c\n\n"
    assert encode_event({"k": [1, 2]}) == b'data: {"k":[1,2]}\n\n'
    assert encode_event(comment="ping") == b": ping\n\n"
    assert Event("x", event="e").encode() == b"event: e\ndata: x\n\n"


@pytest.mark.parametrize("field", ["event", "id"])
def test_line_breaks_cannot_forge_fields(field):
    with pytest.raises(ValueError):
        encode_event("x", **{field: "ok\ndata: forged"})


class EventStreamReader:
    """Reads a chunked text/event-stream response from a raw socket."""

    def __init__(self, reader: asyncio.StreamReader) -> None:
        self.reader = reader
        self.buffer = b""
        self.ended = False

    async def head(self) -> tuple[int, dict[str, str]]:
        raw = await self.reader.readuntil(b"\r\n\r\n")
        lines = raw.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:] if line)}
        return status, headers

    async def _chunk(self) -> bytes:
        size = int((await self.reader.readuntil(b"\r\n")).strip(), 16)
        data = await self.reader.readexactly(size + 2)
        assert data.endswith(b"\r\n")
        if size == 0:
            self.ended = True
        return data[:-2]

    async def next_block(self) -> bytes | None:
        """The next blank-line-terminated block (an event or a comment); None at the end."""
        while b"\n\n" not in self.buffer:
            if self.ended:
                return None
            self.buffer += await self._chunk()
        block, _, self.buffer = self.buffer.partition(b"\n\n")
        return block + b"\n\n"


def parse_event(block: bytes) -> dict[str, str]:
    fields: dict[str, list[str]] = {}
    for line in block.decode("utf-8").splitlines():
        if line and not line.startswith(":"):
            name, _, value = line.partition(": ")
            fields.setdefault(name, []).append(value)
    return {name: "\n".join(values) for name, values in fields.items()}


async def open_stream(port: int, path: str) -> tuple[EventStreamReader, asyncio.StreamWriter, int, dict]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: t\r\nAccept: text/event-stream\r\n\r\n".encode())
    await writer.drain()
    stream = EventStreamReader(reader)
    status, headers = await asyncio.wait_for(stream.head(), 10)
    return stream, writer, status, headers


async def test_clock_example_streams_events(handler_site):
    site = await handler_site(directory=REPO / "handlers")
    stream, writer, status, headers = await open_stream(site.port, "/clock?n=2")
    try:
        assert status == 200
        assert headers["content-type"].startswith("text/event-stream")
        assert headers["cache-control"] == "no-cache"
        assert headers["transfer-encoding"] == "chunked"
        events = []
        while (block := await asyncio.wait_for(stream.next_block(), 10)) is not None:
            events.append(parse_event(block))
        assert [e["id"] for e in events] == ["0", "1"]
        assert all(e["event"] == "tick" for e in events)
        times = [json.loads(e["data"])["time"] for e in events]
        assert 0.5 < times[1] - times[0] < 5
        assert stream.ended
    finally:
        writer.close()


SSE_MODULE = '''
import asyncio
from server import route
from server.framework.sse import Event, sse_response

STATE = {"closed": 0, "go": None}

@route("/events")
def events(request):
    async def produce():
        try:
            yield "first"
            yield Event("two\\nlines", event="multi", id="2")
            yield {"json": True}
            STATE["go"] = asyncio.Event()
            await STATE["go"].wait()           # silence until the test has seen heartbeats
            yield "after the pause"
            while True:                        # until the client leaves
                await asyncio.sleep(0.05)
                yield "more"
        finally:
            STATE["closed"] += 1
    return sse_response(produce(), heartbeat=0.1, retry=3000)
'''


async def test_events_heartbeats_and_client_departure(handler_site):
    site = await handler_site({"events.py": SSE_MODULE})
    state = site.app.router.routes[0].handler.__globals__["STATE"]
    stream, writer, status, headers = await open_stream(site.port, "/events")
    blocks = []
    while blocks.count(HEARTBEAT) < 2:           # the silence is filled with heartbeats
        blocks.append(await asyncio.wait_for(stream.next_block(), 10))
    state["go"].set()
    while len([b for b in blocks if b != HEARTBEAT]) < 6:
        blocks.append(await asyncio.wait_for(stream.next_block(), 10))
    events = [parse_event(b) for b in blocks if b != HEARTBEAT]
    assert events[0] == {"retry": "3000"}
    assert events[1] == {"data": "first"}
    assert events[2] == {"event": "multi", "id": "2", "data": "two\nlines"}
    assert events[3] == {"data": '{"json":true}'}
    assert events[4] == {"data": "after the pause"}
    # Two heartbeats filled the silence (the producer waited for them), before the
    # event that ended it.
    pause_ended = next(i for i, b in enumerate(blocks) if b != HEARTBEAT and parse_event(b) == events[4])
    assert blocks[:pause_ended].count(HEARTBEAT) >= 2
    assert state["closed"] == 0

    writer.transport.abort()                     # the client leaves
    await until(lambda: state["closed"], "the generator to be closed")
    assert state["closed"] == 1                  # the generator was closed, its finally ran
