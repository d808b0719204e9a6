"""Faults injected mid-send: a file deleted, truncated, grown or replaced while a slow
client is still reading it; a client resetting mid-response and mid-upload.

Each case holds a response half-sent (a small receive buffer, the client not
reading), changes the file, then reads the rest.  What must hold: the bytes
received are the file as it was opened (or the connection closes short, for a
truncation — never bytes of another file or a desynchronised next response), and
the server carries on serving other clients.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import socket
from pathlib import Path

import pytest
from conftest import raw_exchange

SIZE = 8 << 20


def _start_slow(port: int, path: str, *, keep_alive: bool = False) -> tuple[socket.socket, bytes]:
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 32 << 10)
    sock.connect(("127.0.0.1", port))
    connection = b"" if keep_alive else b"Connection: close\r\n"
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: t\r\n".encode() + connection + b"\r\n")
    first = sock.recv(65536)
    assert first.startswith(b"HTTP/1.1 200")
    return sock, first


def _read_all(sock: socket.socket, first: bytes) -> bytes:
    data = bytearray(first)
    sock.settimeout(20)
    while True:
        try:
            chunk = sock.recv(1 << 20)
        except ConnectionResetError:
            break
        if not chunk:
            break
        data += chunk
    return bytes(data)


def _body(reply: bytes) -> bytes:
    return reply.split(b"\r\n\r\n", 1)[1]


@pytest.fixture
async def site(serve, tmp_path: Path):
    original = os.urandom(SIZE)
    (tmp_path / "f.bin").write_bytes(original)
    (tmp_path / "ok.txt").write_text("ok")
    running = await serve(root=tmp_path)
    return running, tmp_path, original


async def _still_serving(port: int) -> None:
    reply = await asyncio.to_thread(raw_exchange, port, b"GET /ok.txt HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
    assert reply.startswith(b"HTTP/1.1 200") and reply.endswith(b"ok")


async def test_file_deleted_mid_send_is_sent_whole(site):
    running, root, original = site
    sock, first = await asyncio.to_thread(_start_slow, running.port, "/f.bin")
    (root / "f.bin").unlink()
    body = _body(await asyncio.to_thread(_read_all, sock, first))
    sock.close()
    assert hashlib.sha256(body).digest() == hashlib.sha256(original).digest()
    await _still_serving(running.port)


async def test_file_replaced_mid_send_sends_the_old_bytes_then_the_new(site):
    running, root, original = site
    sock, first = await asyncio.to_thread(_start_slow, running.port, "/f.bin")
    fresh = os.urandom(SIZE // 2)
    (root / "f.new").write_bytes(fresh)
    os.replace(root / "f.new", root / "f.bin")          # an atomic deploy
    body = _body(await asyncio.to_thread(_read_all, sock, first))
    sock.close()
    assert body == original
    again = await asyncio.to_thread(raw_exchange, running.port,
                                    b"GET /f.bin HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
    assert _body(again) == fresh


async def test_file_grown_mid_send_keeps_the_framing(site):
    running, root, original = site
    sock, first = await asyncio.to_thread(_start_slow, running.port, "/f.bin", keep_alive=True)
    with open(root / "f.bin", "ab") as f:
        f.write(b"appended" * 1000)

    def rest_then_next() -> tuple[bytes, bytes]:
        data = bytearray(first)
        head, _, _ = bytes(data).partition(b"\r\n\r\n")
        total = len(head) + 4 + SIZE
        sock.settimeout(20)
        while len(data) < total:
            data += sock.recv(1 << 20)
        sock.sendall(b"GET /ok.txt HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        tail = bytes(data[total:])
        while chunk := sock.recv(65536):
            tail += chunk
        return bytes(data[:total]), tail
    whole, following = await asyncio.to_thread(rest_then_next)
    sock.close()
    assert _body(whole) == original               # exactly Content-Length bytes, as opened
    assert following.startswith(b"HTTP/1.1 200") and following.endswith(b"ok")


async def test_file_truncated_mid_send_closes_short(site):
    running, root, original = site
    sock, first = await asyncio.to_thread(_start_slow, running.port, "/f.bin", keep_alive=True)
    os.truncate(root / "f.bin", 1 << 20)
    reply = await asyncio.to_thread(_read_all, sock, first)
    sock.close()
    body = _body(reply)
    assert len(body) < SIZE                        # cut short, then closed: never padded
    # The part the file still holds is its own bytes.  (Past the cut, bytes already
    # queued in the socket by sendfile reference page-cache pages the truncation
    # zeroed: that is the kernel's, and why the connection must close short.)
    kept = min(len(body), 1 << 20)
    assert body[:kept] == original[:kept]
    assert b"HTTP/1.1 " not in body[kept:]         # no next response spliced into the body
    await _still_serving(running.port)


async def test_clients_resetting_mid_response_and_mid_upload(site):
    running, _root, _original = site
    for _ in range(20):
        sock, _first = await asyncio.to_thread(_start_slow, running.port, "/f.bin")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        sock.close()                               # RST with most of the body unsent
        up = socket.create_connection(("127.0.0.1", running.port))
        up.sendall(b"POST /f.bin HTTP/1.1\r\nHost: t\r\nContent-Length: 1000000\r\n\r\n" + b"x" * 5000)
        up.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        up.close()
    await _still_serving(running.port)

    async def connections_gone() -> bool:
        for _ in range(200):
            if not running.server.ctx.connections:
                return True
            await asyncio.sleep(0.05)
        return False
    assert await connections_gone()


@pytest.mark.slow
def test_sigterm_under_load_drains_every_started_response(tmp_path):
    """Clients keep asking on keep-alive connections; SIGTERM: every response already
    begun arrives whole, then each connection closes, and the server exits 0."""
    import signal
    import time

    from loadtest.conns import ServerUnderTest

    server = ServerUnderTest(tmp_path, ["--drain-timeout", "20"])
    outcome = {"complete": 0, "refused": 0, "partial": 0}

    async def client(seed: int) -> None:
        paths = ["/big.bin", "/index.html", "/hello/x"]
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        except OSError:
            outcome["refused"] += 1
            return
        n = seed
        try:
            while True:
                writer.write(f"GET {paths[n % 3]} HTTP/1.1\r\nHost: t\r\n\r\n".encode())
                n += 1
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    return                        # closed between responses: fine
                length = int(head.lower().split(b"content-length:", 1)[1].split(b"\r\n", 1)[0])
                try:
                    await reader.readexactly(length)
                except (asyncio.IncompleteReadError, ConnectionError):
                    outcome["partial"] += 1       # a response cut short: the bug
                    return
                outcome["complete"] += 1
                if b"Connection: close" in head:
                    return
        finally:
            writer.close()

    async def run() -> None:
        tasks = [asyncio.create_task(client(i)) for i in range(8)]
        await asyncio.sleep(1.0)
        server.proc.send_signal(signal.SIGTERM)
        await asyncio.wait_for(asyncio.gather(*tasks), 30)

    try:
        started = time.monotonic()
        asyncio.run(run())
        code = server.proc.wait(30)
    finally:
        server.stop()
    assert outcome["partial"] == 0, outcome
    assert outcome["complete"] > 8
    assert code == 0 and time.monotonic() - started < 30
