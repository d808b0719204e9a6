"""--zerocopy: MSG_ZEROCOPY sends, their completion notices, and the loans in between.

End-to-end against `python -m server serve --zerocopy` (uvloop, as users run it) over
real sockets on 127.0.0.1, reading the ledger from /metrics and the server process's
descriptors and mappings from /proc/<pid>.  On loopback the kernel copies every
zerocopy send when it reaches the local receiver (the "deferred copy"), and says so in
the notice: that is what the copied-anyway tests pin.  Linux only; skipped where the
kernel refuses SO_ZEROCOPY.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import struct
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from conftest import REPO

from server.core import zerocopy
from server.core.loans import LoanLedger
from server.core.metrics import Metrics


def _zerocopy_refused() -> str | None:
    if not sys.platform.startswith("linux"):
        return "MSG_ZEROCOPY is Linux only"
    with socket.socket() as s:
        try:
            s.setsockopt(socket.SOL_SOCKET, zerocopy.SO_ZEROCOPY, 1)
        except OSError as exc:
            return f"SO_ZEROCOPY refused: {exc}"
    return None


pytestmark = pytest.mark.skipif(_zerocopy_refused() is not None, reason=str(_zerocopy_refused()))

OLD = bytes(range(256)) * 4096           # 1 MiB: fits the send buffer, so only notices hold it
BIG = os.urandom(8 << 20)                # 8 MiB: mapped (under --map-max), sent as windows


def poll(predicate, what: str = "", timeout: float = 10.0, interval: float = 0.02):
    """Wait until predicate() is truthy, with a deadline; return its value."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout}s: {what or predicate.__doc__ or predicate}")
        time.sleep(interval)


def metrics(port: int) -> dict[str, float]:
    raw = _get(port, "/metrics")[1].decode()
    out: dict[str, float] = {}
    for line in raw.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out


def _read_response(sock: socket.socket, buf: bytes = b"") -> tuple[bytes, bytes]:
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed before the head")
        buf += chunk
    head, _, body = buf.partition(b"\r\n\r\n")
    length = next(int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                  if line.lower().startswith(b"content-length:"))
    chunks = [body]
    got = len(body)
    while got < length:
        chunk = sock.recv(min(1 << 20, length - got))
        if not chunk:
            raise ConnectionError(f"closed after {got} of {length} body bytes")
        chunks.append(chunk)
        got += len(chunk)
    return head, b"".join(chunks)


def _request(path: str) -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: t\r\n\r\n".encode()


def _get(port: int, path: str) -> tuple[bytes, bytes]:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(_request(path))
        return _read_response(sock)


def _slow_client(port: int, path: str) -> socket.socket:
    """A client with a tiny receive window that asks for `path` and reads nothing yet."""
    sock = socket.socket()
    # Small, but not below the loopback MSS (64 KiB): a window smaller than one
    # segment leaves the sender to its persist timer, a few hundred bytes per 200 ms.
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 << 10)
    sock.settimeout(10)
    sock.connect(("127.0.0.1", port))
    sock.sendall(_request(path))
    return sock


def _maps(pid: int, path: Path) -> list[str]:
    with open(f"/proc/{pid}/maps") as f:
        return [line.strip() for line in f if str(path) in line]


def _fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def _fd_targets(pid: int) -> set[str]:
    out = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            out.add(os.readlink(f"/proc/{pid}/fd/{fd}"))
        except OSError:
            pass
    return out


def _server_side(server_port: int, client: socket.socket) -> str:
    """The fd target ("socket:[inode]") of the server's end of `client`'s connection."""
    client_port = client.getsockname()[1]
    with open("/proc/net/tcp") as f:
        for line in f.readlines()[1:]:
            fields = line.split()
            local, remote, inode = fields[1], fields[2], fields[9]
            if int(local.split(":")[1], 16) == server_port and int(remote.split(":")[1], 16) == client_port:
                return f"socket:[{inode}]"
    raise AssertionError(f"no server socket for client port {client_port}")


def _settled(port: int) -> dict[str, float]:
    """/metrics once nothing waits on a notice and nothing is on loan."""
    def settled():
        m = metrics(port)
        return m if m["pageloan_zerocopy_pending_bytes"] == 0 and m["pageloan_loans_outstanding"] == 0 else None
    return poll(settled, "nothing pending, nothing on loan")


