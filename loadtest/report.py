"""The markdown report: one table per scenario with pageloan's ratio to each peer.

The ratio is pageloan's headline figure divided by the peer's (req/s, or MB/s for bulk
transfers): 1.25× means pageloan did 25% more, 0.80× means it did 20% less. Anything
that makes a row doubtful is said under its table: a probe that got a different answer,
errors, a client core that was full while the server's was not (then the row measures
the client), or two half-idle cores (then something stalled).
"""

from __future__ import annotations

from loadtest.scenarios import BY_NAME

SUBJECT = "pageloan"
CLIENT_BOUND = 0.95  # a core this busy is full
IDLE = 0.5  # both cores below this: the pair waited rather than worked


def ratio(records: list[dict], scenario: str, server: str) -> float | None:
    """pageloan's headline figure over `server`'s for one scenario, if both ran."""
    mine = _find(records, scenario, SUBJECT)
    theirs = _find(records, scenario, server)
    if not mine or not theirs or mine.get("error") or theirs.get("error"):
        return None
    metric = mine["metric"]
    if not theirs.get(metric):
        return None
    return mine.get(metric, 0.0) / theirs[metric]


def _find(records: list[dict], scenario: str, server: str) -> dict | None:
    return next((r for r in records if r["scenario"] == scenario and r["server"] == server),
                None)


def _num(value: float | None, digits: int = 1) -> str:
    if value is None:
        return "–"
    return f"{value:,.{digits}f}"


def count(value: float) -> str:
    """A per-request count: 3 decimals when small, thousands separators when large."""
    return f"{value:,.0f}" if value >= 1000 else f"{value:.3g}" if value < 1 else f"{value:,.4g}"


def _times(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}×"


def _errors(rec: dict) -> int:
    return rec.get("non_2xx", 0) + sum(rec.get("socket_errors", {}).values())


def _scenario_names(records: list[dict]) -> list[str]:
    return list(dict.fromkeys(r["scenario"] for r in records))


def _servers(records: list[dict], scenario: str | None = None) -> list[str]:
    names = list(dict.fromkeys(r["server"] for r in records
                               if scenario is None or r["scenario"] == scenario))
    return sorted(names, key=lambda n: n != SUBJECT)  # pageloan first, then run order


def render(results: dict) -> str:
    """The whole report: a header, the summary matrix, then one section per scenario."""
    meta, records = results["meta"], results["records"]
    out = ["# pageloan load test", "", _header(meta), ""]
    out += _summary(records)
    for name in _scenario_names(records):
        out += _scenario_section(name, [r for r in records if r["scenario"] == name], meta)
    return "\n".join(out) + "\n"


def _header(meta: dict) -> str:
    pin = ("server on CPU 0, client on CPU 1 (taskset)" if meta.get("pinned")
           else f"no CPU pinning ({meta.get('pin_note', '')})")
    load = (meta.get("load_average") or [0])[0]
    busy = (f" · ⚠ load average {load:.2f} at start: other work shared the machine"
            if load > 0.5 else "")
    return (f"{meta.get('started', '')} · {meta.get('cpu_model', '?')} · "
            f"{meta.get('cpus', '?')} CPUs · {pin} · wrk -t1, {meta.get('duration')} s "
            f"per run after {meta.get('warmup')} s warm-up · one worker per server{busy}")


def _summary(records: list[dict]) -> list[str]:
    peers = [s for s in _servers(records) if s != SUBJECT]
    if not peers or not any(r["server"] == SUBJECT for r in records):
        return []
    lines = ["## pageloan ÷ peer (headline figure per scenario)", "",
             "Replayable: whether a cache of byte-identical requests could answer the "
             "scenario (pageloan has none; the column says what the traffic allows).", "",
             "| scenario | replayable | " + " | ".join(peers) + " |",
             "|---|---|" + "---:|" * len(peers)]
    for name in _scenario_names(records):
        cells = [_times(ratio(records, name, peer)) for peer in peers]
        scenario = BY_NAME.get(name)
        replayable = ("yes" if scenario.repeats else "no") if scenario else "?"
        lines.append(f"| {name} | {replayable} | " + " | ".join(cells) + " |")
    return lines + [""]


