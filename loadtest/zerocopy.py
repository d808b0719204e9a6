"""--zerocopy against the ordinary send path: large mmap-window downloads, CPU per GB.

    python -m loadtest.zerocopy [--duration 10] [--size 8M] [--connections 4]
                                [--modes sendfile,windows,zerocopy,zerocopy-forced]
                                [--setups loopback,veth]

One file of `--size` bytes (under --map-max, so the open-file cache maps it) is
downloaded over keep-alive by wrk, for `--duration` seconds per (setup, mode), with the
server pinned to the first CPU and wrk to the second.  Modes:

* sendfile         the defaults: a file this large leaves by sendfile
* windows          `--gather-max SIZE`: the same file as mmap windows in a writev (one copy)
* zerocopy         `--zerocopy`: the windows with MSG_ZEROCOPY; a connection whose sends
                   are copied anyway 8 times in a row falls back (the default policy)
* zerocopy-forced  `--zerocopy --zerocopy-copied-limit 0`: never falls back

Setups:

* loopback  server and wrk on 127.0.0.1
* veth      server and wrk in two network namespaces joined by a veth pair (needs root
            and `ip`; skipped otherwise).  Still one machine: the kernel delivers the
            packets to a local socket, so it copies zerocopy sends there too
            (Documentation/networking/msg_zerocopy.rst, "loopback").

The record of each run is the server's CPU seconds (from /proc) per GB it sent (from
its /metrics), and what the kernel did: zerocopy calls, their notices, how many it
copied anyway, and fallbacks.  On one machine every notice should say "copied", so
these runs show what zerocopy *costs* when it cannot help; docs/zerocopy.md says when
it pays.  Results go to ~/.cache/pageloan-loadtest/results/zerocopy-<time>.json (or --out).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from loadtest import REPO_ROOT, procstat
from loadtest.locations import CACHE_DIR, RESULTS_DIR
from loadtest.process import ServerProcess, finish_record, free_port, port_open
from loadtest.results import base_meta, save
from loadtest.servers import pageloan_env
from loadtest.tools import find_tool, require_tools

MODES = {
    "sendfile": [],
    "windows": ["--gather-max", "{size}"],
    "zerocopy": ["--zerocopy"],
    "zerocopy-forced": ["--zerocopy", "--zerocopy-copied-limit", "0"],
}
SETUPS = ("loopback", "veth")
VETH_SERVER, VETH_CLIENT = "10.231.0.1", "10.231.0.2"


def _size(text: str) -> int:
    units = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30}
    text = text.strip().lower()
    return int(float(text[:-1]) * units[text[-1]]) if text[-1] in units else int(text)


class Namespaces:
    """Two network namespaces joined by a veth pair; removed on exit."""

    def __init__(self, ip: str) -> None:
        self.ip = ip
        tag = os.getpid()
        self.server, self.client = f"plzc{tag}s", f"plzc{tag}c"

    def _run(self, *argv: str) -> None:
        subprocess.run([self.ip, *argv], check=True, capture_output=True, timeout=20)

    def __enter__(self) -> Namespaces:
        try:
            self._run("netns", "add", self.server)
            self._run("netns", "add", self.client)
            self._run("link", "add", "plzc-s", "netns", self.server, "type", "veth",
                      "peer", "name", "plzc-c", "netns", self.client)
            for ns, dev, addr in ((self.server, "plzc-s", VETH_SERVER), (self.client, "plzc-c", VETH_CLIENT)):
                self._run("-n", ns, "addr", "add", f"{addr}/30", "dev", dev)
                self._run("-n", ns, "link", "set", dev, "up")
                self._run("-n", ns, "link", "set", "lo", "up")
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        for ns in (self.server, self.client):
            subprocess.run([self.ip, "netns", "del", ns], capture_output=True, timeout=20)

    def wrap(self, ns: str) -> list[str]:
        return [self.ip, "netns", "exec", ns]


def _metrics(url: str, client_wrap: list[str]) -> dict[str, float]:
    if client_wrap:
        text = subprocess.run([*client_wrap, "curl", "-sf", url], capture_output=True, text=True,
                              timeout=10, check=True).stdout
    else:
        with urllib.request.urlopen(url, timeout=10) as answer:
            text = answer.read().decode()
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out


def _sent(m: dict[str, float]) -> float:
    return sum(v for k, v in m.items() if k.startswith("pageloan_bytes_sent_total"))


def _wait_ready(proc: ServerProcess, base: str, client_wrap: list[str], port: int) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.proc is not None and proc.proc.poll() is not None:
            raise RuntimeError(f"server exited: {proc.log_tail()}")
        if client_wrap:
            try:
                _metrics(base + "/metrics", client_wrap)
                return
            except (subprocess.CalledProcessError, subprocess.TimeoutExpired):
                pass
        elif port_open(port):
            return
        time.sleep(0.1)
    raise RuntimeError(f"server not ready: {proc.log_tail()}")


def measure(setup: str, mode: str, args: argparse.Namespace, docroot: Path, wrk: str,
            server_pin: list[str], client_pin: list[str], ns: Namespaces | None) -> dict:
    record: dict = {"setup": setup, "mode": mode, "size": args.size, "connections": args.connections,
                    "duration_s": args.duration, "error": None}
    port = free_port()
    host = VETH_SERVER if ns else "127.0.0.1"
    server_wrap = ns.wrap(ns.server) if ns else []
    client_wrap = ns.wrap(ns.client) if ns else []
    flags = [f.format(size=args.size) for f in MODES[mode]]
    argv = [*server_wrap, *server_pin, sys.executable, "-m", "server", "serve", str(docroot),
            "--host", host, "--port", str(port), "--metrics", *flags]
    rundir = Path(tempfile.mkdtemp(prefix=f"zc-{setup}-{mode}-", dir=CACHE_DIR / "work"))
    proc = ServerProcess(argv, pageloan_env(), REPO_ROOT, rundir / "server.log")
    base = f"http://{host}:{port}"
    try:
        proc.start()
        _wait_ready(proc, base, client_wrap, port)
        before_m = _metrics(base + "/metrics", client_wrap)
        before = procstat.cpu_ticks(procstat.process_tree(proc.pid))
        done = subprocess.run([*client_wrap, *client_pin, wrk, "-t1", f"-c{args.connections}",
                               f"-d{args.duration:g}s", f"{base}/big.bin"],
                              capture_output=True, text=True, timeout=args.duration + 60)
        after = procstat.cpu_ticks(procstat.process_tree(proc.pid))
        # Let the last notices arrive before reading the ledger.
        deadline = time.monotonic() + 5
        while True:
            after_m = _metrics(base + "/metrics", client_wrap)
            if after_m.get("pageloan_zerocopy_pending_bytes", 0) == 0 or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        found = re.search(r"Requests/sec:\s+([\d.]+)", done.stdout)
        if done.returncode != 0 or found is None:
            raise RuntimeError(f"wrk failed: {done.stderr.strip()[-300:] or done.stdout[-300:]}")
        cpu = procstat.cpu_seconds_between(before, after)
        gb = (_sent(after_m) - _sent(before_m)) / 1e9
        delta = {k: after_m.get(k, 0) - before_m.get(k, 0) for k in after_m if "zerocopy" in k}
        record.update({
            "req_per_s": float(found.group(1)),
            "gb_sent": round(gb, 3),
            "gb_per_s": round(gb / args.duration, 3),
            "server_cpu_s": round(cpu, 3),
            "cpu_s_per_gb": round(cpu / gb, 3) if gb else None,
            "zerocopy_sends": delta.get("pageloan_zerocopy_sends_total", 0),
            "zerocopy_completions": delta.get("pageloan_zerocopy_completions_total", 0),
            "zerocopy_copied": delta.get("pageloan_zerocopy_copied_total", 0),
            "zerocopy_fallbacks": delta.get("pageloan_zerocopy_fallbacks_total", 0),
            "zerocopy_enobufs": delta.get("pageloan_zerocopy_enobufs_total", 0),
            "zerocopy_pending_after": after_m.get("pageloan_zerocopy_pending_bytes", 0),
        })
    except Exception as exc:  # noqa: BLE001 - the record carries any failure
        record["error"] = f"{type(exc).__name__}: {exc}"
    finally:
        finish_record(record, proc, rundir)
    return record


def _table(records: list[dict]) -> str:
    head = (f"{'setup':<9} {'mode':<16} {'GB/s':>6} {'cpu s/GB':>9} {'vs windows':>10} "
            f"{'zc calls':>9} {'notices':>8} {'copied':>8} {'fallbacks':>9}")
    rows = [head, "-" * len(head)]
    for r in records:
        if r.get("error"):
            rows.append(f"{r['setup']:<9} {r['mode']:<16} ERROR {r['error']}")
            continue
        base = next((b for b in records if b["setup"] == r["setup"] and b["mode"] == "windows"
                     and not b.get("error") and b.get("cpu_s_per_gb")), None)
        ratio = f"{r['cpu_s_per_gb'] / base['cpu_s_per_gb']:.2f}x" if base and r.get("cpu_s_per_gb") else ""
        rows.append(f"{r['setup']:<9} {r['mode']:<16} {r['gb_per_s']:>6.2f} {r['cpu_s_per_gb'] or 0:>9.3f} "
                    f"{ratio:>10} {r['zerocopy_sends']:>9.0f} {r['zerocopy_completions']:>8.0f} "
                    f"{r['zerocopy_copied']:>8.0f} {r['zerocopy_fallbacks']:>9.0f}")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m loadtest.zerocopy", description=__doc__.split("\n")[0])
    p.add_argument("--duration", type=float, default=10.0, help="seconds per run (default 10)")
    p.add_argument("--size", type=_size, default=8 << 20, help="file size (default 8M; under --map-max)")
    p.add_argument("--connections", type=int, default=4)
    p.add_argument("--modes", default=",".join(MODES), help=f"comma list from {', '.join(MODES)}")
    p.add_argument("--setups", default=",".join(SETUPS), help="loopback, veth (default both)")
    p.add_argument("--out", type=Path, help="results JSON (default: the cache's results/)")
    args = p.parse_args(argv)
    modes = [m for m in args.modes.split(",") if m]
    setups = [s for s in args.setups.split(",") if s]
    if set(modes) - set(MODES) or set(setups) - set(SETUPS):
        p.error("unknown mode or setup")
    wrk = require_tools(["wrk"])["wrk"]
    cpus = sorted(os.sched_getaffinity(0))
    taskset = find_tool("taskset")
    server_pin: list[str] = []
    client_pin: list[str] = []
    if len(cpus) >= 2 and taskset:
        server_pin, client_pin = [taskset, "-c", str(cpus[0])], [taskset, "-c", str(cpus[1])]
    (CACHE_DIR / "work").mkdir(parents=True, exist_ok=True)
    docroot = Path(tempfile.mkdtemp(prefix="zc-docroot-", dir=CACHE_DIR / "work"))
    (docroot / "big.bin").write_bytes(os.urandom(args.size))
    records: list[dict] = []
    skipped: dict[str, str] = {}
    try:
        for setup in setups:
            ns_ctx: Namespaces | None = None
            if setup == "veth":
                ip = find_tool("ip")
                if os.geteuid() != 0 or ip is None or find_tool("curl") is None:
                    skipped[setup] = "needs root, ip (iproute2) and curl"
                    continue
                try:
                    ns_ctx = Namespaces(ip).__enter__()
                except (OSError, subprocess.SubprocessError) as exc:
                    skipped[setup] = f"cannot make network namespaces: {exc}"
                    continue
            try:
                for mode in modes:
                    print(f"{setup} / {mode} ...", file=sys.stderr, flush=True)
                    records.append(measure(setup, mode, args, docroot, wrk, server_pin, client_pin, ns_ctx))
            finally:
                if ns_ctx is not None:
                    ns_ctx.__exit__()
    finally:
        shutil.rmtree(docroot, ignore_errors=True)
    out = args.out or RESULTS_DIR / time.strftime("zerocopy-%Y%m%d-%H%M%S.json", time.gmtime())
    out.parent.mkdir(parents=True, exist_ok=True)
    save(out, {"meta": {**base_meta(sys.argv), "pinned": bool(server_pin), "skipped": skipped},
               "records": records})
    print(_table(records))
    for setup, why in skipped.items():
        print(f"{setup}: skipped ({why})")
    print(f"results: {out}")
    return 1 if any(r.get("error") for r in records) else 0


if __name__ == "__main__":
    sys.exit(main())
