"""Progress lines on stderr: one line per step, so a long run shows where it is.

stdout is kept for the report (markdown tables), so progress never mixes into it.
"""

import sys
import time

_START = time.monotonic()


def say(message: str) -> None:
    """Print one progress line, stamped with the seconds since the run started."""
    elapsed = time.monotonic() - _START
    print(f"[loadtest {elapsed:7.1f}s] {message}", file=sys.stderr, flush=True)
