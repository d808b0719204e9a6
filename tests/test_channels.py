"""Channels over real sockets: the bundled /channels handlers, slow readers, back-pressure."""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
import socket
import struct
import time
from pathlib import Path

import pytest
from harness import needs_tools, raw_request

pytestmark = pytest.mark.asyncio

LOOP_DEADLINE = 60.0


class Subscriber:
    """A GET on a raw asyncio connection, its chunked body read as it comes."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, head: bytes) -> None:
        self.reader = reader
        self.writer = writer
        self.head = head
        self.status = int(head.split(b" ", 2)[1])

    async def chunks(self):
        while True:
            line = await self.reader.readuntil(b"\r\n")
            size = int(line.split(b";")[0], 16)
            if size == 0:
                await self.reader.readuntil(b"\r\n")
                return
            data = await self.reader.readexactly(size)
            assert await self.reader.readexactly(2) == b"\r\n"
            yield data

    async def body(self) -> bytes:
        return b"".join([c async for c in self.chunks()])

    def close(self) -> None:
        self.writer.close()


async def subscribe(port: int, path: str, headers: str = "") -> Subscriber:
    reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=1 << 20)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: t\r\n{headers}\r\n".encode())
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    return Subscriber(reader, writer, head)


def stalled_reader(port: int, path: str) -> socket.socket:
    """A client that asks and then never reads, with a tiny receive buffer."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", port))
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: t\r\n\r\n".encode())
    return sock


async def read_to_end(sock: socket.socket) -> bytes:
    """Read a stalled reader's response at last, up to its terminating chunk (through
    the loop: an in-process server answers from this same loop)."""
    sock.setblocking(False)
    loop = asyncio.get_running_loop()
    got = b""
    while not got.endswith(b"\r\n0\r\n\r\n"):
        data = await asyncio.wait_for(loop.sock_recv(sock, 1 << 20), 20)
        assert data, "the response must end with the last chunk, not a reset"
        got += data
    return got


async def post(port: int, path: str, body: bytes) -> bytes:
    return await raw_request(port, f"POST {path} HTTP/1.1\r\nHost: t\r\nContent-Length: {len(body)}\r\n"
                             f"Connection: close\r\n\r\n".encode() + body, timeout=LOOP_DEADLINE)


class ChunkedProducer:
    """A POST whose chunked body is sent piece by piece, under the test's control."""

    async def start(self, port: int, path: str) -> ChunkedProducer:
        self.reader, self.writer = await asyncio.open_connection("127.0.0.1", port)
        self.writer.write(f"POST {path} HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n"
                          f"Connection: close\r\n\r\n".encode())
        await self.writer.drain()
        return self

    async def send(self, data: bytes) -> None:
        self.writer.write(b"%x\r\n%s\r\n" % (len(data), data))
        await self.writer.drain()

    async def finish(self) -> bytes:
        self.writer.write(b"0\r\n\r\n")
        await self.writer.drain()
        answer = await asyncio.wait_for(self.reader.read(), 10)
        self.writer.close()
        return answer


