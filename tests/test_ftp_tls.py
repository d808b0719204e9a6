"""Explicit FTPS (RFC 4217): AUTH TLS, PBSZ, PROT P/C, CCC, --ftp-tls-required.

Stock clients (ftplib's FTP_TLS, curl --ssl-reqd, lftp with ftp:ssl-force) log in,
list, download and upload over TLS, byte-exact, in passive and active mode; the
data connections take the counted copy path; a client resuming its control
session on a data connection gets it resumed; nothing leaks descriptors.  The
policy side: refusals before AUTH, with --ftp-tls-required, and the clear-text
injection behind AUTH (CVE-2011-0411).
"""

from __future__ import annotations

import asyncio
import ftplib
import os
import shutil
import socket
import ssl
import subprocess
import time
from pathlib import Path

import pytest
from test_ftp_support import (
    BIG_SIZE,
    CLIENT_TIMEOUT,
    PASSWORD,
    AsyncControl,
    FtpProcess,
    InProcessFtp,
    partial_files,
    run_client,
    sha256_of,
    users_file,
    write_random,
)

from server.core.metrics import METRICS

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl CLI not installed")
needs_curl = pytest.mark.skipif(shutil.which("curl") is None, reason="curl not installed")
needs_lftp = pytest.mark.skipif(shutil.which("lftp") is None, reason="lftp not installed")


@pytest.fixture(scope="module")
def cert_pair(tmp_path_factory):
    d = tmp_path_factory.mktemp("tls")
    cert, key = d / "cert.pem", d / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                    "-subj", "/CN=localhost", "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    return cert, key


@pytest.fixture(scope="module")
def site(tmp_path_factory, cert_pair):
    """A subprocess server (uvloop) with TLS offered, shared by the client tests."""
    base = tmp_path_factory.mktemp("ftps")
    root = base / "root"
    root.mkdir()
    write_random(root / "big.bin", BIG_SIZE)
    (root / "small.txt").write_text("small\n")
    users = users_file(base / "users", {"alice": "rw"})
    cert, key = cert_pair
    server = FtpProcess(root, base / "ftp.log", "--ftp-users", str(users), "--ftp-anonymous",
                        "--ftp-tls-cert", str(cert), "--ftp-tls-key", str(key))
    yield server, root
    server.stop()


def client_context(cert: Path) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(cert))


def ftps_login(port: int, cert: Path, user: str = "alice") -> ftplib.FTP_TLS:
    ftp = ftplib.FTP_TLS(context=client_context(cert), timeout=CLIENT_TIMEOUT)
    ftp.connect("127.0.0.1", port)
    assert ftp.auth().startswith("234")
    ftp.login(user, PASSWORD)
    assert ftp.prot_p().startswith("200")
    return ftp


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


# -- stock clients ------------------------------------------------------------------------------

@pytest.mark.parametrize("passive", [True, False], ids=["passive", "active"])
def test_ftplib_ftp_tls_list_retr_stor(site, cert_pair, tmp_path, passive):
    server, root = site
    ftp = ftps_login(server.port, cert_pair[0])
    ftp.set_pasv(passive)
    lines: list[str] = []
    ftp.retrlines("LIST", lines.append)
    assert {line.split()[-1] for line in lines} >= {"big.bin", "small.txt"}
    got = tmp_path / "got.bin"
    with open(got, "wb") as f:
        ftp.retrbinary("RETR big.bin", f.write)
    assert sha256_of(got) == sha256_of(root / "big.bin")
    upload = write_random(tmp_path / "up.bin", (3 << 20) + 7)
    name = f"up-{'pasv' if passive else 'port'}.bin"
    with open(upload, "rb") as f:
        assert ftp.storbinary(f"STOR {name}", f).startswith("226")
    assert sha256_of(root / name) == sha256_of(upload)
    assert ftp.sendcmd("STAT").count("Control connection: TLS, data TLS") == 1
    ftp.quit()
    assert not partial_files(root)


