"""WebSockets for native handlers, over real sockets with the `websockets` client.

What is pinned: echo of text and binary, the handshake (subprotocols, 400/426 for bad
requests, denial before accept), ping/pong both ways and the ping timeout, close codes
in both directions, the limits (message and frame size → 1009, send budget), protocol
errors (1002, 1007) also among whole frames read without wsproto, early frames that arrive with the handshake, graceful drain
(1001), a client that vanishes mid-send leaving nothing behind, and broadcast lending
one payload object to every socket.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import os
import shutil
import ssl
import subprocess

import pytest
import ws_fixtures
from polling import until
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus
from ws_fixtures import RawSocket, masked_frame

from server.websocket.connection import STATS
from server.websocket.native import _RUNNING

ws_site = ws_fixtures.ws_site   # the fixture

ECHO = {"echo.py": '''
from server import websocket

@websocket("/echo")
async def echo(ws):
    await ws.accept(subprotocol="echo" if "echo" in ws.subprotocols else None)
    async for message in ws:
        await ws.send(message)
'''}


async def test_echo_text_and_binary(ws_site):
    site = await ws_site(ECHO)
    async with connect(site.url("/echo")) as ws:
        await ws.send("héllo")
        assert await ws.recv() == "héllo"
        await ws.send(b"\x00\xff" * 5)
        assert await ws.recv() == b"\x00\xff" * 5
        big = bytes(range(256)) * 4096        # 1 MiB: a 64-bit length header, many reads
        await ws.send(big)
        assert await ws.recv() == big
        await ws.send("")
        assert await ws.recv() == ""
    assert ws.close_code == 1000


async def test_fragmented_message_is_delivered_whole(ws_site):
    site = await ws_site(ECHO)
    async with connect(site.url("/echo")) as ws:
        await ws.send(["frag", "ment", "ed"])     # websockets sends one fragmented message
        assert await ws.recv() == "fragmented"


async def test_subprotocol_negotiation(ws_site):
    site = await ws_site(ECHO)
    async with connect(site.url("/echo"), subprotocols=["chat", "echo"]) as ws:
        assert ws.subprotocol == "echo"
    async with connect(site.url("/echo")) as ws:
        assert ws.subprotocol is None


async def test_request_details_reach_the_handler(ws_site):
    site = await ws_site({"room.py": '''
from server import websocket

@websocket("/rooms/{name}/{n:int}")
async def room(ws, name, n):
    await ws.accept()
    await ws.send_json({"name": name, "n": n, "q": ws.query.get("q"), "origin": ws.origin,
                        "agent": ws.headers.get("x-agent"), "params": ws.path_params})
'''})
    async with connect(site.url("/rooms/blue/7?q=1"), origin="http://example.test",
                       additional_headers={"X-Agent": "t"}) as ws:
        info = json.loads(await ws.recv())
        await ws.wait_closed()
    assert info == {"name": "blue", "n": 7, "q": ["1"], "origin": "http://example.test",
                    "agent": "t", "params": {"name": "blue", "n": 7}}
    assert ws.close_code == 1000                # the handler returned: a normal close


async def test_ping_from_client_gets_pong(ws_site):
    site = await ws_site(ECHO)
    async with connect(site.url("/echo"), ping_interval=None) as ws:
        pong = await ws.ping(b"abc")
        await asyncio.wait_for(pong, 5)


async def test_server_pings_and_closes_a_peer_that_never_answers(ws_site):
    site = await ws_site(ECHO, ping_interval=0.1, ping_timeout=0.3, close_timeout=0.5)
    raw = RawSocket(site.port, "/echo")
    head = await raw.call(raw.open)
    assert head.startswith(b"HTTP/1.1 101")
    opcode, payload = await raw.call(raw.read_frame)
    assert opcode == 0x9 and len(payload) == 4          # a ping, never answered
    frames = []
    while True:
        frame = await raw.call(raw.read_frame)
        if frame is None:
            break
        frames.append(frame)
    close = [p for op, p in frames if op == 0x8]
    assert close and int.from_bytes(close[0][:2], "big") == 1011
    raw.close()
    await until(lambda: not site.ctx.connections, what="connection closed")


async def test_server_keeps_a_peer_that_answers_pings(ws_site):
    site = await ws_site(ECHO, ping_interval=0.05, ping_timeout=0.5)
    async with connect(site.url("/echo"), ping_interval=None) as ws:
        conn = await until(lambda: next(iter(site.ctx.connections), None))
        pings = []
        session = conn.session
        original = session._pong_received

        def counted() -> None:
            pings.append(1)
            original()
        session._pong_received = counted
        await until(lambda: len(pings) >= 3, what="three ping/pong rounds")
        await ws.send("still here")
        assert await ws.recv() == "still here"


async def test_close_codes_from_the_client(ws_site):
    site = await ws_site({"record.py": '''
from server import websocket, WebSocketDisconnect

@websocket("/record")
async def record(ws):
    await ws.accept()
    try:
        await ws.receive()
    except WebSocketDisconnect as exc:
        ws.request.app.state.closed = (exc.code, exc.reason, ws.close_code)
'''})
    async with connect(site.url("/record")) as ws:
        await ws.close(4001, "bye")
    await until(lambda: "closed" in site.app.state, what="handler saw the close")
    assert site.app.state.closed == (4001, "bye", 4001)
    assert ws.close_code == 4001                  # the server echoed the code back


async def test_close_codes_from_the_server(ws_site):
    site = await ws_site({"closer.py": '''
from server import websocket

@websocket("/closer")
async def closer(ws):
    await ws.accept()
    await ws.receive()
    await ws.close(4002, "done here")
'''})
    async with connect(site.url("/closer")) as ws:
        await ws.send("x")
        with pytest.raises(ConnectionClosed) as info:
            await ws.recv()
    assert info.value.rcvd.code == 4002 and info.value.rcvd.reason == "done here"
    await until(lambda: not site.ctx.connections, what="TCP closed after the handshake")


async def test_handler_error_after_accept_closes_1011(ws_site):
    site = await ws_site({"boom.py": '''
from server import websocket

@websocket("/boom")
async def boom(ws):
    await ws.accept()
    await ws.receive()
    raise RuntimeError("boom")
'''})
    async with connect(site.url("/boom")) as ws:
        await ws.send("x")
        with pytest.raises(ConnectionClosed):
            await ws.recv()
    assert ws.close_code == 1011


async def test_message_over_the_limit_closes_1009(ws_site):
    site = await ws_site(ECHO, max_message_size=1000, max_frame_size=1000)
    async with connect(site.url("/echo")) as ws:
        await ws.send("a" * 1000)
        assert await ws.recv() == "a" * 1000
        await ws.send(["a" * 600, "b" * 600])          # two small frames, one big message
        with pytest.raises(ConnectionClosed):
            await ws.recv()
    assert ws.close_code == 1009


async def test_frame_declaring_too_much_is_refused_at_its_header(ws_site):
    site = await ws_site(ECHO, max_message_size=1 << 20, max_frame_size=1 << 20)
    raw = RawSocket(site.port, "/echo")
    assert (await raw.call(raw.open)).startswith(b"HTTP/1.1 101")
    # A header claiming 1 GiB, and only a few bytes of it: the server must not wait.
    await raw.call(raw.send, masked_frame(0x2, b"abcd", declared=1 << 30)[:20])
    opcode, payload = await raw.call(raw.read_frame)
    assert opcode == 0x8 and int.from_bytes(payload[:2], "big") == 1009
    raw.close()


async def test_protocol_errors_close_with_their_codes(ws_site):
    site = await ws_site(ECHO)
    for frame, code in ((masked_frame(0x1, b"hi", mask=False), 1002),      # unmasked
                        (masked_frame(0x1, b"\xff\xfe"), 1007),            # not UTF-8
                        (masked_frame(0x3, b"x"), 1002)):                  # reserved opcode
        raw = RawSocket(site.port, "/echo")
        assert (await raw.call(raw.open)).startswith(b"HTTP/1.1 101")
        await raw.call(raw.send, frame)
        opcode, payload = await raw.call(raw.read_frame)
        assert (opcode, int.from_bytes(payload[:2], "big")) == (0x8, code)
        assert await raw.call(raw.read_frame) is None          # and TCP closes
        raw.close()


async def test_whole_frames_of_one_read_are_delivered_in_order_around_control_frames(ws_site):
    # Whole final data frames are read without wsproto (frames.plain_frame); a ping,
    # a 64-bit length or a frame cut by the read among them still goes to wsproto,
    # which must see the rest of the stream from a frame boundary.
    site = await ws_site(ECHO)
    raw = RawSocket(site.port, "/echo")
    assert (await raw.call(raw.open)).startswith(b"HTTP/1.1 101")
    medium, large = os.urandom(300), os.urandom(70000)
    frames = (masked_frame(0x1, b"one") + masked_frame(0x2, medium) + masked_frame(0x9, b"p")
              + masked_frame(0x2, b"") + masked_frame(0x2, large) + masked_frame(0x1, "tröis".encode()))
    cut = masked_frame(0x2, b"cut in two")
    await raw.call(raw.send, frames + cut[:5])
    await raw.call(raw.send, cut[5:] + masked_frame(0x1, b"after"))
    seen = [await raw.call(raw.read_frame) for _ in range(8)]
    assert (0xA, b"p") in seen                         # the pong, wherever it fell
    assert [f for f in seen if f[0] != 0xA] == [(0x1, b"one"), (0x2, medium), (0x2, b""), (0x2, large),
                                               (0x1, "tröis".encode()), (0x2, b"cut in two"),
                                               (0x1, b"after")]
    raw.close()


async def test_frames_wsproto_refuses_are_refused_among_whole_frames(ws_site):
    site = await ws_site(ECHO)
    minimal_breach = b"\x81\xfe\x00\x05" + b"\x00" * 4 + b"hello"   # 16-bit length for 5 bytes
    fragment = masked_frame(0x1, b"frag", fin=False)
    for frame, code in ((minimal_breach, 1002),
                        (fragment + masked_frame(0x1, b"not a continuation"), 1002),
                        (masked_frame(0x1, b"\xc3\x28"), 1007)):
        raw = RawSocket(site.port, "/echo")
        assert (await raw.call(raw.open)).startswith(b"HTTP/1.1 101")
        await raw.call(raw.send, masked_frame(0x1, b"fine") + frame)
        # (The close is sent as the read is parsed: the echo of "fine" may not make it.)
        opcode, payload = await raw.call(raw.read_frame)
        if (opcode, payload) == (0x1, b"fine"):
            opcode, payload = await raw.call(raw.read_frame)
        assert (opcode, int.from_bytes(payload[:2], "big")) == (0x8, code)
        assert await raw.call(raw.read_frame) is None
        raw.close()
    # A message under way in wsproto, and the next read starts with what looks like
    # a whole frame: it is wsproto's (a continuation was due), so still 1002.
    raw = RawSocket(site.port, "/echo")
    assert (await raw.call(raw.open)).startswith(b"HTTP/1.1 101")
    await raw.call(raw.send, fragment + masked_frame(0x9, b"sync"))
    assert await raw.call(raw.read_frame) == (0xA, b"sync")     # the fragment was parsed
    await raw.call(raw.send, masked_frame(0x1, b"not a continuation"))
    opcode, payload = await raw.call(raw.read_frame)
    assert (opcode, int.from_bytes(payload[:2], "big")) == (0x8, 1002)
    raw.close()


async def test_frames_sent_with_the_handshake_are_not_lost(ws_site):
    site = await ws_site(ECHO)
    raw = RawSocket(site.port, "/echo", extra=masked_frame(0x1, b"early") + masked_frame(0x2, b"bird"))
    assert (await raw.call(raw.open)).startswith(b"HTTP/1.1 101")
    assert await raw.call(raw.read_frame) == (0x1, b"early")
    assert await raw.call(raw.read_frame) == (0x2, b"bird")
    raw.close()


def _get(port: int, path: str, headers: dict[str, str]) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path, headers=headers)
        response = conn.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        conn.close()


async def test_bad_handshakes_are_refused(ws_site):
    site = await ws_site(ECHO)
    base = {"Upgrade": "websocket", "Connection": "Upgrade", "Sec-WebSocket-Version": "13",
            "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="}
    status, _, _ = await asyncio.to_thread(_get, site.port, "/echo",
                                           {**base, "Sec-WebSocket-Key": "not-base64!"})
    assert status == 400
    status, _, _ = await asyncio.to_thread(_get, site.port, "/echo",
                                           {**base, "Sec-WebSocket-Key": "c2hvcnQ="})
    assert status == 400                                  # base64, but not 16 bytes
    status, headers, _ = await asyncio.to_thread(_get, site.port, "/echo",
                                                 {**base, "Sec-WebSocket-Version": "8"})
    assert status == 426 and headers["sec-websocket-version"] == "13"
    status, headers, body = await asyncio.to_thread(_get, site.port, "/echo", {})
    assert status == 426 and headers["upgrade"] == "websocket"   # a plain GET
    status, _, _ = await asyncio.to_thread(_get, site.port, "/nowhere", base)
    assert status == 404
    # And a valid handshake still works on the same server afterwards.
    async with connect(site.url("/echo")) as ws:
        await ws.send("ok")
        assert await ws.recv() == "ok"


async def test_denial_before_accept(ws_site):
    site = await ws_site({"deny.py": '''
from server import websocket, HTTPError

@websocket("/closed")
async def closed(ws):
    await ws.close()

@websocket("/returned")
async def returned(ws):
    return "members only", 401

@websocket("/raised")
async def raised(ws):
    raise HTTPError(429)

@websocket("/crashed")
async def crashed(ws):
    raise RuntimeError("no")
'''})
    for path, status in (("/closed", 403), ("/returned", 401), ("/raised", 429), ("/crashed", 500)):
        with pytest.raises(InvalidStatus) as info:
            async with connect(site.url(path)):
                pass
        assert info.value.response.status_code == status, path
    await until(lambda: not _RUNNING, what="handler tasks finished")


async def test_draining_sends_going_away(ws_site):
    site = await ws_site(ECHO)
    async with connect(site.url("/echo")) as ws:
        await ws.send("x")
        assert await ws.recv() == "x"
        drain = asyncio.create_task(site.running.server.drain(timeout=5))
        with pytest.raises(ConnectionClosed):
            await ws.recv()
        await drain
    assert ws.close_code == 1001


async def test_slow_reader_makes_send_wait_within_its_budget(ws_site):
    site = await ws_site({"flood.py": '''
from server import websocket

@websocket("/flood")
async def flood(ws):
    await ws.accept()
    state = ws.request.app.state
    state.ws = ws
    state.sent = 0
    chunk = bytes(64 << 10)
    for _ in range(1000):
        await ws.send(chunk)
        state.sent += 1
'''}, send_budget=256 << 10)
    raw = RawSocket(site.port, "/flood", rcvbuf=16 << 10)
    assert (await raw.call(raw.open)).startswith(b"HTTP/1.1 101")
    state = site.app.state
    # The client reads nothing: the handler must end up waiting inside send().
    conn = (await until(lambda: state.get("ws"), what="handler started"))._conn
    await until(lambda: conn.transmitter.outstanding > 256 << 10, what="budget reached")
    blocked_at = state.sent
    assert conn.transmitter.outstanding <= (256 << 10) + (64 << 10) + 16
    assert site.ctx.ledger.outstanding <= (256 << 10) + (64 << 10) + 16
    assert blocked_at < 1000
    # Reading lets it go on: send waited, it did not drop anything.
    for _ in range(20):
        opcode, payload = await raw.call(raw.read_frame)
        assert opcode == 0x2 and len(payload) == 64 << 10
    await until(lambda: state.sent > blocked_at, what="send resumed")
    raw.close()


async def test_client_vanishing_mid_send_leaks_nothing(ws_site):
    site = await ws_site({"flood.py": '''
from server import websocket

@websocket("/flood")
async def flood(ws):
    await ws.accept()
    chunk = bytes(256 << 10)
    while True:
        await ws.send(chunk)
'''})
    before_tasks = len(_RUNNING)
    clients = [RawSocket(site.port, "/flood", rcvbuf=16 << 10) for _ in range(5)]
    for raw in clients:
        assert (await raw.call(raw.open)).startswith(b"HTTP/1.1 101")
        await raw.call(raw.read_frame)
    await until(lambda: site.ctx.ledger.outstanding > 0, what="bytes on loan")
    assert STATS.open >= 5
    for raw in clients:
        raw.reset()
    await until(lambda: not site.ctx.connections, what="connections closed")
    await until(lambda: site.ctx.ledger.outstanding == 0, what="ledger repaid")
    await until(lambda: len(_RUNNING) == before_tasks, what="handler tasks ended")
    assert STATS.open == 0


async def test_client_vanishing_during_the_handshake_ends_the_handler(ws_site):
    site = await ws_site({"slow.py": '''
import asyncio
from server import websocket

@websocket("/slow")
async def slow(ws):
    ws.request.app.state.started = True
    await asyncio.sleep(0.2)        # deciding, while the client goes away
    await ws.accept()
    await ws.receive()
'''})
    raw = RawSocket(site.port, "/slow")
    sock_open = asyncio.to_thread(raw.open)
    task = asyncio.ensure_future(sock_open)
    await until(lambda: site.app.state.get("started"), what="handler started")
    raw.reset()
    await asyncio.gather(task, return_exceptions=True)
    await until(lambda: not site.ctx.connections, what="connection closed")
    await until(lambda: not _RUNNING, what="handler task ended")


async def test_broadcast_lends_one_payload_to_every_socket(ws_site):
    site = await ws_site({"room.py": '''
from server import websocket

@websocket("/room")
async def room(ws):
    await ws.accept()
    ws.request.app.state.setdefault("members", []).append(ws)
    async for _ in ws:
        pass
'''})
    from server import broadcast
    n = 20
    clients = [RawSocket(site.port, "/room", rcvbuf=8 << 10) for _ in range(n)]
    for raw in clients:
        assert (await raw.call(raw.open)).startswith(b"HTTP/1.1 101")
    members = await until(lambda: len(site.app.state.get("members", ())) == n
                               and site.app.state.members, what="members joined")
    payload = bytes(range(256)) * (24 << 10)      # 6 MiB: more than a socket buffer takes
    sent = asyncio.create_task(broadcast(members, payload))
    await until(lambda: all(not m._conn.transmitter.idle for m in members), what="queued")
    for m in members:
        queued = m._conn.transmitter._slices
        # The very same object (or a window onto it, once the kernel took a part).
        assert any(s is payload or (isinstance(s, memoryview) and s.obj is payload) for s in queued)
    for raw in clients:
        opcode, data = await raw.call(raw.read_frame)
        assert opcode == 0x2 and data == payload
    assert await sent == n
    for raw in clients:
        raw.close()
    await until(lambda: not site.ctx.connections, what="connections closed")


async def test_bundled_echo_is_served_by_default(server_process):
    proc = server_process([])
    async with connect(f"ws://127.0.0.1:{proc.port}/ws/echo", subprotocols=["echo"]) as ws:
        assert ws.subprotocol == "echo"
        await ws.send("hi")
        assert await ws.recv() == "hi"
    async with connect(f"ws://127.0.0.1:{proc.port}/ws/rooms/lobby") as a, \
            connect(f"ws://127.0.0.1:{proc.port}/ws/rooms/lobby") as b:
        await b.send("hello room")       # b is a member: its own handler broadcasts it
        assert await asyncio.wait_for(b.recv(), 5) == "hello room"
        assert await asyncio.wait_for(a.recv(), 5) == "hello room"


async def test_loadtest_client_echo_and_broadcast(ws_site):
    from loadtest import ws_bench, ws_client
    site = await ws_site({"bench.py": ws_bench.BENCH_HANDLER})
    echo = await ws_client.run_echo(ws_client.parse_args(
        ["echo", "--port", str(site.port), "--connections", "4", "--duration", "0.3"]))
    assert echo["messages"] > 0 and echo["errors"] == 0
    result = await ws_client.run_broadcast(ws_client.parse_args(
        ["broadcast", "--port", str(site.port), "--connections", "20", "--size", "70000",
         "--hold", "0.1", "--timeout", "20"]))
    assert result["complete"] == 20


async def test_ping_flood_from_a_client_that_never_reads_is_bounded(ws_site):
    site = await ws_site(ECHO, send_budget=64 << 10)
    raw = RawSocket(site.port, "/echo", rcvbuf=4 << 10)
    assert (await raw.call(raw.open)).startswith(b"HTTP/1.1 101")
    ping = masked_frame(0x9, b"x" * 125)
    burst = ping * 2000                      # 262 KB of pings per write, pongs never read

    def flood() -> int:
        sent = 0
        raw.sock.settimeout(0.5)
        try:
            for _ in range(200):             # bounded: at most ~52 MB offered
                raw.sock.sendall(burst)
                sent += len(burst)
        except (TimeoutError, OSError):
            pass                             # the server stopped reading: that is the point
        return sent
    sent = await raw.call(flood)
    conn = next(iter(site.ctx.connections))
    # The pongs owed are bounded by the send budget (plus one read's worth), not by the flood.
    assert conn.transmitter.outstanding <= (64 << 10) + 70_000
    assert sent < 200 * len(burst)
    raw.reset()
    await until(lambda: not site.ctx.connections, what="connection closed")


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl CLI not installed")
async def test_wss_over_tls_goes_through_the_copy_path(ws_site, tmp_path):
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                    "-subj", "/CN=localhost", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    site = await ws_site(ECHO, config={"tls_cert": cert, "tls_key": key})
    client = ssl.create_default_context(cafile=str(cert))
    copied = site.ctx.metrics.bytes_copy
    big = os.urandom(300_000)
    async with connect(f"wss://127.0.0.1:{site.port}/echo", ssl=client) as ws:
        await ws.send("secure")
        assert await ws.recv() == "secure"
        await ws.send(big)
        assert await ws.recv() == big
    assert ws.close_code == 1000
    assert site.ctx.metrics.bytes_copy - copied >= len(big)
    await until(lambda: not site.ctx.connections, what="connection closed")


async def test_channel_readers_over_websocket_get_every_chunk(ws_site):
    site = await ws_site({"follow.py": '''
from server import channel, channel_websocket, websocket

@websocket("/follow/{name}")
async def follow(ws, name):
    await ws.accept()
    await channel_websocket(ws, channel(name))
'''})
    from server import channel
    ch = channel("ws-test-feed")
    async with connect(site.url("/follow/ws-test-feed")) as a, \
            connect(site.url("/follow/ws-test-feed")) as b:
        await until(lambda: ch.readers == 2, what="two readers subscribed")
        chunks = [os.urandom(1000 + i) for i in range(20)]
        for chunk in chunks:
            await ch.publish(chunk)
        ch.close()
        for ws in (a, b):
            got = [await ws.recv() for _ in chunks]
            assert got == chunks
            with pytest.raises(ConnectionClosed):
                await ws.recv()
            assert ws.close_code == 1000          # the channel ended
    await until(lambda: ch.readers == 0, what="readers left")


async def test_channel_reader_leaving_a_silent_channel_unsubscribes_at_once(ws_site):
    site = await ws_site({"follow.py": '''
from server import channel, channel_websocket, websocket

@websocket("/follow/{name}")
async def follow(ws, name):
    await ws.accept()
    await channel_websocket(ws, channel(name))
'''})
    from server import channel
    ch = channel("ws-test-silent")
    async with connect(site.url("/follow/ws-test-silent")):
        await until(lambda: ch.readers == 1, what="subscribed")
    await until(lambda: ch.readers == 0, what="unsubscribed without any chunk published")
    await until(lambda: not _RUNNING, what="handler ended")
    ch.close()


def test_serve_flags_set_the_websocket_options_and_refuse_bad_values(capsys):
    from server.cli import build_parser
    from server.config import config_from_args
    args = build_parser().parse_args(["serve", "--ws-max-size", "64k", "--ws-ping-interval", "0",
                                      "--ws-ping-timeout", "5", "--ws-send-budget", "1m",
                                      "--ws-per-message-deflate"])
    options = config_from_args(args).websocket
    assert (options.max_message_size, options.max_frame_size) == (64 << 10, 64 << 10)
    assert options.ping_interval is None and options.ping_timeout == 5.0
    assert options.send_budget == 1 << 20 and options.per_message_deflate
    for bad in (["--ws-max-size", "0"], ["--ws-ping-timeout", "-1"], ["--ws-send-budget", "lots"]):
        with pytest.raises(SystemExit):
            build_parser().parse_args(["serve", *bad])
        assert bad[0] in capsys.readouterr().err


async def test_per_message_deflate_when_enabled_and_offered(ws_site):
    site = await ws_site(ECHO, per_message_deflate=True)
    async with connect(site.url("/echo"), compression="deflate") as ws:
        assert "permessage-deflate" in (ws.response.headers.get("Sec-WebSocket-Extensions") or "")
        text = "compress me " * 1000
        await ws.send(text)
        assert await ws.recv() == text
    site2 = await ws_site(ECHO)                # off by default: not negotiated
    async with connect(site2.url("/echo"), compression="deflate") as ws:
        assert ws.response.headers.get("Sec-WebSocket-Extensions") is None
        await ws.send("plain")
        assert await ws.recv() == "plain"


async def test_echo_and_vanishing_clients_with_msg_zerocopy(ws_site):
    site = await ws_site({**ECHO, "flood.py": '''
from server import websocket

@websocket("/flood")
async def flood(ws):
    await ws.accept()
    chunk = bytes(256 << 10)
    while True:
        await ws.send(chunk)
'''}, config={"zerocopy": True, "zerocopy_min": 1024})
    async with connect(site.url("/echo")) as ws:
        big = os.urandom(200_000)                 # over zerocopy_min: lent, not copied
        for _ in range(5):
            await ws.send(big)
            assert await ws.recv() == big
    clients = [RawSocket(site.port, "/flood") for _ in range(3)]
    for raw in clients:
        assert (await raw.call(raw.open)).startswith(b"HTTP/1.1 101")
        await raw.call(raw.read_frame)
    for raw in clients:
        raw.reset()
    await until(lambda: not site.ctx.connections, what="connections closed")
    await until(lambda: site.ctx.ledger.outstanding == 0, what="ledger repaid (completions)")
    await until(lambda: not _RUNNING, what="handler tasks ended")


async def test_garbage_after_the_handshake_never_hurts_the_server(ws_site, caplog):
    import random
    site = await ws_site(ECHO, max_message_size=1 << 16, max_frame_size=1 << 16)
    rng = random.Random(6455)
    for i in range(40):                          # bounded: 40 connections of junk
        raw = RawSocket(site.port, "/echo")
        assert (await raw.call(raw.open)).startswith(b"HTTP/1.1 101")
        if i % 2:
            junk = bytes(rng.getrandbits(8) for _ in range(rng.randrange(1, 300)))
        else:   # plausible frames with random opcodes, flags and lengths
            junk = b"".join(masked_frame(rng.randrange(16), rng.randbytes(rng.randrange(0, 200)),
                                         fin=rng.random() < 0.7) for _ in range(5))
        await raw.call(raw.send, junk)
        raw.sock.shutdown(1)                      # then EOF: the server must close its side
        await raw.call(raw.read_until_eof)
        raw.close()
    await until(lambda: not site.ctx.connections, what="every junk connection closed")
    await until(lambda: site.ctx.ledger.outstanding == 0, what="ledger repaid")
    await until(lambda: not _RUNNING, what="handler tasks ended")
    async with connect(site.url("/echo")) as ws:     # and it still serves
        await ws.send("alive")
        assert await ws.recv() == "alive"
    # No exception escaped into the event loop (a callback error would leave a socket deaf).
    assert not [r for r in caplog.records if r.name == "asyncio" and r.levelname == "ERROR"]


async def test_serve_flags_reach_the_bundled_handlers(server_process):
    proc = server_process(["--ws-max-size", "1000"])
    async with connect(f"ws://127.0.0.1:{proc.port}/ws/echo") as ws:
        await ws.send("a" * 1000)
        assert await ws.recv() == "a" * 1000
        await ws.send("a" * 1001)
        with pytest.raises(ConnectionClosed):
            await ws.recv()
    assert ws.close_code == 1009
