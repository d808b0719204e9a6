"""Helpers for the FTP tests (this module holds no tests of its own).

Two ways to run the server: `FtpProcess` starts `python -m server.ftp` as a real
subprocess (uvloop, optionally under strace) for the stock clients — ftplib, curl,
lftp; `AsyncControl` is a small control-connection client for in-process tests that
start the service with `start_ftp` in the test's own event loop (plain asyncio) and
need tiny timeouts or to poke at single replies.
"""

from __future__ import annotations

import asyncio
import ftplib
import hashlib
import os
import re
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PASSWORD = "open sesame"
BIG_SIZE = 8 << 20 | 12345          # multi-MiB, deliberately not a multiple of any step
CLIENT_TIMEOUT = 30


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_random(path: Path, size: int) -> Path:
    path.write_bytes(os.urandom(size))
    return path


def partial_files(root: Path) -> list[str]:
    """Temporary upload files left anywhere under root (there must never be any)."""
    return [p.name for p in root.rglob("*") if ".pageloan-" in p.name]


def users_file(path: Path, users: dict[str, str]) -> Path:
    """An accounts file where every user has PASSWORD; users maps name → perms."""
    from server.core.passwords import hash_password
    hashed = hash_password(PASSWORD)
    path.write_text("# test accounts\n" + "".join(f"{n}:{hashed}:{p}\n" for n, p in users.items()))
    return path


def ftp_login(port: int, user: str = "alice", password: str = PASSWORD) -> ftplib.FTP:
    ftp = ftplib.FTP(timeout=CLIENT_TIMEOUT)
    ftp.connect("127.0.0.1", port)
    ftp.login(user, password)
    return ftp


def run_client(argv: list[str], timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout)


def lftp_script(port: int, commands: str, user: str = "alice", password: str = PASSWORD) -> list[str]:
    """argv for lftp running `commands` against the server, no TLS, fail fast."""
    settings = ("set ftp:ssl-allow no; set net:max-retries 1; set net:timeout 10; "
                "set net:reconnect-interval-base 1; set cmd:fail-exit yes; set xfer:clobber yes")
    return ["lftp", "-c", f"{settings}; open -u {user},'{password}' -p {port} 127.0.0.1; {commands}"]


class FtpProcess:
    """`python -m server.ftp ROOT ...` in its own process group; stop() ends it."""

    def __init__(self, root: Path, log_path: Path, *options: str, strace_to: Path | None = None) -> None:
        argv = [sys.executable, "-m", "server.ftp", str(root), "--ftp-port", "0",
                "--log-level", "DEBUG", *options]
        if strace_to is not None:
            argv = ["strace", "-f", "-y", "-qq", "-o", str(strace_to),
                    "-e", "trace=sendfile,read,pread64,readv,preadv,preadv2,splice,"
                          "copy_file_range,recvfrom,recvmsg", *argv]
        env = dict(os.environ, PYTHONPATH=str(REPO))
        self.log_path = log_path
        self._log = open(log_path, "wb")
        self.proc = subprocess.Popen(argv, cwd=REPO, env=env, stdout=subprocess.PIPE,
                                     stderr=self._log, start_new_session=True)
        self.port = self._read_port(timeout=20)

    def _read_port(self, timeout: float) -> int:
        deadline = time.monotonic() + timeout
        line = b""
        while not line.endswith(b"\n"):
            left = deadline - time.monotonic()
            ready, _, _ = select.select([self.proc.stdout], [], [], max(left, 0))
            if not ready:
                self.stop()
                raise RuntimeError(f"FTP server did not start: {self.log()[-2000:]}")
            chunk = os.read(self.proc.stdout.fileno(), 100)
            if not chunk:
                raise RuntimeError(f"FTP server exited: {self.log()[-2000:]}")
            line += chunk
        match = re.fullmatch(rb"ftp port (\d+)\n", line)
        assert match, line
        return int(match.group(1))

    def log(self) -> str:
        # The server process writes this file; our handle only lent it the descriptor.
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.proc.poll() is None:
            # The whole group: under strace both strace and the server get the signal.
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        self.proc.stdout.close()
        self._log.close()


class AsyncControl:
    """A minimal asyncio FTP control client that returns (code, full reply text)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.greeting: tuple[int, str] | None = None

    @classmethod
    async def connect(cls, port: int, host: str = "127.0.0.1") -> AsyncControl:
        reader, writer = await asyncio.open_connection(host, port)
        control = cls(reader, writer)
        control.greeting = await control.read_reply()
        return control

    async def read_reply(self, timeout: float = 10) -> tuple[int, str]:
        lines = []
        first = await asyncio.wait_for(self.reader.readline(), timeout)
        if not first:
            raise EOFError("control connection closed")
        text = first.decode("utf-8", "replace").rstrip("\r\n")
        lines.append(text)
        code = text[:3]
        if text[3:4] == "-":
            for _ in range(10_000):
                line = (await asyncio.wait_for(self.reader.readline(), timeout)).decode()
                if not line:
                    raise EOFError("control connection closed inside a reply")
                lines.append(line.rstrip("\r\n"))
                if line.startswith(code + " "):
                    break
        return int(code), "\n".join(lines)

    async def send(self, line: str | bytes) -> None:
        self.writer.write(line if isinstance(line, bytes) else line.encode() + b"\r\n")
        await self.writer.drain()

    async def cmd(self, line: str | bytes, timeout: float = 10) -> tuple[int, str]:
        await self.send(line)
        return await self.read_reply(timeout)

    async def login(self, user: str = "alice", password: str = PASSWORD) -> None:
        code, text = await self.cmd(f"USER {user}")
        assert code == 331, text
        code, text = await self.cmd(f"PASS {password}")
        assert code == 230, text

    async def pasv_port(self) -> int:
        code, text = await self.cmd("PASV")
        assert code == 227, text
        numbers = [int(n) for n in re.search(r"\((\d+(?:,\d+){5})\)", text).group(1).split(",")]
        return numbers[4] * 256 + numbers[5]

    async def close(self) -> None:
        self.writer.close()
        try:
            await self.writer.wait_closed()
        except ConnectionError:
            pass


_ACCOUNTS: dict | None = None


def make_accounts() -> dict:
    """alice (rw) and bob (r), both with PASSWORD; hashed once per test run."""
    global _ACCOUNTS
    if _ACCOUNTS is None:
        from server.core.passwords import hash_password
        from server.ftp.accounts import Account
        hashed = hash_password(PASSWORD)
        _ACCOUNTS = {"alice": Account("alice", True, hashed), "bob": Account("bob", False, hashed)}
    return _ACCOUNTS


class InProcessFtp:
    """Services started in the test's own loop with start_ftp; close_all() ends them."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.services: list = []

    async def start(self, **options):
        from server.ftp import FtpConfig, start_ftp
        options.setdefault("accounts", make_accounts())
        options.setdefault("login_delay", 0.05)
        config = FtpConfig(root=self.root, host="127.0.0.1", port=0, **options)
        service = await start_ftp(config)
        self.services.append(service)
        return service

    async def close_all(self) -> None:
        for service in self.services:
            await service.close()