@needs_curl
def test_curl_ssl_reqd_download_and_upload(site, cert_pair, tmp_path):
    server, root = site
    out = tmp_path / "out.bin"
    base = f"ftp://alice:{PASSWORD.replace(' ', '%20')}@127.0.0.1:{server.port}"
    result = run_client(["curl", "-sS", "--ssl-reqd", "-k", "-o", str(out), f"{base}/big.bin"])
    assert result.returncode == 0, result.stderr
    assert sha256_of(out) == sha256_of(root / "big.bin")
    upload = write_random(tmp_path / "up.bin", (2 << 20) + 3)
    result = run_client(["curl", "-sS", "--ssl-reqd", "-k", "-T", str(upload), f"{base}/curl-up.bin"])
    assert result.returncode == 0, result.stderr
    assert sha256_of(root / "curl-up.bin") == sha256_of(upload)
    listing = run_client(["curl", "-sS", "--ssl-reqd", "-k", "--list-only", f"{base}/"])
    assert listing.returncode == 0 and "small.txt" in listing.stdout.split()
    # Anonymous too, and the certificate really is the one we gave (no -k).
    result = run_client(["curl", "-sS", "--ssl-reqd", "--cacert", str(cert_pair[0]),
                         f"ftp://127.0.0.1:{server.port}/small.txt"])
    assert result.returncode == 0 and result.stdout == "small\n", result.stderr


