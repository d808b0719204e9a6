"""An ASGI conformance run: raw ASGI applications, one rule of the spec each, over real sockets.

No framework in between: each application below does exactly one thing the ASGI
spec (asgiref docs/specs/www.rst, lifespan.rst, extensions.rst) allows or forbids,
served in-process by an AsgiAdapter on a real listening socket, and the test checks
what the wire (or the application) saw: the scope fields, the body as `http.request`
pieces, `http.disconnect` after the response and when the client leaves, send
raising an OSError after a disconnect (spec 2.4), message-order errors answered by
exactly one 500 (or an abort once the head is out), HEAD/204/HTTP/1.0 framing,
lifespan state, and the zero-copy extensions.  The table-driven cases at the end
run a list of misbehaving applications through the same check.
"""

from __future__ import annotations

import asyncio
import contextvars
import gc
import json
import os
import weakref
from pathlib import Path
from typing import Any

import httpx
import pytest

from server.asgi.adapter import AsgiAdapter
from server.core.metrics import METRICS
from server.http.request import Request


async def start(serve: Any, app: Any, *, root: Path | None = None, lifespan: str = "off",
                **config: Any) -> Any:
    """Serve `app`; lifespan is off unless asked for (most apps here only speak http)."""
    static = None
    if root is not None:
        from server.static.options import static_site
        static = static_site(root)
    adapter = AsgiAdapter(app, static=static, lifespan=lifespan)
    await adapter.startup()
    running = await serve(app=adapter, **config)
    adapter.listening_on("127.0.0.1", running.port)
    running.adapter = adapter
    return running


