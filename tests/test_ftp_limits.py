"""The per-address connection limit fits stock clients, and says so in --help.

Regression for issue 12: the old default of 10 control connections per address
turned away `lftp mirror --parallel=20` (20 jobs, 20 connections): 30 of 40 files
failed with "421 Too many connections".
"""

from __future__ import annotations

import subprocess
import sys

import pytest
from harness import needs_tools
from test_ftp_support import REPO, FtpProcess, run_client, sha256_of, write_random

from server.ftp.config import DEFAULT_MAX_PER_IP, FtpConfig

FILES = 40


def test_default_fits_a_parallel_mirror(tmp_path):
    assert DEFAULT_MAX_PER_IP >= 32
    assert FtpConfig(root=tmp_path).max_per_ip == DEFAULT_MAX_PER_IP


@pytest.mark.parametrize("argv", [["-m", "server", "serve", "--help"], ["-m", "server.ftp", "--help"]])
def test_help_shows_the_limit_and_its_default(argv):
    out = subprocess.run([sys.executable, *argv], cwd=REPO, capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    text = " ".join(out.stdout.split())       # argparse wraps help text
    assert f"control connections allowed per client address (default: {DEFAULT_MAX_PER_IP})" in text


@needs_tools("lftp")
def test_lftp_mirror_parallel_20_completes(tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    for i in range(FILES):
        write_random(root / f"f{i:02d}.bin", 200_000 + i)
    out = tmp_path / "out"
    server = FtpProcess(root, tmp_path / "ftp.log", "--ftp-anonymous")
    try:
        settings = ("set ftp:ssl-allow no; set net:max-retries 1; set net:timeout 10; "
                    "set net:reconnect-interval-base 1; set cmd:fail-exit yes")
        result = run_client(["lftp", "-c", f"{settings}; open -u anonymous,guest@ -p {server.port} 127.0.0.1; "
                                           f"mirror --parallel=20 / {out}"], timeout=120)
        assert result.returncode == 0, result.stderr[-2000:]
        log = server.log()
    finally:
        server.stop()
    assert "421" not in result.stderr and "refused FTP connection" not in log
    assert log.count("FTP login") > 10            # it really ran in parallel, past the old limit
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in root.iterdir())
    for path in root.iterdir():
        assert sha256_of(out / path.name) == sha256_of(path)
