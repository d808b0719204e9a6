"""Shared fixtures: a real pageloan server on 127.0.0.1, in-process or as a subprocess."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from server.core.filecache import OpenFileCache
from server.framework.application import Application
from server.http.config import ServerConfig
from server.http.server import Server
from server.static.options import StaticOptions
from server.static.site import StaticSite

REPO = Path(__file__).resolve().parent.parent


class Running:
    """A started in-process server: address, the Server object, and its context."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.host = "127.0.0.1"
        self.port = server.port

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"


@pytest.fixture
async def serve() -> Any:
    """Start servers in this test's loop: `await serve(app=..., root=..., **config)`."""
    started: list[Server] = []

    async def start(app: Callable | None = None, root: Path | None = None, **options: Any) -> Running:
        map_max = options.pop("map_max", StaticOptions.map_max)
        config = ServerConfig(host="127.0.0.1", port=0, **options)
        if app is None:
            static = StaticSite(root, cache=OpenFileCache(map_max=map_max)) if root else None
            app = Application(static)
        server = make_server(config, app, asyncio.get_running_loop())
        await server.start()
        started.append(server)
        return Running(server)

    yield start
    for server in started:
        await server.close()


def make_server(config: ServerConfig, app: Any, loop: asyncio.AbstractEventLoop) -> Server:
    """A Server for `app`, replaying its static answers as `pageloan serve` does."""
    memo = getattr(app, "answer_memo", None)
    if memo is not None and config.access_log is None:
        memo.share_stats_on(loop)
    else:
        memo = None
    return Server(config, app, loop, replay=memo)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, timeout: float = 10.0, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server exited early with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listening on {port}")


class ServerProcess:
    def __init__(self, proc: subprocess.Popen, port: int) -> None:
        self.proc = proc
        self.port = port
        self.url = f"http://127.0.0.1:{port}"

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> int:
        """Signal the whole process group: a wrapper (strace) and the server both stop."""
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        # strace exits on the signal without waiting for its tracee: reap the group too
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                os.killpg(self.proc.pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.05)
        else:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        return self.proc.returncode


@pytest.fixture
def server_process() -> Any:
    """Start `python -m server serve ...` as a subprocess: `server_process(args, prefix=[...])`."""
    procs: list[ServerProcess] = []

    def start(args: list[str], prefix: list[str] | None = None, env: dict | None = None,
              stdout: Any = subprocess.DEVNULL, stderr: Any = None) -> ServerProcess:
        port = free_port()
        cmd = (prefix or []) + [sys.executable, "-m", "server", "serve", *args,
                                "--host", "127.0.0.1", "--port", str(port)]
        full_env = dict(os.environ, PYTHONPATH=str(REPO), **(env or {}))
        proc = subprocess.Popen(cmd, cwd=REPO, env=full_env, stdout=stdout, start_new_session=True,
                                stderr=stderr if stderr is not None else subprocess.DEVNULL)
        running = ServerProcess(proc, port)
        procs.append(running)
        wait_for_port(port, proc=proc)
        return running

    yield start
    for running in procs:
        running.stop(signal.SIGKILL)


def raw_exchange(port: int, data: bytes, *, timeout: float = 5.0, until_close: bool = True) -> bytes:
    """Send raw bytes, read until the server closes (or timeout)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(data)
        chunks = []
        try:
            while True:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                chunks.append(chunk)
                if not until_close:
                    break
        except TimeoutError:
            pass
        return b"".join(chunks)
