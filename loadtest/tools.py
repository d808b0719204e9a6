"""The system tools the harness drives: found on PATH, never installed from here.

wrk is the HTTP client, curl the FTP client, strace counts syscalls, nginx is a peer,
taskset pins CPUs.  A benchmark with a silently missing peer would mislead, so a
missing tool stops the run with a message naming the Debian package that provides it
(`.ci/run` installs the same packages on a CI machine; a developer installs them once,
e.g. `sudo apt-get install wrk nginx-light strace curl`).  Installing is the machine
owner's decision, not a side effect of running a benchmark or a test.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

__all__ = ["APT_PACKAGES", "MissingTool", "find_tool", "require_tools", "install_hint"]

# The Debian package that provides each tool (the first one named is what .ci/run uses).
APT_PACKAGES: dict[str, tuple[str, ...]] = {
    "wrk": ("wrk",),
    "nginx": ("nginx-light", "nginx"),
    "strace": ("strace",),
    "curl": ("curl",),
    "taskset": ("util-linux",),
}

# sbin directories are often missing from a non-root PATH, yet nginx lives there.
_EXTRA_DIRS = ("/usr/sbin", "/sbin", "/usr/local/sbin")


class MissingTool(RuntimeError):
    """A tool the run needs is not installed."""


def find_tool(name: str) -> str | None:
    """Return the path of `name`, looking in PATH and then the sbin directories."""
    found = shutil.which(name)
    if found:
        return found
    for folder in _EXTRA_DIRS:
        candidate = Path(folder) / name
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    return None


def install_hint(names: list[str]) -> str:
    """`apt-get install ...` for the tools in `names`."""
    packages = [APT_PACKAGES.get(n, (n,))[0] for n in names]
    return "apt-get install " + " ".join(dict.fromkeys(packages))


def require_tools(names: list[str]) -> dict[str, str]:
    """Return {tool: path} for every name, or raise MissingTool naming what to install."""
    paths = {name: find_tool(name) for name in names}
    missing = [name for name, path in paths.items() if path is None]
    if missing:
        which = ", ".join(f"{n} (Debian package {' or '.join(APT_PACKAGES.get(n, (n,)))})" for n in missing)
        raise MissingTool(f"missing tools: {which}. Install them first, e.g. `{install_hint(missing)}` "
                          "as root, and run again.")
    return {name: str(path) for name, path in paths.items() if path is not None}
