"""Smoke run of the load-test harness: `python -m loadtest --smoke`, end to end.

pageloan and nginx, scenarios 1k and 64k, 2 s runs and a 1 s strace run each, with the
real wrk, nginx and `python -m server`. It pins that the harness measures both servers
(req/s > 0, probes answered correctly), counts syscalls, and prints pageloan's ratio to
nginx in the report. Skipped only when wrk or nginx is missing and cannot be installed.
"""

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
ENSURE = (
    "import sys\n"
    "from loadtest.tools import MissingTool, ensure_tools\n"
    "try:\n    ensure_tools(sys.argv[1:])\n"
    "except MissingTool as exc:\n    print(exc)\n    sys.exit(3)\n"
)


def _tools_available(*names: str) -> tuple[bool, str]:
    """Find the tools, installing them the harness's way when possible."""
    done = subprocess.run([sys.executable, "-c", ENSURE, *names], cwd=REPO,
                          capture_output=True, text=True, timeout=1800)
    return done.returncode == 0, (done.stdout + done.stderr).strip()


def test_smoke_run_reports_pageloan_against_nginx(tmp_path):
    ok, why = _tools_available("wrk", "nginx")
    if not ok:
        pytest.skip(f"wrk/nginx unavailable: {why}")
    with_strace, _ = _tools_available("strace")
    out = tmp_path / "results.json"
    argv = [sys.executable, "-m", "loadtest", "--smoke", "--no-charts", "--no-install",
            "--out", str(out)]
    if not with_strace:
        argv.append("--no-strace")
    done = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=150)
    assert done.returncode == 0, f"stdout:\n{done.stdout[-3000:]}\nstderr:\n{done.stderr[-3000:]}"

    records = {(r["scenario"], r["server"]): r for r in json.loads(out.read_text())["records"]}
    assert set(records) == {(s, n) for s in ("1k", "64k") for n in ("pageloan", "nginx")}
    for (scenario, server), rec in records.items():
        assert rec["error"] is None, f"{scenario} × {server}: {rec['error']}"
        assert rec["req_per_s"] > 0, f"{scenario} × {server} served nothing"
        assert rec["probe"]["ok"], f"{scenario} × {server}: {rec['probe']}"
        assert rec["peak_rss_mib"] > 0 and rec["cpu_s"] > 0
        if with_strace:
            assert rec["syscalls"]["requests"] > 0, rec["syscalls"]
            assert rec["syscalls"]["per_request"], rec["syscalls"]

    ratio_rows = re.findall(r"^\| nginx \|.*\| (\d+\.\d\d)× \|$", done.stdout, re.MULTILINE)
    assert len(ratio_rows) == 2, done.stdout
    assert all(float(r) > 0 for r in ratio_rows)
