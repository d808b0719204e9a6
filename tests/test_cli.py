"""The `pageloan` command: defaults, workers, graceful drain on SIGTERM."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
from harness import REPO, free_port, wait_for_port
from polling import wait_until


def children_of(pid: int) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            if ppid == pid:
                out.append(int(entry.name))
    return out


def test_serve_with_no_arguments_serves_the_bundled_site(server_process):
    srv = server_process([])
    with urllib.request.urlopen(srv.url + "/", timeout=5) as resp:
        body = resp.read()
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/html")
    assert b"pageloan" in body.lower()


@pytest.mark.slow
def test_sigterm_drains_in_flight_responses_then_exits(server_process, tmp_path):
    data = os.urandom(8 << 20)
    site = tmp_path / "site"
    site.mkdir()
    (site / "big.bin").write_bytes(data)
    log_path = tmp_path / "stderr.log"
    with open(log_path, "wb") as log_file:
        srv = server_process([str(site)], stderr=log_file)
    sock = socket.create_connection(("127.0.0.1", srv.port))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 << 10)
    sock.sendall(b"GET /big.bin HTTP/1.1\r\nHost: x\r\n\r\n")
    first = sock.recv(65536)               # the response has started, most of it is owed
    assert first.startswith(b"HTTP/1.1 200")
    srv.proc.send_signal(signal.SIGTERM)
    # The server has stopped accepting once it says it is draining.
    wait_until(lambda: "draining" in log_path.read_text(), "the server's 'draining' log line")
    # no new connections are accepted while draining
    try:
        refused = socket.create_connection(("127.0.0.1", srv.port), timeout=1)
        refused.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        refused.settimeout(2)
        late = refused.recv(100)
        refused.close()
    except OSError:
        late = b""
    assert not late.startswith(b"HTTP/1.1 200")
    received = bytearray(first)
    sock.settimeout(10)
    while True:
        chunk = sock.recv(1 << 20)
        if not chunk:
            break
        received += chunk
    sock.close()
    head, _, body = bytes(received).partition(b"\r\n\r\n")
    assert body == data                    # the in-flight response finished whole
    # Its head left before the signal, so it promised keep-alive; the drain then
    # closes the connection after the last byte (the recv loop above saw the EOF).
    assert head.startswith(b"HTTP/1.1 200") and b"Connection: close" not in head
    assert srv.proc.wait(15) == 0


@pytest.mark.slow
def test_workers_share_the_port_and_a_dead_worker_is_restarted(tmp_path):
    (tmp_path / "index.html").write_text("w")
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "server", "serve", str(tmp_path), "--port", str(port),
                             "--workers", "2"], cwd=REPO, env=dict(os.environ, PYTHONPATH=str(REPO)),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_for_port(port, proc=proc)
        def two_workers() -> list[int] | None:
            found = children_of(proc.pid)
            return found if len(found) == 2 else None

        workers = wait_until(two_workers, "two workers", interval=0.1)
        os.kill(workers[0], signal.SIGKILL)
        wait_until(lambda: len(now := children_of(proc.pid)) == 2 and workers[0] not in now,
                   "the killed worker to be replaced", interval=0.1)
        for _ in range(10):
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as resp:
                assert resp.read() == b"w"
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0


def test_access_log_uses_combined_format(server_process, tmp_path):
    (tmp_path / "a.txt").write_text("a")
    log = tmp_path / "access.log"
    srv = server_process([str(tmp_path), "--access-log", str(log)])
    req = urllib.request.Request(srv.url + "/a.txt", headers={"User-Agent": "probe/1", "Referer": "http://r/"})
    urllib.request.urlopen(req, timeout=5).read()
    srv.stop()
    line = log.read_text().strip().splitlines()[-1]
    assert line.startswith("127.0.0.1 - - [")
    assert '"GET /a.txt HTTP/1.1" 200 1 "http://r/" "probe/1"' in line


def test_missing_root_is_a_clear_error(tmp_path):
    out = subprocess.run([sys.executable, "-m", "server", "serve", str(tmp_path / "nope")], cwd=REPO,
                         env=dict(os.environ, PYTHONPATH=str(REPO)), capture_output=True, timeout=20)
    assert out.returncode != 0
    assert b"not a directory" in out.stderr
