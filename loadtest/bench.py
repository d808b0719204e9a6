"""What the one-off benchmarks (fanout_bench, ws_bench) share: their command line, the
CPU pinning, running their load client, and running every (scenario, server) pair
into one saved results file.

Each benchmark keeps what is its own: its scenarios, how one pair is measured, and
how its table reads.  Pinning follows the main harness: the server on the first CPU,
the client and this process on the second.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from loadtest import REPO_ROOT
from loadtest.locations import CACHE_DIR, RESULTS_DIR
from loadtest.process import raise_descriptor_limit
from loadtest.results import base_meta, save
from loadtest.tools import find_tool
from loadtest.venv import DEFAULT_VENV


def parser(prog: str, doc: str | None, servers: Sequence[str], scenarios: Sequence[Any],
           duration_help: str, peers_help: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description=(doc or "").split("\n")[0])
    p.add_argument("--servers", default=",".join(servers), help=f"comma list from {', '.join(servers)}")
    p.add_argument("--scenarios", default=",".join(s.name for s in scenarios))
    p.add_argument("--duration", type=float, default=10.0, help=duration_help)
    p.add_argument("--peer-python", type=Path, help=peers_help)
    p.add_argument("--venv", type=Path, default=DEFAULT_VENV)
    p.add_argument("--out", type=Path, help="results JSON (default: the cache's results/)")
    return p


def chosen(p: argparse.ArgumentParser, args: argparse.Namespace, servers: Sequence[str],
           scenarios: Sequence[Any]) -> tuple[list[str], list[Any]]:
    """The servers and scenarios asked for; a usage error names an unknown one."""
    picked = [s for s in args.servers.split(",") if s]
    unknown = set(picked) - set(servers)
    if unknown:
        p.error(f"unknown servers: {', '.join(sorted(unknown))}")
    wanted = args.scenarios.split(",")
    runs = [s for s in scenarios if s.name in wanted]
    if not runs:
        p.error(f"no such scenario; choose from {', '.join(s.name for s in scenarios)}")
    return picked, runs


def pins() -> tuple[list[str], list[str]]:
    """`taskset` prefixes for the server and the client (empty on one CPU), after raising
    the descriptor limit the 1,000-socket scenarios need (the children inherit both)."""
    raise_descriptor_limit(4096)
    cpus = sorted(os.sched_getaffinity(0))
    taskset = find_tool("taskset")
    if len(cpus) < 2 or not taskset:
        return [], []
    os.sched_setaffinity(0, {cpus[1]})
    return [taskset, "-c", str(cpus[0])], [taskset, "-c", str(cpus[1])]


def run_all(kind: str, scenarios: Sequence[Any], servers: Sequence[str], out: Path | None,
            pinned: bool, measure: Callable[[str, Any], dict],
            table: Callable[[list[dict]], str]) -> int:
    """Measure every pair, save the results, print the table; exit status 1 on any error."""
    records = []
    for scenario in scenarios:
        for server in servers:
            print(f"{scenario.name} on {server} ...", file=sys.stderr, flush=True)
            records.append(measure(server, scenario))
    path = out or RESULTS_DIR / time.strftime(f"{kind}-%Y%m%d-%H%M%S.json", time.gmtime())
    path.parent.mkdir(parents=True, exist_ok=True)
    save(path, {"meta": {**base_meta(sys.argv), "pinned": pinned}, "records": records})
    print(table(records))
    print(f"results: {path}")
    return 1 if any(r.get("error") for r in records) else 0


def run_client(argv: list[str], timeout: float) -> dict:
    """Run a load client (`python -m loadtest.<client> ...`, pinned by `argv`'s prefix);
    its last line of output is its JSON report, else an error record says why."""
    done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                          cwd=REPO_ROOT, env=dict(os.environ, PYTHONPATH=str(REPO_ROOT)))
    lines = done.stdout.strip().splitlines()
    try:
        return json.loads(lines[-1])
    except (IndexError, ValueError):
        return {"error": f"client exited {done.returncode}: {done.stderr.strip()[-400:]}"}


def workroot() -> Path:
    root = CACHE_DIR / "work"
    root.mkdir(parents=True, exist_ok=True)
    return root