@pytest.fixture
def site(tmp_path: Path) -> Path:
    (tmp_path / "old.bin").write_bytes(OLD)
    (tmp_path / "big.bin").write_bytes(BIG)
    (tmp_path / "small.txt").write_bytes(b"s" * 2000)
    return tmp_path


def test_completions_arrive_and_loans_return_to_zero(server_process, site):
    srv = server_process([str(site), "--zerocopy", "--metrics"])
    for _ in range(3):
        head, body = _get(srv.port, "/big.bin")
        assert head.startswith(b"HTTP/1.1 200") and body == BIG
    m = _settled(srv.port)
    assert m["pageloan_zerocopy_sends_total"] > 0
    assert m["pageloan_zerocopy_completions_total"] == m["pageloan_zerocopy_sends_total"]


def test_curl_downloads_intact_with_zerocopy(server_process, site, tmp_path):
    if shutil.which("curl") is None:
        pytest.skip("curl not installed")
    srv = server_process([str(site), "--zerocopy", "--metrics"])
    out = tmp_path / "got.bin"
    urls = [f"{srv.url}/big.bin", f"{srv.url}/old.bin", f"{srv.url}/big.bin"]
    subprocess.run(["curl", "-sf", "-o", str(out), "-o", str(out) + "2", "-o", str(out) + "3", *urls],
                   check=True, timeout=30)
    assert out.read_bytes() == BIG and Path(str(out) + "2").read_bytes() == OLD
    assert Path(str(out) + "3").read_bytes() == BIG
    assert _settled(srv.port)["pageloan_zerocopy_sends_total"] > 0


def test_small_answers_take_the_ordinary_path(server_process, site):
    srv = server_process([str(site), "--zerocopy", "--metrics"])
    with socket.create_connection(("127.0.0.1", srv.port), timeout=10) as sock:
        for _ in range(5):
            sock.sendall(_request("/small.txt"))
            assert _read_response(sock)[1] == b"s" * 2000
    assert metrics(srv.port)["pageloan_zerocopy_sends_total"] == 0


def test_zerocopy_is_off_by_default(server_process, site):
    srv = server_process([str(site), "--metrics"])
    assert _get(srv.port, "/big.bin")[1] == BIG
    assert metrics(srv.port)["pageloan_zerocopy_sends_total"] == 0


def test_replaced_file_stays_mapped_until_its_notices_arrive(server_process, site):
    """The open-file cache drops a replaced file at once; its pages stay lent to the
    kernel (and mapped here) until the notices of the sends still reading them."""
    srv = server_process([str(site), "--zerocopy", "--metrics"])
    path = site / "old.bin"
    slow = _slow_client(srv.port, "/old.bin")
    try:
        # The whole file fits the send buffer: the transmitter's queue is empty and only
        # the pending-send ledger still references the window.
        poll(lambda: metrics(srv.port)["pageloan_zerocopy_pending_bytes"] > 0)
        new = b"N" * len(OLD)
        (site / "new.tmp").write_bytes(new)
        os.rename(site / "new.tmp", path)
        assert _get(srv.port, "/old.bin")[1] == new          # the cache saw the new file
        assert any("(deleted)" in line for line in _maps(srv.proc.pid, path)), \
            "the replaced file's mapping went while sends on it were pending"
        m = metrics(srv.port)
        # Bytes waiting on notices are on loan: the ledger counts them.
        assert m["pageloan_loans_outstanding"] >= m["pageloan_zerocopy_pending_bytes"] > 0
        head, body = _read_response(slow)
        assert body == OLD                                   # the first download: old bytes
    finally:
        slow.close()
    _settled(srv.port)
    poll(lambda: not any("(deleted)" in line for line in _maps(srv.proc.pid, path)))


def test_peers_that_vanish_with_sends_pending_leak_nothing(server_process, site):
    srv = server_process([str(site), "--zerocopy", "--metrics"])
    pid = srv.proc.pid
    assert _get(srv.port, "/big.bin")[1] == BIG              # warm: the file is cached and mapped
    _settled(srv.port)
    fds, maps = _fds(pid), _maps(pid, site / "big.bin")
    clients = [_slow_client(srv.port, "/big.bin") for _ in range(6)]
    poll(lambda: metrics(srv.port)["pageloan_zerocopy_pending_bytes"] > 0)
    theirs = {_server_side(srv.port, sock) for sock in clients}
    assert theirs <= _fd_targets(pid)
    for sock in clients:
        sock.recv(1000)
        # RST: the kernel drops what it still holds and sends the last notices.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()
    m = _settled(srv.port)
    assert m["pageloan_zerocopy_completions_total"] == m["pageloan_zerocopy_sends_total"], m
    poll(lambda: metrics(srv.port)["pageloan_connections_open"] == 1, "connections closed")
    poll(lambda: not theirs & _fd_targets(pid), "their sockets closed")
    # Give or take /metrics connections still lingering: nothing else stayed open.
    poll(lambda: _fds(pid) <= fds, "fds back to where they were")
    assert _maps(pid, site / "big.bin") == maps


