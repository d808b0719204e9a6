"""The fan-out scenarios: one producer's stream to 100 and to 1,000 readers.

    python -m loadtest.fanout_bench [--servers pageloan,aiohttp,uvicorn]
                                    [--scenarios fanout-100,fanout-1000] [--duration 10]

wrk cannot hold a stream open and produce into it, so the load comes from
`loadtest/fanout_client.py`, pinned to its own core as wrk is (server on the first
CPU, client on the second).  The client opens the readers (`GET /channels/bench`),
then one producer POSTs a chunked body of 64 KiB chunks as fast as the server takes
it, for `--duration` seconds; every server delivers every byte to every reader
(nothing dropped) and pushes back on the producer when the slowest reader lags.

Servers, one worker each, started fresh per (scenario, server):
* pageloan   `pageloan serve ROOT --handlers <repo>/handlers`: the bundled
             handlers/channels.py, a channel with policy "block" (lossless); each
             chunk framed once into the channel's spool (a memory file) and sent to
             every reader by sendfile, readers pushed their batches without a task
* aiohttp    peers/fanout_aiohttp.py: each chunk `await resp.write()`-n to every
             StreamResponse, on uvloop
* uvicorn    peers/fanout_starlette.py: Starlette StreamingResponse per reader fed from
             a bounded queue, on uvicorn (httptools, uvloop)

Figures per run: aggregate MB/s delivered to all readers (target: pageloan ≥ 2×
aiohttp), the server's CPU seconds per GB delivered (from /proc, whole process
tree) and the kernel's share of them (stime: the loopback TCP work for each byte,
which no server avoids: CPU s/GB x share is a floor under any server's CPU s/GB, so
a CPU-bound peer's s/GB over that floor bounds the ratio any server can reach), the share of a CPU the client used (near 1.00 it set the pace), and its RSS growth per reader (peak while producing minus before the readers
connected, divided by the readers) and per *added* reader (the slope of the peak
between the 100- and the 1,000-reader runs; target: ≤ 1/10 of aiohttp's).  Results go to
~/.cache/pageloan-loadtest/results/fanout-<time>.json (or --out), and a table with
ratios to aiohttp is printed.
"""

from __future__ import annotations

import os
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from loadtest import PACKAGE_DIR, REPO_ROOT, bench, procstat
from loadtest.process import ServerProcess, finish_record, free_port
from loadtest.servers import pageloan_env
from loadtest.venv import MissingPeers, check_peers, peer_python


@dataclass(frozen=True)
class FanoutScenario:
    name: str
    summary: str
    readers: int


SCENARIOS = (
    FanoutScenario("fanout-100", "one producer, 100 readers of its stream", 100),
    FanoutScenario("fanout-1000", "one producer, 1,000 readers of its stream", 1000),
)
SERVERS = ("pageloan", "aiohttp", "uvicorn")
SUB_PATH = "/channels/bench"
PUB_PATH = "/channels/bench?policy=block"


def _launch(server: str, rundir: Path, peers: Path) -> tuple[list[str], dict[str, str], int]:
    port = free_port()
    if server == "pageloan":
        argv = [sys.executable, "-m", "server", "serve", str(rundir), "--handlers",
                str(REPO_ROOT / "handlers"), "--host", "127.0.0.1", "--port", str(port),
                "--workers", "1"]
        return argv, pageloan_env(), port
    script = "fanout_aiohttp.py" if server == "aiohttp" else "fanout_starlette.py"
    return [str(peers), str(PACKAGE_DIR / "peers" / script), str(rundir), str(port)], \
        dict(os.environ), port


def _client(scenario: FanoutScenario, port: int, pid: int, duration: float, pin: list[str]) -> dict:
    argv = [*pin, sys.executable, "-m", "loadtest.fanout_client", "--port", str(port),
            "--readers", str(scenario.readers), "--duration", str(duration),
            "--sub-path", SUB_PATH, "--pub-path", PUB_PATH, "--server-pid", str(pid)]
    return bench.run_client(argv, duration + 240)


