"""The send path: gather, sendfile, loans and what happens when a file changes under a send."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import socket

import pytest
from polling import until, until_stable

from server.core.filecache import OpenFile
from server.core.loans import LoanLedger
from server.core.message import FileRegion, Message
from server.core.metrics import Metrics
from server.core.transmitter import SocketTransmitter, TruncatedFileError
from server.framework.application import Application
from server.http.responses import bytes_response


def make_file(path, size: int) -> bytes:
    block = hashlib.sha256(path.name.encode()).digest() * 2048      # 64 KiB pattern
    data = (block * (size // len(block) + 1))[:size]
    path.write_bytes(data)
    return data


async def fetch(host: str, port: int, path: str) -> tuple[bytes, bytes]:
    reader, writer = await asyncio.open_connection(host, port, limit=1 << 20)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
    data = await reader.read(-1)
    writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    return head, body


async def test_large_file_is_sent_whole_by_sendfile(serve, tmp_path):
    data = make_file(tmp_path / "big.bin", 24 << 20)
    srv = await serve(root=tmp_path)
    metrics = srv.server.ctx.metrics
    before = metrics.bytes_sendfile
    head, body = await fetch(srv.host, srv.port, "/big.bin")
    assert b"200 OK" in head and f"Content-Length: {len(data)}".encode() in head
    assert hashlib.sha256(body).digest() == hashlib.sha256(data).digest()
    assert metrics.bytes_sendfile - before >= len(data)
    assert metrics.ledger.outstanding == 0


async def test_small_file_leaves_with_its_header_as_one_gathered_write(tmp_path):
    data = make_file(tmp_path / "small.bin", 3000)
    a, b = socket.socketpair()
    a.setblocking(False)
    metrics = Metrics(LoanLedger(1 << 20))
    f = OpenFile(str(tmp_path / "small.bin"), map_max=64 << 10)
    tx = SocketTransmitter(a, asyncio.get_running_loop(), metrics=metrics)
    await tx.send(Message(200, [b"HEAD\r\n\r\n"], [FileRegion(f.fd, 0, f.size, f)]))
    assert metrics.bytes_gather == 3000 + 8 and metrics.bytes_sendfile == 0
    assert b.recv(10000) == b"HEAD\r\n\r\n" + data
    assert metrics.ledger.outstanding == 0 and metrics.ledger.peak == 3008
    a.close()
    b.close()


async def test_transmit_hands_an_idle_socket_its_answer_at_once_with_nothing_left_on_loan(tmp_path):
    data = make_file(tmp_path / "small.bin", 3000)
    a, b = socket.socketpair()
    a.setblocking(False)
    metrics = Metrics(LoanLedger(1 << 20))
    f = OpenFile(str(tmp_path / "small.bin"), map_max=64 << 10)
    region = FileRegion(f.fd, 0, f.size, f)
    b.settimeout(5)
    tx = SocketTransmitter(a, asyncio.get_running_loop(), metrics=metrics)
    await tx.send(Message(200, [b"FIRST\r\n\r\n"], (region,)))      # makes the region's window
    assert b.recv(10000) == b"FIRST\r\n\r\n" + data
    metrics.ledger.peak = 0
    tx.transmit(Message(200, [b"\r\n", b"SECOND\r\n"], (region, b"tail")))
    # Sent inside the call (no loop turn), the top of the stack first, in one gather.
    assert b.recv(10000) == b"SECOND\r\n\r\n" + data + b"tail"
    assert tx.idle and tx.outstanding == 0 and tx.accepted == 9 + 3000 + 10 + 3000 + 4
    assert metrics.ledger.peak == 0 and metrics.bytes_gather == 2 * 3000 + 9 + 10 + 4
    a.close()
    b.close()


async def test_transmit_short_write_leaves_the_rest_on_loan_until_the_kernel_takes_it():
    a, b = socket.socketpair()
    a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    a.setblocking(False)
    b.setblocking(False)
    metrics = Metrics(LoanLedger(64 << 20))
    tx = SocketTransmitter(a, asyncio.get_running_loop(), metrics=metrics)
    body = os.urandom(4 << 20)
    tx.transmit(Message(200, [b"H\r\n\r\n"], (body,)))
    owed = tx.outstanding
    assert 0 < owed < len(body) + 5 and metrics.ledger.outstanding == owed and not tx.idle
    received = bytearray()
    loop = asyncio.get_running_loop()

    async def drain() -> None:
        while len(received) < len(body) + 5:
            received.extend(await loop.sock_recv(b, 1 << 20))

    await asyncio.wait_for(drain(), 30)
    assert bytes(received) == b"H\r\n\r\n" + body
    await until(lambda: tx.idle and tx.outstanding == 0)
    assert metrics.ledger.outstanding == 0 and metrics.ledger.peak == len(body) + 5
    a.close()
    b.close()


async def test_transmit_sends_a_lone_file_region_by_one_sendfile_and_loans_only_the_rest(tmp_path):
    """A message that is one region and no header (a fan-out batch from a spool) goes
    by sendfile inside the call: nothing on loan when the kernel takes it all, the rest
    charged a step at a time when it does not, and sent once the reader reads."""
    data = make_file(tmp_path / "spool.bin", 8 << 20)
    fd = os.open(tmp_path / "spool.bin", os.O_RDONLY)
    a, b = socket.socketpair()
    a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 65536)
    a.setblocking(False)
    b.setblocking(False)
    metrics = Metrics(LoanLedger(64 << 20))
    tx = SocketTransmitter(a, asyncio.get_running_loop(), metrics=metrics, sendfile_step=1 << 20)
    tx.transmit(Message(0, (), (FileRegion(fd, 0, 1000),)))
    assert tx.idle and tx.outstanding == 0 and tx.accepted == 1000 and metrics.ledger.peak == 0
    assert b.recv(2000) == data[:1000] and metrics.bytes_sendfile == 1000
    tx.transmit(Message(0, (), (FileRegion(fd, 1000, len(data) - 1000),)))
    assert not tx.idle and 0 < tx.outstanding <= 1 << 20          # the rest, one step charged
    received = bytearray(data[:1000])
    loop = asyncio.get_running_loop()

    async def drain() -> None:
        while len(received) < len(data):
            received.extend(await loop.sock_recv(b, 1 << 20))

    await asyncio.wait_for(drain(), 30)
    assert bytes(received) == data
    await until(lambda: tx.idle and tx.outstanding == 0)
    assert metrics.ledger.outstanding == 0 and metrics.bytes_sendfile == len(data)
    tx.transmit(Message(0, (), (FileRegion(fd, len(data), 10),)))   # past the end: short file
    assert tx.closed and metrics.send_errors == 1
    os.close(fd)
    a.close()
    b.close()


async def test_truncated_mmap_window_fails_one_send_without_sigbus(tmp_path):
    """A mapped file truncated under a queued window: EFAULT for that send, no SIGBUS."""
    path = tmp_path / "shrinks.bin"
    make_file(path, 60 << 10)
    f = OpenFile(str(path), map_max=64 << 10)
    os.truncate(path, 0)                     # the pages past EOF now fault
    a, b = socket.socketpair()
    a.setblocking(False)
    errors = []
    tx = SocketTransmitter(a, asyncio.get_running_loop(), metrics=Metrics(LoanLedger(1 << 20)),
                           on_error=errors.append)
    with pytest.raises(OSError):
        await tx.send(Message(200, [b"H\r\n\r\n"], [FileRegion(f.fd, 0, 60 << 10, f)]))
    assert errors and tx.closed
    a.close()
    b.close()


async def stalled_sender(srv):
    """The one connection, once its transmitter has stopped making progress: the
    client reads nothing, so the kernel's buffers fill and the server waits."""
    (conn,) = await until(lambda: tuple(srv.server.ctx.connections), "the connection")
    await until(lambda: conn.transmitter.accepted > 0, "the first bytes to be sent")
    await until_stable(lambda: conn.transmitter.accepted, what="the send to stall")
    return conn


