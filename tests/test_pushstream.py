"""Pushed streams over real sockets: a channel reader is lent batches without a task,
the HTTP session is let go while it streams, and keep-alive resumes after it."""

from __future__ import annotations

import asyncio
import weakref

import pytest
from polling import until

from server.core.fanout import Channel
from server.framework.channels import channel_events, channel_response
from server.http.pushstream import PushedStream
from server.http.responses import json_response
from server.http.session import HttpSession

pytestmark = pytest.mark.asyncio


def _pushed(srv) -> list:
    return [c for c in srv.server.ctx.connections if isinstance(c.session, PushedStream)]


async def _chunks_until_end(reader: asyncio.StreamReader) -> bytes:
    return await asyncio.wait_for(reader.readuntil(b"\r\n0\r\n\r\n"), 10)


def _dechunk(body: bytes) -> bytes:
    out, at = b"", 0
    while True:
        end = body.index(b"\r\n", at)
        size = int(body[at:end], 16)
        if not size:
            return out
        out += body[end + 2:end + 2 + size]
        at = end + 4 + size


async def test_a_subscriber_is_pushed_and_its_session_let_go_then_keep_alive_resumes(serve):
    channel = Channel("pushed", heartbeat=None)
    sessions: list[weakref.ref] = []

    def app(request):
        if request.path == "/next":
            return json_response({"after": "stream"})
        for conn in srv.server.ctx.connections:
            if isinstance(conn.session, HttpSession):
                sessions.append(weakref.ref(conn.session))
        return channel_response(request, channel)

    srv = await serve(app=app)
    reader, writer = await asyncio.open_connection(srv.host, srv.port)
    writer.write(b"GET /sub HTTP/1.1\r\nHost: x\r\n\r\n")
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    assert head.startswith(b"HTTP/1.1 200") and b"transfer-encoding: chunked" in head.lower()
    assert len(_pushed(srv)) == 1
    # No cyclic GC run: the session and its parsers went with their last reference.
    assert sessions and all(ref() is None for ref in sessions)
    assert not [t for t in asyncio.all_tasks() if "_stream" in repr(t)]
    for i in range(3):
        await channel.publish(b"tick %d\n" % i)
    channel.close()
    assert _dechunk(await _chunks_until_end(reader)) == b"tick 0\ntick 1\ntick 2\n"
    # The same connection answers the next request: a fresh session reads on.
    writer.write(b"GET /next HTTP/1.1\r\nHost: x\r\n\r\n")
    answer = await asyncio.wait_for(reader.readuntil(b'{"after":"stream"}'), 10)
    assert answer.startswith(b"HTTP/1.1 200")
    assert not _pushed(srv)
    writer.close()


async def test_a_pipelined_request_behind_a_subscription_is_answered_after_the_stream(serve):
    """With a request queued behind it the subscription cannot take the connection
    over: it streams the pulled way, and the next answer follows its last chunk."""
    channel = Channel("pipelined", heartbeat=None)

    def app(request):
        if request.path == "/next":
            return json_response({"after": "stream"})
        return channel_response(request, channel)

    srv = await serve(app=app)
    reader, writer = await asyncio.open_connection(srv.host, srv.port)
    writer.write(b"GET /sub HTTP/1.1\r\nHost: x\r\n\r\nGET /next HTTP/1.1\r\nHost: x\r\n\r\n")
    await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    await until(lambda: channel.readers == 1, timeout=10)
    assert not _pushed(srv)
    await channel.publish(b"data")
    channel.close()
    assert await _chunks_until_end(reader) == b"4\r\ndata\r\n0\r\n\r\n"
    answer = await asyncio.wait_for(reader.readuntil(b'{"after":"stream"}'), 10)
    assert answer.startswith(b"HTTP/1.1 200")
    writer.close()