async def raw(port: int, data: bytes, *, timeout: float = 5.0) -> bytes:
    """Send `data`, read until the server closes the connection."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    await writer.drain()
    out = b""
    try:
        while True:
            chunk = await asyncio.wait_for(reader.read(65536), timeout)
            if not chunk:
                break
            out += chunk
    finally:
        writer.close()
    return out


async def wait_for(predicate: Any, timeout: float = 5.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.01)


async def read_body(receive: Any) -> tuple[bytes, list[dict]]:
    pieces, body = [], b""
    while True:
        message = await receive()
        pieces.append(message)
        if message["type"] != "http.request":
            break
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    return body, pieces


async def respond(send: Any, body: bytes, status: int = 200, headers: list | None = None) -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": headers if headers is not None else [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": body})


def _jsonable(scope: dict) -> dict:
    out = {}
    for key, value in scope.items():
        if isinstance(value, bytes):
            value = {"bytes": value.decode("latin-1")}
        elif key == "headers":
            value = [[n.decode("latin-1"), v.decode("latin-1")] for n, v in value]
        out[key] = value
    return out


# -- the scope ------------------------------------------------------------------------------
async def scope_app(scope: dict, receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                scope["state"]["db"] = "connected"
                await send({"type": "lifespan.startup.complete"})
            else:
                await send({"type": "lifespan.shutdown.complete"})
                return
    await read_body(receive)
    await respond(send, json.dumps(_jsonable(scope)).encode(), headers=[(b"content-type", b"application/json")])
    scope["state"]["scratch"] = "this request only"


async def test_http_scope_fields(serve: Any) -> None:
    server = await start(serve, scope_app, lifespan="auto")
    async with httpx.AsyncClient() as client:
        r = await client.get(server.url + "/caf%C3%A9/a%2Fb?x=1&y=%20", headers=[("X-Dup", "1"), ("X-Dup", "2")])
        second = await client.get(server.url + "/")
    scope = r.json()
    assert scope["type"] == "http"
    assert scope["asgi"] == {"version": "3.0", "spec_version": "2.4"}
    assert scope["http_version"] == "1.1"
    assert scope["method"] == "GET"
    assert scope["scheme"] == "http"
    assert scope["path"] == "/café/a/b"
    assert scope["raw_path"] == {"bytes": "/caf%C3%A9/a%2Fb"}
    assert scope["query_string"] == {"bytes": "x=1&y=%20"}
    assert scope["root_path"] == ""
    assert ["x-dup", "1"] in scope["headers"] and ["x-dup", "2"] in scope["headers"]
    assert all(name == name.lower() for name, _ in scope["headers"])
    assert scope["client"][0] == "127.0.0.1" and isinstance(scope["client"][1], int)
    assert scope["server"] == ["127.0.0.1", server.port]
    assert scope["extensions"] == {"http.response.pathsend": {}, "http.response.zerocopysend": {}}
    # Lifespan state is copied into each scope: one request's additions stay its own.
    assert scope["state"] == {"db": "connected"}
    assert second.json()["state"] == {"db": "connected"}


async def test_scope_path_and_query_are_what_the_request_finds(serve: Any) -> None:
    """The scope's shortcut for a plain origin-form target (pieces of the target, no
    decoding) gives exactly what Request.path/.raw_path/.query_string give, and a
    target with something to decode or cut (%, #, absolute form) takes those."""
    seen: list[tuple] = []

    async def app(scope: dict, receive: Any, send: Any) -> None:
        seen.append((scope["path"], scope["raw_path"], scope["query_string"]))
        await respond(send, b"ok")

    targets = [b"/a", b"/a?", b"/a?x=%20&y=%2F", b"/a%20b?x", b"/a#frag", b"/a?x=1#frag",
               b"/caf%C3%A9/x", b"/a?b?c", b"http://example.com/abs?q=1", b"/?"]
    server = await start(serve, app)
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    try:
        for target in targets:
            writer.write(b"GET " + target + b" HTTP/1.1\r\nHost: x\r\n\r\n")
            await reader.readuntil(b"ok")
    finally:
        writer.close()
    expected = []
    for target in targets:
        request = Request("GET", target, "1.1", [], True, None, None)
        expected.append((request.path, request.raw_path, request.query_string.encode("latin-1")))
    assert seen == expected


async def test_scope_headers_are_the_same_from_either_parse(serve: Any) -> None:
    """A bodiless head is split by the adapter itself, one with a body comes through the
    parser's callbacks: both give the same pairs -- names lowered, values as sent but
    for the whitespace around them -- and the same path and query."""
    seen: list[tuple] = []

    async def app(scope: dict, receive: Any, send: Any) -> None:
        await read_body(receive)
        seen.append((scope["path"], scope["raw_path"], scope["query_string"], scope["headers"]))
        await respond(send, b"ok")

    server = await start(serve, app)
    fields = b"X-Mixed-Case:  Value With  Spaces \t\r\nAccept: */*\r\nX-Empty:\r\nX-Colon: a:b\r\n"
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    try:
        writer.write(b"GET /plain/path?a=1&b=%20 HTTP/1.1\r\nHost: x\r\n" + fields + b"\r\n")
        await reader.readuntil(b"ok")
        writer.write(b"POST /plain/path?a=1&b=%20 HTTP/1.1\r\nHost: x\r\n" + fields
                     + b"Content-Length: 2\r\n\r\nhi")
        await reader.readuntil(b"ok")
    finally:
        writer.close()
    expected = [(b"host", b"x"), (b"x-mixed-case", b"Value With  Spaces"), (b"accept", b"*/*"),
                (b"x-empty", b""), (b"x-colon", b"a:b")]
    (path, raw_path, query, bare), (_, _, _, full) = seen
    assert (path, raw_path, query) == ("/plain/path", b"/plain/path", b"a=1&b=%20")
    assert [tuple(pair) for pair in bare] == expected
    assert [tuple(pair) for pair in full] == expected + [(b"content-length", b"2")]


async def test_scope_headers_reused_from_the_last_head_follow_its_fields(serve: Any) -> None:
    """A line equal to the last head's line in the same place reuses its pair, and
    only such a line: a changed value of the same length, an extra field in front of
    the same tail, empty lines before the request line, fewer or more lines than last
    time all give the head's own fields, and each scope gets a list of its own."""
    seen: list[tuple] = []

    async def app(scope: dict, receive: Any, send: Any) -> None:
        seen.append((scope["path"], [tuple(pair) for pair in scope["headers"]]))
        scope["headers"].append((b"x-added", b"by the app"))    # its own list
        await respond(send, b"ok")

    fields = b"Host: x\r\nX-Token: aaaa\r\nAccept:  */* \r\n\r\n"
    heads = [b"GET /one HTTP/1.1\r\n" + fields,
             b"GET /two?q=1 HTTP/1.1\r\n" + fields,
             b"GET /one HTTP/1.1\r\n" + fields.replace(b"aaaa", b"bbbb"),
             b"GET /one HTTP/1.1\r\nX-Extra: 1\r\n" + fields.replace(b"aaaa", b"bbbb"),
             b"\r\nGET /three HTTP/1.1\r\n" + fields,
             b"GET /four HTTP/1.1\r\n" + fields,
             b"GET /five HTTP/1.1\r\nHost: x\r\nX-Token: aaaa\r\n\r\n",
             b"GET /six HTTP/1.1\r\n" + fields[:-2] + b"X-Last: z\r\n\r\n"]
    server = await start(serve, app)
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    try:
        for head in heads:
            writer.write(head)
            await reader.readuntil(b"ok")
    finally:
        writer.close()
    plain = [(b"host", b"x"), (b"x-token", b"aaaa"), (b"accept", b"*/*")]
    changed = [(b"host", b"x"), (b"x-token", b"bbbb"), (b"accept", b"*/*")]
    assert seen == [("/one", plain), ("/two", plain), ("/one", changed),
                    ("/one", [(b"x-extra", b"1"), *changed]), ("/three", plain), ("/four", plain),
                    ("/five", plain[:2]), ("/six", [*plain, (b"x-last", b"z")])]


async def test_repeated_heads_answer_for_their_own_forwarding_headers(serve: Any) -> None:
    """Behind a trusted proxy, with pairs reused from the last head: a repeat of a
    forwarded head is forwarded, a repeat of a plain one is not, whichever came
    last."""
    from server.http.forwarded import DEFAULT_TRUSTED, TrustedProxies
    seen: list[str] = []

    async def app(scope: dict, receive: Any, send: Any) -> None:
        seen.append(scope["client"][0])
        await respond(send, b"ok")

    adapter = AsgiAdapter(app, lifespan="off", trusted=TrustedProxies.parse(DEFAULT_TRUSTED))
    running = await serve(app=adapter)
    adapter.listening_on("127.0.0.1", running.port)
    forwarded = b"GET / HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: 198.51.100.7\r\n\r\n"
    plain = b"GET / HTTP/1.1\r\nHost: x\r\nX-Request-Id: 198.51.100.7\r\n\r\n"
    reader, writer = await asyncio.open_connection("127.0.0.1", running.port)
    try:
        for head in (forwarded, forwarded, plain, plain, forwarded):
            writer.write(head)
            await reader.readuntil(b"ok")
    finally:
        writer.close()
    assert seen == ["198.51.100.7", "198.51.100.7", "127.0.0.1", "127.0.0.1", "198.51.100.7"]


async def test_a_repeated_start_is_checked_and_framed_as_the_first(serve: Any) -> None:
    """`_start` checks every header list it is sent: a repeat of one, a list changed
    in place, one without headers, HEAD, a Connection: close and pairs that are lists
    or hold bytearray and memoryview values all come out framed as they ask."""
    listed = [(b"content-type", b"text/plain"), (b"content-length", b"2")]
    answers: dict[str, Any] = {
        "/same": lambda: (listed, b"hi"),
        "/none": lambda: (None, b"abc"),
        "/close": lambda: ([(b"connection", b"close"), (b"content-type", b"text/plain")], b"bye"),
        "/odd": lambda: ([[b"x-list", b"1"], (b"x-array", bytearray(b"2")),
                          (b"x-view", memoryview(b"3"))], b"odd"),
    }

    async def app(scope: dict, receive: Any, send: Any) -> None:
        headers, body = answers[scope["path"]]()
        start = {"type": "http.response.start", "status": 200}
        if headers is not None:
            start["headers"] = headers
        await send(start)
        await send({"type": "http.response.body", "body": body})
        if scope["path"] == "/same":
            listed[1] = (b"content-length", b"3")     # the next answer is one byte longer
            answers["/same"] = lambda: (listed, b"hi!")

    server = await start(serve, app)
    for _ in range(2):
        reply = await raw(server.port, b"GET /none HTTP/1.1\r\nHost: x\r\n\r\n"
                          b"HEAD /none HTTP/1.1\r\nHost: x\r\n\r\n"
                          b"GET /odd HTTP/1.1\r\nHost: x\r\n\r\n"
                          b"GET /close HTTP/1.1\r\nHost: x\r\n\r\nGET /none HTTP/1.1\r\nHost: x\r\n\r\n")
        answered = reply.split(b"HTTP/1.1 ")[1:]
        assert len(answered) == 4, reply               # the close ended the connection
        assert answered[0].endswith(b"content-length: 3\r\n\r\nabc")
        assert answered[1].endswith(b"content-length: 3\r\n\r\n")   # HEAD: the GET's length
        assert b"x-list: 1\r\nx-array: 2\r\nx-view: 3\r\n" in answered[2]
        assert answered[2].endswith(b"\r\n\r\nodd")
        assert b"Connection: close\r\n" in answered[3] and answered[3].endswith(b"bye")
    reply = await raw(server.port, b"GET /same HTTP/1.1\r\nHost: x\r\n\r\n"
                      b"GET /same HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    first, second = reply.split(b"HTTP/1.1 ")[1:]
    assert first.endswith(b"content-length: 2\r\n\r\nhi")
    assert second.endswith(b"content-length: 3\r\n\r\nhi!")


async def test_an_answered_exchange_is_freed_without_the_collector(serve: Any) -> None:
    """Nothing of a finished exchange is left in a reference cycle: with the cyclic
    collector off, the exchange (and with it its request and scope) is still freed."""
    exchanges: list[weakref.ref] = []

    async def app(scope: dict, receive: Any, send: Any) -> None:
        exchanges.append(weakref.ref(send.__self__))
        await respond(send, b"ok")

    server = await start(serve, app)
    gc.collect()
    gc.disable()
    try:
        reply = await raw(server.port, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"
                          b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        assert reply.count(b"HTTP/1.1 200 ") == 2
        await wait_for(lambda: all(ref() is None for ref in exchanges))
    finally:
        gc.enable()


async def test_http_1_0_scope_and_close_delimited_stream(serve: Any) -> None:
    async def app(scope: dict, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": scope["http_version"].encode(), "more_body": True})
        await send({"type": "http.response.body", "body": b" end"})
    server = await start(serve, app)
    reply = await raw(server.port, b"GET / HTTP/1.0\r\n\r\n")
    head, _, body = reply.partition(b"\r\n\r\n")
    assert b"Connection: close" in head and b"chunked" not in head.lower()
    assert body == b"1.0 end"


async def test_path_that_is_not_utf8_is_400_without_the_app(serve: Any) -> None:
    called = []

    async def app(scope: dict, receive: Any, send: Any) -> None:
        called.append(scope)
        await respond(send, b"no")
    server = await start(serve, app)
    reply = await raw(server.port, b"GET /%ff%fe HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert reply.startswith(b"HTTP/1.1 400 ")
    assert called == []


# -- the request body ---------------------------------------------------------------------
async def body_app(scope: dict, receive: Any, send: Any) -> None:
    body, pieces = await read_body(receive)
    report = {"length": len(body), "pieces": len(pieces),
              "last_more": pieces[-1].get("more_body"), "types": sorted({p["type"] for p in pieces}),
              "sha": __import__("hashlib").sha256(body).hexdigest()}
    await respond(send, json.dumps(report).encode())


async def test_no_body_is_one_empty_request_message(serve: Any) -> None:
    server = await start(serve, body_app)
    async with httpx.AsyncClient() as client:
        r = await client.get(server.url)
    assert r.json()["pieces"] == 1 and r.json()["length"] == 0 and r.json()["last_more"] is False


async def test_large_chunked_body_arrives_in_pieces(serve: Any) -> None:
    server = await start(serve, body_app)
    data = os.urandom(5 << 20)

    async def chunks():
        for i in range(0, len(data), 100_000):
            yield data[i:i + 100_000]
    async with httpx.AsyncClient(timeout=30) as client:
        r = await client.post(server.url, content=chunks())
    report = r.json()
    assert report["length"] == len(data)
    assert report["sha"] == __import__("hashlib").sha256(data).hexdigest()
    assert report["pieces"] > 1 and report["last_more"] is False
    assert report["types"] == ["http.request"]


@pytest.mark.slow
async def test_an_app_not_reading_its_body_stops_the_upload(serve: Any) -> None:
    """Back-pressure on the way in: while the app does not call receive(), the socket is
    not read, so what the server takes is bounded by its queue and the socket buffers."""
    release = asyncio.Event()
    total = 32 << 20

    async def app(scope: dict, receive: Any, send: Any) -> None:
        first = await receive()
        await release.wait()
        body, _ = await read_body(receive)
        await respond(send, b"%d" % (len(first["body"]) + len(body)))
    server = await start(serve, app)
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % total)

    async def upload() -> None:
        block = b"u" * (1 << 20)
        for _ in range(total >> 20):
            writer.write(block)
            await writer.drain()
    sending = asyncio.create_task(upload())

    def received() -> int:
        sessions = [c.session for c in server.server.ctx.connections]
        active = [s._active for s in sessions if s._active is not None]
        return active[0].body_stream.received if active else 0
    # Poll until the server stops taking bytes: it must stop far short of the 32 MiB.
    last = -1
    while received() != last:
        last = received()
        await asyncio.sleep(0.2)
    assert 0 < last < 16 << 20 and not sending.done()
    release.set()
    await asyncio.wait_for(sending, 20)
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    assert head.startswith(b"HTTP/1.1 200 ")
    length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
    assert await reader.readexactly(length) == b"%d" % total
    writer.close()


async def test_expect_100_continue_is_sent_when_the_app_reads(serve: Any) -> None:
    server = await start(serve, body_app)
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n")
    interim = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    assert interim.startswith(b"HTTP/1.1 100 Continue")
    writer.write(b"hello")
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    assert head.startswith(b"HTTP/1.1 200 ")
    writer.close()


async def test_body_over_the_limit_is_413(serve: Any) -> None:
    server = await start(serve, body_app, max_body_bytes=1000)
    reply = await raw(server.port, b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                      + b"%x\r\n" % 3000 + b"a" * 3000 + b"\r\n0\r\n\r\n")
    assert reply.startswith(b"HTTP/1.1 413 ")


# -- disconnect ---------------------------------------------------------------------------
async def test_disconnect_after_the_response_is_complete(serve: Any) -> None:
    seen: list[str] = []

    async def app(scope: dict, receive: Any, send: Any) -> None:
        await read_body(receive)
        await respond(send, b"done")
        seen.append((await receive())["type"])
    server = await start(serve, app)
    async with httpx.AsyncClient() as client:
        assert (await client.get(server.url)).text == "done"
    await wait_for(lambda: seen)
    assert seen == ["http.disconnect"]


async def test_polling_receive_with_a_timeout_keeps_working(serve: Any) -> None:
    """Starlette's `request.is_disconnected()` cancels a receive at once, again and again."""
    seen: list[str] = []

    async def app(scope: dict, receive: Any, send: Any) -> None:
        await read_body(receive)
        for _ in range(3):
            try:
                seen.append((await asyncio.wait_for(receive(), 0.01))["type"])
            except TimeoutError:
                seen.append("still connected")
        await respond(send, b"done")
        seen.append((await receive())["type"])
    server = await start(serve, app)
    async with httpx.AsyncClient() as client:
        assert (await client.get(server.url)).text == "done"
    await wait_for(lambda: len(seen) == 4)
    assert seen == ["still connected"] * 3 + ["http.disconnect"]


async def test_long_poll_sees_the_client_leave(serve: Any) -> None:
    seen: list[str] = []

    async def app(scope: dict, receive: Any, send: Any) -> None:
        await read_body(receive)
        seen.append((await receive())["type"])      # waits until the client leaves
    server = await start(serve, app)
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    await writer.drain()
    await asyncio.sleep(0)
    writer.close()
    await wait_for(lambda: seen)
    assert seen == ["http.disconnect"]
    await wait_for(lambda: not server.server.ctx.connections)


async def test_send_after_disconnect_raises_oserror(serve: Any) -> None:
    raised: list[BaseException] = []

    async def app(scope: dict, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        try:
            while True:
                await send({"type": "http.response.body", "body": b"x" * 65536, "more_body": True})
        except BaseException as exc:
            raised.append(exc)
            raise
    server = await start(serve, app)
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    await reader.readexactly(1 << 20)
    writer.transport.abort()          # RST: the next send fails at once
    await wait_for(lambda: raised)
    assert isinstance(raised[0], OSError)
    await wait_for(lambda: not server.server.ctx.connections)


@pytest.mark.slow
async def test_streaming_waits_for_a_slow_reader(serve: Any) -> None:
    """Back-pressure: the app's send blocks while the client reads nothing."""
    sent = [0]

    async def app(scope: dict, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"%d" % (64 << 20))]})
        for _ in range(1024):
            await send({"type": "http.response.body", "body": b"z" * 65536, "more_body": True})
            sent[0] += 1
        await send({"type": "http.response.body", "body": b""})
    server = await start(serve, app, connection_loan_budget=1 << 20)
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port, limit=1 << 16)
    writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    await writer.drain()
    writer.transport.pause_reading()
    # Let it run until it stalls: what it could push is bounded by the loan budget and
    # the socket buffers, far below the 64 MiB it wants to send.
    last = -1
    while last != sent[0]:
        last = sent[0]
        await asyncio.sleep(0.2)
    assert sent[0] * 65536 < 24 << 20
    writer.transport.resume_reading()
    head = await reader.readuntil(b"\r\n\r\n")
    assert b"content-length: 67108864" in head
    got = 0
    while got < 64 << 20:
        got += len(await asyncio.wait_for(reader.read(1 << 20), 10))
    assert sent[0] == 1024
    writer.close()


# -- framing ------------------------------------------------------------------------------
async def test_head_gets_headers_without_body(serve: Any) -> None:
    async def app(scope: dict, receive: Any, send: Any) -> None:
        await respond(send, b"twelve bytes", headers=[(b"content-length", b"12")])
    server = await start(serve, app)
    reply = await raw(server.port, b"HEAD / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    head, _, body = reply.partition(b"\r\n\r\n")
    assert b"content-length: 12" in head and body == b""


async def test_204_and_304_carry_no_body(serve: Any) -> None:
    async def app(scope: dict, receive: Any, send: Any) -> None:
        await respond(send, b"", status=int(scope["path"][1:]), headers=[])
    server = await start(serve, app)
    for status in (204, 304):
        reply = await raw(server.port, f"GET /{status} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        head, _, body = reply.partition(b"\r\n\r\n")
        assert head.startswith(f"HTTP/1.1 {status} ".encode())
        assert b"content-length" not in head.lower() and b"transfer-encoding" not in head.lower()
        assert body == b""


async def test_whole_answer_gets_a_content_length(serve: Any) -> None:
    async def app(scope: dict, receive: Any, send: Any) -> None:
        await respond(send, b"hello")
    server = await start(serve, app)
    reply = await raw(server.port, b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert b"content-length: 5\r\n" in reply and reply.endswith(b"\r\n\r\nhello")


async def test_stream_to_connection_close_client_is_complete(serve: Any) -> None:
    async def app(scope: dict, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        for i in range(20):
            await send({"type": "http.response.body", "body": b"%d," % i, "more_body": True})
            await asyncio.sleep(0)
        await send({"type": "http.response.body", "body": b"end"})
    server = await start(serve, app)
    reply = await raw(server.port, b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert reply.endswith(b"3\r\nend\r\n0\r\n\r\n")


async def test_pipelined_requests_are_answered_in_order(serve: Any) -> None:
    async def app(scope: dict, receive: Any, send: Any) -> None:
        if scope["path"] == "/slow":
            await asyncio.sleep(0.05)
        await respond(send, scope["path"].encode())
    server = await start(serve, app)
    reply = await raw(server.port, b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\nGET /fast HTTP/1.1\r\nHost: x\r\n"
                      b"Connection: close\r\n\r\n")
    assert reply.index(b"/slow") < reply.index(b"/fast")


async def test_context_variables_do_not_leak_between_requests(serve: Any) -> None:
    marker: contextvars.ContextVar[str] = contextvars.ContextVar("marker", default="clean")

    async def app(scope: dict, receive: Any, send: Any) -> None:
        before = marker.get()
        marker.set(scope["path"])
        await respond(send, before.encode())
    server = await start(serve, app)
    reply = await raw(server.port, b"GET /a HTTP/1.1\r\nHost: x\r\n\r\nGET /b HTTP/1.1\r\nHost: x\r\n"
                      b"Connection: close\r\n\r\n")
    assert reply.count(b"clean") == 2


async def test_root_serves_files_first_and_the_app_the_rest(serve: Any, tmp_path: Path) -> None:
    (tmp_path / "index.html").write_bytes(b"<p>static</p>")

    async def app(scope: dict, receive: Any, send: Any) -> None:
        await respond(send, f"app {scope['method']} {scope['path']}".encode())
    server = await start(serve, app, root=tmp_path)
    async with httpx.AsyncClient() as client:
        static = await client.get(server.url + "/index.html")
        assert static.text == "<p>static</p>" and "etag" in static.headers
        assert (await client.get(server.url + "/")).text == "<p>static</p>"
        assert (await client.get(server.url + "/api/x")).text == "app GET /api/x"
        assert (await client.post(server.url + "/index.html")).text == "app POST /index.html"


# -- zero-copy extensions -------------------------------------------------------------------
@pytest.mark.parametrize("size", [1000, 3 << 20], ids=["gathered", "sendfile"])
async def test_pathsend(serve: Any, tmp_path: Path, size: int) -> None:
    path = tmp_path / "f.bin"
    data = os.urandom(size)
    path.write_bytes(data)

    async def app(scope: dict, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/octet-stream")]})
        await send({"type": "http.response.pathsend", "path": str(path)})
    server = await start(serve, app)
    before = METRICS.bytes_sendfile
    async with httpx.AsyncClient() as client:
        r = await client.get(server.url)
        assert r.content == data and r.headers["content-length"] == str(size)
        head = await client.head(server.url)
        assert head.content == b"" and head.headers["content-length"] == str(size)
    if size > server.server.config.gather_max:
        assert METRICS.bytes_sendfile - before >= size


async def test_pathsend_of_a_missing_file_is_500(serve: Any, tmp_path: Path) -> None:
    async def app(scope: dict, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.pathsend", "path": str(tmp_path / "nope")})
    server = await start(serve, app)
    async with httpx.AsyncClient() as client:
        assert (await client.get(server.url)).status_code == 500


async def test_zerocopysend_offsets_counts_and_more_body(serve: Any, tmp_path: Path) -> None:
    path = tmp_path / "z.bin"
    data = os.urandom(2 << 20)
    path.write_bytes(data)

    async def app(scope: dict, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        with open(path, "rb") as f:
            await send({"type": "http.response.zerocopysend", "file": f, "offset": 10, "count": 1000,
                        "more_body": True})
            await send({"type": "http.response.body", "body": b"|", "more_body": True})
            f.seek(5000)       # no offset: from the current position, which then moves on
            await send({"type": "http.response.zerocopysend", "file": f.fileno(), "count": 100,
                        "more_body": True})
            assert f.tell() == 5100
            await send({"type": "http.response.zerocopysend", "file": f, "more_body": False})
        # The file is closed at once, as the spec tells apps to: the send must not care.
    server = await start(serve, app)
    async with httpx.AsyncClient() as client:
        r = await client.get(server.url)
    assert r.content == data[10:1010] + b"|" + data[5000:5100] + data[5100:]


# -- lifespan -------------------------------------------------------------------------------
async def test_app_without_lifespan_support_is_served(serve: Any) -> None:
    async def app(scope: dict, receive: Any, send: Any) -> None:
        assert scope["type"] == "http", "lifespan not supported"
        await respond(send, b"ok")
    server = await start(serve, app, lifespan="auto")
    async with httpx.AsyncClient() as client:
        assert (await client.get(server.url)).text == "ok"


async def test_lifespan_shutdown_is_delivered(serve: Any) -> None:
    events: list[str] = []

    async def app(scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                events.append(message["type"])
                await send({"type": message["type"] + ".complete"})
                if message["type"] == "lifespan.shutdown":
                    return
        await respond(send, b"ok")
    server = await start(serve, app, lifespan="on")
    await server.adapter.shutdown()
    assert events == ["lifespan.startup", "lifespan.shutdown"]


# -- misbehaving applications: each gets exactly one final answer ------------------------
async def _body_before_start(scope: dict, receive: Any, send: Any) -> None:
    await send({"type": "http.response.body", "body": b"x"})


async def _start_twice(scope: dict, receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.start", "status": 200, "headers": []})


async def _returns_silently(scope: dict, receive: Any, send: Any) -> None:
    return None


async def _returns_after_start(scope: dict, receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})


async def _raises_before_start(scope: dict, receive: Any, send: Any) -> None:
    raise ValueError("boom")


async def _raises_after_start(scope: dict, receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    raise ValueError("boom")


async def _header_injection(scope: dict, receive: Any, send: Any) -> None:
    await respond(send, b"x", headers=[(b"x-evil", b"a\r\nSet-Cookie: owned=1")])


async def _header_injection_in_a_known_name(scope: dict, receive: Any, send: Any) -> None:
    await respond(send, b"x", headers=[(b"content-type", b"text/plain\r\nSet-Cookie: owned=1")])


async def _lone_line_feed_in_a_value(scope: dict, receive: Any, send: Any) -> None:
    await respond(send, b"x", headers=[(b"location", b"/a\nSet-Cookie: owned=1")])


async def _nul_in_a_value(scope: dict, receive: Any, send: Any) -> None:
    await respond(send, b"x", headers=[(b"x-note", b"a\0b")])


async def _colon_in_a_name(scope: dict, receive: Any, send: Any) -> None:
    await respond(send, b"x", headers=[(b"set-cookie: owned=1\r\nx", b"1")])


async def _space_in_a_name(scope: dict, receive: Any, send: Any) -> None:
    await respond(send, b"x", headers=[(b"x note", b"1")])


async def _empty_name(scope: dict, receive: Any, send: Any) -> None:
    await respond(send, b"x", headers=[(b"", b"1")])


async def _signed_content_length(scope: dict, receive: Any, send: Any) -> None:
    # int() would take "+1"; on the wire it would be a Content-Length clients refuse.
    await respond(send, b"x", headers=[(b"content-length", b"+1")])


async def _conflicting_content_lengths(scope: dict, receive: Any, send: Any) -> None:
    await respond(send, b"x", headers=[(b"content-length", b"1"), (b"Content-Length", b"2")])


async def _str_headers(scope: dict, receive: Any, send: Any) -> None:
    await respond(send, b"x", headers=[("content-type", "text/plain")])


async def _bad_status(scope: dict, receive: Any, send: Any) -> None:
    await respond(send, b"x", status=99)


async def _length_mismatch(scope: dict, receive: Any, send: Any) -> None:
    await respond(send, b"four", headers=[(b"content-length", b"10")])


async def _unknown_message(scope: dict, receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.teleport"})


@pytest.mark.parametrize("app", [
    _body_before_start, _start_twice, _returns_silently, _returns_after_start, _raises_before_start,
    _raises_after_start, _header_injection, _str_headers, _bad_status, _length_mismatch, _unknown_message,
    _header_injection_in_a_known_name, _lone_line_feed_in_a_value, _nul_in_a_value, _colon_in_a_name,
    _space_in_a_name, _empty_name, _signed_content_length, _conflicting_content_lengths,
], ids=lambda f: f.__name__.strip("_"))
async def test_broken_app_before_the_head_gets_one_500(serve: Any, app: Any) -> None:
    server = await start(serve, app)
    reply = await raw(server.port, b"GET / HTTP/1.1\r\nHost: x\r\n\r\nGET / HTTP/1.1\r\nHost: x\r\n"
                      b"Connection: close\r\n\r\n")
    assert reply.count(b"HTTP/1.1 500 ") == 2, reply       # and the connection stayed usable
    assert b"owned" not in reply


async def _raises_mid_stream(scope: dict, receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"partial", "more_body": True})
    raise ValueError("boom")


async def _returns_mid_stream(scope: dict, receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"partial", "more_body": True})


async def _longer_than_declared(scope: dict, receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"10")]})
    await send({"type": "http.response.body", "body": b"12345678", "more_body": True})
    await send({"type": "http.response.body", "body": b"12345678", "more_body": False})


async def _shorter_than_declared(scope: dict, receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"10")]})
    await send({"type": "http.response.body", "body": b"1234", "more_body": True})
    await send({"type": "http.response.body", "body": b"", "more_body": False})


@pytest.mark.parametrize("app", [_raises_mid_stream, _returns_mid_stream, _longer_than_declared,
                                 _shorter_than_declared], ids=lambda f: f.__name__.strip("_"))
async def test_broken_app_after_the_head_aborts_the_connection(serve: Any, app: Any) -> None:
    server = await start(serve, app)
    reply = await raw(server.port, b"GET / HTTP/1.1\r\nHost: x\r\n\r\nGET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert reply.count(b"HTTP/1.1 200 ") == 1          # never a second answer on a broken stream
    assert not reply.endswith(b"0\r\n\r\n")             # and never a clean end of the body
    assert b"HTTP/1.1 500" not in reply