def measure(server: str, scenario: FanoutScenario, duration: float, peers: Path,
            server_pin: list[str], client_pin: list[str], workroot: Path) -> dict:
    record: dict = {"scenario": scenario.name, "server": server, "metric": "mb_per_s",
                    "readers": scenario.readers, "error": None}
    rundir = Path(tempfile.mkdtemp(prefix=f"{server}-{scenario.name}-", dir=workroot))
    argv, env, port = _launch(server, rundir, peers)
    proc = ServerProcess([*server_pin, *argv], env, rundir, rundir / "server.log")
    try:
        proc.start()
        proc.wait_ready(port)
        tree = procstat.process_tree(proc.pid)
        before, kernel_before = procstat.cpu_ticks(tree), procstat.kernel_ticks(tree)
        result = _client(scenario, port, proc.pid, duration, client_pin)
        tree = procstat.process_tree(proc.pid)
        after, kernel_after = procstat.cpu_ticks(tree), procstat.kernel_ticks(tree)
        record.update(result)
        cpu = procstat.cpu_seconds_between(before, after)
        record["cpu_s"] = round(cpu, 3)
        # How much of the server's CPU the kernel spent (stime): the TCP work for each
        # byte delivered over loopback, which no server can avoid.
        kernel = procstat.cpu_seconds_between(kernel_before, kernel_after)
        record["kernel_share"] = round(kernel / cpu, 3) if cpu else None
        delivered = record.get("delivered_bytes") or 0
        # CPU over the whole client run (connecting, producing, ending) per GB delivered.
        record["cpu_s_per_gb"] = round(cpu / (delivered / 1e9), 3) if delivered else None
    except Exception as exc:  # noqa: BLE001 - the record carries any failure
        record["error"] = f"{type(exc).__name__}: {exc}"
    finally:
        finish_record(record, proc, rundir)
    return record


def _table(records: list[dict]) -> str:
    rows = [f"{'scenario':<12} {'server':<9} {'MB/s':>8} {'vs aiohttp':>10} {'CPU s/GB':>9} "
            f"{'kernel':>7} {'RSS/reader':>11} {'vs aiohttp':>10} {'client CPU':>10} ended"]
    for r in records:
        if r.get("error"):
            rows.append(f"{r['scenario']:<12} {r['server']:<9} ERROR {r['error']}")
            continue
        base = next((b for b in records if b["scenario"] == r["scenario"] and b["server"] == "aiohttp"
                     and not b.get("error")), None)
        speed = f"{r['mb_per_s'] / base['mb_per_s']:.2f}x" if base and base["mb_per_s"] else ""
        growth = r.get("rss_growth_per_reader_kib")
        base_growth = base.get("rss_growth_per_reader_kib") if base else None
        memory = f"{growth / base_growth:.2f}x" if growth is not None and base_growth else ""
        rows.append(f"{r['scenario']:<12} {r['server']:<9} {r['mb_per_s']:>8.1f} {speed:>10} "
                    f"{r['cpu_s_per_gb'] or 0:>9.2f} {(r.get('kernel_share') or 0):>7.0%} "
                    f"{growth if growth is not None else '-':>8} KiB "
                    f"{memory:>10} {r.get('client_cpu_share') or 0:>10.2f} {r['ended']}/{r['readers']}")
    # RSS per *added* reader: the slope between the two reader counts, per server, of
    # the peak while producing and of the readers connected but idle.
    slopes: dict[str, tuple[int, int, float, float]] = {}
    for server in dict.fromkeys(r["server"] for r in records):
        runs = sorted((r for r in records if r["server"] == server and not r.get("error")
                       and r.get("rss_peak_kib")), key=lambda r: r["readers"])
        if len(runs) >= 2 and runs[-1]["readers"] > runs[0]["readers"]:
            added = runs[-1]["readers"] - runs[0]["readers"]
            slopes[server] = (runs[0]["readers"], runs[-1]["readers"],
                              (runs[-1]["rss_peak_kib"] - runs[0]["rss_peak_kib"]) / added,
                              (runs[-1]["rss_idle_kib"] - runs[0]["rss_idle_kib"]) / added)
    base = slopes.get("aiohttp")
    for server, (low, high, peak, idle) in slopes.items():
        ratio = f" ({peak / base[2]:.2f}x aiohttp's)" if base and base[2] > 0 and server != "aiohttp" else ""
        rows.append(f"{server}: RSS per added reader ({low} → {high}) {peak:.1f} KiB while producing"
                    f"{ratio}, {idle:.1f} KiB connected and idle")
    rows.append("client CPU: the share of one CPU the load client used while producing; near 1.00 "
                "the client set the pace and the MB/s is a floor")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    p = bench.parser("python -m loadtest.fanout_bench", __doc__, SERVERS, SCENARIOS,
                     "seconds of producing per run (default 10)",
                     "interpreter with aiohttp, uvicorn, starlette")
    args = p.parse_args(argv)
    servers, scenarios = bench.chosen(p, args, SERVERS, SCENARIOS)
    server_pin, client_pin = bench.pins()
    peers = peer_python(args.peer_python, args.venv)
    try:
        check_peers(peers, [s for s in servers if s != "pageloan"], args.venv)
    except MissingPeers as exc:
        print(exc, file=sys.stderr)
        return 3
    work = bench.workroot()
    return bench.run_all("fanout", scenarios, servers, args.out, bool(server_pin),
                         lambda server, scenario: measure(server, scenario, args.duration, peers,
                                                          server_pin, client_pin, work),
                         _table)


if __name__ == "__main__":
    sys.exit(main())
