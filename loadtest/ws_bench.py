"""The WebSocket scenarios: echo over 64 connections and a broadcast to 1,000 sockets.

    python -m loadtest.ws_bench [--servers pageloan,pageloan-asgi,uvicorn]
                                [--scenarios ws-echo,ws-broadcast] [--duration 10]

wrk does not speak WebSocket, so the load comes from `loadtest/ws_client.py`, pinned to
its own core as wrk is (server on the first CPU, client on the second).  Each (scenario,
server) pair gets a fresh server; its CPU seconds and peak RSS are read from /proc
around the run (procstat.py), and the client's JSON is the record.

Servers, one worker each:
* pageloan       native `@websocket` handlers (written into the run directory)
* pageloan-asgi  `pageloan serve --asgi ws_app:app` — the Starlette app of peers/ws_app.py
* uvicorn        the same Starlette app on uvicorn (httptools, uvloop, `--ws websockets`),
                 run with the peers' interpreter (venv.py)

Scenarios:
* ws-echo       64 connections, 1 KiB binary messages, one in flight per connection:
                messages/s (target: pageloan ≥ 1.5× uvicorn)
* ws-broadcast  1,000 members with 4 KiB receive buffers, one 64 KiB message sent to
                all while nobody reads for a second: the server's RSS growth (pageloan
                holds one payload object, plus a few hundred bytes of queue per
                socket; what each socket's kernel buffer copied is not RSS, for any
                server), then the time to deliver it to all

Results go to ~/.cache/pageloan-loadtest/results/ws-<time>.json (or --out), and a
table with ratios to uvicorn is printed.
"""

from __future__ import annotations

import os
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from loadtest import PACKAGE_DIR, bench, procstat
from loadtest.process import ServerProcess, finish_record, free_port
from loadtest.servers import pageloan_env
from loadtest.venv import peer_python

BENCH_HANDLER = '''import os

from server import broadcast, websocket

MEMBERS = set()


@websocket("/ws/echo")
async def echo(ws):
    await ws.accept()
    async for message in ws:
        await ws.send(message)


@websocket("/ws/broadcast")
async def room(ws):
    await ws.accept()
    MEMBERS.add(ws)
    try:
        async for message in ws:
            if isinstance(message, str) and message.startswith("broadcast "):
                payload = os.urandom(int(message.split()[1]))   # resident memory, unlike bytes(n)
                await broadcast([m for m in MEMBERS if m is not ws], payload)
    finally:
        MEMBERS.discard(ws)
'''


@dataclass(frozen=True)
class WsScenario:
    name: str
    summary: str
    mode: str
    connections: int
    size: int
    metric: str


SCENARIOS = (
    WsScenario("ws-echo", "WebSocket echo, 1 KiB binary messages, 64 connections",
               "echo", 64, 1024, "messages_per_s"),
    WsScenario("ws-broadcast", "one 64 KiB message to 1,000 sockets that do not read for 1 s",
               "broadcast", 1000, 65536, "payload_copies"),
)
SERVERS = ("pageloan", "pageloan-asgi", "uvicorn")


