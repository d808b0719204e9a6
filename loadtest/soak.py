"""Soak: bounded mixed load for minutes, sampling the server's RSS and open descriptors.

    python -m loadtest.soak --minutes 10          # the long run
    python -m loadtest.soak --seconds 60          # the suite's version

Theory of operation: starts `pageloan serve` (a subprocess, with the bundled handlers
and short keep-alive) over a scratch site, warms it up, and takes a *baseline* of
its RSS and descriptor count once idle.  Then `--clients` asyncio clients run a mix
for the whole duration — whole static files, single and multiple ranges,
conditional requests, handler answers (JSON, text, a stream), uploads of a few
hundred KiB, and now and then a client that resets the connection mid-response or
mid-upload — while the server's RSS and descriptors are sampled once a second.
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
import json
import os
import random
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .conns import ServerUnderTest, open_fds, rss_bytes

__all__ = ["SoakReport", "run_soak"]

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
        body = os.urandom(rng.randrange(1, 300 << 10))
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


async def run_soak(server: ServerUnderTest, seconds: float, clients: int = 8,
                   warmup: float = 3.0) -> SoakReport:
    etag = await _etag(server.port)
    warm = SoakReport(0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0)
    await asyncio.gather(*(_client(server.port, time.monotonic() + warmup, 1000 + i, etag, warm)
                           for i in range(clients)))
    rss0, fds0 = await _idle_numbers(server)
    report = SoakReport(seconds, 0, 0, 0, rss0, rss0, 0, 0, 0, fds0, fds0, 0)
    until = time.monotonic() + seconds
    samples: list[tuple[int, int]] = []

    async def sample() -> None:
        while time.monotonic() < until:
            samples.append((rss_bytes(server.pid), open_fds(server.pid)))
            await asyncio.sleep(1.0)

    await asyncio.gather(sample(), *(_client(server.port, until, i, etag, report) for i in range(clients)))
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
    parser.add_argument("--clients", type=int, default=8, help="concurrent clients")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    args = parser.parse_args(argv)
    seconds = args.seconds if args.seconds is not None else 60.0 * (args.minutes or 10.0)
    with tempfile.TemporaryDirectory(prefix="soak-") as tmp:
        server = ServerUnderTest(Path(tmp), ["--keepalive-timeout", "2", "--max-body-size", "1m"])
        try:
            report = asyncio.run(run_soak(server, seconds, args.clients))
        finally:
            server.stop()
    if args.json:
        print(json.dumps(asdict(report), indent=2))
    else:
        mib = 1 << 20
        print(f"{report.requests} requests in {report.seconds:.0f} s ({report.resets} deliberate resets), "
              f"{report.errors} errors; statuses {dict(sorted(report.statuses.items()))}")
        print(f"RSS: baseline {report.rss_baseline / mib:.1f} MiB, peak {report.rss_peak / mib:.1f}, "
              f"2nd quarter {report.rss_second_quarter / mib:.1f}, last quarter "
              f"{report.rss_last_quarter / mib:.1f}, after {report.rss_after / mib:.1f}")
        print(f"descriptors: baseline {report.fds_baseline}, peak {report.fds_peak}, after {report.fds_after}")
        for problem in report.problems:
            print(f"PROBLEM: {problem}")
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
