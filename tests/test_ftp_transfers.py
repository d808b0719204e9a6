"""End-to-end FTP transfers with stock clients (ftplib, curl, lftp) against a real
`python -m server.ftp` process on uvloop: byte-exact downloads and uploads of a
multi-MiB file, resume in both directions, interrupted uploads, and what the
kernel is asked to do (sendfile out, splice in, never a read of the file).
"""

from __future__ import annotations

import io
import re
import socket
import struct
from pathlib import Path

import pytest
from harness import needs_tools
from polling import wait_stable, wait_until
from test_ftp_support import (
    BIG_SIZE,
    PASSWORD,
    FtpProcess,
    ftp_login,
    lftp_script,
    partial_files,
    run_client,
    sha256_of,
    users_file,
    write_random,
)

needs_curl = needs_tools("curl")
needs_lftp = needs_tools("lftp")
needs_strace = needs_tools("strace")


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    base = tmp_path_factory.mktemp("ftp")
    root = base / "root"
    root.mkdir()
    write_random(root / "big.bin", BIG_SIZE)
    (root / "sub").mkdir()
    accounts = users_file(base / "users", {"alice": "rw", "bob": "r"})
    server = FtpProcess(root, base / "server.log", "--ftp-users", str(accounts), "--ftp-anonymous")
    yield server, root, base
    server.stop()


def url(port: int, path: str, user: str = "alice") -> str:
    return f"ftp://{user}:{PASSWORD.replace(' ', '%20')}@127.0.0.1:{port}/{path}"


# -- ftplib ------------------------------------------------------------------------------------

@pytest.mark.parametrize("passive", [True, False], ids=["passive", "active"])
def test_ftplib_retr_is_byte_exact(site, tmp_path, passive):
    server, root, _ = site
    ftp = ftp_login(server.port)
    ftp.set_pasv(passive)
    out = tmp_path / "out.bin"
    with open(out, "wb") as f:
        ftp.retrbinary("RETR big.bin", f.write)
    ftp.quit()
    assert out.stat().st_size == BIG_SIZE
    assert sha256_of(out) == sha256_of(root / "big.bin")


def test_ftplib_stor_is_byte_exact_and_replaces_atomically(site, tmp_path):
    server, root, _ = site
    source = write_random(tmp_path / "up.bin", BIG_SIZE)
    (root / "stored.bin").write_bytes(b"old contents")
    ftp = ftp_login(server.port)
    with open(source, "rb") as f:
        reply = ftp.storbinary("STOR stored.bin", f)
    ftp.quit()
    assert reply.startswith("226")
    assert sha256_of(root / "stored.bin") == sha256_of(source)
    assert partial_files(root) == []


def test_ftplib_rest_retr_resumes_download(site):
    server, root, _ = site
    ftp = ftp_login(server.port)
    buf = io.BytesIO()
    ftp.retrbinary("RETR big.bin", buf.write, rest=3_000_001)
    ftp.quit()
    assert buf.getvalue() == (root / "big.bin").read_bytes()[3_000_001:]


def test_ftplib_rest_stor_resumes_upload(site, tmp_path):
    server, root, _ = site
    source = write_random(tmp_path / "src.bin", BIG_SIZE)
    data = source.read_bytes()
    (root / "resumed.bin").write_bytes(data[:2_500_000])
    ftp = ftp_login(server.port)
    with open(source, "rb") as f:
        f.seek(2_500_000)
        ftp.storbinary("STOR resumed.bin", f, rest=2_500_000)
    ftp.quit()
    assert sha256_of(root / "resumed.bin") == sha256_of(source)


# -- curl --------------------------------------------------------------------------------------

@needs_curl
@pytest.mark.parametrize("mode", [[], ["--ftp-port", "127.0.0.1"]], ids=["epsv", "eprt"])
def test_curl_download_and_upload_are_byte_exact(site, tmp_path, mode):
    server, root, _ = site
    out = tmp_path / "curl.bin"
    done = run_client(["curl", "-sS", *mode, "-o", str(out), url(server.port, "big.bin")])
    assert done.returncode == 0, done.stderr
    assert sha256_of(out) == sha256_of(root / "big.bin")
    source = write_random(tmp_path / "curl-up.bin", BIG_SIZE)
    done = run_client(["curl", "-sS", *mode, "-T", str(source), url(server.port, "sub/curl-up.bin")])
    assert done.returncode == 0, done.stderr
    assert sha256_of(root / "sub" / "curl-up.bin") == sha256_of(source)