async def test_file_truncated_while_being_sent_costs_only_that_connection(serve, tmp_path, caplog):
    data = make_file(tmp_path / "victim.bin", 64 << 20)
    make_file(tmp_path / "other.bin", 1 << 20)
    srv = await serve(root=tmp_path)
    reader, writer = await asyncio.open_connection(srv.host, srv.port, limit=1 << 20)
    writer.transport.pause_reading()
    writer.write(b"GET /victim.bin HTTP/1.1\r\nHost: x\r\n\r\n")
    await stalled_sender(srv)                 # the server fills the socket buffers and waits
    with caplog.at_level(logging.ERROR, logger="pageloan.transmitter"):
        os.truncate(tmp_path / "victim.bin", 1 << 20)
        writer.transport.resume_reading()
        received = await asyncio.wait_for(reader.read(-1), 20)   # ends with the server's close
    head, _, body = received.partition(b"\r\n\r\n")
    assert f"Content-Length: {len(data)}".encode() in head
    assert len(body) < len(data)             # short body, then close: never a desynced keep-alive
    assert body == data[:len(body)] or len(body) > (1 << 20)
    assert any("shrank" in r.getMessage() or "changed" in r.getMessage() for r in caplog.records)
    # everyone else is unaffected
    head, body = await fetch(srv.host, srv.port, "/other.bin")
    assert b"200 OK" in head and len(body) == 1 << 20
    assert srv.server.ctx.ledger.outstanding == 0


