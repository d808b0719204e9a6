"""The listening server's hardening: deleted files let go, draining closes the listener
at once, readiness turns 503, plain HTTP on the TLS port gets 400, PROXY protocol,
systemd socket activation, and /metrics summed across workers.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
import socket
import ssl
import struct
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import handler_fixtures
import pytest
from conftest import REPO, free_port, raw_exchange, wait_for_port

from server.core.filecache import OpenFileCache
from server.framework.application import Application
from server.http.proxy_protocol import V2_SIGNATURE, ProxyProtocolError, parse_header
from server.static.site import StaticSite

handler_site = handler_fixtures.handler_site   # the fixture


async def _poll(predicate, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        await asyncio.sleep(0.05)
    return predicate()


def _fds_to(path: Path) -> int:
    """How many of this process's descriptors lead to `path` (deleted or not)."""
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.removesuffix(" (deleted)") == str(path):
            count += 1
    return count


# -- the open-file cache ---------------------------------------------------------------

async def test_unlinked_file_is_closed_by_the_sweep(serve, tmp_path):
    big = tmp_path / "big.bin"
    big.write_bytes(os.urandom(50 << 20))
    (tmp_path / "small.txt").write_text("small")
    site = StaticSite(tmp_path, cache=OpenFileCache(inactive=3600))
    running = await serve(app=Application(site))
    reply = await asyncio.to_thread(raw_exchange, running.port,
                                    b"GET /big.bin HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
    assert reply.startswith(b"HTTP/1.1 200") and len(reply) > 50 << 20
    # (another request, so that nothing but the cache still refers to big.bin)
    await asyncio.to_thread(raw_exchange, running.port,
                            b"GET /small.txt HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
    assert _fds_to(big) >= 1
    big.unlink()
    assert await _poll(lambda: _fds_to(big) == 0, timeout=5), "a deleted file stayed open"
    assert site.cache.closed_deleted == 1


async def test_idle_entries_are_closed_after_the_inactive_time(serve, tmp_path):
    (tmp_path / "a.txt").write_text("a")
    (tmp_path / "b.txt").write_text("b")
    site = StaticSite(tmp_path, cache=OpenFileCache(inactive=2))
    running = await serve(app=Application(site))
    for name in ("a.txt", "b.txt"):
        await asyncio.to_thread(raw_exchange, running.port,
                                f"GET /{name} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n".encode())
    assert len(site.cache) == 2
    assert await _poll(lambda: len(site.cache) == 0, timeout=8)
    assert site.cache.closed_idle == 2
    assert _fds_to(tmp_path / "a.txt") == 0


def test_a_file_in_use_stays_cached(tmp_path):
    (tmp_path / "a.txt").write_text("a")
    cache = OpenFileCache(inactive=2)
    f = cache.open(str(tmp_path / "a.txt"))
    for second in range(10):
        cache.open(str(tmp_path / "a.txt"))    # used every second
        cache.sweep(float(second))
    assert cache.by_path[str(tmp_path / "a.txt")] is f
    for second in range(10, 14):
        cache.sweep(float(second))
    assert len(cache) == 0


# -- draining and readiness ------------------------------------------------------------

async def test_drain_closes_the_listener_at_once_and_finishes_what_is_in_flight(serve, tmp_path):
    (tmp_path / "big.bin").write_bytes(os.urandom(8 << 20))
    running = await serve(root=tmp_path, ready_path="/readyz", drain_timeout=10)
    assert (await asyncio.to_thread(raw_exchange, running.port,
                                    b"GET /readyz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
            ).startswith(b"HTTP/1.1 200")
    # A response in flight: the client reads slowly, most of the body is still owed.
    slow = socket.create_connection((running.host, running.port))
    slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 << 10)
    slow.sendall(b"GET /big.bin HTTP/1.1\r\nHost: t\r\n\r\n")
    first = await asyncio.to_thread(slow.recv, 65536)
    assert first.startswith(b"HTTP/1.1 200")
    drain = asyncio.create_task(running.server.drain())
    await asyncio.sleep(0.05)
    # The listening socket is closed at once: the kernel refuses new connections.
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection((running.host, running.port), timeout=1).close()
    assert not running.server.ctx.ready

    def read_rest() -> int:
        total = len(first)
        while chunk := slow.recv(1 << 20):
            total += len(chunk)
        return total
    total = await asyncio.to_thread(read_rest)
    assert total > 8 << 20            # the whole response, then the close
    slow.close()
    await drain


async def test_readiness_is_503_while_draining_with_a_delay(serve, tmp_path):
    running = await serve(root=tmp_path, ready_path="/readyz", drain_delay=1.0)
    assert running.server.ctx.ready
    drain = asyncio.create_task(running.server.drain())
    await asyncio.sleep(0)
    reply = await asyncio.to_thread(raw_exchange, running.port,
                                    b"GET /readyz HTTP/1.1\r\nHost: t\r\n\r\n")
    assert reply.startswith(b"HTTP/1.1 503") and reply.endswith(b"draining\n")
    await drain


async def test_no_readiness_path_unless_configured(serve, tmp_path):
    running = await serve(root=tmp_path)
    reply = await asyncio.to_thread(raw_exchange, running.port,
                                    b"GET /readyz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
    assert reply.startswith(b"HTTP/1.1 404")


# -- plain HTTP on the TLS port --------------------------------------------------------

@pytest.fixture(scope="module")
def cert_pair(tmp_path_factory):
    if shutil.which("openssl") is None:
        pytest.skip("openssl CLI not installed")
    d = tmp_path_factory.mktemp("tls")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                    "-keyout", str(d / "key.pem"), "-out", str(d / "cert.pem"), "-subj", "/CN=localhost"],
                   check=True, capture_output=True, timeout=60)
    return d / "cert.pem", d / "key.pem"


async def test_plain_http_to_the_tls_port_gets_400_then_close(serve, tmp_path, cert_pair):
    (tmp_path / "a.txt").write_text("secret-free")
    cert, key = cert_pair
    running = await serve(root=tmp_path, tls_cert=cert, tls_key=key)
    reply = await asyncio.to_thread(raw_exchange, running.port,
                                    b"GET /a.txt HTTP/1.1\r\nHost: t\r\n\r\n")
    assert reply.startswith(b"HTTP/1.1 400 ")
    assert b"plain HTTP request was sent to HTTPS port" in reply
    assert b"Connection: close" in reply
    # and TLS clients are still served
    context = ssl.create_default_context(cafile=str(cert))

    def fetch() -> bytes:
        with socket.create_connection(("127.0.0.1", running.port), timeout=5) as raw, \
                context.wrap_socket(raw, server_hostname="localhost") as tls:
            tls.sendall(b"GET /a.txt HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
            out = b""
            while chunk := tls.recv(65536):
                out += chunk
            return out
    assert (await asyncio.to_thread(fetch)).endswith(b"secret-free")


# -- PROXY protocol -----------------------------------------------------------------------

def test_proxy_header_parsing():
    v1 = parse_header(b"PROXY TCP4 203.0.113.7 192.0.2.1 56324 443\r\nGET / HTTP/1.1\r\n")
    assert v1.client == ("203.0.113.7", 56324) and v1.length == 44
    assert parse_header(b"PROXY TCP6 2001:db8::1 2001:db8::2 1 2\r\n").client == ("2001:db8::1", 1)
    assert parse_header(b"PROXY UNKNOWN\r\n").client is None
    assert parse_header(b"PROXY TCP4 203.0.113.7") is None               # incomplete
    v2 = (V2_SIGNATURE + bytes([0x21, 0x11]) + struct.pack("!H", 12) + socket.inet_aton("198.51.100.9")
          + socket.inet_aton("192.0.2.1") + struct.pack("!HH", 4242, 443))
    assert parse_header(v2 + b"GET").client == ("198.51.100.9", 4242)
    assert parse_header(v2[:20]) is None
    local = V2_SIGNATURE + bytes([0x20, 0x00]) + struct.pack("!H", 0)
    assert parse_header(local).client is None and parse_header(local).length == 16
    for bad in (b"GET / HTTP/1.1\r\n", b"PROXY TCP4 1.2.3.4 5.6.7.8 99999 80\r\n",
                b"PROXY TCP4 ::1 5.6.7.8 1 80\r\n", b"PROXY TCP4 1.2.3.4 5.6.7.8 01 80\r\n",
                b"PROXY TCP9 a b 1 2\r\n", b"PROXY " + b"x" * 120,
                V2_SIGNATURE + bytes([0x31, 0x11]) + struct.pack("!H", 12) + bytes(12),
                V2_SIGNATURE + bytes([0x21, 0x11]) + struct.pack("!H", 4) + bytes(4)):
        with pytest.raises(ProxyProtocolError):
            parse_header(bad)


async def test_proxy_protocol_sets_the_client_address(serve, tmp_path, caplog):
    (tmp_path / "a.txt").write_text("a")
    running = await serve(root=tmp_path, proxy_protocol=True, access_log="-")
    import logging
    with caplog.at_level(logging.INFO, logger="pageloan.access"):
        v1 = await asyncio.to_thread(
            raw_exchange, running.port,
            b"PROXY TCP4 203.0.113.7 192.0.2.1 56324 80\r\nGET /a.txt HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        v2 = await asyncio.to_thread(
            raw_exchange, running.port,
            V2_SIGNATURE + bytes([0x21, 0x11]) + struct.pack("!H", 12) + socket.inet_aton("198.51.100.9")
            + socket.inet_aton("192.0.2.1") + struct.pack("!HH", 4242, 80)
            + b"GET /a.txt HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
    assert v1.startswith(b"HTTP/1.1 200") and v2.startswith(b"HTTP/1.1 200")
    hosts = [r.getMessage().split(" ", 1)[0] for r in caplog.records if r.name == "pageloan.access"]
    assert hosts == ["203.0.113.7", "198.51.100.9"]


async def test_a_bad_proxy_header_closes_the_connection(serve, tmp_path, caplog):
    (tmp_path / "a.txt").write_text("a")
    running = await serve(root=tmp_path, proxy_protocol=True)
    import logging
    with caplog.at_level(logging.WARNING):
        for bad in (b"GET /a.txt HTTP/1.1\r\nHost: t\r\n\r\n",
                    b"PROXY TCP4 1.2.3.4 5.6.7.8 99999 80\r\nGET /a.txt HTTP/1.1\r\nHost: t\r\n\r\n"):
            try:
                reply = await asyncio.to_thread(raw_exchange, running.port, bad)
            except ConnectionResetError:      # closed with the client's bytes unread
                reply = b""
            assert reply == b""
    assert sum("PROXY" in r.getMessage() for r in caplog.records) >= 2
    # dribbled byte by byte, a good header still works
    reader, writer = await asyncio.open_connection(running.host, running.port)
    for byte in b"PROXY TCP4 203.0.113.7 192.0.2.1 56324 80\r\n":
        writer.write(bytes([byte]))
        await writer.drain()
    writer.write(b"GET /a.txt HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
    assert (await asyncio.wait_for(reader.read(), 5)).startswith(b"HTTP/1.1 200")
    writer.close()


# -- forwarding headers ------------------------------------------------------------------

@pytest.mark.parametrize("allow, expected", [
    ("127.0.0.1", ["198.51.100.7", "203.0.113.9", "127.0.0.1"]),
    ("10.0.0.0/8", ["127.0.0.1", "127.0.0.1", "127.0.0.1"]),      # we are not a trusted proxy
])
async def test_forwarded_client_only_from_trusted_proxies(serve, tmp_path, caplog, allow, expected):
    (tmp_path / "a.txt").write_text("a")
    running = await serve(root=tmp_path, access_log="-", forwarded_allow_ips=allow)
    import logging
    requests = [
        b"X-Forwarded-For: 6.6.6.6, 198.51.100.7\r\n",            # the left entry is the client's claim
        b"Forwarded: for=203.0.113.9;proto=https\r\n",
        b"",
    ]
    with caplog.at_level(logging.INFO, logger="pageloan.access"):
        for extra in requests:
            reply = await asyncio.to_thread(
                raw_exchange, running.port,
                b"GET /a.txt HTTP/1.1\r\nHost: t\r\n" + extra + b"Connection: close\r\n\r\n")
            assert reply.startswith(b"HTTP/1.1 200")
    hosts = [r.getMessage().split(" ", 1)[0] for r in caplog.records if r.name == "pageloan.access"]
    assert hosts == expected


async def test_handlers_still_reach_the_application_behind_the_fronts(handler_site):
    site = await handler_site({"state.py": """
from server import route, on_startup

@on_startup
def remember(app):
    app.state.greeting = "hi"

@route("/state")
def state(request):
    return {"greeting": request.app.state.greeting, "client": request.client[0]}
"""}, ready_path="/readyz", forwarded_allow_ips="127.0.0.1")
    reply = await site.fetch("GET", "/state", headers={"X-Forwarded-For": "192.0.2.44"})
    assert reply.status == 200
    assert reply.json() == {"greeting": "hi", "client": "192.0.2.44"}
    assert (await site.get("/readyz")).body == b"ready\n"


# -- socket activation -------------------------------------------------------------------

def test_systemd_socket_activation(tmp_path):
    """A listening socket passed as fd 3 with LISTEN_FDS/LISTEN_PID is served, and the
    port survives a restart of the server process."""
    (tmp_path / "a.txt").write_text("activated")
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(128)
    port = listener.getsockname()[1]
    # LISTEN_PID must be the server's own pid: a shell sets it, then execs Python.
    launcher = ('import os, sys; os.environ["LISTEN_PID"] = str(os.getpid()); '
                'os.environ["LISTEN_FDS"] = "1"; os.execv(sys.executable, sys.argv[1:])')

    def start() -> subprocess.Popen:
        def to_fd3() -> None:
            os.dup2(listener.fileno(), 3)
        return subprocess.Popen(
            [sys.executable, "-c", launcher, sys.executable, "-m", "server", "serve", str(tmp_path),
             "--port", "1"], cwd=REPO, env=dict(os.environ, PYTHONPATH=str(REPO)),
            pass_fds=(), preexec_fn=to_fd3, close_fds=False,
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)

    def get() -> bytes:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/a.txt", timeout=10) as r:
            return r.read()
    try:
        for _round in range(2):
            proc = start()
            try:
                assert get() == b"activated"       # (the backlog holds it until accept)
            finally:
                proc.send_signal(signal.SIGTERM)
                _out, err = proc.communicate(timeout=20)
            assert b"passed by the service manager" in err
            assert b":1/" not in err               # --port was not used
    finally:
        listener.close()


# -- metrics across workers --------------------------------------------------------------

def _children(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            if stat.rsplit(")", 1)[1].split()[1] == str(pid):
                found.append(int(entry))
    return found


def _exchange(port: int, data: bytes) -> bytes:
    """raw_exchange, b"" for a connection the kernel gave a worker that was just killed."""
    try:
        return raw_exchange(port, data)
    except (ConnectionResetError, ConnectionRefusedError):
        return b""


@pytest.mark.slow
def test_metrics_are_summed_across_workers_and_never_go_down(tmp_path):
    (tmp_path / "a.txt").write_text("a")
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "server", "serve", str(tmp_path), "--workers", "2", "--metrics",
         "--host", "127.0.0.1", "--port", str(port)],
        cwd=REPO, env=dict(os.environ, PYTHONPATH=str(REPO)), stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        wait_for_port(port, proc=proc)
        pattern = re.compile(rb"^pageloan_responses_total (\d+)$", re.M)
        conns = re.compile(rb"^pageloan_connections_total (\d+)$", re.M)
        seen: list[tuple[int, int]] = []
        pids = set()
        sent = 0
        for i in range(80):
            for _ in range(3):
                if _exchange(port, b"GET /a.txt HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"):
                    sent += 1
            reply = b""
            while not pattern.search(reply):
                reply = _exchange(port, b"GET /metrics HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
            seen.append((int(pattern.search(reply).group(1)), int(conns.search(reply).group(1))))
            if i == 40:
                # a worker killed mid-run is restarted and carries on from its slot's counts
                children = _children(proc.pid)
                pids.update(children)
                os.kill(children[0], signal.SIGKILL)
        for (r1, c1), (r2, c2) in zip(seen, seen[1:], strict=False):
            assert r2 >= r1 and c2 >= c1, seen
        assert seen[-1][0] >= sent                   # every worker's answers are in the sum
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(20)
