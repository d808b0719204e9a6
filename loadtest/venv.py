"""The Python interpreter that runs the Python peers (aiohttp, sanic, uvicorn, ...).

The peers should not share site-packages with the interpreter that runs pageloan (a
peer's pinned uvloop or httptools would change what pageloan is measured with), so
they normally live in a virtualenv of their own, prepared once by the user:

    python3 -m venv ~/.cache/pageloan-loadtest/venv
    ~/.cache/pageloan-loadtest/venv/bin/pip install -e '.[peers]'

(the `peers` extra in pyproject.toml lists them).  The harness never creates or fills
it: it picks the interpreter (`--peer-python`, else that venv's python when it exists,
else the running interpreter), checks that the selected peers import there, and stops
with the commands above when one does not.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from loadtest.locations import CACHE_DIR

__all__ = ["DEFAULT_VENV", "PEER_MODULES", "MissingPeers", "venv_python", "peer_python", "check_peers",
           "peer_versions", "PREPARE"]

DEFAULT_VENV = CACHE_DIR / "venv"
# The modules each Python peer imports (by loadtest server name).
PEER_MODULES: dict[str, tuple[str, ...]] = {
    "aiohttp": ("aiohttp", "uvloop"),
    "sanic": ("sanic",),
    "uvicorn": ("uvicorn", "starlette", "httptools", "uvloop"),
    "granian": ("granian", "starlette", "uvloop"),
    "pyftpdlib": ("pyftpdlib",),
}
# Distribution names whose versions go into the results.
VERSIONED = ("aiohttp", "uvloop", "sanic", "uvicorn", "granian", "httptools", "starlette", "pyftpdlib")
PREPARE = ("python3 -m venv {venv}\n"
           "    {venv}/bin/pip install -e '.[peers]'      # from the repository root")


class MissingPeers(RuntimeError):
    """The peers' interpreter lacks a module a selected peer needs."""


def venv_python(venv: Path) -> Path:
    return venv / "bin" / "python"


def peer_python(explicit: Path | None, venv: Path) -> Path:
    """The interpreter for the peers: the one asked for, else the venv's, else ours."""
    if explicit is not None:
        return explicit
    candidate = venv_python(venv)
    return candidate if candidate.exists() else Path(sys.executable)


def check_peers(python: Path, peers: list[str], venv: Path = DEFAULT_VENV) -> None:
    """Raise MissingPeers, saying how to prepare the venv, unless every module the
    `peers` need imports in `python`."""
    wanted = sorted({m for p in peers for m in PEER_MODULES.get(p, ())})
    if not wanted:
        return
    code = ("import importlib.util, json, sys\n"
            "print(json.dumps([m for m in sys.argv[1:] if importlib.util.find_spec(m) is None]))\n")
    try:
        done = subprocess.run([str(python), "-c", code, *wanted], capture_output=True, text=True, timeout=60)
        missing = json.loads(done.stdout) if done.returncode == 0 else wanted
    except (OSError, ValueError, subprocess.TimeoutExpired):
        missing = wanted
    if missing:
        needing = [p for p in peers if set(PEER_MODULES.get(p, ())) & set(missing)]
        raise MissingPeers(
            f"the peers' interpreter {python} cannot import {', '.join(missing)} "
            f"(needed by {', '.join(needing)}). Prepare the peers' virtualenv once:\n"
            f"    {PREPARE.format(venv=venv)}\n"
            "or point --peer-python at an interpreter that has them, or leave those peers out "
            "(--servers pageloan,nginx).")


def peer_versions(python: Path) -> dict[str, str]:
    """Versions of the peer distributions installed for `python`."""
    code = (
        "import importlib.metadata as m, json\n"
        "out = {}\n"
        f"for name in {VERSIONED!r}:\n"
        "    try:\n        out[name] = m.version(name)\n"
        "    except m.PackageNotFoundError:\n        pass\n"
        "print(json.dumps(out))\n"
    )
    done = subprocess.run([str(python), "-c", code], capture_output=True, text=True, timeout=60)
    try:
        versions: dict[str, str] = json.loads(done.stdout)
    except ValueError:
        return {}
    return versions