async def test_connection_budget_makes_a_slow_reader_wait_instead_of_buffering(serve):
    payload = os.urandom(200 << 10)

    def app(request):
        return bytes_response(payload)

    srv = await serve(app=app, connection_loan_budget=256 << 10)
    reader, writer = await asyncio.open_connection(srv.host, srv.port, limit=1 << 20)
    writer.transport.pause_reading()
    writer.write(b"GET /x HTTP/1.1\r\nHost: x\r\n\r\n" * 60)     # 60 × 200 KiB = 12 MiB asked for
    conn = await stalled_sender(srv)
    # only what fits the socket buffers plus at most one over-budget message is on loan
    assert conn.transmitter.outstanding <= (256 << 10) + len(payload) + 4096
    assert len(conn.session._pipeline) > 0          # the rest waits unanswered
    writer.transport.resume_reading()
    got = 0
    for _ in range(60):
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        assert b"200 OK" in head
        got += len(await reader.readexactly(len(payload)))
    assert got == 60 * len(payload)
    assert conn.transmitter.outstanding == 0
    writer.close()


async def test_global_ledger_full_makes_connections_wait(serve):
    payload = os.urandom(300 << 10)
    srv = await serve(app=lambda request: bytes_response(payload), global_loan_budget=400 << 10)
    ctx = srv.server.ctx
    conns = []
    for _ in range(4):
        reader, writer = await asyncio.open_connection(srv.host, srv.port, limit=1 << 20)
        writer.transport.pause_reading()
        writer.write(b"GET /x HTTP/1.1\r\nHost: x\r\n\r\n" * 40)
        conns.append((reader, writer))
    await until(lambda: len(ctx.connections) == 4, "four connections")
    await until_stable(lambda: (ctx.ledger.outstanding, sum(c.transmitter.accepted for c in ctx.connections)),
                       what="all four senders to stall")
    # bounded: at most one message per connection over the global budget
    assert ctx.ledger.outstanding <= (400 << 10) + 4 * (len(payload) + 4096)
    for _reader, writer in conns:
        writer.transport.resume_reading()
    for reader, writer in conns:
        for _ in range(40):
            await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 20)
            await reader.readexactly(len(payload))
        writer.close()
    assert ctx.ledger.outstanding == 0


async def test_metrics_endpoint_reports_counters(serve, tmp_path):
    make_file(tmp_path / "m.bin", 5 << 20)
    from server.static.site import StaticSite
    srv = await serve(app=Application(StaticSite(tmp_path), metrics=True))
    await fetch(srv.host, srv.port, "/m.bin")
    head, body = await fetch(srv.host, srv.port, "/metrics")
    text = body.decode()
    for name in ("pageloan_responses_total", 'pageloan_bytes_sent_total{path="sendfile"}',
                 'pageloan_bytes_sent_total{path="gather"}', 'pageloan_bytes_sent_total{path="copy"}',
                 "pageloan_loans_outstanding", "pageloan_loans_peak", "pageloan_connections_open"):
        assert name in text
    sendfile_bytes = int(text.split('pageloan_bytes_sent_total{path="sendfile"} ')[1].split()[0])
    assert sendfile_bytes >= 5 << 20


def test_truncated_file_error_is_an_oserror():
    assert issubclass(TruncatedFileError, OSError)


async def test_a_shared_writable_poll_calls_back_a_full_socket_once_it_has_room():
    """The fan-out readers' one epoll set (core/writable.py): a full socket's callback
    runs once the peer reads, as the loop's own add_writer would, and not after
    remove_writer; a transmitter that shares it still delivers every byte."""
    from server.core import writable

    loop = asyncio.get_running_loop()
    poll = writable.for_loop(loop)
    assert writable.for_loop(loop) is poll
    a, b = socket.socketpair()
    a.setblocking(False)
    b.setblocking(False)
    try:
        while True:
            a.send(b"x" * 65536)
    except BlockingIOError:
        pass
    calls: list[int] = []
    poll.add_writer(a.fileno(), lambda: calls.append(1))
    for _ in range(5):
        await asyncio.sleep(0.01)
    assert not calls                                  # full: not called
    while True:
        try:
            b.recv(1 << 20)
        except BlockingIOError:
            break
    await until(lambda: calls)
    assert poll.remove_writer(a.fileno()) and not poll.remove_writer(a.fileno())
    seen = len(calls)
    for _ in range(5):
        await asyncio.sleep(0.01)
    assert len(calls) == seen
    # A transmitter waiting through the shared poll.
    tx = SocketTransmitter(a, loop, metrics=Metrics(LoanLedger(64 << 20)))
    tx.share_writable_poll()
    body = os.urandom(8 << 20)
    tx.transmit(Message(200, [b"H\r\n\r\n"], (body,)))
    assert not tx.idle and "waiting=1" in repr(poll)
    received = bytearray()

    async def drain() -> None:
        while len(received) < len(body) + 5:
            received.extend(await loop.sock_recv(b, 1 << 20))

    await asyncio.wait_for(drain(), 30)
    assert bytes(received) == b"H\r\n\r\n" + body
    await until(lambda: tx.idle)
    assert "waiting=0" in repr(poll)
    a.close()
    b.close()
