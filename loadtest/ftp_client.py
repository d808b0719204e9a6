"""FTP transfers with curl: 256 MiB RETR or STOR, one after another, for a while.

curl is the client because it is what people use and it reports its own sizes and
times (`-w`). Transfers run back to back until the duration is spent (at least one, at
most MAX_TRANSFERS); the rate is total bytes over total transfer time.
"""

from __future__ import annotations

import resource
import subprocess
import time
from pathlib import Path

MAX_TRANSFERS = 200
_WRITE_OUT = "%{http_code} %{size_download} %{size_upload} %{time_total}"


def transfer(curl: str, url: str, upload: Path | None, pin: list[str] = ()) -> dict:
    """One curl transfer; returns {"ok", "code", "bytes", "seconds", "error"}."""
    argv = [*pin, curl, "-sS", "--max-time", "300", "-w", _WRITE_OUT]
    argv += ["-T", str(upload), url] if upload else ["-o", "/dev/null", url]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=330)
    code, down, up, total = (done.stdout.split() + ["0"] * 4)[:4]
    size = int(float(up if upload else down))
    return {"ok": done.returncode == 0, "code": code, "bytes": size,
            "seconds": float(total), "error": done.stderr.strip()[-300:]}


def run_transfers(curl: str, url: str, seconds: int, upload: Path | None,
                  pin: list[str] = ()) -> dict:
    """Back-to-back transfers for about `seconds`; returns the record's figures."""
    times: list[float] = []
    total_bytes = failures = 0
    last_error = ""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    deadline = time.monotonic() + seconds
    for _ in range(MAX_TRANSFERS):
        one = transfer(curl, url, upload, pin)
        if one["ok"]:
            times.append(one["seconds"])
            total_bytes += one["bytes"]
        else:
            failures += 1
            last_error = one["error"]
        if time.monotonic() >= deadline or failures >= 3:
            break
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    busy = sum(times) or 1e-9
    ordered = sorted(times) or [0.0]
    return {
        "requests": len(times),
        "bytes": total_bytes,
        "seconds": round(busy, 3),
        "req_per_s": len(times) / busy,
        "mb_per_s": total_bytes / busy / 1e6,
        "p50_ms": ordered[len(ordered) // 2] * 1000,
        "p99_ms": ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1000,
        "non_2xx": failures,
        "socket_errors": {},
        "client_error": last_error,
        "client_cpu_s": round((after.ru_utime + after.ru_stime)
                              - (before.ru_utime + before.ru_stime), 3),
    }
