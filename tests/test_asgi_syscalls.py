"""strace proof: Starlette's FileResponse and StaticFiles leave by sendfile, never read in Python.

`pageloan serve --asgi asgi_apps:starlette_app` runs under `strace -f -y`, which
prints every descriptor argument with the path it is open on.  A large file fetched
through `FileResponse` and through `StaticFiles` must then appear as the *source*
of `sendfile` calls, and never as the descriptor of a `read`, `pread64` or `readv`
— in any thread (Starlette would otherwise read it in 64 KiB chunks on anyio's
worker threads).  A small StaticFiles file goes out as an mmap window in the
head's gather call: it is not read either.  Without the pathsend extension none of
this would hold, so the test fails if the adapter stops advertising it.

A JSON answer, traced the same way, costs no getpid() per request (the adapter names
the loop instead of asking asyncio for the running one).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent
STRACE = shutil.which("strace")

pytestmark = [pytest.mark.skipif(STRACE is None, reason="strace is not installed (apt-get install strace)"),
              pytest.mark.slow, pytest.mark.tools]


def _free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def traced_server(strace_args: list[str], trace: Path, port: int, files: Path) -> Iterator[None]:
    """`pageloan serve --asgi asgi_apps:starlette_app` under strace, until it serves;
    stopped with SIGINT (so strace writes everything) when the block ends."""
    log = trace.with_suffix(".log")
    cmd = [STRACE, *strace_args, "-o", str(trace), sys.executable, "-m", "server", "serve", "--asgi",
           "asgi_apps:starlette_app", "--app-dir", str(TESTS), "--host", "127.0.0.1", "--port", str(port)]
    env = dict(os.environ, PYTHONPATH=str(REPO), ASGI_TEST_FILES=str(files))
    with open(log, "wb") as log_file:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=log_file,
                                start_new_session=True)
    try:
        deadline = time.monotonic() + 90
        pid = None
        while pid is None:
            text = log.read_text(errors="replace")
            if proc.poll() is not None:
                if "ptrace" in text or "Operation not permitted" in text:
                    pytest.skip(f"strace cannot trace here: {text[-300:]}")
                raise AssertionError(f"server exited early: {text[-2000:]}")
            found = re.search(r"serving .* \(pid (\d+)\)", text)
            if found:
                pid = int(found.group(1))
            elif time.monotonic() > deadline:
                raise AssertionError("server did not start")
            else:
                time.sleep(0.05)
        yield
        os.kill(pid, signal.SIGINT)
        proc.wait(60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def test_file_response_and_static_files_use_sendfile_without_reads(tmp_path: Path) -> None:
    files = tmp_path / "files"
    (files / "static").mkdir(parents=True)
    big = os.urandom(4 << 20)
    (files / "big.bin").write_bytes(big)
    (files / "static" / "big.bin").write_bytes(big)
    (files / "static" / "small.txt").write_bytes(b"s" * 1024)
    trace = tmp_path / "strace.txt"
    port = _free_port()
    with traced_server(["-f", "-y", "-qq", "-e", "trace=read,pread64,readv,preadv,sendfile,sendmsg,writev"],
                       trace, port, files):
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
            for _ in range(3):
                assert client.get("/files/big.bin").content == big
                assert client.get("/static/big.bin").content == big
                assert client.get("/static/small.txt").content == b"s" * 1024
    lines = trace.read_text(errors="replace").splitlines()
    served = [str(files / "big.bin"), str(files / "static" / "big.bin"), str(files / "static" / "small.txt")]
    for path in served:
        reads = [line for line in lines
                 if re.search(r"\b(read|pread64|readv|preadv)\(\d+<" + re.escape(path) + ">", line)]
        assert reads == [], f"{path} was read in Python:\n" + "\n".join(reads[:5])
    for path in served[:2]:
        sends = [line for line in lines if re.search(r"\bsendfile\(\d+<[^>]*>, \d+<" + re.escape(path) + ">", line)]
        assert sends, f"{path} never left by sendfile"


def test_a_json_answer_costs_no_getpid(tmp_path: Path) -> None:
    """Each request of an ASGI app is one recv and one sendmsg: the adapter names the
    connection's loop, because asyncio.get_running_loop() and current_task() without
    it make a getpid() system call each (CPython's fork check) -- two per request."""
    trace = tmp_path / "strace.txt"
    port = _free_port()
    requests = 50
    with traced_server(["-f", "-qq", "-e", "trace=getpid,sendmsg"], trace, port, tmp_path):
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
            for _ in range(requests):
                assert client.get("/hello").status_code == 200
    calls = [line.split()[1].split("(")[0] for line in trace.read_text(errors="replace").splitlines()
             if "(" in line]
    assert calls.count("sendmsg") >= requests
    # Start-up and shutdown may ask a few times; per request it must not.
    assert calls.count("getpid") < requests // 2, calls.count("getpid")