@needs_curl
def test_curl_continue_download(site, tmp_path):
    server, root, _ = site
    out = tmp_path / "partial.bin"
    out.write_bytes((root / "big.bin").read_bytes()[:1_234_567])
    done = run_client(["curl", "-sS", "-C", "-", "-o", str(out), url(server.port, "big.bin")])
    assert done.returncode == 0, done.stderr
    assert sha256_of(out) == sha256_of(root / "big.bin")
    assert "REST 1234567" in server.log()


@needs_curl
def test_curl_continue_upload(site, tmp_path):
    server, root, _ = site
    source = write_random(tmp_path / "src.bin", BIG_SIZE)
    (root / "curl-resume.bin").write_bytes(source.read_bytes()[:4_000_000])
    done = run_client(["curl", "-sS", "-C", "-", "-T", str(source), url(server.port, "curl-resume.bin")])
    assert done.returncode == 0, done.stderr
    assert sha256_of(root / "curl-resume.bin") == sha256_of(source)
    assert "APPE curl-resume.bin" in server.log()     # curl resumes uploads with SIZE + APPE


# -- lftp --------------------------------------------------------------------------------------

@needs_lftp
def test_lftp_get_and_put_are_byte_exact(site, tmp_path):
    server, root, _ = site
    out = tmp_path / "lftp.bin"
    source = write_random(tmp_path / "lftp-up.bin", BIG_SIZE)
    done = run_client(lftp_script(server.port, f"get big.bin -o {out}; put {source} -o sub/lftp-up.bin; cls -l sub"))
    assert done.returncode == 0, done.stderr
    assert sha256_of(out) == sha256_of(root / "big.bin")
    assert sha256_of(root / "sub" / "lftp-up.bin") == sha256_of(source)
    assert "lftp-up.bin" in done.stdout


@needs_lftp
def test_lftp_continue_both_ways(site, tmp_path):
    server, root, _ = site
    big = (root / "big.bin").read_bytes()
    out = tmp_path / "lftp-partial.bin"
    out.write_bytes(big[:777_777])
    source = write_random(tmp_path / "lftp-src.bin", BIG_SIZE)
    (root / "lftp-resume.bin").write_bytes(source.read_bytes()[:5_555_555])
    done = run_client(lftp_script(server.port, f"get -c big.bin -o {out}; put -c {source} -o lftp-resume.bin"))
    assert done.returncode == 0, done.stderr
    assert sha256_of(out) == sha256_of(root / "big.bin")
    assert sha256_of(root / "lftp-resume.bin") == sha256_of(source)
    log = server.log()
    assert "REST 777777" in log
    # lftp resumes an upload with REST + STOR: the temp file starts as a kernel copy.
    assert re.search(r"REST 5555555\n.*STOR lftp-resume\.bin", log)


# -- interrupted uploads never damage the existing file ---------------------------------------

def _start_upload(port: int, name: str, chunk: bytes) -> tuple:
    ftp = ftp_login(port)
    ftp.voidcmd("TYPE I")
    data = ftp.transfercmd(f"STOR {name}")
    data.sendall(chunk)
    return ftp, data


def _wait_for(predicate, timeout: float = 5.0) -> bool:
    wait_until(predicate, "the upload's files to reach the expected state", timeout=timeout)
    return True


def _partial_appears(root: Path) -> bool:
    return _wait_for(lambda: partial_files(root) != [], 5)


