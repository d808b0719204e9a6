"""Many concurrent connections: idle keep-alive, slow readers and active clients at once.

    python -m loadtest.conns --connections 10000         # the long run (a minute or two)
    python -m loadtest.conns --connections 1000 --seconds 3

Theory of operation: starts `pageloan serve` (a subprocess) over a scratch site with
`--max-connections` set to the connection count, then, from one asyncio client
process, opens that many connections, each of which makes one request and then
stays open idle (keep-alive); the server's RSS before and after gives the memory
per idle connection.  While they are held, a few *slow readers* fetch a large file
through a small receive buffer, reading a little at a time, and a few *active*
clients make requests as fast as they are answered.  Finally some connections past
the limit are opened: each must get a clean `503` (or a close), never a hang, and
the held connections must still be served afterwards.

No system setting is needed up to about 30,000 connections on a stock Linux: the
server raises its own RLIMIT_NOFILE soft limit to the hard one (and says so if the
hard limit is too low for --max-connections), and this client does the same for
itself.  Beyond that, raise the hard limit (`ulimit -Hn`, LimitNOFILE=) and
`net.ipv4.ip_local_port_range` (each client connection to 127.0.0.1 uses an
ephemeral port).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

__all__ = ["ConnsReport", "ServerUnderTest", "rss_bytes", "open_fds", "run_conns"]

REPO = Path(__file__).resolve().parent.parent


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def raise_own_limit(wanted: int) -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(wanted, soft)
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


class ServerUnderTest:
    """`python -m server serve` over a scratch site with the bundled handlers."""

    def __init__(self, base: Path, extra: list[str] | None = None) -> None:
        site = base / "site"
        site.mkdir()
        (site / "index.html").write_text("<h1>load</h1>\n" * 20)
        (site / "big.bin").write_bytes(os.urandom(4 << 20))
        uploads = base / "uploads"
        uploads.mkdir()
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.log_path = base / "server.log"
        env = dict(os.environ, PYTHONPATH=str(REPO), PAGELOAN_UPLOAD_DIR=str(uploads))
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "server", "serve", str(site), "--handlers", str(REPO / "handlers"),
             "--host", "127.0.0.1", "--port", str(self.port), "--log-level", "warning", *(extra or [])],
            cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=self.log_path.open("wb"),
            start_new_session=True)
        deadline = time.monotonic() + 20
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                break
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"server did not start: {self.log()}") from None
                time.sleep(0.05)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> int:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        return self.proc.returncode


@dataclass
class ConnsReport:
    connections: int
    held: int
    rss_baseline: int
    rss_held: int
    rss_per_connection: int
    active_requests: int
    active_errors: int
    slow_readers_done: int
    over_limit: int
    over_limit_503: int
    over_limit_closed: int
    held_still_served: int
    seconds: float


async def _request(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, path: str) -> int:
    writer.write(f"GET {path} HTTP/1.1\r\nHost: load\r\n\r\n".encode())
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    await reader.readexactly(length)
    return status


async def _open_idle(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    status = await _request(reader, writer, "/index.html")
    if status != 200:
        raise RuntimeError(f"idle connection got {status}")
    return reader, writer


async def _slow_reader(port: int, seconds: float) -> bool:
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 << 10)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
    reader, writer = await asyncio.open_connection(sock=sock)
    writer.write(b"GET /big.bin HTTP/1.1\r\nHost: load\r\nConnection: close\r\n\r\n")
    got = 0
    deadline = time.monotonic() + seconds
    try:
        while time.monotonic() < deadline:
            chunk = await reader.read(4096)
            if not chunk:
                return True
            got += len(chunk)
            await asyncio.sleep(0.01)
        return got > 0
    finally:
        writer.close()


async def _active(port: int, seconds: float) -> tuple[int, int]:
    done = errors = 0
    deadline = time.monotonic() + seconds
    paths = ["/index.html", "/hello", "/", "/nope"]
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        while time.monotonic() < deadline:
            try:
                await _request(reader, writer, paths[done % len(paths)])
                done += 1
            except (OSError, asyncio.IncompleteReadError, ValueError):
                errors += 1
                writer.close()
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
    finally:
        writer.close()
    return done, errors


async def _over_limit(port: int) -> str:
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        return "closed"
    try:
        writer.write(b"GET /index.html HTTP/1.1\r\nHost: load\r\n\r\n")
        data = await asyncio.wait_for(reader.read(100), 10)
    except (OSError, asyncio.IncompleteReadError):
        return "closed"
    finally:
        writer.close()
    if data.startswith(b"HTTP/1.1 503"):
        return "503"
    return "closed" if not data else data[:12].decode("latin-1")


async def _settle(pid: int, seconds: float = 1.0) -> int:
    """RSS once it has stopped moving (sampled every 0.2 s, at most `seconds` more)."""
    last = rss_bytes(pid)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        await asyncio.sleep(0.2)
        now = rss_bytes(pid)
        if abs(now - last) < 64 << 10:
            return now
        last = now
    return last


async def run_conns(server: ServerUnderTest, connections: int, *, seconds: float = 5.0,
                    slow_readers: int = 8, active: int = 8, over: int = 50,
                    batch: int = 200) -> ConnsReport:
    started = time.monotonic()
    baseline = await _settle(server.pid)
    held: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
    for start in range(0, connections, batch):
        held += await asyncio.gather(*(_open_idle(server.port) for _ in range(min(batch, connections - start))))
    rss_held = await _settle(server.pid)
    slow = [asyncio.create_task(_slow_reader(server.port, seconds)) for _ in range(slow_readers)]
    busy = [asyncio.create_task(_active(server.port, seconds)) for _ in range(active)]
    await asyncio.sleep(0.5)
    # Held + slow + active fill the limit: these are over it.
    outcomes = await asyncio.gather(*(_over_limit(server.port) for _ in range(over)))
    counts = await asyncio.gather(*busy)
    slow_done = sum(await asyncio.gather(*slow))
    # The held connections were left alone and are served again.
    sample = held[:: max(1, len(held) // 50)]
    served = 0
    for r, w in sample:
        served += await _request(r, w, "/index.html") == 200
    for _r, w in held:
        w.close()
    return ConnsReport(
        connections=connections, held=len(held), rss_baseline=baseline, rss_held=rss_held,
        rss_per_connection=max(0, rss_held - baseline) // max(1, len(held)),
        active_requests=sum(c[0] for c in counts), active_errors=sum(c[1] for c in counts),
        slow_readers_done=slow_done, over_limit=over,
        over_limit_503=outcomes.count("503"), over_limit_closed=outcomes.count("closed"),
        held_still_served=served, seconds=round(time.monotonic() - started, 1))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtest.conns", description=__doc__.split("\n\n")[0])
    parser.add_argument("--connections", type=int, default=10_000, help="idle keep-alive connections to hold")
    parser.add_argument("--seconds", type=float, default=10.0, help="how long slow and active clients run")
    parser.add_argument("--slow-readers", type=int, default=16)
    parser.add_argument("--active", type=int, default=16)
    parser.add_argument("--over", type=int, default=100, help="connections opened past the limit")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    args = parser.parse_args(argv)
    total = args.connections + args.slow_readers + args.active
    raise_own_limit(total + args.over + 256)
    with tempfile.TemporaryDirectory(prefix="conns-") as tmp:
        server = ServerUnderTest(Path(tmp), ["--max-connections", str(total),
                                             "--keepalive-timeout", str(max(60.0, args.seconds * 4))])
        try:
            report = asyncio.run(run_conns(server, args.connections, seconds=args.seconds,
                                           slow_readers=args.slow_readers, active=args.active,
                                           over=args.over))
            alive = server.alive()
        finally:
            server.stop()
    if args.json:
        print(json.dumps(asdict(report), indent=2))
    else:
        print(f"held {report.held} idle connections; RSS {report.rss_baseline >> 20} MiB → "
              f"{report.rss_held >> 20} MiB: {report.rss_per_connection} bytes per idle connection")
        print(f"active clients: {report.active_requests} requests, {report.active_errors} errors; "
              f"slow readers finished: {report.slow_readers_done}/{args.slow_readers}")
        print(f"past the limit: {report.over_limit_503} × 503, {report.over_limit_closed} closed, "
              f"of {report.over_limit}; held connections still served: {report.held_still_served}; "
              f"server alive: {alive}; {report.seconds} s")
    ok = alive and report.held == args.connections and report.active_errors == 0 \
        and report.over_limit_503 + report.over_limit_closed == report.over_limit
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
