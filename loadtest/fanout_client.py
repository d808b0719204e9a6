"""A small, bounded fan-out load client: one producer, many readers of its stream.

    python -m loadtest.fanout_client --port P [--readers 100] [--duration 10]
        [--sub-path /channels/bench] [--pub-path '/channels/bench?policy=block']
        [--chunk 65536] [--server-pid PID]

Prints one JSON object on stdout.  Run it pinned to its own core, as the harness runs
wrk; `loadtest/fanout_bench.py` does that for every server.

It is raw asyncio protocols on uvloop, so that it costs as little as possible per
byte: `readers` connections each send `GET sub-path` and, once the response head
has arrived, only count the bytes that follow (the chunked framing included: a few
bytes per chunk, alike for every server).  When every reader is in, one producer
connection POSTs a chunked body to `pub-path` as fast as the server takes it (64 KiB
chunks of a fixed incompressible pattern, flow-controlled by the transport) for
`duration` seconds, then ends the body; the readers' responses should then end.

Figures: bytes delivered to all readers during the producing window and the
aggregate MB/s; the share of one CPU the client itself used meanwhile (near 1.0 it,
not the server, set the pace); with `--server-pid`, the server's RSS (summed over its process tree)
before the readers connect, with them connected and idle, and at its peak while
producing — the harness turns those into RSS growth per reader.  Every phase has a
deadline; the whole run is bounded by `--timeout`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import socket
import sys
import time


def tree_rss_kib(root: int) -> int:
    """VmRSS of `root` and its descendants, in KiB (0 when gone)."""
    total = 0
    pids = [root]
    try:
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    with open(f"/proc/{entry}/stat") as f:
                        parent = int(f.read().rsplit(")", 1)[1].split()[1])
                except (OSError, IndexError, ValueError):
                    continue
                if parent == root:
                    pids.append(int(entry))
    except OSError:
        pass
    for pid in pids:
        try:
            with open(f"/proc/{pid}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
        except OSError:
            pass
    return total


# Every reader receives into this one buffer: the bytes are only counted, never kept,
# so the client's cost per byte is the kernel's copy out of the socket and nothing
# more (a bytes object per read and a copy to look for the end would double it, and
# make a fast server look as slow as the client).
_SINK = memoryview(bytearray(256 << 10))


class Reader(asyncio.BufferedProtocol):
    """One subscriber: the GET, its response head, then bytes counted."""

    def __init__(self, request: bytes) -> None:
        self.request = request
        self.head = bytearray()
        self.status = 0
        self.in_body = False
        self.received = 0
        self.tail = b""
        self.ready = asyncio.get_event_loop().create_future()
        self.closed = asyncio.get_event_loop().create_future()

    def connection_made(self, transport) -> None:
        transport.write(self.request)

    def get_buffer(self, sizehint: int) -> memoryview:
        return _SINK

    def buffer_updated(self, nbytes: int) -> None:
        if not self.in_body:
            self.head += _SINK[:nbytes]
            end = self.head.find(b"\r\n\r\n")
            if end < 0:
                return
            self.status = int(bytes(self.head[9:12]) or b"0")
            body = bytes(self.head[end + 4:])
            self.in_body = True
            if not self.ready.done():
                self.ready.set_result(None)
            self.received += len(body)
            self.tail = body[-7:]
            return
        self.received += nbytes
        # The last few bytes, to see the terminating chunk: a 7-byte copy per read.
        last = _SINK[max(0, nbytes - 7):nbytes].tobytes()
        self.tail = last if nbytes >= 7 else (self.tail + last)[-7:]

    @property
    def ended(self) -> bool:
        return self.tail.endswith(b"0\r\n\r\n") or self.closed.done()

    def connection_lost(self, exc) -> None:
        if not self.ready.done():
            self.ready.set_result(None)
        if not self.closed.done():
            self.closed.set_result(None)


class Producer(asyncio.Protocol):
    """The POST: a chunked body written while the transport will take it."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.can_write = asyncio.Event()
        self.can_write.set()
        self.answer = bytearray()
        self.closed = asyncio.get_event_loop().create_future()

    def connection_made(self, transport) -> None:
        self.transport = transport

    def pause_writing(self) -> None:
        self.can_write.clear()

    def resume_writing(self) -> None:
        self.can_write.set()

    def data_received(self, data: bytes) -> None:
        self.answer += data

    def connection_lost(self, exc) -> None:
        self.can_write.set()
        if not self.closed.done():
            self.closed.set_result(None)


async def _connect(loop, port: int, factory):
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.setblocking(False)
    await loop.sock_connect(sock, ("127.0.0.1", port))
    _, protocol = await loop.create_connection(factory, sock=sock)
    return protocol