async def poll(predicate, timeout: float = 20.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


async def open_channel(name: str, readers: int):
    """The in-process channel `name` once the server has made it and has `readers`."""
    from server.framework.channels import channels

    found = []

    def ready() -> bool:
        found[:] = [ch for ch in channels() if ch.name == name and ch.readers == readers]
        return bool(found)

    await poll(ready, what=f"channel {name} with {readers} readers")
    return found[0]


async def metrics(port: int) -> dict[str, float]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /metrics HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
    text = (await asyncio.wait_for(reader.read(), 10)).decode()
    writer.close()
    return {m[1]: float(m[2]) for m in re.finditer(r"^(pageloan_fanout_\w+) (\S+)$", text, re.M)}


async def channel_list(port: int) -> list[dict]:
    import json
    answer = await raw_request(port, b"GET /channels HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
    return json.loads(answer.split(b"\r\n\r\n", 1)[1])


# -- the bundled handlers, as `pageloan serve` runs them ---------------------------------

@pytest.fixture
def bundled(server_process):
    return server_process(["--metrics"])


@pytest.mark.slow
async def test_hundred_subscribers_each_get_the_producers_exact_bytes(bundled):
    port = bundled.port
    readers = [await subscribe(port, "/channels/bulk") for _ in range(100)]
    assert all(r.status == 200 and b"transfer-encoding: chunked" in r.head.lower() for r in readers)
    assert (await metrics(port))["pageloan_fanout_readers"] == 100
    body = os.urandom(8 << 20)
    digests = [asyncio.ensure_future(_digest(r)) for r in readers]
    answer = await post(port, "/channels/bulk?policy=block", body)
    assert answer.startswith(b"HTTP/1.1 200"), answer[:200]
    assert b'"bytes":%d' % len(body) in answer
    # Every response ends (terminating chunk) once the producer's request has.
    results = await asyncio.wait_for(asyncio.gather(*digests), LOOP_DEADLINE)
    want = hashlib.sha256(body).hexdigest()
    assert results == [(want, len(body))] * 100
    for r in readers:
        r.close()
    # Nothing is held once the readers are gone and the stream is over.
    for _ in range(500):
        gauges = await metrics(port)
        if gauges["pageloan_fanout_readers"] == 0 and gauges["pageloan_fanout_bytes_held"] == 0:
            break
        await asyncio.sleep(0.02)
    assert gauges["pageloan_fanout_readers"] == 0
    assert gauges["pageloan_fanout_chunks_held"] == 0 and gauges["pageloan_fanout_bytes_held"] == 0
    assert gauges["pageloan_fanout_dropped_total"] == 0


async def _digest(sub: Subscriber) -> tuple[str, int]:
    digest = hashlib.sha256()
    size = 0
    async for chunk in sub.chunks():
        digest.update(chunk)
        size += len(chunk)
    return digest.hexdigest(), size


async def test_sse_resume_from_last_event_id_gets_the_missed_events(bundled):
    port = bundled.port
    first = await subscribe(port, "/channels/news/events")
    assert b"text/event-stream" in first.head
    producer = await ChunkedProducer().start(port, "/channels/news")
    events = first.chunks()
    for i in (1, 2):
        await producer.send(b"headline %d" % i)
        assert await asyncio.wait_for(events.__anext__(), 10) == b"id: %d\ndata: headline %d\n\n" % (i, i)
    first.close()
    for i in (3, 4, 5):
        await producer.send(b"headline %d" % i)
    resumed = await subscribe(port, "/channels/news/events", "Last-Event-ID: 2\r\n")
    await producer.send(b"multi\nline")
    assert (await producer.finish()).startswith(b"HTTP/1.1 200")
    text = await asyncio.wait_for(resumed.body(), 10)
    assert text == (b"id: 3\ndata: headline 3\n\nid: 4\ndata: headline 4\n\n"
                    b"id: 5\ndata: headline 5\n\nid: 6\ndata: multi\ndata: line\n\n")


async def test_raw_subscriber_from_seq_and_live_edge(bundled):
    port = bundled.port
    producer = await ChunkedProducer().start(port, "/channels/feed")
    live = await subscribe(port, "/channels/feed")           # holds the channel open
    live_chunks = live.chunks()
    got = b""
    for i in range(1, 4):
        await producer.send(b"<%d>" % i)
        got += await asyncio.wait_for(live_chunks.__anext__(), 10)   # published by now
    assert got == b"<1><2><3>"
    late = await subscribe(port, "/channels/feed?from=2")
    assert b"x-channel-seq: 2" in late.head.lower()
    await producer.send(b"<4>")
    await producer.finish()
    assert await asyncio.wait_for(late.body(), 10) == b"<2><3><4>"
    assert b"".join([c async for c in live_chunks]) == b"<4>"


async def test_a_second_producer_is_refused_and_bad_input_gets_400(bundled):
    port = bundled.port
    producer = await ChunkedProducer().start(port, "/channels/solo")
    await producer.send(b"x")
    for _ in range(100):
        if any(c["name"] == "solo" and c["producing"] for c in await channel_list(port)):
            break
        await asyncio.sleep(0.02)
    second = await post(port, "/channels/solo", b"y")
    assert second.startswith(b"HTTP/1.1 409")
    await producer.finish()
    for path in ("/channels/x?from=abc", "/channels/x?limit=0", "/channels/-bad-"):
        answer = await raw_request(port, f"GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n".encode())
        assert answer.startswith(b"HTTP/1.1 400"), (path, answer[:100])
    answer = await post(port, "/channels/x?policy=sometimes", b"z")
    assert answer.startswith(b"HTTP/1.1 400")


async def test_sample_stream_blocks_are_numbered_and_shared(bundled):
    a = await subscribe(bundled.port, "/stream?limit=5")
    b = await subscribe(bundled.port, "/stream?limit=5")
    blocks_a, blocks_b = await asyncio.wait_for(asyncio.gather(a.body(), b.body()), 20)
    for data in (blocks_a, blocks_b):
        assert len(data) == 5 * 65536
        headers = [struct.unpack_from("<4sIQ", data, i * 65536) for i in range(5)]
        assert all(h[0] == b"PLIQ" for h in headers)
        seqs = [h[1] for h in headers]
        assert seqs == list(range(seqs[0], seqs[0] + 5))
        assert [h[2] for h in headers] == [s * 16380 for s in seqs]


# -- slow readers and policies, on an in-process server with small limits -----------------

POLICY_MODULE = """
from server import channel, channel_events, channel_response, publish_body, route

LIMITS = dict(max_lag_bytes=256 << 10, max_lag_chunks=64, replay_chunks=4)

@route("/c/{policy}", methods=["POST"])
async def produce(request, policy):
    ch = channel("t-" + policy, policy=policy, **LIMITS)
    chunks, size = await publish_body(request, ch)
    return {"bytes": size, "dropped": ch.dropped, "skipped": ch.skipped}

@route("/c/{policy}")
def read(request, policy):
    return channel_response(request, channel("t-" + policy, policy=policy, **LIMITS))

@route("/c/{policy}/events")
def events(request, policy):
    return channel_events(request, channel("t-" + policy, policy=policy, **LIMITS))
"""

BIG = 24 << 20       # past a stalled reader's socket buffers, loan budget and lag limit


async def test_stalled_reader_is_dropped_without_delaying_the_others(handler_site, caplog):
    site = await handler_site({"policy.py": POLICY_MODULE})
    fast = [await subscribe(site.port, "/c/drop") for _ in range(3)]
    stalled = stalled_reader(site.port, "/c/drop")
    await open_channel("t-drop", readers=4)
    body = os.urandom(BIG)
    digests = [asyncio.ensure_future(_digest(r)) for r in fast]
    answer = await post(site.port, "/c/drop", body)
    assert answer.startswith(b"HTTP/1.1 200") and b'"dropped":1' in answer
    # The others got everything and their responses ended, while the stalled one is
    # still connected and has not read a byte.
    results = await asyncio.wait_for(asyncio.gather(*digests), LOOP_DEADLINE)
    assert results == [(hashlib.sha256(body).hexdigest(), BIG)] * 3
    assert any("dropped a slow reader" in r.getMessage() for r in caplog.records)
    from server.core.metrics import METRICS
    assert METRICS.fanout_dropped >= 1
    # When it finally reads, its response ends cleanly (terminating chunk), short.
    got = await read_to_end(stalled)
    assert len(got) < BIG
    stalled.close()
    for r in fast:
        r.close()


async def test_stalled_sse_reader_is_skipped_to_the_live_edge_and_told(handler_site):
    site = await handler_site({"policy.py": POLICY_MODULE})
    fast = await subscribe(site.port, "/c/skip/events")
    stalled = stalled_reader(site.port, "/c/skip/events")
    ch = await open_channel("t-skip", readers=2)
    line = b"x" * 8191 + b"."          # 8 KiB events without line breaks
    producer = await ChunkedProducer().start(site.port, "/c/skip")
    fast_events = fast.chunks()
    sent = 0
    while ch.skipped == 0:
        assert sent < 8192, "the stalled reader was never skipped"
        await producer.send(line)
        sent += 1
        # The fast reader keeps up (and is never skipped): read its event.
        event = await asyncio.wait_for(fast_events.__anext__(), 10)
        while not event.endswith(b"\n\n"):
            event += await asyncio.wait_for(fast_events.__anext__(), 10)
        assert event.startswith(b"id: %d\n" % sent)
    answer = await producer.finish()
    assert answer.startswith(b"HTTP/1.1 200") and b'"skipped":0' not in answer
    got = await read_to_end(stalled)
    assert re.search(rb": skipped (\d+) chunks", got)
    ids = [int(i) for i in re.findall(rb"id: (\d+)\n", got)]
    assert ids[-1] == sent and len(ids) < sent
    stalled.close()
    fast.close()


@pytest.mark.slow
async def test_block_policy_pushes_back_on_the_producer_until_the_reader_leaves(handler_site):
    site = await handler_site({"policy.py": POLICY_MODULE})
    stalled = stalled_reader(site.port, "/c/block")
    ch = await open_channel("t-block", readers=1)

    def produce() -> tuple[int, bool, bytes]:
        total = 256 << 20
        piece = b"p" * (64 << 10)
        sock = socket.create_connection(("127.0.0.1", site.port))
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 64 << 10)
        sock.sendall(b"POST /c/block HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n")
        framed = b"%x\r\n%s\r\n" % (len(piece), piece)
        sock.settimeout(3)
        sent = 0
        try:
            while sent < total:
                sock.sendall(framed)
                sent += len(piece)
        except TimeoutError:
            return sent, True, b""        # the server stopped taking the body
        finally:
            sock.close()
        return sent, False, b""

    sent, pushed_back, _ = await asyncio.to_thread(produce)
    assert pushed_back, f"the producer sent {sent} bytes without being held back"
    # Held back after the lag limit plus socket buffers and the body queue, not 256 MiB.
    assert sent < 64 << 20
    assert ch.dropped == 0
    stalled.close()


async def test_block_policy_producer_finishes_once_the_stalled_reader_goes(handler_site):
    site = await handler_site({"policy.py": POLICY_MODULE})
    stalled = stalled_reader(site.port, "/c/block")
    ch = await open_channel("t-block", readers=1)
    body = bytes(16 << 20)
    upload = asyncio.ensure_future(post(site.port, "/c/block", body))
    await poll(lambda: ch._behind is not None, what="the producer to be held back")
    assert not upload.done()
    stalled.close()                      # the reader goes: nobody left to wait for
    answer = await asyncio.wait_for(upload, LOOP_DEADLINE)
    assert answer.startswith(b"HTTP/1.1 200") and b'"bytes":%d' % len(body) in answer


async def test_loadtest_fanout_client_measures_a_short_run(bundled):
    """The benchmark's client (loadtest/fanout_client.py) against the bundled channel."""
    import json
    import subprocess
    import sys

    done = await asyncio.to_thread(
        subprocess.run, [sys.executable, "-m", "loadtest.fanout_client", "--port", str(bundled.port),
                         "--readers", "5", "--duration", "0.5", "--server-pid", str(bundled.proc.pid)],
        capture_output=True, text=True, timeout=120, cwd=Path(__file__).parent.parent)
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["error"] is None and done.returncode == 0, result
    assert result["ended"] == 5 and result["producer_status"] == 200
    # Every reader got what was produced (chunk framing included), none was dropped.
    assert result["received_total_bytes"] >= 5 * result["produced_bytes"] > 0
    assert result["delivered_bytes"] > 0
    assert result["rss_peak_kib"] > 0


async def test_websocket_subscriber_gets_each_chunk_as_a_message(bundled):
    import websockets

    async with websockets.connect(f"ws://127.0.0.1:{bundled.port}/channels/wsfeed/ws") as ws:
        for _ in range(200):
            if any(c["name"] == "wsfeed" and c["readers"] == 1 for c in await channel_list(bundled.port)):
                break
            await asyncio.sleep(0.02)
        producer = await ChunkedProducer().start(bundled.port, "/channels/wsfeed")
        for i in range(3):
            await producer.send(b"frame %d" % i)
            assert await asyncio.wait_for(ws.recv(), 10) == b"frame %d" % i
        await producer.finish()
        with pytest.raises(websockets.ConnectionClosedOK):
            await asyncio.wait_for(ws.recv(), 10)
        assert ws.close_code == 1000


@needs_tools("strace")
async def test_each_reader_gets_the_chunk_by_one_sendfile_from_the_spool(server_process, tmp_path):
    """strace on the server: one published 16 KiB chunk is written once, framed as an
    HTTP chunk, into the channel's spool, and reaches each of 10 readers by one
    sendfile of that one file (size line, chunk and CRLF: 16392 bytes) — no reader's
    bytes are copied by a sendmsg or write."""
    log = tmp_path / "strace.txt"
    server = server_process([], prefix=["strace", "-f", "-qq", "-s", "4", "-e",
                                        "trace=sendmsg,write,writev,pwritev,pwritev2,sendfile",
                                        "-o", str(log)])
    readers = [await subscribe(server.port, "/channels/traced") for _ in range(10)]
    for _ in range(250):
        if any(c["name"] == "traced" and c["readers"] == 10 for c in await channel_list(server.port)):
            break
        await asyncio.sleep(0.02)
    body = os.urandom(16 << 10)
    answer = await post(server.port, "/channels/traced", body)
    assert answer.startswith(b"HTTP/1.1 200") and b'"chunks":1' in answer
    assert [await asyncio.wait_for(r.body(), 10) for r in readers] == [body] * 10
    server.stop()
    lines = log.read_text().splitlines()
    # sendfile(out, in, [offset] => [...], 16392) = 16392
    sendfile = re.compile(r"sendfile\((\d+), (\d+), .*, 16392\) += 16392$")
    sends = [m for m in map(sendfile.search, lines) if m]
    assert len(sends) == 10, "\n".join(lines[-40:])
    assert len({m[1] for m in sends}) == 10          # one per reader socket
    assert len({m[2] for m in sends}) == 1           # all from the one spool file
    written = [line for line in lines if "pwritev" in line and line.endswith("= 16392")]
    assert len(written) == 1, written                # framed and written once
    copies = [line for line in lines if re.search(r"\b(sendmsg|write|writev)\(", line)
              and ("16384" in line or "16392" in line)]
    assert not copies, copies