@pytest.mark.slow
def test_a_connection_closed_with_notices_pending_keeps_its_socket_until_they_arrive(server_process, site):
    """The server closes a stalled keep-alive connection; the kernel would drop the
    notices of a closed socket, so the fd stays open until they have come."""
    srv = server_process([str(site), "--zerocopy", "--metrics", "--keepalive-timeout", "0.5"])
    pid = srv.proc.pid
    slow = _slow_client(srv.port, "/old.bin")
    try:
        poll(lambda: metrics(srv.port)["pageloan_zerocopy_pending_bytes"] > 0)
        ours = _server_side(srv.port, slow)
        # Idle for the server (all handed to the kernel): closed by the keep-alive timeout...
        poll(lambda: metrics(srv.port)["pageloan_connections_open"] == 1)
        # ...but its socket is still open, waiting for the notices.
        assert ours in _fd_targets(pid)
        assert metrics(srv.port)["pageloan_zerocopy_pending_bytes"] > 0
        assert _read_response(slow)[1] == OLD       # every byte still arrives
    finally:
        slow.close()
    _settled(srv.port)
    poll(lambda: ours not in _fd_targets(pid))


def test_loopback_copies_are_counted_and_the_connection_falls_back(server_process, site):
    srv = server_process([str(site), "--zerocopy", "--metrics", "--zerocopy-copied-limit", "4"])
    with socket.create_connection(("127.0.0.1", srv.port), timeout=10) as sock:
        # One keep-alive connection: each answer after a notice also proves that the
        # reader was re-armed after libuv stopped it on EPOLLERR.
        for _ in range(6):
            sock.sendall(_request("/old.bin"))
            assert _read_response(sock)[1] == OLD
        m = _settled(srv.port)
        assert m["pageloan_zerocopy_copied_total"] == m["pageloan_zerocopy_completions_total"] > 0
        assert m["pageloan_zerocopy_fallbacks_total"] == 1
        sends = m["pageloan_zerocopy_sends_total"]
        for _ in range(3):
            sock.sendall(_request("/old.bin"))
            assert _read_response(sock)[1] == OLD
    assert metrics(srv.port)["pageloan_zerocopy_sends_total"] == sends


def test_copied_limit_zero_keeps_zerocopy_on(server_process, site):
    srv = server_process([str(site), "--zerocopy", "--metrics", "--zerocopy-copied-limit", "0"])
    with socket.create_connection(("127.0.0.1", srv.port), timeout=10) as sock:
        for _ in range(10):
            sock.sendall(_request("/old.bin"))
            assert _read_response(sock)[1] == OLD
    m = _settled(srv.port)
    assert m["pageloan_zerocopy_fallbacks_total"] == 0
    assert m["pageloan_zerocopy_sends_total"] >= 10


def _cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        utime, stime = f.read().rsplit(")", 1)[1].split()[11:13]
    return (int(utime) + int(stime)) / os.sysconf("SC_CLK_TCK")


def test_an_idle_server_with_notices_to_read_does_not_spin(server_process, site):
    """Notices that arrive while a connection neither reads nor writes, or while it
    waits idle for its next request, must not wake the loop over and over."""
    srv = server_process([str(site), "--zerocopy", "--metrics"])
    slow = _slow_client(srv.port, "/old.bin")              # stalled: sends pending
    done = socket.create_connection(("127.0.0.1", srv.port), timeout=10)
    try:
        done.sendall(_request("/big.bin"))
        assert _read_response(done)[1] == BIG              # its last notices come after this
        poll(lambda: metrics(srv.port)["pageloan_zerocopy_pending_bytes"] > 0)
        before, start = _cpu_seconds(srv.proc.pid), time.monotonic()
        # A measurement window, not a synchronisation: what does waiting cost?
        time.sleep(1.0)
        busy = _cpu_seconds(srv.proc.pid) - before
        assert busy < 0.3 * (time.monotonic() - start), f"server busy {busy:.2f}s while idle"
        assert _read_response(slow)[1] == OLD
        done.sendall(_request("/old.bin"))                 # still heard after the notices
        assert _read_response(done)[1] == OLD
    finally:
        slow.close()
        done.close()
    _settled(srv.port)


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("unshare") is None or shutil.which("ip") is None,
                    reason="needs root, unshare and ip to make a network namespace")
