"""Smoke run of the load-test harness: `python -m loadtest --smoke`, end to end.

pageloan and nginx, scenarios 1k and 64k, 2 s runs and a 1 s strace run each, with the
real wrk, nginx and `python -m server`. It pins that the harness measures both servers
(req/s > 0, probes answered correctly), counts syscalls, and prints pageloan's ratio to
nginx in the report. Skipped when wrk or nginx is not installed (.ci/run installs them);
the harness itself never installs anything.
"""

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from loadtest.tools import MissingTool, find_tool, require_tools

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.slow
@pytest.mark.tools
def test_smoke_run_reports_pageloan_against_nginx(tmp_path):
    try:
        require_tools(["wrk", "nginx"])
    except MissingTool as exc:
        pytest.skip(str(exc))
    with_strace = find_tool("strace") is not None
    out = tmp_path / "results.json"
    argv = [sys.executable, "-m", "loadtest", "--smoke", "--no-charts", "--out", str(out)]
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


def test_a_missing_tool_names_its_package_and_installs_nothing(tmp_path):
    with pytest.raises(MissingTool) as caught:
        require_tools(["curl", "no-such-tool-pageloan"])
    message = str(caught.value)
    assert "no-such-tool-pageloan" in message and "apt-get install no-such-tool-pageloan" in message
    assert "curl" not in message.split("missing tools:")[1].split(".")[0]


def test_missing_peers_stop_the_run_with_the_command_that_prepares_them(tmp_path):
    # An interpreter that has none of the peers: an empty venv without site packages
    # would take seconds to make; a python with -I -S and no site dir is enough.
    bare = tmp_path / "bare-python"
    bare.write_text(f"#!/bin/sh\nexec {sys.executable} -I -S \"$@\"\n")
    bare.chmod(0o755)
    done = subprocess.run([sys.executable, "-m", "loadtest", "--servers", "sanic", "--scenarios", "1k",
                           "--peer-python", str(bare), "--no-strace", "--out", str(tmp_path / "r.json")],
                          cwd=REPO, capture_output=True, text=True, timeout=60)
    if done.returncode == 3 and "missing tools" in done.stderr:
        pytest.skip(done.stderr.strip())
    assert done.returncode == 3, done.stderr
    assert "cannot import sanic" in done.stderr
    assert "pip install -e '.[peers]'" in done.stderr
    assert not (tmp_path / "r.json").exists()


def test_results_go_outside_the_repository_by_default():
    from loadtest.cli import parse_args
    from loadtest.locations import RESULTS_DIR

    out = parse_args(["--smoke"]).out
    assert out.parent == RESULTS_DIR and out.suffix == ".json"
    assert not out.resolve().is_relative_to(REPO)
    assert parse_args(["--out", "docs/benchmarks/results.json"]).out == Path("docs/benchmarks/results.json")
