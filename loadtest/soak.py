"""Soak: bounded mixed load for minutes, sampling the server's RSS and open descriptors.

    python -m loadtest.soak --minutes 10          # the long run
    python -m loadtest.soak --seconds 60          # the suite's version

Theory of operation: starts `pageloan serve` (a subprocess, with the bundled handlers
and short keep-alive) over a scratch site, warms it up, and takes a *baseline* of
its RSS and descriptor count once idle.  Then `--clients` asyncio clients run a mix
for the whole duration — whole static files, single and multiple ranges,
conditional requests, handler answers (JSON, text, a stream), uploads of a few
hundred KiB, and now and then a client that resets the connection mid-response or
mid-upload — and `--ftp-clients` FTP sessions (ftplib, in threads) log in and list,
download whole files and resumed tails (REST), upload, check and delete, abort
downloads half-way, and sometimes drop the control connection without QUIT — while
the server's RSS and descriptors are sampled once a second.
When the load stops and the keep-alive timeout has closed every connection, the
numbers are taken again.

It passes when nothing grows: the RSS of the last quarter of the run is within a
small bound of the second quarter's (no upward trend), and after the load the
descriptors are back to the baseline and the RSS within a bound of it; every
request was answered with the expected status.
"""

from __future__ import annotations

import argparse
import asyncio
import ftplib
import hashlib
import io
import json
import os
import random
import socket
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from server.core.passwords import hash_password

from .conns import ServerUnderTest, open_fds, rss_bytes

__all__ = ["FTP_USER", "SoakReport", "run_soak", "soak_server"]

FTP_USER = ("soak", "soak-password")

RSS_TREND_SLACK = 8 << 20        # the last quarter may exceed the second by this much
RSS_AFTER_SLACK = 16 << 20       # after the load, RSS may stay this far above the baseline
FDS_AFTER_SLACK = 2


@dataclass
class SoakReport:
    seconds: float
    requests: int
    errors: int
    resets: int
    rss_baseline: int
    rss_peak: int
    rss_second_quarter: int
    rss_last_quarter: int
    rss_after: int
    fds_baseline: int
    fds_peak: int
    fds_after: int
    statuses: dict[int, int] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    ftp_sessions: int = 0
    ftp_transfers: int = 0
    ftp_aborts: int = 0
    ftp_errors: int = 0

    @property
    def ok(self) -> bool:
        return not self.problems