async def run(args: argparse.Namespace) -> dict:
    loop = asyncio.get_running_loop()
    pid = args.server_pid
    result: dict = {"readers": args.readers, "chunk": args.chunk, "error": None}
    result["rss_before_kib"] = tree_rss_kib(pid) if pid else None
    request = (f"GET {args.sub_path} HTTP/1.1\r\nHost: 127.0.0.1:{args.port}\r\n\r\n").encode()
    readers: list[Reader] = []
    for start in range(0, args.readers, 100):     # connect in batches: bounded backlog
        batch = [_connect(loop, args.port, lambda: Reader(request))
                 for _ in range(min(100, args.readers - start))]
        readers += await asyncio.wait_for(asyncio.gather(*batch), 30)
    await asyncio.wait_for(asyncio.gather(*(r.ready for r in readers)), 30)
    bad = [r.status for r in readers if r.status != 200]
    if bad:
        result["error"] = f"{len(bad)} readers got status {sorted(set(bad))}"
        return result
    result["rss_idle_kib"] = tree_rss_kib(pid) if pid else None

    producer: Producer = await _connect(loop, args.port, Producer)
    pattern = (bytes(range(251)) * (args.chunk // 251 + 2))
    frames = [b"%x\r\n" % args.chunk + pattern[i:i + args.chunk] + b"\r\n" for i in range(0, 251, 37)]
    head = (f"POST {args.pub_path} HTTP/1.1\r\nHost: 127.0.0.1:{args.port}\r\n"
            f"Transfer-Encoding: chunked\r\nContent-Type: application/octet-stream\r\n\r\n").encode()
    ptransport = producer.transport
    assert ptransport is not None
    ptransport.write(head)
    peak = [result["rss_idle_kib"] or 0]

    def sample() -> None:
        if pid:
            peak[0] = max(peak[0], tree_rss_kib(pid))

    at_start = [r.received for r in readers]
    before = sum(at_start)
    cpu_before = resource.getrusage(resource.RUSAGE_SELF)
    started = time.monotonic()
    sent = 0
    next_sample = started
    i = 0
    while time.monotonic() - started < args.duration:
        await producer.can_write.wait()
        if producer.closed.done():
            result["error"] = "the server closed the producer's connection"
            break
        ptransport.write(frames[i % len(frames)])
        i += 1
        sent += args.chunk
        if time.monotonic() >= next_sample:
            sample()
            next_sample = time.monotonic() + 0.1
        await asyncio.sleep(0)
    elapsed = time.monotonic() - started
    delivered = sum(r.received for r in readers) - before
    # Every reader should have received while the RSS was sampled (none stuck, none dropped).
    receiving = sum(r.received > start for r, start in zip(readers, at_start, strict=True))
    cpu_after = resource.getrusage(resource.RUSAGE_SELF)
    client_cpu = (cpu_after.ru_utime - cpu_before.ru_utime) + (cpu_after.ru_stime - cpu_before.ru_stime)
    sample()
    ptransport.write(b"0\r\n\r\n")
    deadline = time.monotonic() + args.end_timeout
    while not all(r.ended for r in readers) and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    ended = sum(r.ended for r in readers)
    result["received_total_bytes"] = sum(r.received for r in readers)
    while b"\r\n\r\n" not in producer.answer and time.monotonic() < deadline and not producer.closed.done():
        await asyncio.sleep(0.05)
    reply = bytes(producer.answer)
    result["producer_status"] = int(reply[9:12] or b"0") if reply.startswith(b"HTTP/") else None
    result["producer_reply"] = reply.partition(b"\r\n\r\n")[2][:200].decode("latin-1")
    result.update({
        "seconds": round(elapsed, 3),
        "produced_bytes": sent,
        "delivered_bytes": delivered,
        "mb_per_s": round(delivered / elapsed / 1e6, 1),
        "per_reader_mb_per_s": round(delivered / elapsed / 1e6 / args.readers, 2),
        "ended": ended,
        "receiving": receiving,
        "rss_peak_kib": peak[0] if pid else None,
        # Near 1.0 the client, not the server, set the pace: the figure is a floor.
        "client_cpu_share": round(client_cpu / elapsed, 2) if elapsed else None,
    })
    if pid and result["rss_before_kib"] is not None:
        result["rss_growth_per_reader_kib"] = round((peak[0] - result["rss_before_kib"]) / args.readers, 1)
        result["rss_idle_per_reader_kib"] = round(
            (result["rss_idle_kib"] - result["rss_before_kib"]) / args.readers, 1)
    for r in readers:
        if not r.closed.done():
            r.closed.cancel()
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m loadtest.fanout_client", description=__doc__.split("\n")[0])
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--readers", type=int, default=100)
    p.add_argument("--duration", type=float, default=10.0)
    p.add_argument("--sub-path", default="/channels/bench")
    p.add_argument("--pub-path", default="/channels/bench?policy=block")
    p.add_argument("--chunk", type=int, default=64 << 10)
    p.add_argument("--server-pid", type=int)
    p.add_argument("--end-timeout", type=float, default=30.0)
    p.add_argument("--timeout", type=float, default=300.0, help="bound on the whole run")
    args = p.parse_args(argv)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < args.readers + 64 <= hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, args.readers + 1024), hard))
    try:
        import uvloop
        loop = uvloop.new_event_loop()
    except ImportError:
        loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    try:
        result = loop.run_until_complete(asyncio.wait_for(run(args), args.timeout))
    except (TimeoutError, OSError) as exc:
        result = {"error": f"{type(exc).__name__}: {exc}"}
    print(json.dumps(result))
    return 0 if not result.get("error") else 1


if __name__ == "__main__":
    sys.exit(main())
