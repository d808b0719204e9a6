"""What a server process tree costs, read from /proc: CPU seconds and memory peaks.

A server is measured as its whole process tree (nginx's master and worker, a Python
server and any helper it forks). CPU is utime+stime (plus reaped children) summed over
the tree; memory is VmRSS and RssAnon summed over the tree, sampled every 50 ms by a
thread, keeping the peak. RssAnon is the heap: page-cache pages of served files that a
server maps show up in VmRSS but not in RssAnon.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

_TICKS = os.sysconf("SC_CLK_TCK")


def _stat_fields(pid: int) -> list[str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name may hold spaces and parentheses: split after the last ')'.
    return text[text.rindex(")") + 2:].split()


def process_tree(root: int) -> list[int]:
    """`root` and all its descendants that are alive now."""
    parents: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        fields = _stat_fields(int(entry.name))
        if fields:
            parents.setdefault(int(fields[1]), []).append(int(entry.name))
    tree, todo = [], [root]
    while todo and len(tree) < 10_000:
        pid = todo.pop()
        tree.append(pid)
        todo.extend(parents.get(pid, ()))
    return tree


def cpu_ticks(pids: list[int]) -> dict[int, int]:
    """{pid: utime+stime+cutime+cstime} in clock ticks, for the pids still alive."""
    ticks = {}
    for pid in pids:
        fields = _stat_fields(pid)
        if fields:
            # After the ')' the fields start at stat(5)'s 3rd: utime is the 14th.
            ticks[pid] = sum(int(v) for v in fields[11:15])
    return ticks


def kernel_ticks(pids: list[int]) -> dict[int, int]:
    """{pid: stime+cstime} in clock ticks: the part of cpu_ticks() spent in the kernel."""
    ticks = {}
    for pid in pids:
        fields = _stat_fields(pid)
        if fields:
            ticks[pid] = int(fields[12]) + int(fields[14])
    return ticks


def cpu_seconds_between(before: dict[int, int], after: dict[int, int]) -> float:
    """CPU seconds the tree used between two cpu_ticks() readings."""
    used = sum(t - before.get(pid, 0) for pid, t in after.items())
    return used / _TICKS


def core_ticks(cpu: int) -> tuple[int, int]:
    """(busy, total) clock ticks of one CPU since boot, from /proc/stat.

    Busy includes irq and softirq time: loopback TCP work done in softirq is charged to
    the core but not to any process, so a saturated server's own CPU seconds stay well
    under 100% while its core is full.
    """
    for line in Path("/proc/stat").read_text().splitlines():
        if line.startswith(f"cpu{cpu} "):
            values = [int(v) for v in line.split()[1:]]
            idle = values[3] + values[4]  # idle + iowait
            return sum(values[:8]) - idle, sum(values[:8])
    return 0, 0


def busy_share(before: tuple[int, int], after: tuple[int, int]) -> float | None:
    """Fraction of the time a core was busy between two core_ticks() readings."""
    total = after[1] - before[1]
    return round((after[0] - before[0]) / total, 3) if total > 0 else None


def memory_kib(pid: int) -> tuple[int, int]:
    """(VmRSS, RssAnon) of one process in KiB; (0, 0) when it is gone."""
    rss = anon = 0
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    rss = int(line.split()[1])
                elif line.startswith("RssAnon:"):
                    anon = int(line.split()[1])
    except OSError:
        pass
    return rss, anon


class PeakMemory(threading.Thread):
    """Samples the tree's summed memory every `interval` s until stop(); keeps peaks."""

    def __init__(self, root: int, interval: float = 0.05, max_seconds: float = 3600.0):
        super().__init__(daemon=True)
        self.root = root
        self.interval = interval
        self.max_seconds = max_seconds
        self.peak_rss_kib = 0
        self.peak_anon_kib = 0
        self._done = threading.Event()

    def run(self) -> None:
        deadline = time.monotonic() + self.max_seconds
        pids, tree_at = process_tree(self.root), time.monotonic()
        while not self._done.is_set() and time.monotonic() < deadline:
            if time.monotonic() - tree_at > 1.0:  # forks are rare: rescan once a second
                pids, tree_at = process_tree(self.root), time.monotonic()
            rss = anon = 0
            for pid in pids:
                r, a = memory_kib(pid)
                rss, anon = rss + r, anon + a
            self.peak_rss_kib = max(self.peak_rss_kib, rss)
            self.peak_anon_kib = max(self.peak_anon_kib, anon)
            self._done.wait(self.interval)

    def stop(self) -> tuple[int, int]:
        """Stop sampling; return (peak VmRSS, peak RssAnon) in KiB."""
        self._done.set()
        self.join(timeout=5)
        return self.peak_rss_kib, self.peak_anon_kib