async def _exchange(port: int, request: bytes, *, reset_after: int | None = None) -> int:
    """One request on a fresh connection; its status (0 for a deliberate reset)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        if reset_after is not None:
            writer.write(request[:reset_after])
            await writer.drain()
            if request.startswith(b"GET"):
                await asyncio.wait_for(reader.read(1024), 20)    # the response has begun
            writer.transport.abort()              # RST mid-upload or mid-response
            return 0
        writer.write(request)
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 20)
        status = int(head.split(b" ", 2)[1])
        length = None
        chunked = False
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.lower() == b"content-length":
                length = int(value)
            elif name.lower() == b"transfer-encoding":
                chunked = b"chunked" in value.lower()
        if length is not None:
            await asyncio.wait_for(reader.readexactly(length), 20)
        elif chunked or b"Connection: close" in head:
            await asyncio.wait_for(reader.read(), 20)
        return status
    finally:
        writer.close()


def _mix(rng: random.Random, etag: str) -> tuple[bytes, set[int], int | None]:
    """(request, acceptable statuses, reset point or None)."""
    pick = rng.random()
    host = b"Host: soak\r\nConnection: close\r\n"
    if pick < 0.25:
        return b"GET /index.html HTTP/1.1\r\n" + host + b"\r\n", {200}, None
    if pick < 0.35:
        return b"GET /big.bin HTTP/1.1\r\n" + host + b"\r\n", {200}, None
    if pick < 0.45:
        a = rng.randrange(0, 1 << 20)
        return (b"GET /big.bin HTTP/1.1\r\n" + host + b"Range: bytes=%d-%d\r\n\r\n" % (a, a + 9999)), {206}, None
    if pick < 0.50:
        return (b"GET /big.bin HTTP/1.1\r\n" + host + b"Range: bytes=0-99,1000-1099,5000-\r\n\r\n"), {206}, None
    if pick < 0.55:
        return (b"GET /index.html HTTP/1.1\r\n" + host + f"If-None-Match: {etag}\r\n\r\n".encode()), {304}, None
    if pick < 0.68:
        return b"GET /hello/soak HTTP/1.1\r\n" + host + b"\r\n", {200}, None
    if pick < 0.72:
        return (b"POST /echo HTTP/1.1\r\n" + host + b"Content-Type: application/json\r\n"
                b"Content-Length: 13\r\n\r\n{\"soak\": [1]}"), {200}, None
    if pick < 0.75:
        return b"GET /count/5 HTTP/1.1\r\n" + host + b"\r\n", {200}, None
    if pick < 0.85:
        body = os.urandom(rng.randrange(256, 300 << 10))    # (long enough to reset inside)
        name = f"u{rng.randrange(8)}.bin".encode()
        request = (b"POST /upload/" + name + b" HTTP/1.1\r\n" + host
                   + b"Content-Length: %d\r\n\r\n" % len(body) + body)
        if pick > 0.83:
            return request, {0}, rng.randrange(100, len(request))           # reset mid-upload
        return request, {201}, None
    if pick < 0.88:
        return b"GET /big.bin HTTP/1.1\r\n" + host + b"\r\n", {0}, 60        # reset mid-response
    return b"GET /missing HTTP/1.1\r\n" + host + b"\r\n", {404}, None


async def _client(port: int, until: float, seed: int, etag: str, report: SoakReport) -> None:
    rng = random.Random(seed)
    while time.monotonic() < until:
        request, wanted, reset_after = _mix(rng, etag)
        try:
            status = await _exchange(port, request, reset_after=reset_after)
        except (TimeoutError, OSError, asyncio.IncompleteReadError, ValueError) as exc:
            report.errors += 1
            if len(report.problems) < 10:
                report.problems.append(f"{request[:40]!r}: {exc!r}")
            continue
        report.requests += 1
        if status == 0:
            report.resets += 1
        report.statuses[status] = report.statuses.get(status, 0) + 1
        if status not in wanted:
            report.errors += 1
            if len(report.problems) < 10:
                report.problems.append(f"{request[:40]!r}: got {status}, wanted {sorted(wanted)}")


def _ftp_session(port: int, rng: random.Random, name: str, report: SoakReport) -> None:
    """One FTP login with a few operations; every reply checked, failures counted."""
    ftp = ftplib.FTP()
    ftp.connect("127.0.0.1", port, timeout=20)
    ftp.login(*FTP_USER)
    report.ftp_sessions += 1
    for _ in range(rng.randint(1, 5)):
        pick = rng.random()
        if pick < 0.2:
            if "big.bin" not in ftp.nlst():
                raise ftplib.Error("NLST does not list big.bin")
            ftp.retrlines("LIST", lambda line: None)
        elif pick < 0.4:
            got = bytearray()
            ftp.retrbinary("RETR index.html", got.extend)
            if not got.startswith(b"<h1>load</h1>"):
                raise ftplib.Error(f"RETR index.html gave {bytes(got[:40])!r}")
        elif pick < 0.55:
            size = ftp.size("big.bin") or 0
            offset = rng.randrange(size)
            got = bytearray()
            ftp.retrbinary("RETR big.bin", got.extend, rest=offset)
            if len(got) != size - offset:
                raise ftplib.Error(f"REST {offset} + RETR gave {len(got)} bytes, wanted {size - offset}")
        elif pick < 0.8:
            body = rng.randbytes(rng.randrange(1, 200 << 10))
            ftp.storbinary(f"STOR {name}", io.BytesIO(body))
            got = bytearray()
            ftp.retrbinary(f"RETR {name}", got.extend)
            if hashlib.sha256(got).digest() != hashlib.sha256(body).digest():
                raise ftplib.Error(f"{name} came back different ({len(got)} of {len(body)} bytes)")
            ftp.delete(name)
        else:
            data = ftp.transfercmd("RETR big.bin")      # abort half-way: close the data side
            data.recv(rng.randrange(1, 65536))
            data.close()
            try:
                ftp.voidresp()                          # 226 or 426: both are clean answers
            except ftplib.error_temp:
                pass
            report.ftp_aborts += 1
        report.ftp_transfers += 1
    if rng.random() < 0.15:
        ftp.sock.shutdown(socket.SHUT_RDWR)             # vanish without QUIT
        ftp.close()
    else:
        ftp.quit()


def _ftp_client(port: int, until: float, seed: int, report: SoakReport) -> None:
    rng = random.Random(seed)
    while time.monotonic() < until:
        try:
            _ftp_session(port, rng, f"soak-{seed}.bin", report)
        except (ftplib.Error, OSError, EOFError) as exc:
            report.ftp_errors += 1
            if len(report.problems) < 10:
                report.problems.append(f"FTP: {exc!r}")


async def _idle_numbers(server: ServerUnderTest, timeout: float = 20.0) -> tuple[int, int]:
    """(RSS, fds) once the descriptor count has stopped falling (connections closed)."""
    deadline = time.monotonic() + timeout
    last = open_fds(server.pid)
    while time.monotonic() < deadline:
        await asyncio.sleep(0.5)
        now = open_fds(server.pid)
        if now == last:
            break
        last = now
    return rss_bytes(server.pid), open_fds(server.pid)


async def _etag(port: int) -> str:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"HEAD /index.html HTTP/1.1\r\nHost: soak\r\nConnection: close\r\n\r\n")
    head = await reader.read()
    writer.close()
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"etag:"):
            return line.split(b":", 1)[1].strip().decode()
    return '"none"'


def soak_server(base: Path, ftp: bool = True) -> ServerUnderTest:
    """The server the soak runs against: bundled handlers, short keep-alive, FTP with one rw account."""
    extra = ["--keepalive-timeout", "2", "--max-body-size", "1m"]
    if ftp:
        users = base / "ftp-users"
        users.write_text(f"{FTP_USER[0]}:{hash_password(FTP_USER[1])}:rw\n")
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            extra += ["--ftp-port", str(s.getsockname()[1]), "--ftp-users", str(users)]
    return ServerUnderTest(base, extra)


def _ftp_port(server: ServerUnderTest) -> int | None:
    argv = server.proc.args
    assert isinstance(argv, list)
    return int(argv[argv.index("--ftp-port") + 1]) if "--ftp-port" in argv else None


async def _wait_for_port(port: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.05)


async def run_soak(server: ServerUnderTest, seconds: float, clients: int = 8,
                   warmup: float = 3.0, ftp_clients: int = 2) -> SoakReport:
    etag = await _etag(server.port)
    ftp_port = _ftp_port(server)
    if ftp_port is None:
        ftp_clients = 0
    else:
        await _wait_for_port(ftp_port)
    warm = SoakReport(0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0)
    warm_until = time.monotonic() + warmup
    await asyncio.gather(*(_client(server.port, warm_until, 1000 + i, etag, warm) for i in range(clients)),
                         *(asyncio.to_thread(_ftp_client, ftp_port, warm_until, 2000 + i, warm)
                           for i in range(ftp_clients) if ftp_port))
    rss0, fds0 = await _idle_numbers(server)
    report = SoakReport(seconds, 0, 0, 0, rss0, rss0, 0, 0, 0, fds0, fds0, 0)
    until = time.monotonic() + seconds
    samples: list[tuple[int, int]] = []

    async def sample() -> None:
        while time.monotonic() < until:
            samples.append((rss_bytes(server.pid), open_fds(server.pid)))
            await asyncio.sleep(1.0)

    await asyncio.gather(sample(), *(_client(server.port, until, i, etag, report) for i in range(clients)),
                         *(asyncio.to_thread(_ftp_client, ftp_port, until, 3000 + i, report)
                           for i in range(ftp_clients) if ftp_port))
    rss_after, fds_after = await _idle_numbers(server)
    quarter = max(1, len(samples) // 4)
    second = [r for r, _ in samples[quarter:2 * quarter]] or [rss0]
    last = [r for r, _ in samples[-quarter:]] or [rss0]
    report.rss_second_quarter = sum(second) // len(second)
    report.rss_last_quarter = sum(last) // len(last)
    report.rss_peak = max([r for r, _ in samples] + [rss0])
    report.fds_peak = max([f for _, f in samples] + [fds0])
    report.rss_after, report.fds_after = rss_after, fds_after
    if not server.alive():
        report.problems.append("the server died")
    if report.rss_last_quarter > report.rss_second_quarter + RSS_TREND_SLACK:
        report.problems.append(f"RSS grew: {report.rss_second_quarter >> 20} → {report.rss_last_quarter >> 20} MiB")
    if fds_after > fds0 + FDS_AFTER_SLACK:
        report.problems.append(f"descriptors not back to baseline: {fds0} → {fds_after}")
    if rss_after > rss0 + RSS_AFTER_SLACK:
        report.problems.append(f"RSS not back near baseline: {rss0 >> 20} → {rss_after >> 20} MiB")
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtest.soak", description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=None, help="duration in minutes (default 10)")
    parser.add_argument("--seconds", type=float, default=None, help="duration in seconds")
    parser.add_argument("--clients", type=int, default=8, help="concurrent HTTP clients")
    parser.add_argument("--ftp-clients", type=int, default=2, help="concurrent FTP clients (0: no FTP)")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    args = parser.parse_args(argv)
    seconds = args.seconds if args.seconds is not None else 60.0 * (args.minutes or 10.0)
    with tempfile.TemporaryDirectory(prefix="soak-") as tmp:
        server = soak_server(Path(tmp), ftp=args.ftp_clients > 0)
        try:
            report = asyncio.run(run_soak(server, seconds, args.clients, ftp_clients=args.ftp_clients))
        finally:
            server.stop()
    if args.json:
        print(json.dumps(asdict(report), indent=2))
    else:
        mib = 1 << 20
        print(f"{report.requests} requests in {report.seconds:.0f} s ({report.resets} deliberate resets), "
              f"{report.errors} errors; statuses {dict(sorted(report.statuses.items()))}")
        print(f"FTP: {report.ftp_sessions} sessions, {report.ftp_transfers} operations "
              f"({report.ftp_aborts} aborted downloads), {report.ftp_errors} errors")
        print(f"RSS: baseline {report.rss_baseline / mib:.1f} MiB, peak {report.rss_peak / mib:.1f}, "
              f"2nd quarter {report.rss_second_quarter / mib:.1f}, last quarter "
              f"{report.rss_last_quarter / mib:.1f}, after {report.rss_after / mib:.1f}")
        print(f"descriptors: baseline {report.fds_baseline}, peak {report.fds_peak}, after {report.fds_after}")
        for problem in report.problems:
            print(f"PROBLEM: {problem}")
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
