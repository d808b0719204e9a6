"""core/allocator.py: large buffers go back to the kernel when freed, seen with strace.

glibc raises its mmap threshold after the first large free, so by default only the
first of many 300 KB buffers is a mapping of its own (the rest come from the heap,
where freed memory stays resident); tuned, every one of them is unmapped on free.
"""

from __future__ import annotations

import subprocess
import sys

import pytest
from harness import REPO, needs_tools

# The module is loaded by path, before anything else: importing the package would
# first compile and import all of pageloan, and a heap left with a large free top
# serves 300 KB from there whatever the threshold (malloc maps only when it must).
CHILD = """
import importlib.util, sys
if sys.argv[1] == "tuned":
    spec = importlib.util.spec_from_file_location("allocator", sys.argv[2])
    allocator = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(allocator)
    assert allocator.tune_allocator()
for _ in range(40):
    buffer = bytearray(300_000)
    del buffer
"""


def _unmaps_of_300k(mode: str, tmp_path, env: dict[str, str] | None = None) -> int:
    trace = tmp_path / f"{mode}.trace"
    module = str(REPO / "server" / "core" / "allocator.py")
    subprocess.run(["strace", "-f", "-e", "trace=munmap", "-o", str(trace), sys.executable, "-c", CHILD, mode, module],
                   cwd=REPO, check=True, timeout=60, env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin", **(env or {})})
    # bytearray(300_000) asks malloc for 300,001 bytes: a mapping of 0x4a000 (303,104) with its header.
    return sum(1 for line in trace.read_text().splitlines() if "munmap(" in line and ", 303104)" in line)


@needs_tools("strace")
def test_large_buffers_are_unmapped_on_free_once_tuned(tmp_path):
    if not sys.platform.startswith("linux"):
        pytest.skip("glibc's allocator")
    plain, tuned = _unmaps_of_300k("plain", tmp_path), _unmaps_of_300k("tuned", tmp_path)
    assert plain < 10, plain          # the threshold rose after the first: the rest stay in the heap
    assert tuned == 40, tuned


@needs_tools("strace")
def test_the_operators_own_glibc_settings_win(tmp_path):
    # A fixed threshold of 1 MiB, chosen in the environment: 300 KB buffers stay in the heap.
    kept = _unmaps_of_300k("tuned", tmp_path, {"MALLOC_MMAP_THRESHOLD_": str(1 << 20)})
    assert kept < 10, kept
