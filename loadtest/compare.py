"""What changed between two runs: per scenario and server, old → new with % change.

Compared figures are the headline (req/s or MB/s), p99 latency, the server's CPU time
per request (runs of different lengths still compare), peak RSS and syscalls per
request. Pairs present in only one run are listed after the table, so a dropped
scenario is not mistaken for no change.
"""

from __future__ import annotations

from loadtest.report import count

FIGURES = (
    ("req_per_s", "req/s"), ("mb_per_s", "MB/s"), ("p99_ms", "p99 ms"),
    ("cpu_us_per_req", "server CPU µs/req"), ("peak_rss_mib", "peak RSS MiB"),
)


def _index(results: dict) -> dict[tuple[str, str], dict]:
    return {(r["scenario"], r["server"]): r for r in results["records"]}


def _with_cpu_per_request(rec: dict) -> dict:
    """CPU per request, so runs of different lengths compare."""
    if rec.get("cpu_s") is not None and rec.get("requests"):
        rec = dict(rec, cpu_us_per_req=rec["cpu_s"] / rec["requests"] * 1e6)
    return rec


def _syscalls(rec: dict) -> float | None:
    return (rec.get("syscalls") or {}).get("total_per_request")


def _change(old: float, new: float) -> str:
    if not old:
        return "–"
    return f"{100 * (new - old) / old:+.1f}%"


def render(old: dict, new: dict) -> str:
    """A markdown table of every figure that both runs have."""
    before, after = _index(old), _index(new)
    lines = [f"# Changes: {old['meta'].get('started', 'old')} → {new['meta'].get('started', 'new')}",
             "", "| scenario | server | figure | old | new | change |",
             "|---|---|---|---:|---:|---:|"]
    for key in [k for k in before if k in after]:
        scenario, server = key
        a, b = _with_cpu_per_request(before[key]), _with_cpu_per_request(after[key])
        if a.get("error") or b.get("error"):
            lines.append(f"| {scenario} | {server} | failed in "
                         f"{'old' if a.get('error') else 'new'} run | | | |")
            continue
        wanted = [f for f in FIGURES if f[0] != ("req_per_s" if a["metric"] == "mb_per_s"
                                                  else "mb_per_s")]
        for field, label in wanted:
            if a.get(field) is None or b.get(field) is None:
                continue
            lines.append(f"| {scenario} | {server} | {label} | {a[field]:,.2f} "
                         f"| {b[field]:,.2f} | {_change(a[field], b[field])} |")
        if _syscalls(a) is not None and _syscalls(b) is not None:
            lines.append(f"| {scenario} | {server} | syscalls/req | {count(_syscalls(a))} "
                         f"| {count(_syscalls(b))} | {_change(_syscalls(a), _syscalls(b))} |")
    for label, keys in (("only in the old run", [k for k in before if k not in after]),
                        ("only in the new run", [k for k in after if k not in before])):
        if keys:
            lines += ["", f"{label}: " + ", ".join(f"{sc} × {sv}" for sc, sv in keys)]
    return "\n".join(lines) + "\n"
