"""Fan-out: one chunk object reaches every reader; a slow reader is cut off, not buffered."""

from __future__ import annotations

import asyncio
import sys

import pytest

from server.core.fanout import Channel, SlowReader
from server.http.responses import StreamResponse


async def test_every_reader_gets_the_same_object_not_a_copy():
    channel = Channel()
    subs = [channel.subscribe() for _ in range(5)]
    chunk = b"x" * 100_000
    base = sys.getrefcount(chunk)
    assert channel.publish(chunk) == 5
    assert sys.getrefcount(chunk) == base + 5          # five loans of one object
    got = [await sub.__anext__() for sub in subs]
    assert all(g is chunk for g in got)
    del got
    assert sys.getrefcount(chunk) == base              # released when the last reader is done


async def test_slow_reader_is_cut_off_and_others_continue():
    channel = Channel(max_pending=4)
    fast, slow = channel.subscribe(), channel.subscribe()
    for i in range(10):
        channel.publish(b"%d" % i)
        assert await fast.__anext__() == b"%d" % i
    assert channel.readers == 1 and channel.cut_off == 1
    with pytest.raises(SlowReader):
        await slow.__anext__()


async def test_mutable_views_are_refused():
    with pytest.raises(TypeError):
        Channel().publish(memoryview(bytearray(b"abc")))


async def test_fanout_over_http_to_many_clients(serve):
    channel = Channel()

    def app(request):
        return StreamResponse(channel.subscribe(), content_type="text/plain")

    srv = await serve(app=app)
    clients = []
    for _ in range(8):
        reader, writer = await asyncio.open_connection(srv.host, srv.port)
        writer.write(b"GET /stream HTTP/1.1\r\nHost: x\r\n\r\n")
        await reader.readuntil(b"\r\n\r\n")
        clients.append((reader, writer))
    for _ in range(50):
        if channel.readers == 8:
            break
        await asyncio.sleep(0.02)
    assert channel.readers == 8
    for i in range(3):
        channel.publish(b"tick %d\n" % i)
    channel.close()
    for reader, writer in clients:
        body = await asyncio.wait_for(reader.readuntil(b"0\r\n\r\n"), 5)
        assert body == b"7\r\ntick 0\n\r\n7\r\ntick 1\n\r\n7\r\ntick 2\n\r\n0\r\n\r\n"
        writer.close()