def test_enobufs_sends_without_the_flag(site):
    """In a network namespace of its own with net.core.optmem_max = 0, every zerocopy
    call is refused with ENOBUFS: the answers still arrive whole, sent ordinarily."""
    script = textwrap.dedent(f"""
        import json, socket, subprocess, sys, time, urllib.request
        subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
        with open("/proc/sys/net/core/optmem_max", "w") as f:
            f.write("0")
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0)); port = s.getsockname()[1]
        proc = subprocess.Popen([sys.executable, "-m", "server", "serve", {str(site)!r}, "--zerocopy",
                                 "--metrics", "--port", str(port)], stderr=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 10
            while True:
                try:
                    socket.create_connection(("127.0.0.1", port), 1).close(); break
                except OSError:
                    if time.monotonic() > deadline: raise
                    time.sleep(0.05)
            body = urllib.request.urlopen(f"http://127.0.0.1:{{port}}/big.bin", timeout=20).read()
            text = urllib.request.urlopen(f"http://127.0.0.1:{{port}}/metrics", timeout=5).read().decode()
            m = {{l.split()[0]: float(l.split()[1]) for l in text.splitlines() if l and l[0] != "#"}}
            print(json.dumps({{"intact": len(body), "metrics": m}}))
        finally:
            proc.kill(); proc.wait()
    """)
    run = subprocess.run(["unshare", "-n", sys.executable, "-c", script], cwd=REPO, capture_output=True,
                         text=True, timeout=60, env=dict(os.environ, PYTHONPATH=str(REPO)))
    if run.returncode != 0 and "Operation not permitted" in run.stderr:
        pytest.skip(f"cannot make a network namespace here: {run.stderr.strip()[-200:]}")
    assert run.returncode == 0, run.stderr
    result = json.loads(run.stdout.strip().splitlines()[-1])
    assert result["intact"] == len(BIG)
    m = result["metrics"]
    assert m["pageloan_zerocopy_enobufs_total"] > 0
    assert m["pageloan_zerocopy_pending_bytes"] == 0


# -- in-process: the stock asyncio loop, the ledger's arithmetic, the degraded cases -------