def _scenario_section(name: str, records: list[dict], meta: dict) -> list[str]:
    scenario = BY_NAME.get(name)
    first = records[0]
    metric_label = "MB/s" if first["metric"] == "mb_per_s" else "req/s"
    how = (f"curl, one transfer at a time for {first['duration_s']} s (req/s = transfers/s, "
           "latency = time per transfer)" if first["protocol"] == "ftp" else
           f"{first['connections']} connections, {first['duration_s']} s")
    replay = f" Could a cache of identical requests serve it? {scenario.replayable}." if scenario else ""
    lines = [f"## {name}: {scenario.summary if scenario else ''}", "",
             f"{how}. Ratio: pageloan {metric_label} ÷ this server's.{replay}", "",
             "| server | req/s | MB/s | p50 ms | p99 ms | errors | server CPU s "
             "| cores busy srv/cli | peak RSS MiB | peak RssAnon MiB | pageloan ÷ |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    notes = []
    for server in _servers(records):
        rec = _find(records, name, server)
        label = f"**{server}**" if server == SUBJECT else server
        if rec.get("error"):
            lines.append(f"| {label} | failed | | | | | | | | | |")
            notes.append(f"- {server}: {rec['error'][:300]}")
            continue
        shown = "–" if server == SUBJECT else _times(ratio(records, name, server))
        lines.append(
            f"| {label} | {_num(rec.get('req_per_s'), 0)} | {_num(rec.get('mb_per_s'))} "
            f"| {_num(rec.get('p50_ms'), 2)} | {_num(rec.get('p99_ms'), 2)} "
            f"| {_errors(rec)} | {_num(rec.get('cpu_s'), 2)} | {_cores(rec)} "
            f"| {_num(rec.get('peak_rss_mib'))} "
            f"| {_num(rec.get('peak_rss_anon_mib'))} | {shown} |")
        notes += _row_notes(server, rec)
    notes += _bottleneck_notes(records)
    lines += [""] + notes + ([""] if notes else [])
    lines += _syscall_table(records)
    return lines


def _cores(rec: dict) -> str:
    shares = [rec.get("server_core_busy"), rec.get("client_core_busy")]
    if None in shares:
        return "–"
    return "/".join(f"{100 * v:.0f}%" for v in shares)


def _client_share(rec: dict, seconds: float) -> float:
    """How busy the client was: its pinned core if known, else its own CPU time."""
    if rec.get("client_core_busy") is not None:
        return rec["client_core_busy"]
    return (rec.get("client_cpu_s") or 0) / seconds


def _row_notes(server: str, rec: dict) -> list[str]:
    notes = []
    probe = rec.get("probe") or {}
    if probe and not probe.get("ok"):
        notes.append(f"- ⚠ {server}: probe answered {probe.get('status')} with "
                     f"{probe.get('bytes')} bytes: {probe.get('note')}")
    if _errors(rec):
        sockets = ", ".join(f"{n} {kind}" for kind, n in (rec.get("socket_errors") or {}).items()
                            if n)
        failed = "failed transfers" if rec["protocol"] == "ftp" else "responses not 2xx/3xx"
        notes.append(f"- ⚠ {server}: {rec.get('non_2xx', 0)} {failed}"
                     + (f"; socket errors: {sockets}" if sockets else ""))
    return notes


def _bottleneck_notes(records: list[dict]) -> list[str]:
    """Rows where the server's core was not the limit: the client's was, or nothing was."""
    bound, idle = [], []
    for rec in records:
        server_busy = rec.get("server_core_busy")
        if rec.get("error") or rec["protocol"] != "http" or server_busy is None:
            continue
        client_busy = _client_share(rec, rec.get("seconds") or 1e-9)
        if client_busy >= CLIENT_BOUND and server_busy < CLIENT_BOUND:
            bound.append(f"{rec['server']} ({100 * server_busy:.0f}%)")
        elif client_busy < IDLE and server_busy < IDLE:
            idle.append(f"{rec['server']} ({100 * server_busy:.0f}%/{100 * client_busy:.0f}%)")
    notes = []
    if bound:
        notes.append(f"- client core full while the server's was not, for {', '.join(bound)}: "
                     "those rows show the client's limit (wrk, or other work on its core)")
    if idle:
        notes.append(f"- neither core was busy for {', '.join(idle)}: the exchange waited on "
                     "something else (timers, delayed ACKs, a stall)")
    return notes


def _syscall_table(records: list[dict]) -> list[str]:
    traced = [r for r in records if r.get("syscalls")]
    if not traced:
        return []
    unit = "transfer" if traced[0]["protocol"] == "ftp" else "request"
    lines = [f"Syscalls per {unit} (strace -c on the warm server):", "",
             f"| server | {unit}s traced | calls per {unit} | most frequent, per {unit} |",
             "|---|---:|---:|---|"]
    for rec in sorted(traced, key=lambda r: r["server"] != SUBJECT):
        sc = rec["syscalls"]
        if sc.get("error") or not sc.get("requests"):
            lines.append(f"| {rec['server']} | – | – | {sc.get('error', 'no requests completed')} |")
            continue
        top = ", ".join(f"{name} {count(n)}" for name, n in list(sc["per_request"].items())[:8])
        done = sc["requests"]
        done = f"{int(done):,}" if float(done).is_integer() else f"{done:,.2f}"
        lines.append(f"| {rec['server']} | {done} | "
                     f"{count(sc['total_per_request'])} | {top} |")
    return lines + [""]
