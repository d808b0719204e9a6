"""pageloan's load-test harness: wrk (and curl for FTP) against pageloan and its peers.

`python -m loadtest` starts each server alone, pinned to one CPU, drives it with wrk
pinned to another, and reports throughput, latency, CPU, memory and the syscalls each
request costs, as markdown tables (with pageloan's ratio to each peer) and JSON.
The package only measures: it never imports the server it measures, it starts it.
"""

from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
REPO_ROOT = PACKAGE_DIR.parent
