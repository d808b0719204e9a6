"""The syscall profile of a request: `strace -c` attached to a warm server.

strace attaches (-p, with -f for every thread) to the server's whole process tree after
it has started and served the measured run, so interpreter start-up and imports are not
counted; a short wrk run then goes through it, and the counts are divided by the
requests that run completed (for bulk bodies, the bytes received over the body
size, so a response cut off at the end still counts for what it sent). Tracing slows the server a lot: only the counts are used,
never the speed.
"""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

from loadtest.procstat import process_tree


def attach(strace: str, root_pid: int, out: Path) -> subprocess.Popen:
    """Start `strace -c -f` on every process of root_pid's tree; return once attached."""
    argv = [strace, "-c", "-f", "-o", str(out)]
    for pid in process_tree(root_pid):
        argv += ["-p", str(pid)]
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    time.sleep(0.5)  # attaching takes a few ms per thread; strace has no ready signal
    if proc.poll() is not None:
        raise RuntimeError(f"strace could not attach: {proc.stderr.read().strip()[-300:]}")
    return proc


def detach(proc: subprocess.Popen, timeout: float = 20.0) -> None:
    """SIGINT makes strace detach and write its summary."""
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


def parse_summary(text: str) -> dict[str, int]:
    """{syscall: calls} from a `strace -c` table (the errors column is optional)."""
    counts: dict[str, int] = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) not in (5, 6) or parts[-1] == "total" or not parts[3].isdigit():
            continue
        try:
            float(parts[0])
        except ValueError:
            continue
        counts[parts[-1]] = counts.get(parts[-1], 0) + int(parts[3])
    return counts


def profile(counts: dict[str, int], requests: float) -> dict:
    """Calls per request, largest first (requests may be fractional for bulk bodies)."""
    per = {name: round(n / requests, 3) for name, n in
           sorted(counts.items(), key=lambda kv: -kv[1])} if requests else {}
    return {"requests": requests, "total_calls": sum(counts.values()),
            "total_per_request": round(sum(counts.values()) / requests, 3) if requests else None,
            "per_request": per}
