"""Where the harness keeps what it makes: outside the repository, in the user's cache.

`$XDG_CACHE_HOME/pageloan-loadtest` (default `~/.cache/pageloan-loadtest`) holds the
generated document root, the peers' virtualenv and, under `results/`, every run's JSON
and charts.  A report meant to be committed is written where `--out` says (the
project keeps those under docs/benchmarks/).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

__all__ = ["CACHE_DIR", "RESULTS_DIR", "default_results_file"]

CACHE_DIR = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "pageloan-loadtest"
RESULTS_DIR = CACHE_DIR / "results"


def default_results_file() -> Path:
    """A new results file per run, named by its UTC start time, so runs accumulate."""
    return RESULTS_DIR / time.strftime("results-%Y%m%d-%H%M%S.json", time.gmtime())
