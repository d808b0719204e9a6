"""HTTP/1.1 behaviour of the session, over real sockets on 127.0.0.1."""

from __future__ import annotations

import asyncio
import hashlib
import http.client
import socket
import time

import pytest
from harness import read_response
from polling import until

from server.core.message import Message
from server.framework.application import Application
from server.http.responses import json_response, text_response
from server.static.site import StaticSite


def echo_app():
    """Answers with what it saw; /body streams the body and reports chunk count and hash."""
    async def body_report(request):
        digest = hashlib.sha256()
        chunks = 0
        size = 0
        async for chunk in request.stream():
            digest.update(chunk)
            chunks += 1
            size += len(chunk)
        return json_response({"size": size, "chunks": chunks, "sha256": digest.hexdigest()})

    def app(request):
        if request.path == "/body":
            return body_report(request)
        return text_response(f"{request.method} {request.path} {request.version}")
    return app


async def test_keep_alive_serves_many_requests_on_one_connection(serve):
    srv = await serve(app=echo_app())
    reader, writer = await asyncio.open_connection(srv.host, srv.port)
    for i in range(5):
        writer.write(f"GET /n{i} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        status, headers, body = await read_response(reader)
        assert status == 200
        assert body == f"GET /n{i} 1.1".encode()
        assert "connection" not in headers
    writer.close()


async def test_twenty_pipelined_requests_sent_at_once_answered_in_order(serve):
    srv = await serve(app=echo_app())
    reader, writer = await asyncio.open_connection(srv.host, srv.port)
    writer.write(b"".join(f"GET /p{i} HTTP/1.1\r\nHost: x\r\n\r\n".encode() for i in range(20)))
    for i in range(20):
        status, _headers, body = await asyncio.wait_for(read_response(reader), 5)
        assert status == 200
        assert body == f"GET /p{i} 1.1".encode()
    writer.close()


async def test_pipelined_async_and_sync_answers_keep_request_order(serve):
    async def slow(request):
        await asyncio.sleep(0.05)
        return text_response("slow")

    def app(request):
        return slow(request) if request.path == "/slow" else text_response("fast")

    srv = await serve(app=app)
    reader, writer = await asyncio.open_connection(srv.host, srv.port)
    writer.write(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\nGET /fast HTTP/1.1\r\nHost: x\r\n\r\n"
                 b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")
    bodies = [(await read_response(reader))[2] for _ in range(3)]
    assert bodies == [b"slow", b"fast", b"slow"]
    writer.close()


async def test_http10_closes_unless_keep_alive_requested(serve):
    srv = await serve(app=echo_app())
    reader, writer = await asyncio.open_connection(srv.host, srv.port)
    writer.write(b"GET /a HTTP/1.0\r\n\r\n")
    status, headers, body = await read_response(reader)
    assert (status, body) == (200, b"GET /a 1.0")
    assert headers["connection"] == "close"
    assert await asyncio.wait_for(reader.read(), 3) == b""

    reader, writer = await asyncio.open_connection(srv.host, srv.port)
    writer.write(b"GET /b HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
    status, headers, body = await read_response(reader)
    assert headers["connection"].lower() == "keep-alive"
    writer.write(b"GET /c HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
    status, headers, body = await read_response(reader)
    assert body == b"GET /c 1.0"
    writer.close()


async def test_connection_close_closes_after_the_response(serve):
    srv = await serve(app=echo_app())
    reader, writer = await asyncio.open_connection(srv.host, srv.port)
    writer.write(b"GET /x HTTP/1.1\r\nHost: x\r\nConnection: Close\r\n\r\nGET /ignored HTTP/1.1\r\nHost: x\r\n\r\n")
    status, headers, body = await read_response(reader)
    assert body == b"GET /x 1.1"
    assert headers["connection"] == "close"
    assert await asyncio.wait_for(reader.read(), 3) == b""


async def test_expect_100_continue_is_answered_when_the_body_is_read(serve):
    srv = await serve(app=echo_app())
    reader, writer = await asyncio.open_connection(srv.host, srv.port)
    writer.write(b"POST /body HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n")
    interim = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 3)
    assert interim.startswith(b"HTTP/1.1 100 Continue")
    writer.write(b"hello")
    status, _h, body = await read_response(reader)
    assert status == 200 and b'"size":5' in body
    writer.close()


async def test_request_body_by_content_length_is_streamed_not_buffered(serve):
    srv = await serve(app=echo_app())
    payload = bytes(range(256)) * (32 * 1024)      # 8 MiB
    reader, writer = await asyncio.open_connection(srv.host, srv.port)
    writer.write(f"POST /body HTTP/1.1\r\nHost: x\r\nContent-Length: {len(payload)}\r\n\r\n".encode())
    writer.write(payload)
    status, _h, body = await asyncio.wait_for(read_response(reader), 10)
    assert status == 200
    report = __import__("json").loads(body)
    assert report["size"] == len(payload)
    assert report["sha256"] == hashlib.sha256(payload).hexdigest()
    assert report["chunks"] > 4          # arrived in pieces, as it came off the socket
    writer.close()


async def test_chunked_request_body(serve):
    srv = await serve(app=echo_app())
    reader, writer = await asyncio.open_connection(srv.host, srv.port)
    writer.write(b"POST /body HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                 b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n")
    status, _h, body = await read_response(reader)
    assert status == 200
    assert b'"size":11' in body
    assert hashlib.sha256(b"hello world").hexdigest().encode() in body
    writer.close()


async def test_head_gets_headers_only_with_the_get_length(serve, tmp_path):
    (tmp_path / "f.txt").write_bytes(b"x" * 1000)
    srv = await serve(root=tmp_path)
    reader, writer = await asyncio.open_connection(srv.host, srv.port)
    writer.write(b"HEAD /f.txt HTTP/1.1\r\nHost: x\r\n\r\nGET /f.txt HTTP/1.1\r\nHost: x\r\n\r\n")
    head = await reader.readuntil(b"\r\n\r\n")
    assert b"Content-Length: 1000" in head
    # the next bytes must be the GET's status line, not a body
    status, headers, body = await read_response(reader)
    assert status == 200 and body == b"x" * 1000
    writer.close()


@pytest.mark.parametrize("request_bytes, status", [
    (b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 40000 + b"\r\n\r\n", 431),
    (b"GET /" + b"a" * 40000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 414),
    (b"POST /body HTTP/1.1\r\nHost: x\r\nContent-Length: 999999999999\r\n\r\n", 413),
    (b"GET / HTTP/1.1\r\nHost x\r\n\r\n", 400),
    (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03garbage\r\n\r\n", 400),
    (b"BREW /pot HTTP/1.1\r\nHost: x\r\n\r\n", 501),
    (b"GET / HTTP/1.1\r\nHost: x\r\nExpect: tea\r\n\r\n", 417),
])
async def test_bad_input_gets_a_clear_status_and_close(serve, request_bytes, status):
    srv = await serve(app=echo_app())
    reader, writer = await asyncio.open_connection(srv.host, srv.port)
    writer.write(request_bytes)
    got, headers, _ = await asyncio.wait_for(read_response(reader), 5)
    assert got == status
    assert headers["connection"] == "close"
    assert await asyncio.wait_for(reader.read(), 5) == b""
    # the server is still fine for everyone else
    reader, writer = await asyncio.open_connection(srv.host, srv.port)
    writer.write(b"GET /ok HTTP/1.1\r\nHost: x\r\n\r\n")
    assert (await read_response(reader))[0] == 200
    writer.close()


async def test_chunked_body_over_the_limit_gets_413(serve):
    srv = await serve(app=echo_app(), max_body_bytes=1000)
    reader, writer = await asyncio.open_connection(srv.host, srv.port)
    writer.write(b"POST /body HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
    writer.write(b"800\r\n" + b"a" * 2048 + b"\r\n")
    status, headers, _ = await asyncio.wait_for(read_response(reader), 5)
    assert status == 413
    writer.close()


@pytest.mark.slow
async def test_slowloris_client_is_closed_by_the_header_timeout(serve):
    srv = await serve(app=echo_app(), header_timeout=1.0)
    sock = socket.create_connection((srv.host, srv.port))
    sock.setblocking(False)
    started = time.monotonic()
    sock.send(b"GET / HTTP/1.1\r\n")
    received = b""
    closed_at = None
    for i in range(50):                       # dribble a header byte every 0.1 s, at most 5 s
        try:
            sock.send(b"X-a: b\r\n"[i % 8:i % 8 + 1])
            chunk = sock.recv(4096)
            if not chunk:
                closed_at = time.monotonic()
                break
            received += chunk
        except BlockingIOError:
            pass
        except OSError:
            closed_at = time.monotonic()
            break
        if i == 5:   # meanwhile, a well-behaved client is served normally
            r2, w2 = await asyncio.open_connection(srv.host, srv.port)
            w2.write(b"GET /fine HTTP/1.1\r\nHost: x\r\n\r\n")
            assert (await read_response(r2))[2] == b"GET /fine 1.1"
            w2.close()
        await asyncio.sleep(0.1)
    sock.close()
    assert closed_at is not None, "slow client was never cut off"
    assert closed_at - started < 4.0
    assert received == b"" or received.startswith(b"HTTP/1.1 408")


@pytest.mark.slow
async def test_idle_keep_alive_connection_is_closed(serve):
    srv = await serve(app=echo_app(), keepalive_timeout=1.0)
    reader, writer = await asyncio.open_connection(srv.host, srv.port)
    writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    await read_response(reader)
    assert await asyncio.wait_for(reader.read(), 5) == b""
    writer.close()
    await until(lambda: not srv.server.ctx.connections, "the server to drop the idle connection")


async def test_connections_over_the_limit_get_503(serve):
    srv = await serve(app=echo_app(), max_connections=2)
    held = [await asyncio.open_connection(srv.host, srv.port) for _ in range(2)]
    await until(lambda: len(srv.server.ctx.connections) == 2, "the two connections to be accepted")
    reader, writer = await asyncio.open_connection(srv.host, srv.port)
    status, headers, _ = await asyncio.wait_for(read_response(reader), 5)
    assert status == 503
    for r, w in held:
        w.write(b"GET /still HTTP/1.1\r\nHost: x\r\n\r\n")
        assert (await read_response(r))[0] == 200
        w.close()


async def test_handler_exception_gives_500_and_the_server_goes_on(serve):
    def app(request):
        if request.path == "/boom":
            raise RuntimeError("secret internals")
        return text_response("ok")

    srv = await serve(app=app)
    reader, writer = await asyncio.open_connection(srv.host, srv.port)
    writer.write(b"GET /boom HTTP/1.1\r\nHost: x\r\n\r\nGET /x HTTP/1.1\r\nHost: x\r\n\r\n")
    status, _h, body = await read_response(reader)
    assert status == 500 and b"secret" not in body
    assert (await read_response(reader))[2] == b"ok"
    writer.close()


async def test_absolute_form_target_and_query(serve):
    def app(request):
        return text_response(f"{request.path}|{request.query_value('a')}")
    srv = await serve(app=app)
    reader, writer = await asyncio.open_connection(srv.host, srv.port)
    writer.write(b"GET http://example.test/p%20q?a=1&b=2 HTTP/1.1\r\nHost: x\r\n\r\n")
    assert (await read_response(reader))[2] == b"/p q|1"
    writer.close()


def test_stdlib_http_client_sees_a_valid_response(tmp_path):
    """http.client is strict about framing; run a server in a thread-free subprocess loop."""
    (tmp_path / "index.html").write_text("<p>hi</p>")

    async def main():
        from server.http.config import ServerConfig
        from server.http.server import Server
        config = ServerConfig(port=0)
        server = Server(config, Application(StaticSite(tmp_path)), asyncio.get_running_loop())
        await server.start()

        def fetch():
            conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
            conn.request("GET", "/")
            resp = conn.getresponse()
            return resp.status, resp.getheader("Content-Type"), resp.read()
        result = await asyncio.get_running_loop().run_in_executor(None, fetch)
        await server.close()
        return result

    status, ctype, body = asyncio.run(main())
    assert status == 200 and ctype.startswith("text/html") and body == b"<p>hi</p>"


def test_message_header_stack_goes_on_the_wire_top_first():
    msg = Message(200, [b"C\r\n\r\n"], [b"body"])
    msg.push(b"B\r\n")
    msg.push(b"A\r\n")
    assert b"".join(msg.wire_slices()) == b"A\r\nB\r\nC\r\n\r\nbody"
    msg.top = b"Z\r\n"
    assert msg.header_slices()[0] == b"Z\r\n"
    msg.head_only = True
    assert b"".join(msg.wire_slices()) == b"Z\r\nB\r\nC\r\n\r\n"


async def test_socket_closed_mid_request_does_not_disturb_the_server(serve):
    srv = await serve(app=echo_app())
    opened_before = srv.server.ctx.metrics.connections_total
    for _ in range(20):
        s = socket.create_connection((srv.host, srv.port))
        s.sendall(b"POST /body HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\nabc")
        s.close()
    await until(lambda: srv.server.ctx.metrics.connections_total - opened_before >= 20
                and not srv.server.ctx.connections,
                "the 20 abandoned connections to be accepted and closed")
    reader, writer = await asyncio.open_connection(srv.host, srv.port)
    writer.write(b"GET /ok HTTP/1.1\r\nHost: x\r\n\r\n")
    assert (await read_response(reader))[0] == 200
    writer.close()


@pytest.mark.parametrize("slow", [False, True])
async def test_client_half_close_after_pipelined_requests_gets_every_answer(serve, slow):
    async def later(request):
        await asyncio.sleep(0.05)
        return text_response(f"late {request.path}")

    def app(request):
        return later(request) if slow else text_response(f"now {request.path}")

    srv = await serve(app=app)
    reader, writer = await asyncio.open_connection(srv.host, srv.port)
    writer.write(b"".join(f"GET /h{i} HTTP/1.1\r\nHost: x\r\n\r\n".encode() for i in range(3)))
    writer.write_eof()                                     # the client is done sending
    bodies = [(await asyncio.wait_for(read_response(reader), 5))[2] for _ in range(3)]
    word = b"late" if slow else b"now"
    assert bodies == [word + b" /h0", word + b" /h1", word + b" /h2"]
    assert await asyncio.wait_for(reader.read(), 5) == b""  # and then the server closes
    writer.close()
