"""Starting, waiting for and stopping one server process.

The server runs in its own session (process group), with its output in a log file in
its run directory. It is ready when its port accepts a TCP connection; it is stopped
with SIGTERM, then SIGKILL to its whole group after a timeout, so no worker outlives
the measurement. Every wait here is bounded.
"""

from __future__ import annotations

import os
import resource
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


class ServerProcess:
    """One running server; use as a context manager so it is always stopped."""

    def __init__(self, argv: list[str], env: dict[str, str], cwd: Path, log: Path):
        self.argv, self.env, self.cwd, self.log = argv, env, cwd, log
        self.proc: subprocess.Popen | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self) -> None:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                self.argv, env=self.env, cwd=self.cwd, stdin=subprocess.DEVNULL,
                stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
            )

    def wait_ready(self, port: int, timeout: float = 30.0) -> None:
        """Return once `port` accepts connections; raise if the server dies or is slow."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}: {self.log_tail()}")
            if port_open(port):
                return
            time.sleep(0.05)
        raise RuntimeError(f"port {port} not open after {timeout:.0f}s: {self.log_tail()}")

    def stop(self, timeout: float = 5.0) -> int | None:
        """SIGTERM, then SIGKILL to the whole group; return the exit status."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)  # stragglers of our own group only
        except (ProcessLookupError, PermissionError):
            pass
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def log_tail(self, lines: int = 12) -> str:
        try:
            text = self.log.read_text(errors="replace")
        except OSError:
            return ""
        return " | ".join(text.strip().splitlines()[-lines:])

    def __enter__(self) -> ServerProcess:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def raise_descriptor_limit(wanted: int) -> None:
    """Raise this process's soft RLIMIT_NOFILE towards `wanted` (the hard limit caps it);
    the servers and clients it starts inherit it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < wanted <= hard or soft < hard < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(wanted, hard), hard))


def finish_record(record: dict, proc: ServerProcess, rundir: Path) -> dict:
    """Stop the measured server, keep its log tail if the run failed, drop its run dir."""
    record["exit_status"] = proc.stop()
    if record.get("error"):
        record["server_log_tail"] = proc.log_tail()
    shutil.rmtree(rundir, ignore_errors=True)
    return record