@needs_lftp
def test_lftp_ssl_force_get_and_put(site, tmp_path):
    server, root = site
    upload = write_random(tmp_path / "up.bin", (1 << 20) + 11)
    settings = ("set ftp:ssl-force true; set ftp:ssl-protect-data true; set ssl:verify-certificate no; "
                "set net:max-retries 1; set net:timeout 10; set cmd:fail-exit yes; set xfer:clobber yes")
    result = run_client(["lftp", "-c", f"{settings}; open -u alice,'{PASSWORD}' -p {server.port} 127.0.0.1; "
                                       f"get big.bin -o {tmp_path / 'got.bin'}; put {upload} -o lftp-up.bin; "
                                       "cls -1"], timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert sha256_of(tmp_path / "got.bin") == sha256_of(root / "big.bin")
    assert sha256_of(root / "lftp-up.bin") == sha256_of(upload)
    assert "small.txt" in result.stdout.split()
    assert "now TLS" in server.log()


@needs_curl
def test_tls_transfers_leak_no_descriptors(site, cert_pair):
    server, _root = site
    ftp = ftps_login(server.port, cert_pair[0])
    ftp.retrbinary("RETR small.txt", lambda block: None)      # warm up: executor threads etc.
    baseline = open_fds(server.proc.pid)
    for _ in range(15):
        ftp.retrbinary("RETR small.txt", lambda block: None)
        ftp.retrlines("NLST", lambda line: None)
    for _ in range(5):
        assert run_client(["curl", "-sS", "--ssl-reqd", "-k", "-o", os.devnull,
                           f"ftp://127.0.0.1:{server.port}/small.txt"]).returncode == 0
    deadline = time.monotonic() + 10
    while open_fds(server.proc.pid) > baseline + 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert open_fds(server.proc.pid) <= baseline + 2
    ftp.quit()


class ResumingFTP_TLS(ftplib.FTP_TLS):
    """FTP_TLS that offers the control connection's TLS session on each data connection,
    as curl, lftp and FileZilla do (ftplib itself does not)."""

    reused: list[bool]

    def ntransfercmd(self, cmd, rest=None):
        conn, size = ftplib.FTP.ntransfercmd(self, cmd, rest)
        if self._prot_p:
            conn = self.context.wrap_socket(conn, server_hostname=self.host, session=self.sock.session)
            self.reused.append(conn.session_reused)
        return conn, size


def test_data_connection_resumes_the_control_session(site, cert_pair):
    # TLS 1.2: TLS 1.3 sessions are deliberately not resumable (no post-handshake
    # tickets, see server/ftp/tls.py), so a 1.3 client gets a full handshake instead.
    server, _root = site
    context = client_context(cert_pair[0])
    context.maximum_version = ssl.TLSVersion.TLSv1_2
    ftp = ResumingFTP_TLS(context=context, timeout=CLIENT_TIMEOUT)
    ftp.reused = []
    ftp.connect("127.0.0.1", server.port)
    ftp.auth()
    ftp.login("alice", PASSWORD)
    ftp.prot_p()
    for _ in range(3):
        ftp.retrbinary("RETR small.txt", lambda block: None)
    ftp.quit()
    assert ftp.reused == [True, True, True]


@needs_curl
def test_curl_uploads_over_tls_1_3_are_never_reset(site, tmp_path):
    # Regression: with TLS 1.3 session tickets on the data connection, curl -T closed
    # with the tickets unread, the kernel sent RST, and the upload's tail was lost (426).
    server, root = site
    upload = write_random(tmp_path / "up.bin", (1 << 20) + 5)
    base = f"ftp://alice:{PASSWORD.replace(' ', '%20')}@127.0.0.1:{server.port}"
    for i in range(8):
        result = run_client(["curl", "-sS", "--ssl-reqd", "-k", "--tlsv1.3", "-T", str(upload),
                             f"{base}/reset-{i}.bin"])
        assert result.returncode == 0, result.stderr
        assert sha256_of(root / f"reset-{i}.bin") == sha256_of(upload)




def test_curl_appends_over_tls_onto_a_large_file(site, tmp_path):
    # An APPE first copies the existing file's bytes into the new one (in a thread),
    # while the client is already sending: what it sends meanwhile waits in the data
    # connection, and the whole of it follows the old bytes, none lost or doubled.
    server, root = site
    head = os.urandom(1 << 20) * 48                  # 48 MiB already there
    tail = write_random(tmp_path / "tail.bin", (1 << 20) + 5)
    base = f"ftp://alice:{PASSWORD.replace(' ', '%20')}@127.0.0.1:{server.port}"
    expected = None
    for i in range(3):
        (root / f"grow-{i}.bin").write_bytes(head)
        result = run_client(["curl", "-sS", "--ssl-reqd", "-k", "--tlsv1.3", "-a", "-T", str(tail),
                             f"{base}/grow-{i}.bin"])
        assert result.returncode == 0, result.stderr
        if expected is None:
            import hashlib
            expected = hashlib.sha256(head + tail.read_bytes()).hexdigest()
        assert sha256_of(root / f"grow-{i}.bin") == expected


# -- replies and policy (in-process, plain asyncio loop) ------------------------------------------

@pytest.fixture
def tree(tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    (root / "file.bin").write_bytes(os.urandom(300_000))
    return root


@pytest.fixture
async def ftp(tree):
    servers = InProcessFtp(tree)
    yield servers
    await servers.close_all()


async def _upgrade(control: AsyncControl, cert: Path) -> None:
    """AUTH TLS on an AsyncControl: then its streams speak TLS."""
    assert (await control.cmd("AUTH TLS"))[0] == 234
    await control.writer.start_tls(client_context(cert), server_hostname="127.0.0.1")


@pytest.mark.asyncio
async def test_tls_commands_before_auth_and_without_a_certificate(ftp, cert_pair):
    plain = await ftp.start()
    control = await AsyncControl.connect(plain.port)
    assert (await control.cmd("AUTH TLS"))[0] == 502            # no certificate: fall back
    assert "AUTH TLS" not in (await control.cmd("FEAT"))[1]
    await control.close()
    cert, key = cert_pair
    service = await ftp.start(tls_cert=cert, tls_key=key)
    control = await AsyncControl.connect(service.port)
    feat = (await control.cmd("FEAT"))[1].splitlines()
    assert {" AUTH TLS", " PBSZ", " PROT"} <= set(feat)
    for command, code in [("PBSZ 0", 503), ("PROT P", 503), ("CCC", 533), ("AUTH KERBEROS_V4", 504),
                          ("AUTH", 501)]:
        assert (await control.cmd(command))[0] == code, command
    await _upgrade(control, cert)
    for command, code in [("AUTH TLS", 503), ("PROT P", 503), ("PBSZ x", 501), ("PBSZ 0", 200),
                          ("PROT S", 536), ("PROT E", 536), ("PROT Q", 504), ("PROT C", 200),
                          ("PROT P", 200), ("CCC", 534), ("NOOP", 200)]:
        assert (await control.cmd(command))[0] == code, command
    await control.login()
    assert "Control connection: TLS, data TLS" in (await control.cmd("STAT"))[1]
    await control.close()


@pytest.mark.asyncio
async def test_tls_required_refuses_clear_login_and_clear_data(ftp, cert_pair):
    cert, key = cert_pair
    service = await ftp.start(tls_cert=cert, tls_key=key, tls_required=True)
    control = await AsyncControl.connect(service.port)
    code, text = await control.cmd("USER alice")
    assert code == 530 and "AUTH TLS" in text
    assert (await control.cmd(f"PASS {PASSWORD}"))[0] == 530
    assert (await control.cmd("LIST"))[0] == 530
    await _upgrade(control, cert)
    await control.login()
    await control.pasv_port()
    assert (await control.cmd("RETR file.bin"))[0] == 521           # no PROT P yet
    assert (await control.cmd("PBSZ 0"))[0] == 200
    assert (await control.cmd("PROT C"))[0] == 534
    assert (await control.cmd("PROT P"))[0] == 200
    await control.close()


def test_tls_required_with_stock_clients(tmp_path, cert_pair):
    root = tmp_path / "root"
    root.mkdir()
    (root / "f.txt").write_text("f\n")
    cert, key = cert_pair
    server = FtpProcess(root, tmp_path / "ftp.log", "--ftp-anonymous", "--ftp-tls-required",
                        "--ftp-tls-cert", str(cert), "--ftp-tls-key", str(key))
    try:
        plain = ftplib.FTP(timeout=CLIENT_TIMEOUT)
        plain.connect("127.0.0.1", server.port)
        with pytest.raises(ftplib.error_perm, match="^530"):
            plain.login()
        plain.close()
        tls = ftplib.FTP_TLS(context=client_context(cert), timeout=CLIENT_TIMEOUT)
        tls.connect("127.0.0.1", server.port)
        tls.login()                                       # FTP_TLS.login sends AUTH TLS first
        with pytest.raises(ftplib.error_perm, match="^521"):
            tls.retrlines("NLST", lambda line: None)
        tls.prot_p()
        names: list[str] = []
        tls.retrlines("NLST", names.append)
        assert names == ["f.txt"]
        tls.quit()
        if shutil.which("curl"):
            clear = run_client(["curl", "-sS", f"ftp://127.0.0.1:{server.port}/f.txt"])
            assert clear.returncode != 0 and clear.stdout == ""
            secured = run_client(["curl", "-sS", "--ssl-reqd", "-k", f"ftp://127.0.0.1:{server.port}/f.txt"])
            assert secured.returncode == 0 and secured.stdout == "f\n", secured.stderr
    finally:
        server.stop()


@pytest.mark.asyncio
async def test_commands_pipelined_behind_auth_are_not_upgraded(ftp, cert_pair):
    cert, key = cert_pair
    service = await ftp.start(tls_cert=cert, tls_key=key, tls_required=True)
    control = await AsyncControl.connect(service.port)
    await control.send(b"AUTH TLS\r\nUSER alice\r\n")          # the CVE-2011-0411 shape
    code, text = await control.read_reply()
    assert code == 503 and "AUTH refused" in text
    assert (await control.read_reply())[0] == 530             # USER ran as clear text: refused
    await _upgrade(control, cert)                             # a clean AUTH still works
    await control.login()
    await control.close()


@pytest.mark.asyncio
async def test_failed_handshakes_end_cleanly(ftp, cert_pair):
    cert, key = cert_pair
    service = await ftp.start(tls_cert=cert, tls_key=key, data_timeout=2)
    # Garbage instead of a ClientHello on the control connection: closed, nothing else hurt.
    control = await AsyncControl.connect(service.port)
    assert (await control.cmd("AUTH TLS"))[0] == 234
    await control.send(b"this is not TLS\r\n" * 20)
    assert await asyncio.wait_for(control.reader.read(), 10) == b""
    await control.close()
    # A data connection that never speaks TLS under PROT P: 425, the session lives on.
    good = await AsyncControl.connect(service.port)
    await _upgrade(good, cert)
    await good.login()
    assert (await good.cmd("PBSZ 0"))[0] == 200 and (await good.cmd("PROT P"))[0] == 200
    port = await good.pasv_port()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    assert (await good.cmd("RETR file.bin"))[0] == 150
    writer.write(b"GET / HTTP/1.0\r\n\r\n")
    code, text = await good.read_reply(timeout=10)
    assert code == 425 and "TLS" in text
    writer.close()
    assert (await good.cmd("NOOP"))[0] == 200
    assert service.sessions == 1
    await good.close()


@pytest.mark.asyncio
async def test_tls_data_goes_through_the_counted_copy_path(ftp, tree, cert_pair):
    cert, key = cert_pair
    service = await ftp.start(tls_cert=cert, tls_key=key)
    size = (tree / "file.bin").stat().st_size
    copied, received = METRICS.bytes_copy, METRICS.bytes_received_copy
    upload = os.urandom(200_000)

    def client() -> bytes:
        ftp = ftps_login(service.port, cert)
        got = bytearray()
        ftp.retrbinary("RETR file.bin", got.extend)
        import io
        ftp.storbinary("STOR new.bin", io.BytesIO(upload))
        ftp.quit()
        return bytes(got)

    got = await asyncio.to_thread(client)
    assert got == (tree / "file.bin").read_bytes()
    assert (tree / "new.bin").read_bytes() == upload
    assert METRICS.bytes_copy - copied >= size
    assert METRICS.bytes_received_copy - received >= len(upload)


@pytest.mark.asyncio
@pytest.mark.parametrize("ending", ["reset", "fin"])
async def test_a_tls_upload_cut_short_is_not_committed(ftp, tree, cert_pair, ending):
    # A reset mid-upload, or a TCP FIN with no close_notify before it -- how an
    # attacker on the path truncates a TLS stream (RFC 4217 §10, RFC 8446 §6.1): the
    # upload fails, and the file it would have replaced stays as it was.  (The FIN
    # was committed with 226 before the end of an upload became the close_notify.)
    cert, key = cert_pair
    service = await ftp.start(tls_cert=cert, tls_key=key)
    (tree / "keep.bin").write_bytes(b"original")

    def client() -> str:
        ftp = ftps_login(service.port, cert)
        conn = ftp.transfercmd("STOR keep.bin")
        conn.sendall(os.urandom(100_000))
        if ending == "reset":
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        conn.close()                 # SSLSocket.close(): no unwrap(), so no close_notify
        try:
            reply = ftp.getresp()
        except (ftplib.error_temp, ftplib.error_perm) as exc:
            reply = str(exc)
        ftp.voidcmd("NOOP")
        ftp.quit()
        return reply

    reply = await asyncio.to_thread(client)
    assert reply.startswith("426"), reply
    assert (tree / "keep.bin").read_bytes() == b"original"
    assert not partial_files(tree)


# -- configuration -------------------------------------------------------------------------------

def _serve_config(argv: list[str]):
    from server.cli import build_parser
    from server.config import config_from_args
    return config_from_args(build_parser().parse_args(["serve", *argv]))


def test_ftp_inherits_the_http_certificate(tmp_path, cert_pair):
    cert, key = cert_pair
    config = _serve_config([str(tmp_path), "--ftp-port", "0", "--tls-cert", str(cert), "--tls-key", str(key)])
    assert (config.ftp.tls_cert, config.ftp.tls_key) == (cert, key)
    other = tmp_path / "other.pem"
    shutil.copy(cert, other)
    config = _serve_config([str(tmp_path), "--ftp-port", "0", "--tls-cert", str(cert), "--tls-key", str(key),
                            "--ftp-tls-cert", str(other), "--ftp-tls-key", str(key), "--ftp-tls-required"])
    assert config.ftp.tls_cert == other and config.ftp.tls_required
    assert _serve_config([str(tmp_path), "--ftp-port", "0"]).ftp.tls_cert is None


@pytest.mark.parametrize("extra, message", [
    (["--ftp-tls-required"], "--ftp-tls-required needs a certificate"),
    (["--ftp-tls-cert", "{cert}"], "--ftp-tls-cert and --ftp-tls-key go together"),
    (["--ftp-tls-cert", "{missing}", "--ftp-tls-key", "{key}"], "{missing}"),
    (["--ftp-tls-cert", "{key}", "--ftp-tls-key", "{key}"], "cannot load the FTP TLS certificate"),
])
def test_bad_tls_options_name_the_option_or_file(tmp_path, cert_pair, extra, message):
    cert, key = cert_pair
    names = {"cert": str(cert), "key": str(key), "missing": str(tmp_path / "missing.pem")}
    argv = [str(tmp_path), "--ftp-port", "0", *(arg.format(**names) for arg in extra)]
    with pytest.raises(SystemExit) as info:
        _serve_config(argv)
    assert message.format(**names) in str(info.value)


def test_pageloan_serve_offers_ftps_with_the_http_certificate(server_process, tmp_path, cert_pair):
    from harness import free_port, wait_for_port
    cert, key = cert_pair
    (tmp_path / "hello.txt").write_text("hello\n")
    ftp_port = free_port()
    http = server_process([str(tmp_path), "--ftp-port", str(ftp_port), "--ftp-anonymous",
                           "--tls-cert", str(cert), "--tls-key", str(key)])
    wait_for_port(ftp_port, proc=http.proc)
    ftp = ftplib.FTP_TLS(context=client_context(cert), timeout=CLIENT_TIMEOUT)
    ftp.connect("127.0.0.1", ftp_port)
    ftp.login()
    ftp.prot_p()
    got = bytearray()
    ftp.retrbinary("RETR hello.txt", got.extend)
    assert got == b"hello\n"
    ftp.quit()


def test_abor_during_a_tls_download(site, cert_pair):
    server, _root = site
    ftp = ftps_login(server.port, cert_pair[0])
    conn = ftp.transfercmd("RETR big.bin")
    assert len(conn.recv(65536)) > 0                  # bytes are moving
    ftp.putcmd("ABOR")                                 # FTP_TLS cannot send it as urgent data
    codes = [ftp.getline()[:3], ftp.getline()[:3]]
    conn.close()
    # Aborted mid-transfer (426 then 226), or it had just finished (226, then 225).
    assert codes in (["426", "226"], ["226", "225"]), codes
    assert ftp.voidcmd("NOOP").startswith("200")      # the session goes on
    got = bytearray()
    ftp.retrbinary("RETR small.txt", got.extend)
    assert got == b"small\n"
    ftp.quit()
