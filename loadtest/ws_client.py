"""A small, bounded WebSocket load client (wrk does not speak WebSocket).

    python -m loadtest.ws_client echo --port P [--path /ws/echo] [--connections 64]
                                 [--size 1024] [--duration 10]
    python -m loadtest.ws_client broadcast --port P [--path /ws/broadcast]
                                 [--connections 1000] [--size 65536] [--server-pid PID]

Both print one JSON object on stdout.  Run it pinned to its own core, as the harness
runs wrk (`taskset -c 1 python -m loadtest.ws_client ...`); `loadtest/ws_bench.py`
does that for every server.

The client is raw asyncio protocols on uvloop, so that it is not the bottleneck: each
connection does the RFC 6455 handshake, then sends one pre-masked frame (the mask key
is fixed: the server must unmask it, nothing else depends on it) and parses the
server's unmasked frames with a minimal reader that also answers pings.

* echo: every connection keeps one message in flight — send, wait for the echo of the
  same length, send again — for `duration` seconds; the figure is messages echoed per
  second over all connections.  A wrong echo (length or opcode) is an error, counted.
* broadcast: `connections` sockets join, each with a small receive buffer, and stop
  reading; a control connection sends `broadcast SIZE`; the server sends one SIZE-byte
  message to every member.  For `hold` seconds nobody reads, so what the server
  could not hand to the kernel stays in its memory: the client samples the server's
  RSS (summed over its process tree) before the broadcast and during the hold.  Then
  everybody reads; the figures are the RSS growth (one copy of the payload ≈ SIZE,
  one per socket ≈ SIZE × connections) and how long delivery to all took.

Every phase has a deadline; the whole run is bounded by `--timeout`.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import resource
import socket
import struct
import sys
import time

MASK = b"\x37\xfa\x21\x3d"


def masked_frame(opcode: int, payload: bytes) -> bytes:
    n = len(payload)
    if n < 126:
        head = struct.pack("!BB", 0x80 | opcode, 0x80 | n)
    elif n < 65536:
        head = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, n)
    else:
        head = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, n)
    # Built once per run (the echo frame is reused), so a plain loop is fast enough.
    return head + MASK + bytes(b ^ MASK[i & 3] for i, b in enumerate(payload))


def handshake(host: str, port: int, path: str) -> bytes:
    key = base64.b64encode(os.urandom(16)).decode()
    return (f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode()


class Client(asyncio.Protocol):
    """One WebSocket connection: handshake, then frames in (counted) and out."""

    def __init__(self, request: bytes, on_message, on_open) -> None:
        self.request = request
        self.on_message = on_message      # (client, opcode, length) for data frames
        self.on_open = on_open
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.open = False
        self.closed = asyncio.get_event_loop().create_future()
        self.received_bytes = 0

    def connection_made(self, transport) -> None:
        self.transport = transport
        transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        buf = self.buffer
        buf += data
        if not self.open:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                return
            status = bytes(buf[:12])
            del buf[:end + 4]
            if not status.startswith(b"HTTP/1.1 101"):
                self.transport.close()
                return
            self.open = True
            self.on_open(self)
        while len(buf) >= 2:
            n = buf[1] & 0x7F
            offset = 2
            if n == 126:
                if len(buf) < 4:
                    return
                n, offset = struct.unpack_from("!H", buf, 2)[0], 4
            elif n == 127:
                if len(buf) < 10:
                    return
                n, offset = struct.unpack_from("!Q", buf, 2)[0], 10
            if len(buf) < offset + n:
                return
            opcode = buf[0] & 0x0F
            if opcode == 0x9:                         # ping: answer, not counted
                self.transport.write(masked_frame(0xA, bytes(buf[offset:offset + n])))
            elif opcode == 0x8:
                self.transport.close()
            elif opcode in (0x1, 0x2):
                self.received_bytes += n
                self.on_message(self, opcode, n)
            del buf[:offset + n]

    def connection_lost(self, exc) -> None:
        if not self.closed.done():
            self.closed.set_result(None)


async def _connect(loop, host: str, port: int, path: str, on_message, on_open,
                   rcvbuf: int | None = None) -> Client:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if rcvbuf:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.setblocking(False)
    await loop.sock_connect(sock, (host, port))
    _, client = await loop.create_connection(
        lambda: Client(handshake(host, port, path), on_message, on_open), sock=sock)
    return client


async def _opened(clients: list[Client], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not all(c.open for c in clients):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{sum(not c.open for c in clients)} handshakes unanswered")
        await asyncio.sleep(0.01)


async def run_echo(args: argparse.Namespace) -> dict:
    loop = asyncio.get_running_loop()
    payload = os.urandom(args.size)
    frame = masked_frame(0x2, payload)
    counts = {"messages": 0, "errors": 0}
    running = [True]

    def on_message(client: Client, opcode: int, n: int) -> None:
        if n != args.size or opcode != 0x2:
            counts["errors"] += 1
        counts["messages"] += 1
        if running[0]:
            client.transport.write(frame)

    def on_open(client: Client) -> None:
        client.transport.write(frame)

    clients = [await _connect(loop, args.host, args.port, args.path, on_message, lambda c: None)
               for _ in range(args.connections)]
    await _opened(clients, 10)
    for c in clients:
        on_open(c)
    start_count, start = counts["messages"], time.monotonic()
    await asyncio.sleep(args.duration)        # the measured window itself, not a synchronisation
    done, elapsed = counts["messages"] - start_count, time.monotonic() - start
    running[0] = False
    for c in clients:
        c.transport.close()
    return {"mode": "echo", "connections": args.connections, "size": args.size,
            "seconds": round(elapsed, 3), "messages": done,
            "messages_per_s": round(done / elapsed, 1), "errors": counts["errors"]}


def _server_rss_kib(pid: int | None) -> int:
    if not pid:
        return 0
    try:
        from loadtest.procstat import memory_kib, process_tree
    except ImportError:
        return 0
    return sum(memory_kib(p)[0] for p in process_tree(pid))


async def run_broadcast(args: argparse.Namespace) -> dict:
    loop = asyncio.get_running_loop()
    want = args.size * args.rounds

    def ignore(client: Client, opcode: int, n: int) -> None:
        pass

    members = []
    for _ in range(args.connections):
        members.append(await _connect(loop, args.host, args.port, args.path, ignore,
                                      lambda c: None, rcvbuf=args.rcvbuf))
    await _opened(members, 30)
    control = await _connect(loop, args.host, args.port, args.path, ignore, lambda c: None)
    await _opened([control], 10)
    for c in members:
        c.transport.pause_reading()
    rss_before = _server_rss_kib(args.server_pid)
    started = time.monotonic()
    for _ in range(args.rounds):
        control.transport.write(masked_frame(0x1, f"broadcast {args.size}".encode()))
    peak = rss_before
    hold_until = time.monotonic() + args.hold
    while time.monotonic() < hold_until:        # sampling while nobody reads
        peak = max(peak, _server_rss_kib(args.server_pid))
        await asyncio.sleep(0.01)
    for c in members:
        c.transport.resume_reading()
    deadline = time.monotonic() + args.timeout
    while any(c.received_bytes < want for c in members):
        if time.monotonic() > deadline:
            break
        await asyncio.sleep(0.005)
    elapsed = time.monotonic() - started - args.hold
    complete = sum(c.received_bytes >= want for c in members)
    for c in [*members, control]:
        c.transport.close()
    growth = max(0, peak - rss_before)
    return {"mode": "broadcast", "connections": args.connections, "size": args.size,
            "rounds": args.rounds, "complete": complete,
            "rss_before_mib": round(rss_before / 1024, 1), "rss_peak_mib": round(peak / 1024, 1),
            "rss_growth_mib": round(growth / 1024, 1),
            "payload_copies": round(growth * 1024 / (args.size * args.rounds), 1),
            "deliver_s": round(elapsed, 3),
            "mb_per_s": round(want * complete / max(elapsed, 1e-6) / 1e6, 1)}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m loadtest.ws_client", description=__doc__.split("\n")[0])
    p.add_argument("mode", choices=["echo", "broadcast"])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--path")
    p.add_argument("--connections", type=int)
    p.add_argument("--size", type=int)
    p.add_argument("--duration", type=float, default=10.0, help="echo: seconds measured")
    p.add_argument("--rounds", type=int, default=1, help="broadcast: messages sent to everyone")
    p.add_argument("--hold", type=float, default=1.0, help="broadcast: seconds nobody reads")
    p.add_argument("--rcvbuf", type=int, default=4096, help="broadcast: SO_RCVBUF of each member")
    p.add_argument("--server-pid", type=int, help="broadcast: sample this process tree's RSS")
    p.add_argument("--timeout", type=float, default=60.0, help="bound on the whole run")
    args = p.parse_args(argv)
    echo = args.mode == "echo"
    args.path = args.path or ("/ws/echo" if echo else "/ws/broadcast")
    args.connections = args.connections or (64 if echo else 1000)
    args.size = args.size or (1024 if echo else 65536)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = args.connections + 64
    if soft < need:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(max(need, soft), hard), hard))
    try:
        import uvloop
        uvloop.install()
    except ImportError:
        pass
    runner = run_echo if args.mode == "echo" else run_broadcast
    try:
        result = asyncio.run(asyncio.wait_for(runner(args), args.timeout + args.duration + 30))
    except (OSError, TimeoutError) as exc:
        print(json.dumps({"mode": args.mode, "error": f"{type(exc).__name__}: {exc}"}))
        return 1
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
