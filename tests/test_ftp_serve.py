"""`pageloan serve ROOT --ftp-port N --ftp-anonymous`: the whole command, with stock clients.

The other FTP tests mostly run `python -m server.ftp`; this one runs what users run,
HTTP and FTP in one process, and drives FTP with curl, ftplib and lftp.
"""

from __future__ import annotations

import ftplib
import shutil

import pytest
from harness import free_port, wait_for_port
from test_ftp_support import CLIENT_TIMEOUT, run_client, sha256_of, write_random


@pytest.fixture
def served(server_process, tmp_path):
    root = tmp_path / "root"
    (root / "sub").mkdir(parents=True)
    write_random(root / "big.bin", (3 << 20) + 17)
    (root / "sub" / "note.txt").write_text("note\n")
    (root / ".env").write_text("SECRET=1\n")
    ftp_port = free_port()
    http = server_process([str(root), "--ftp-port", str(ftp_port), "--ftp-anonymous"])
    wait_for_port(ftp_port, proc=http.proc)
    return root, ftp_port


def test_ftplib(served, tmp_path):
    root, port = served
    ftp = ftplib.FTP(timeout=CLIENT_TIMEOUT)
    ftp.connect("127.0.0.1", port)
    ftp.login()
    assert sorted(ftp.nlst()) == ["big.bin", "sub"]
    got = tmp_path / "got.bin"
    with open(got, "wb") as f:
        ftp.retrbinary("RETR big.bin", f.write)
    assert sha256_of(got) == sha256_of(root / "big.bin")
    with pytest.raises(ftplib.error_perm, match="^550"):
        ftp.storbinary("STOR new.bin", open(got, "rb"))      # anonymous is read-only
    ftp.quit()


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl not installed")
def test_curl(served, tmp_path):
    root, port = served
    out = tmp_path / "out.bin"
    result = run_client(["curl", "-sS", "-o", str(out), f"ftp://127.0.0.1:{port}/big.bin"])
    assert result.returncode == 0, result.stderr
    assert sha256_of(out) == sha256_of(root / "big.bin")
    result = run_client(["curl", "-sS", f"ftp://127.0.0.1:{port}/sub/note.txt"])
    assert result.returncode == 0 and result.stdout == "note\n"
    listing = run_client(["curl", "-sS", "--list-only", f"ftp://127.0.0.1:{port}/"])
    assert listing.stdout.split() == ["big.bin", "sub"]


@pytest.mark.skipif(shutil.which("lftp") is None, reason="lftp not installed")
def test_lftp(served, tmp_path):
    root, port = served
    out = tmp_path / "mirror"
    settings = ("set ftp:ssl-allow no; set net:max-retries 1; set net:timeout 10; "
                "set cmd:fail-exit yes")
    result = run_client(["lftp", "-c", f"{settings}; open -u anonymous,guest@ -p {port} 127.0.0.1; "
                                       f"mirror --parallel=4 / {out}"], timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert sha256_of(out / "big.bin") == sha256_of(root / "big.bin")
    assert (out / "sub" / "note.txt").read_text() == "note\n"
    assert not (out / ".env").exists()
