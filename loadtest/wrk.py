"""Driving wrk for one measurement and reading its numbers.

wrk runs with one thread (`-t1`), so a pinned client uses exactly one CPU. The scenario's
Lua script (if any) is concatenated with report.lua, whose done() prints one
`PAGELOAN-WRK key=value ...` line with exact counts: nothing is re-parsed from wrk's
rounded human output. The client's own CPU time is kept too: a client near 100% of its
CPU means the figure is the client's limit, not the server's.
"""

from __future__ import annotations

import resource
import subprocess
from pathlib import Path

from loadtest import PACKAGE_DIR

MARK = "PAGELOAN-WRK"


def lua_script(script: str | None, rundir: Path) -> Path:
    """Write the scenario script plus the reporter into rundir; return its path."""
    parts = [(PACKAGE_DIR / script).read_text()] if script else []
    parts.append((PACKAGE_DIR / "report.lua").read_text())
    path = rundir / "run.lua"
    path.write_text("\n".join(parts))
    return path


def parse_report(stdout: str) -> dict[str, float]:
    """The key=value pairs of the PAGELOAN-WRK line."""
    for line in stdout.splitlines():
        if line.startswith(MARK):
            return {k: float(v) for k, v in (item.split("=", 1) for item in line.split()[1:])}
    raise ValueError("wrk printed no PAGELOAN-WRK line")


def _ms(microseconds: float) -> float | None:
    """Milliseconds, or None for wrk's 0: no latency is 0 µs, so 0 means wrk lost it.

    wrk 4.x "corrects" its histogram with synthetic samples that can fall below the
    recorded minimum; its percentile walk then never reaches the rank and returns 0.
    Pipelined runs (one latency sample per batch, rate counted per response) hit this.
    """
    return microseconds / 1000 if microseconds > 0 else None


def summarise(raw: dict[str, float]) -> dict:
    """Turn the reporter's counts into the record's figures (MB = 10^6 bytes)."""
    seconds = raw["duration_us"] / 1e6 or 1e-9
    sockets = {k: int(raw[k]) for k in ("connect", "read", "write", "timeout")}
    return {
        "requests": int(raw["requests"]),
        "bytes": int(raw["bytes"]),
        "seconds": round(seconds, 3),
        "req_per_s": raw["requests"] / seconds,
        "mb_per_s": raw["bytes"] / seconds / 1e6,
        "p50_ms": _ms(raw["p50_us"]),
        "p90_ms": _ms(raw["p90_us"]),
        "p99_ms": _ms(raw["p99_us"]),
        "max_ms": _ms(raw["max_us"]),
        "mean_ms": _ms(raw["mean_us"]),
        "non_2xx": int(raw["status"]),
        "socket_errors": sockets,
    }


def run_wrk(wrk: str, url: str, connections: int, seconds: int, timeout_s: int,
            script: Path, script_args: tuple[str, ...] = (), pin: list[str] = ()) -> dict:
    """Run wrk once and return summarise()'s figures plus the client's CPU seconds."""
    argv = [*pin, wrk, "-t1", f"-c{connections}", f"-d{seconds}s", "--latency",
            "--timeout", f"{timeout_s}s", "-s", str(script), url]
    if script_args:
        argv += ["--", *script_args]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    done = subprocess.run(argv, capture_output=True, text=True,
                          timeout=seconds + timeout_s + 60)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise RuntimeError(f"wrk exited {done.returncode}: {done.stderr.strip()[-400:]}")
    result = summarise(parse_report(done.stdout))
    result["client_cpu_s"] = round((after.ru_utime + after.ru_stime)
                                   - (before.ru_utime + before.ru_stime), 3)
    return result
