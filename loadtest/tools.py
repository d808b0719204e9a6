"""The system tools the harness drives: find them, or install them with apt-get.

wrk is the HTTP client, curl the FTP client, strace counts syscalls, nginx is a peer.
When one is missing and we run as root on a Debian-like system, `apt-get install` fetches
it (after one `apt-get update`); otherwise the run stops with a message saying what to
install, because a benchmark with a silently missing peer would mislead.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

# Debian package names to try, in order, for each tool.
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
    """A tool is absent and could not be installed."""


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


def _can_install() -> bool:
    return os.geteuid() == 0 and shutil.which("apt-get") is not None


def _apt(*args: str, timeout: float) -> bool:
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    try:
        done = subprocess.run(
            ["apt-get", *args], env=env, timeout=timeout,
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        )
    except subprocess.TimeoutExpired:
        return False
    return done.returncode == 0


def ensure_tools(names: list[str], install: bool = True, log=print) -> dict[str, str]:
    """Return {tool: path} for every name, installing missing ones when allowed.

    Raises MissingTool naming every tool still missing and the package to install.
    """
    paths = {name: find_tool(name) for name in names}
    missing = [name for name, path in paths.items() if path is None]
    if missing and install and _can_install():
        log(f"installing {', '.join(missing)} with apt-get")
        _apt("update", timeout=600)
        for name in missing:
            for package in APT_PACKAGES.get(name, (name,)):
                if _apt("install", "-y", "--no-install-recommends", package, timeout=900):
                    break
            paths[name] = find_tool(name)
        missing = [name for name, path in paths.items() if path is None]
    if missing:
        hints = ", ".join(f"{n} (Debian: {' or '.join(APT_PACKAGES.get(n, (n,)))})" for n in missing)
        if not install:
            how = "installing was not allowed"
        elif _can_install():
            how = "apt-get could not install them"
        else:
            how = "cannot install them (not root, or no apt-get)"
        raise MissingTool(f"missing tools: {hints}; {how}. Install them and run again.")
    return {name: str(path) for name, path in paths.items()}