def _launch(server: str, rundir: Path, peers: Path) -> tuple[list[str], dict[str, str], int]:
    port = free_port()
    if server == "pageloan":
        handlers = rundir / "handlers"
        handlers.mkdir()
        (handlers / "wsbench.py").write_text(BENCH_HANDLER)
        argv = [sys.executable, "-m", "server", "serve", str(rundir), "--handlers", str(handlers)]
    elif server == "pageloan-asgi":
        argv = [sys.executable, "-m", "server", "serve", "--asgi", "ws_app:app",
                "--app-dir", str(PACKAGE_DIR / "peers"), "--lifespan", "off"]
    else:
        return [str(peers), str(PACKAGE_DIR / "peers" / "ws_app.py"), str(rundir), str(port)], \
            dict(os.environ), port
    argv += ["--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    return argv, pageloan_env(), port


def _client(scenario: WsScenario, port: int, pid: int, duration: float, pin: list[str]) -> dict:
    argv = [*pin, sys.executable, "-m", "loadtest.ws_client", scenario.mode, "--port", str(port),
            "--connections", str(scenario.connections), "--size", str(scenario.size),
            "--duration", str(duration), "--server-pid", str(pid)]
    return bench.run_client(argv, duration + 180)


def measure(server: str, scenario: WsScenario, duration: float, peers: Path,
            server_pin: list[str], client_pin: list[str], workroot: Path) -> dict:
    record: dict = {"scenario": scenario.name, "server": server, "metric": scenario.metric,
                    "connections": scenario.connections, "error": None}
    rundir = Path(tempfile.mkdtemp(prefix=f"{server}-{scenario.name}-", dir=workroot))
    argv, env, port = _launch(server, rundir, peers)
    proc = ServerProcess([*server_pin, *argv], env, rundir, rundir / "server.log")
    try:
        proc.start()
        proc.wait_ready(port)
        before = procstat.cpu_ticks(procstat.process_tree(proc.pid))
        sampler = procstat.PeakMemory(proc.pid)
        sampler.start()
        try:
            result = _client(scenario, port, proc.pid, duration, client_pin)
        finally:
            rss, anon = sampler.stop()
            after = procstat.cpu_ticks(procstat.process_tree(proc.pid))
        record.update(result)
        record["cpu_s"] = round(procstat.cpu_seconds_between(before, after), 3)
        record["peak_rss_mib"] = round(rss / 1024, 1)
        record["peak_rss_anon_mib"] = round(anon / 1024, 1)
        if result.get("messages"):
            # Server CPU per echoed message: the figure that survives a busy machine.
            record["cpu_us_per_msg"] = round(record["cpu_s"] * 1e6 / result["messages"], 1)
    except Exception as exc:  # noqa: BLE001 - the record carries any failure
        record["error"] = f"{type(exc).__name__}: {exc}"
    finally:
        finish_record(record, proc, rundir)
    return record


def _table(records: list[dict]) -> str:
    rows = []
    for r in records:
        if r.get("error"):
            rows.append(f"{r['scenario']:<13} {r['server']:<14} ERROR {r['error']}")
            continue
        base = next((b for b in records if b["scenario"] == r["scenario"] and b["server"] == "uvicorn"
                     and not b.get("error")), None)
        if r["scenario"] == "ws-echo":
            ratio = f"{r['messages_per_s'] / base['messages_per_s']:.2f}x uvicorn" if base else ""
            rows.append(f"{r['scenario']:<13} {r['server']:<14} {r['messages_per_s']:>10.0f} msg/s  "
                        f"{r.get('cpu_us_per_msg', 0):.0f} us cpu/msg  rss {r['peak_rss_mib']} MiB  {ratio}")
        else:
            per_socket = r["size"] * r["connections"] / (1 << 20)
            rows.append(f"{r['scenario']:<13} {r['server']:<14} rss +{r['rss_growth_mib']} MiB while held "
                        f"(one copy per socket in user space would be {per_socket:.0f} MiB); delivered to "
                        f"{r['complete']}/{r['connections']} in {r['deliver_s']} s ({r['mb_per_s']} MB/s)")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    p = bench.parser("python -m loadtest.ws_bench", __doc__, SERVERS, SCENARIOS,
                     "seconds per echo run (default 10)",
                     "interpreter with uvicorn, starlette, websockets")
    args = p.parse_args(argv)
    servers, scenarios = bench.chosen(p, args, SERVERS, SCENARIOS)
    server_pin, client_pin = bench.pins()
    peers = peer_python(args.peer_python, args.venv)
    work = bench.workroot()
    return bench.run_all("ws", scenarios, servers, args.out, bool(server_pin),
                         lambda server, scenario: measure(server, scenario, args.duration, peers,
                                                          server_pin, client_pin, work),
                         _table)


if __name__ == "__main__":
    sys.exit(main())
