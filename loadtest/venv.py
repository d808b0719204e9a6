"""The isolated virtualenv that holds the Python peers (aiohttp, sanic, uvicorn, ...).

The peers must not leak into the interpreter that runs pageloan, so they live in their
own venv, created once with `python -m venv` and reused while its package list is the
same (a small marker file records the list that was installed).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

PEER_PACKAGES: tuple[str, ...] = (
    "aiohttp", "uvloop", "sanic", "uvicorn[standard]", "starlette", "pyftpdlib",
)
# Distribution names whose versions go into the results.
VERSIONED = ("aiohttp", "uvloop", "sanic", "uvicorn", "httptools", "starlette", "pyftpdlib")
DEFAULT_VENV = Path.home() / ".cache" / "pageloan-loadtest" / "venv"
_MARKER = "pageloan-loadtest.json"


def venv_python(venv: Path) -> Path:
    return venv / "bin" / "python"


def ensure_venv(venv: Path, log=print) -> Path:
    """Create or reuse the peers' venv and return its python."""
    python = venv_python(venv)
    marker = venv / _MARKER
    wanted = {"packages": list(PEER_PACKAGES)}
    if python.exists() and marker.exists():
        try:
            if json.loads(marker.read_text()) == wanted:
                return python
        except ValueError:
            pass
    if not python.exists():
        log(f"creating the peers' virtualenv in {venv}")
        _run([sys.executable, "-m", "venv", str(venv)], timeout=300)
    log(f"installing peers into the virtualenv: {' '.join(PEER_PACKAGES)}")
    _run([str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
          *PEER_PACKAGES], timeout=1200)
    marker.write_text(json.dumps(wanted))
    return python


def peer_versions(python: Path) -> dict[str, str]:
    """Versions of the peer distributions installed in the venv."""
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
        return json.loads(done.stdout)
    except ValueError:
        return {}


def _run(argv: list[str], timeout: float) -> None:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        tail = (done.stdout + done.stderr).strip().splitlines()[-15:]
        raise RuntimeError(f"{' '.join(argv[:4])} ... failed:\n" + "\n".join(tail))
