"""One measurement: start a server, check it, load it, count what it cost, stop it.

For each (scenario, server) pair the server starts fresh in its own run directory, so
one scenario's memory growth never shows in the next. The steps, each bounded in time:
start and wait for the port; probe one request; warm up; the measured run with CPU
read before and after and memory sampled during; optionally the strace run on the now
warm server; stop. A failure in any step is written into the record, not raised.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

from loadtest import ftp_client, procstat, syscalls, wrk
from loadtest.probe import probe_http, validators
from loadtest.process import ServerProcess
from loadtest.scenarios import Scenario
from loadtest.servers import FTP_USER, Context, ServerSpec


@dataclass
class Settings:
    """What every measurement of this run shares."""
    duration: int
    warmup: int
    strace_seconds: int           # 0: no syscall profile
    connections: int | None       # overrides every HTTP scenario's count
    docroot: Path
    ftproot: Path
    workroot: Path
    tools: dict[str, str]
    peer_python: Path | None
    server_pin: list[str] = field(default_factory=list)
    client_pin: list[str] = field(default_factory=list)
    server_cpu: int | None = None  # the cores pinned to, whose busy share is recorded
    client_cpu: int | None = None


def connections_for(scenario: Scenario, settings: Settings) -> int:
    if scenario.protocol == "http" and settings.connections:
        return settings.connections
    return scenario.connections


def measure(spec: ServerSpec, scenario: Scenario, settings: Settings, log=print) -> dict:
    """Run one scenario against one server; return its record (see results.py)."""
    record: dict = {"scenario": scenario.name, "server": spec.name,
                    "protocol": scenario.protocol, "metric": scenario.metric,
                    "connections": connections_for(scenario, settings),
                    "duration_s": settings.duration, "error": None}
    rundir = Path(tempfile.mkdtemp(prefix=f"{spec.name}-{scenario.name}-",
                                   dir=settings.workroot))
    ctx = Context(settings.docroot, settings.ftproot, rundir, settings.tools,
                  settings.peer_python)
    server = None
    try:
        launch = spec.build(ctx, scenario)
        server = ServerProcess([*settings.server_pin, *launch.argv], launch.env, rundir,
                               rundir / "server.log")
        server.start()
        server.wait_ready(launch.port)
        load = _ftp_load if scenario.protocol == "ftp" else _http_load
        load(record, server, launch.port, scenario, settings, rundir, log)
    except Exception as exc:  # noqa: BLE001 - the record carries any failure
        record["error"] = f"{type(exc).__name__}: {exc}"
    finally:
        if server is not None:
            record["exit_status"] = server.stop()
            if record["error"]:
                record["server_log_tail"] = server.log_tail()
        shutil.rmtree(rundir, ignore_errors=True)
        (settings.ftproot / "upload.bin").unlink(missing_ok=True)
    return record


def _measured(record: dict, server: ServerProcess, settings: Settings, run) -> None:
    """Call run() with CPU (process tree and pinned cores) read around it, memory sampled."""
    cores = {"server_core_busy": settings.server_cpu, "client_core_busy": settings.client_cpu}
    cores = {key: cpu for key, cpu in cores.items() if cpu is not None}
    core_before = {key: procstat.core_ticks(cpu) for key, cpu in cores.items()}
    before = procstat.cpu_ticks(procstat.process_tree(server.pid))
    sampler = procstat.PeakMemory(server.pid)
    sampler.start()
    try:
        record.update(run())
    finally:
        rss, anon = sampler.stop()
        after = procstat.cpu_ticks(procstat.process_tree(server.pid))
        for key, cpu in cores.items():
            record[key] = procstat.busy_share(core_before[key], procstat.core_ticks(cpu))
        record["cpu_s"] = round(procstat.cpu_seconds_between(before, after), 3)
        record["peak_rss_mib"] = round(rss / 1024, 1)
        record["peak_rss_anon_mib"] = round(anon / 1024, 1)


def _http_load(record, server, port, scenario, settings, rundir, log) -> None:
    url = f"http://127.0.0.1:{port}{scenario.path}"
    if scenario.expect == "revalidate":
        # What this server itself sent as validators is what a browser sends back.
        etag, modified = validators(port, scenario.path)
        scenario = replace(scenario, script_args=(f"etag={etag}", f"date={modified}"))
    record["probe"] = probe_http(port, scenario, settings.docroot)
    if not record["probe"]["ok"]:
        log(f"  probe: {record['probe']['note']}")
    script = wrk.lua_script(scenario.script, rundir)
    conns = record["connections"]

    def run_for(seconds: int) -> dict:
        return wrk.run_wrk(settings.tools["wrk"], url, conns, seconds, scenario.timeout_s,
                           script, scenario.script_args, settings.client_pin)

    if settings.warmup:
        run_for(settings.warmup)
    _measured(record, server, settings, lambda: run_for(settings.duration))
    if settings.strace_seconds:
        def traced_run() -> float:
            result = run_for(settings.strace_seconds)
            if scenario.metric == "mb_per_s":  # bulk: partial responses count by bytes
                return round(result["bytes"] / _file_size(settings, scenario), 2)
            return result["requests"]
        record["syscalls"] = _traced(server, settings, rundir, traced_run)


def _file_size(settings: Settings, scenario: Scenario) -> int:
    return (settings.docroot / scenario.path.lstrip("/")).stat().st_size


def _ftp_load(record, server, port, scenario, settings, rundir, log) -> None:
    curl = settings.tools["curl"]
    upload = settings.docroot / "256m.bin" if scenario.expect == "stor" else None
    if upload:
        user, password = FTP_USER
        url = f"ftp://{user}:{password}@127.0.0.1:{port}{scenario.path}"
    else:
        url = f"ftp://127.0.0.1:{port}{scenario.path}"
    first = ftp_client.transfer(curl, url, upload, settings.client_pin)  # probe + warm-up
    want = (settings.docroot / "256m.bin").stat().st_size
    if upload:
        stored = settings.ftproot / "upload.bin"
        got = stored.stat().st_size if stored.exists() else 0
    else:
        got = first["bytes"]
    ok = first["ok"] and got == want
    record["probe"] = {"ok": ok, "status": first["code"], "bytes": got,
                       "note": "" if ok else f"expected {want} bytes: {first['error']}"}
    if not ok:
        log(f"  probe: {record['probe']['note']}")
    _measured(record, server, settings, lambda: ftp_client.run_transfers(
        curl, url, settings.duration, upload, settings.client_pin))
    if settings.strace_seconds:
        def one_transfer() -> int:
            return 1 if ftp_client.transfer(curl, url, upload, settings.client_pin)["ok"] else 0
        record["syscalls"] = _traced(server, settings, rundir, one_transfer)


def _traced(server: ServerProcess, settings: Settings, rundir: Path, run) -> dict:
    """Attach strace, call run() (which returns requests done), detach, count."""
    out = rundir / "strace.txt"
    started = time.monotonic()
    try:
        tracer = syscalls.attach(settings.tools["strace"], server.pid, out)
        try:
            requests = run()
        finally:
            syscalls.detach(tracer)
        result = syscalls.profile(syscalls.parse_summary(out.read_text()), requests)
    except Exception as exc:  # noqa: BLE001 - a failed profile must not lose the run
        return {"error": f"{type(exc).__name__}: {exc}"}
    result["seconds"] = round(time.monotonic() - started, 2)
    return result