async def test_the_selector_loop_reads_notices_too(serve, site):
    """asyncio's own loop keeps polling a socket with EPOLLERR (no re-arm needed)."""
    running = await serve(root=site, zerocopy=True)
    ctx_metrics = running.server.ctx.metrics
    reader, writer = await asyncio.open_connection("127.0.0.1", running.port)
    try:
        for _ in range(3):
            writer.write(_request("/big.bin"))
            head = await reader.readuntil(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 200")
            assert await reader.readexactly(len(BIG)) == BIG
        deadline = time.monotonic() + 10
        while ctx_metrics.zerocopy_pending_bytes or ctx_metrics.ledger.outstanding:
            assert time.monotonic() < deadline, "notices never read"
            await asyncio.sleep(0.01)
        assert ctx_metrics.zerocopy_sends > 0
        assert ctx_metrics.zerocopy_completions == ctx_metrics.zerocopy_sends
    finally:
        writer.close()



def test_completion_ranges_wrap_around_the_32_bit_counter():
    with socket.create_server(("127.0.0.1", 0)) as server, \
            socket.create_connection(server.getsockname()):
        peer, _ = server.accept()
        with peer:
            loop = asyncio.new_event_loop()
            try:
                ledger = LoanLedger(1 << 20)
                m = Metrics(ledger)
                zc = zerocopy.attach(peer, loop, m, ledger)
                assert zc is not None
                base = 0xFFFFFFFE
                for i in range(4):                       # ids 0xFFFFFFFE, 0xFFFFFFFF, 0, 1
                    zc._pending[(base + i) & 0xFFFFFFFF] = ((b"x",), 100)
                zc.pending_bytes = 400
                ledger.lend(400)
                m.zerocopy_pending_bytes = 400
                zc._complete(0xFFFFFFFF, 0, 0)           # a range across the wrap
                assert sorted(zc._pending) == [1, 0xFFFFFFFE]
                zc._complete(0xFFFFFFFE, 1, 1)           # overlaps what is already done
                assert not zc._pending and zc.pending_bytes == 0 and ledger.outstanding == 0
                assert m.zerocopy_completions == 4 and m.zerocopy_copied == 2
                zc.retire()
            finally:
                loop.close()


def test_retiring_when_the_last_notice_is_already_queued_closes_once():
    """retire() reads the queue first; that read may already close the socket."""
    import select
    loop = asyncio.new_event_loop()
    try:
        with socket.create_server(("127.0.0.1", 0)) as server, \
                socket.create_connection(server.getsockname()) as client:
            peer, _ = server.accept()
            peer.setblocking(False)
            ledger = LoanLedger(1 << 20)
            m = Metrics(ledger)
            zc = zerocopy.attach(peer, loop, m, ledger)
            assert zc is not None
            payload = b"z" * (100 << 10)
            sent = zc.sendmsg([payload], 0)
            ledger.lend(sent)
            got = 0
            while got < sent:
                got += len(client.recv(1 << 20))
            # The notice is queued once the kernel frees the buffers: POLLERR says so.
            waiter = select.poll()
            waiter.register(peer.fileno(), 0)
            deadline = time.monotonic() + 10
            while not waiter.poll(50):
                assert time.monotonic() < deadline, "no completion notice"
            zc.retire()
            assert peer.fileno() == -1                   # closed, exactly once, no error
            assert zc.pending_bytes == 0 and ledger.outstanding == 0
            assert m.zerocopy_completions == m.zerocopy_sends == 1
            assert zerocopy.ErrorQueueWatch._by_loop.get(id(loop)) is None   # its epoll closed too
    finally:
        loop.close()


def test_unix_sockets_degrade_to_the_ordinary_path_with_one_log_line(caplog):
    loop = asyncio.new_event_loop()
    zerocopy._logged.clear()
    try:
        ledger = LoanLedger(1 << 20)
        pairs = [socket.socketpair() for _ in range(3)]
        with caplog.at_level("WARNING", logger="pageloan.zerocopy"):
            for a, _b in pairs:
                assert zerocopy.attach(a, loop, Metrics(ledger), ledger) is None
        assert len([r for r in caplog.records if "--zerocopy" in r.getMessage()]) == 1
        for a, b in pairs:
            a.close()
            b.close()
    finally:
        loop.close()


@pytest.mark.slow
@pytest.mark.tools
def test_benchmark_reports_what_the_kernel_did(tmp_path):
    if shutil.which("wrk") is None:
        pytest.skip("wrk not installed")
    out = tmp_path / "zc.json"
    run = subprocess.run([sys.executable, "-m", "loadtest.zerocopy", "--duration", "1", "--size", "1M",
                          "--setups", "loopback", "--modes", "windows,zerocopy-forced", "--out", str(out)],
                         cwd=REPO, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    records = {r["mode"]: r for r in json.loads(out.read_text())["records"]}
    assert records["windows"]["zerocopy_sends"] == 0 and records["windows"]["cpu_s_per_gb"] > 0
    forced = records["zerocopy-forced"]
    assert forced["zerocopy_sends"] > 0 and forced["gb_sent"] > 0
    # One machine: the kernel copied every zerocopy send, and the report says so.
    assert forced["zerocopy_copied"] == forced["zerocopy_completions"] == forced["zerocopy_sends"]


@pytest.mark.slow
@pytest.mark.tools
def test_strace_shows_msg_zerocopy_windows_instead_of_sendfile(server_process, site, tmp_path):
    if shutil.which("strace") is None:
        pytest.skip("strace not installed")
    trace = tmp_path / "trace.txt"
    srv = server_process([str(site), "--zerocopy", "--metrics"],
                         prefix=["strace", "-f", "-qq", "-e", "trace=setsockopt,sendmsg,sendfile,recvmsg",
                                 "-e", "signal=none", "-o", str(trace)])
    assert _get(srv.port, "/big.bin")[1] == BIG
    _settled(srv.port)
    text = trace.read_text()
    if "sendmsg" not in text:
        pytest.skip(f"strace cannot trace here: {text[-300:]}")
    assert "SO_ZEROCOPY" in text or "SOL_SOCKET, 0x3c" in text    # setsockopt(..., SO_ZEROCOPY, [1])
    assert "MSG_ZEROCOPY" in text
    assert "MSG_ERRQUEUE" in text                                  # the notices were read
    assert "sendfile(" not in text                                 # the mapped file went as windows
