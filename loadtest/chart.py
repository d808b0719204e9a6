"""One PNG bar chart per scenario, when matplotlib can be imported (an optional extra).

Bars are the scenario's headline figure per server, pageloan's drawn darker; each peer's
bar is labelled with pageloan's ratio to it (pageloan ÷ peer); a server whose probe got
a different answer than asked (a 416 to a multi-range request) is hatched and starred.
Without matplotlib this does nothing.
"""

from __future__ import annotations

from pathlib import Path

from loadtest.report import SUBJECT, ratio


def write_charts(results: dict, folder: Path, prefix: str = "loadtest") -> list[Path]:
    """Write <prefix>-<scenario>.png files into folder; return their paths."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.ticker import StrMethodFormatter
    except ImportError:
        return []
    records = [r for r in results["records"] if not r.get("error")]
    written = []
    for scenario in dict.fromkeys(r["scenario"] for r in records):
        rows = sorted((r for r in records if r["scenario"] == scenario),
                      key=lambda r: r["server"] != SUBJECT)
        metric = rows[0]["metric"]
        label = "MB/s" if metric == "mb_per_s" else "requests/s"
        fig, ax = plt.subplots(figsize=(7, 3.6), dpi=100)
        names = [r["server"] for r in rows]
        values = [r.get(metric, 0) for r in rows]
        colors = ["#1f4e79" if n == SUBJECT else "#9db4c8" for n in names]
        bars = ax.bar(names, values, color=colors)
        for bar, rec in zip(bars, rows, strict=True):
            wrong = not (rec.get("probe") or {}).get("ok", True)
            if wrong:  # the server answered something else than asked: hatch it
                bar.set_hatch("//")
            factor = ratio(results["records"], scenario, rec["server"])
            if rec["server"] != SUBJECT and factor is not None:
                ax.annotate(f"{factor:.2f}×" + ("*" if wrong else ""), (bar.get_x() + bar.get_width() / 2,
                            bar.get_height()), ha="center", va="bottom", fontsize=8)
        ax.set_ylabel(label)
        ax.yaxis.set_major_formatter(StrMethodFormatter("{x:,.0f}"))
        ax.set_title(f"{scenario}: {label}, {rows[0]['connections']} conn, "
                     f"{rows[0]['duration_s']} s (above bars: pageloan ÷ server)", fontsize=10)
        if any(not (r.get("probe") or {}).get("ok", True) for r in rows):
            fig.text(0.01, 0.01, "hatched, *: answered differently than asked (see the report)",
                     fontsize=7)
        ax.margins(y=0.15)
        fig.tight_layout()
        path = folder / f"{prefix}-{scenario}.png"
        fig.savefig(path)
        plt.close(fig)
        written.append(path)
    return written