def test_abor_during_stor_keeps_existing_file(site):
    server, root, _ = site
    target = root / "precious-abor.bin"
    target.write_bytes(b"precious " * 1000)
    before = sha256_of(target)
    ftp, data = _start_upload(server.port, target.name, b"x" * (3 << 20))
    assert _partial_appears(root)                    # the upload really was under way
    reply = ftp.abort()                              # ABOR while the data connection is open
    data.close()
    assert reply.startswith("426")
    assert ftp.getresp().startswith("226")
    assert ftp.voidcmd("NOOP").startswith("200")     # the session survives
    ftp.quit()
    assert sha256_of(target) == before
    assert partial_files(root) == []


def test_reset_data_connection_keeps_existing_file(site):
    server, root, _ = site
    target = root / "precious-reset.bin"
    target.write_bytes(b"precious " * 1000)
    before = sha256_of(target)
    ftp, data = _start_upload(server.port, target.name, b"y" * (3 << 20))
    assert _partial_appears(root)
    # SO_LINGER 0: close sends RST, the way a crashed client's kernel ends the stream.
    data.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    data.close()
    with pytest.raises(__import__("ftplib").error_temp, match="426"):
        ftp.voidresp()
    ftp.quit()
    assert sha256_of(target) == before
    assert partial_files(root) == []


def test_lost_control_connection_keeps_existing_file(site):
    server, root, _ = site
    target = root / "precious-control.bin"
    target.write_bytes(b"precious " * 1000)
    before = sha256_of(target)
    ftp, data = _start_upload(server.port, target.name, b"z" * (3 << 20))
    assert _partial_appears(root)
    ftp.close()                                      # control gone, data still open
    assert _wait_for(lambda: partial_files(root) == [])
    data.close()
    # Nothing may land after the data connection closes either: the file stays as it was.
    assert wait_stable(lambda: (sha256_of(target), partial_files(root))) == (before, [])
    assert partial_files(root) == []


# -- what the kernel is asked to do ------------------------------------------------------------

@needs_strace
def test_retr_uses_sendfile_and_stor_uses_splice(tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    big = write_random(root / "traced.bin", BIG_SIZE)
    accounts = users_file(tmp_path / "users", {"alice": "rw"})
    trace = tmp_path / "trace.txt"
    server = FtpProcess(root, tmp_path / "server.log", "--ftp-users", str(accounts), strace_to=trace)
    try:
        ftp = ftp_login(server.port)
        out = tmp_path / "out.bin"
        with open(out, "wb") as f:
            ftp.retrbinary("RETR traced.bin", f.write)
        with open(big, "rb") as f:
            ftp.storbinary("STOR uploaded.bin", f)
        ftp.quit()
    finally:
        server.stop()
    assert sha256_of(out) == sha256_of(big)
    assert sha256_of(root / "uploaded.bin") == sha256_of(big)
    lines = trace.read_text(errors="replace").splitlines()
    served = str(big)
    # Download: only sendfile touched the file, and it moved every byte.
    reads = [ln for ln in lines if served + ">" in ln and not re.search(r"\bsendfile\(", ln)]
    assert reads == [], reads[:5]
    sent = [int(m.group(1)) for ln in lines
            if (m := re.search(r"sendfile\(\d+<socket:\[\d+\]>, \d+<" + re.escape(served) + r">.*\) = (\d+)$", ln))]
    assert sum(sent) == BIG_SIZE, (len(sent), sum(sent))
    # Upload: the bytes went socket → pipe → temporary file by splice, never read().
    into_pipe = [ln for ln in lines if re.search(r"splice\(\d+<socket:\[\d+\]>, NULL, \d+<pipe:", ln)]
    into_file = [int(m.group(1)) for ln in lines
                 if (m := re.search(r"splice\(\d+<pipe:\[\d+\]>, NULL, \d+<\S*\.uploaded\.bin\.pageloan-\w+\.part>.*\) = (\d+)$", ln))]
    assert into_pipe and sum(into_file) == BIG_SIZE, (len(into_pipe), sum(into_file))
    data_sockets = {m.group(1) for ln in into_pipe if (m := re.search(r"splice\((\d+<socket:\[\d+\]>)", ln))}
    copied = [ln for ln in lines if re.search(r"\b(read|readv|recvfrom|recvmsg)\(", ln)
              and any(s in ln for s in data_sockets)]
    assert copied == [], copied[:5]