async def test_http10_subscriber_gets_the_raw_stream_delimited_by_the_close(serve):
    channel = Channel("old", heartbeat=None)
    srv = await serve(app=lambda request: channel_response(request, channel))
    reader, writer = await asyncio.open_connection(srv.host, srv.port)
    writer.write(b"GET /sub HTTP/1.0\r\n\r\n")
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    assert b"chunked" not in head.lower()
    await until(lambda: channel.readers == 1, timeout=10)
    await channel.publish(b"abc")
    await channel.publish(b"def")
    channel.close()
    assert await asyncio.wait_for(reader.read(), 10) == b"abcdef"
    writer.close()


async def test_a_pushed_reader_that_goes_away_leaves_the_channel(serve):
    channel = Channel("leaving", heartbeat=None)
    srv = await serve(app=lambda request: channel_response(request, channel))
    reader, writer = await asyncio.open_connection(srv.host, srv.port)
    writer.write(b"GET /sub HTTP/1.1\r\nHost: x\r\n\r\n")
    await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    assert channel.readers == 1 and len(_pushed(srv)) == 1
    writer.transport.abort()                  # a reset: reading is paused, a send notices
    for _ in range(200):
        if channel.readers == 0:
            break
        await channel.publish(b"x" * 1000)
        await asyncio.sleep(0.01)
    assert channel.readers == 0 and not srv.server.ctx.connections
    channel.close()


async def test_pushed_event_stream_sends_retry_then_events_and_a_keep_alive(serve):
    channel = Channel("events", heartbeat=0.05)
    srv = await serve(app=lambda request: channel_events(request, channel, retry=1500))
    reader, writer = await asyncio.open_connection(srv.host, srv.port)
    writer.write(b"GET /ev HTTP/1.1\r\nHost: x\r\n\r\n")
    await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    assert len(_pushed(srv)) == 1
    assert b"retry: 1500\n\n" in await asyncio.wait_for(reader.readuntil(b"retry: 1500\n\n"), 10)
    assert await asyncio.wait_for(reader.readuntil(b": keep-alive\n\n"), 10)
    await channel.publish(b"hello")
    assert await asyncio.wait_for(reader.readuntil(b"id: 1\ndata: hello\n\n"), 10)
    await channel.publish(b"two\nlines")
    await channel.publish(b"three")
    channel.close()
    rest = await _chunks_until_end(reader)
    events = _dechunk(rest.removeprefix(b"\r\n"))   # the CRLF ending the chunk read
    assert events == b"id: 2\ndata: two\ndata: lines\n\nid: 3\ndata: three\n\n"
    # The events were framed once, into the spool, and sent from it.
    from server.framework.channels import sse_http_frame
    assert srv.server.ctx.metrics.bytes_sendfile >= len(events)
    assert sse_http_frame not in channel._spools      # released with the log at the end
    writer.close()


async def test_a_pushed_event_reader_is_told_what_it_missed_before_the_spooled_events(serve):
    """A resume from a seq the window no longer has: the comment saying so goes out
    as its own chunk just before the region of spooled events, in one answer."""
    channel = Channel("told", heartbeat=None, replay_chunks=2)
    for i in range(5):
        await channel.publish(b"e%d" % i)             # no readers: the window keeps 4 and 5
    srv = await serve(app=lambda request: channel_events(request, channel))
    reader, writer = await asyncio.open_connection(srv.host, srv.port)
    writer.write(b"GET /ev HTTP/1.1\r\nHost: x\r\nLast-Event-ID: 0\r\n\r\n")
    await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    await until(lambda: channel.readers == 0 or bool(_pushed(srv)), timeout=10)
    channel.close()
    events = _dechunk(await _chunks_until_end(reader))
    assert events == (b": missed 3 chunks: no longer in the replay window\n\n"
                      b"id: 4\ndata: e3\n\nid: 5\ndata: e4\n\n")
    assert srv.server.ctx.metrics.bytes_sendfile > 0
    writer.close()
