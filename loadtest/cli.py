"""`python -m loadtest`: the command line, and the run from tools to report.

Order of a run: pick scenarios and servers; check that the tools and the peers'
interpreter are there (the harness installs nothing: tools.py and venv.py say what to
install when one is missing); make sure the document root exists; decide CPU pinning;
then measure every (scenario, server) pair one after another, scenario by scenario so
that the servers compared in one table ran close together in time; save JSON after
every pair; print the markdown report.  Results and charts go to the user's cache
(locations.py) unless `--out` names a file, e.g. under docs/benchmarks/ for a report
that is to be committed.
Exit status: 0 all pairs ran, 1 some pair failed, 2 bad arguments, 3 missing tools or peers.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path

from loadtest import compare, report, results
from loadtest.chart import write_charts
from loadtest.docroot import DEFAULT_DOCROOT, build_docroot
from loadtest.locations import RESULTS_DIR, default_results_file
from loadtest.progress import say
from loadtest.runner import Settings, measure
from loadtest.scenarios import BY_NAME as SCENARIOS
from loadtest.servers import BY_NAME as SERVERS
from loadtest.tools import MissingTool, find_tool, require_tools
from loadtest.venv import DEFAULT_VENV, MissingPeers, check_peers, peer_python, peer_versions

DEFAULT_SERVERS = [name for name, spec in SERVERS.items() if not spec.on_request]
SMOKE = {"servers": "pageloan,nginx", "scenarios": "1k,64k", "duration": 2, "warmup": 0,
         "strace_seconds": 1}
FULL = {"servers": ",".join(DEFAULT_SERVERS), "scenarios": ",".join(SCENARIOS),
        "duration": 10, "warmup": 1, "strace_seconds": 2}


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m loadtest",
        description="Measure pageloan against nginx, aiohttp, sanic, uvicorn+starlette "
                    "and pyftpdlib with wrk (and curl for FTP); one worker each, pinned.")
    p.add_argument("--servers", help=f"comma list from {', '.join(SERVERS)} "
                   f"(default: {','.join(DEFAULT_SERVERS)})")
    p.add_argument("--scenarios", help=f"comma list from {', '.join(SCENARIOS)} (default: all)")
    p.add_argument("--duration", type=int, help="seconds per measured run (default 10)")
    p.add_argument("--warmup", type=int, help="seconds of warm-up before each run (default 1)")
    p.add_argument("--connections", type=int, help="connections for every HTTP scenario")
    p.add_argument("--strace-seconds", type=int,
                   help="seconds of the strace -c run per pair (default 2)")
    p.add_argument("--no-strace", action="store_true", help="skip the syscall profile")
    p.add_argument("--nginx-ofc", action="store_true",
                   help="add the peer nginx+ofc (nginx with open_file_cache)")
    p.add_argument("--venv", type=Path, default=DEFAULT_VENV,
                   help=f"the peers' virtualenv, prepared by you (default {DEFAULT_VENV}; "
                        "see loadtest/README.md)")
    p.add_argument("--peer-python", type=Path,
                   help="interpreter for the Python peers (default: the venv's python if it "
                        "exists, else this interpreter)")
    p.add_argument("--docroot", type=Path, default=DEFAULT_DOCROOT,
                   help="where the generated document root is kept")
    p.add_argument("--out", type=Path,
                   help=f"results JSON; charts go beside it (default: a new file in {RESULTS_DIR}; "
                        "docs/benchmarks/results.json for a report to commit)")
    p.add_argument("--no-charts", action="store_true", help="write no PNG charts")
    p.add_argument("--compare", nargs="+", metavar="JSON",
                   help="OLD [NEW]: with NEW, compare two results files and exit; "
                        "alone, compare this run's results with OLD")
    # Accepted for old scripts: the harness never installs anything any more.
    p.add_argument("--no-install", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--smoke", action="store_true",
                   help="quick check: pageloan and nginx, 1k and 64k, 2 s runs, 1 s strace")
    p.add_argument("--list", action="store_true", help="list scenarios and servers, then exit")
    args = p.parse_args(argv)
    for key, value in (SMOKE if args.smoke else FULL).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.no_strace:
        args.strace_seconds = 0
    if args.out is None:
        args.out = default_results_file()
    if args.compare and len(args.compare) > 2:
        p.error("--compare takes OLD or OLD NEW")
    if args.duration < 1 or args.warmup < 0 or args.strace_seconds < 0:
        p.error("--duration must be >= 1, --warmup and --strace-seconds >= 0")
    return args


def _pick(names: str, known: dict, what: str) -> list:
    chosen = [n.strip() for n in names.split(",") if n.strip()]
    unknown = [n for n in chosen if n not in known]
    if unknown:
        raise ValueError(f"unknown {what}: {', '.join(unknown)} (known: {', '.join(known)})")
    return [known[n] for n in dict.fromkeys(chosen)]


def _pinning(taskset: str | None) -> tuple[list[int], str]:
    """The [server, client] CPUs to pin to (empty: no pinning) and a note saying why."""
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        return [], "a single CPU: server and client share it, no pinning"
    if not taskset:
        return [], "taskset not found, no pinning"
    os.sched_setaffinity(0, {cpus[1]})  # the harness's own sampling stays off the server's CPU
    return cpus[:2], f"server on CPU {cpus[0]}, wrk/curl on CPU {cpus[1]}"


def _ftp_root(docroot: Path, workroot: Path) -> Path:
    """A root for the FTP servers: 256m.bin (hard-linked) and room for uploads."""
    root = workroot / "ftp-root"
    root.mkdir()
    try:
        os.link(docroot / "256m.bin", root / "256m.bin")
    except OSError:
        shutil.copyfile(docroot / "256m.bin", root / "256m.bin")
    return root


def _line(rec: dict) -> str:
    if rec.get("error"):
        return f"FAILED {rec['error'][:200]}"
    p99 = rec.get("p99_ms")
    text = (f"{rec.get('req_per_s') or 0:,.0f} req/s, {rec.get('mb_per_s') or 0:,.1f} MB/s, "
            f"p99 {'–' if p99 is None else f'{p99:.2f}'} ms, "
            f"server CPU {rec.get('cpu_s') or 0:.1f} s")
    sc = rec.get("syscalls") or {}
    if sc.get("total_per_request") is not None:
        text += f", {report.count(sc['total_per_request'])} syscalls/req"
    return text


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if args.list:
        for s in SCENARIOS.values():
            print(f"scenario {s.name:11} {s.summary}")
        for s in SERVERS.values():
            print(f"server   {s.name:11} {s.summary}")
        return 0
    if args.compare and len(args.compare) == 2:
        print(compare.render(results.load(Path(args.compare[0])), results.load(Path(args.compare[1]))))
        return 0
    try:
        scenarios = _pick(args.scenarios, SCENARIOS, "scenario")
        specs = _pick(args.servers + (",nginx+ofc" if args.nginx_ofc else ""), SERVERS, "server")
    except ValueError as exc:
        print(f"loadtest: {exc}", file=sys.stderr)
        return 2
    pairs = [(sc, sp) for sc in scenarios for sp in specs if sc.protocol in sp.protocols]
    if not pairs:
        print("no selected server speaks any selected scenario's protocol", file=sys.stderr)
        return 2

    needed = {"wrk"} if any(sc.protocol != "ftp" for sc, _ in pairs) else set()
    needed |= {"curl"} if any(sc.protocol == "ftp" for sc, _ in pairs) else set()
    needed |= {"strace"} if args.strace_seconds else set()
    needed |= {t for _, sp in pairs for t in sp.tools}
    try:
        tools = require_tools(sorted(needed))
    except MissingTool as exc:
        print(f"loadtest: {exc}", file=sys.stderr)
        return 3
    python_for_peers = None
    peers = sorted({sp.name for _, sp in pairs if sp.venv})
    if peers:
        venv = args.venv.expanduser()
        python_for_peers = peer_python(args.peer_python.expanduser() if args.peer_python else None, venv)
        try:
            check_peers(python_for_peers, peers, venv)
        except MissingPeers as exc:
            print(f"loadtest: {exc}", file=sys.stderr)
            return 3
        say(f"Python peers ({', '.join(peers)}) run with {python_for_peers}")

    big = any(sc.big_file for sc, _ in pairs)
    say(f"document root {args.docroot}" + (" (writing 256m.bin if missing)" if big else ""))
    docroot = build_docroot(args.docroot.expanduser(), with_big=big)
    meta = results.base_meta(["python -m loadtest", *(sys.argv[1:] if argv is None else argv)])
    taskset = find_tool("taskset")
    pinned, pin_note = _pinning(taskset)
    say(pin_note)
    if meta["load_average"][0] > 0.5:
        say(f"load average {meta['load_average'][0]:.2f} before the run: other work on this "
            "machine will add noise")
    meta.update(duration=args.duration, warmup=args.warmup, strace_seconds=args.strace_seconds,
                pinned=bool(pinned), pin_note=pin_note,
                versions={"wrk": results.tool_version([tools["wrk"], "-v"]) if "wrk" in tools else "",
                          "nginx": results.tool_version([tools["nginx"], "-v"]) if "nginx" in tools else "",
                          **(peer_versions(python_for_peers) if python_for_peers else {})})
    out = {"meta": meta, "records": []}
    per_pair = args.duration + args.warmup + args.strace_seconds + 4
    say(f"{len(pairs)} runs, about {len(pairs) * per_pair / 60:.1f} min")

    workroot = Path(tempfile.mkdtemp(prefix="run-", dir=docroot.parent))
    try:
        ftproot = _ftp_root(docroot, workroot) if any(sc.protocol == "ftp" for sc, _ in pairs) \
            else workroot
        settings = Settings(args.duration, args.warmup, args.strace_seconds, args.connections,
                            docroot, ftproot, workroot, tools, python_for_peers)
        if pinned:
            settings.server_cpu, settings.client_cpu = pinned
            settings.server_pin = [taskset, "-c", str(pinned[0])]
            settings.client_pin = [taskset, "-c", str(pinned[1])]
        for i, (scenario, spec) in enumerate(pairs, 1):
            say(f"[{i}/{len(pairs)}] {scenario.name} × {spec.name}")
            record = measure(spec, scenario, settings, log=say)
            out["records"].append(record)
            args.out.parent.mkdir(parents=True, exist_ok=True)
            say(f"[{i}/{len(pairs)}] {scenario.name} × {spec.name}: {_line(record)}")
            results.save(args.out, out)
    finally:
        shutil.rmtree(workroot, ignore_errors=True)

    print(report.render(out))
    if not args.no_charts:
        for path in write_charts(out, args.out.resolve().parent, args.out.stem):
            say(f"chart {path}")
    if args.compare:
        print(compare.render(results.load(Path(args.compare[0])), out))
    say(f"results saved to {args.out}")
    return 1 if any(r.get("error") for r in out["records"]) else 0
