"""The results file: what a run measured, as JSON, plus the facts needed to read it.

Layout: {"meta": {...}, "records": [record, ...]}. A record is one (scenario, server)
pair: scenario, server, protocol, metric (the headline key), connections, duration_s,
requests, bytes, seconds, req_per_s, mb_per_s (10^6 bytes/s), p50_ms, p90_ms, p99_ms,
max_ms, mean_ms, non_2xx, socket_errors, client_cpu_s, cpu_s (the server's tree),
server_core_busy and client_core_busy (0..1 share of the pinned cores, irq time included),
peak_rss_mib, peak_rss_anon_mib, probe {ok, status, bytes, note}, syscalls {requests,
total_calls, total_per_request, per_request {name: calls}}, error (null when it ran).
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import subprocess
import sys
from pathlib import Path


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def tool_version(argv: list[str]) -> str:
    """First line a tool prints about its version (nginx and wrk print to stderr)."""
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    text = (done.stdout + done.stderr).strip()
    return text.splitlines()[0] if text else ""


def base_meta(argv: list[str]) -> dict:
    return {
        "started": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "argv": argv,
        "python": sys.version.split()[0],
        "kernel": platform.release(),
        "cpu_model": cpu_model(),
        "cpus": len(os.sched_getaffinity(0)),
        "load_average": [round(v, 2) for v in os.getloadavg()],
    }


def save(path: Path, results: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(results, indent=2, sort_keys=False) + "\n")
    os.replace(tmp, path)


def load(path: Path) -> dict:
    data = json.loads(Path(path).read_text())
    if not isinstance(data, dict) or "records" not in data:
        raise ValueError(f"{path} is not a loadtest results file")
    return data
