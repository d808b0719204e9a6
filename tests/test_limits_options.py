"""Every numeric `serve` option is range-checked, and start-up errors name what failed.

Each case runs `python -m server serve ...` and reads its exit status and stderr:
argparse's message names the option; the server's own start-up errors name the
address or file and say what to do.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from harness import REPO

OPENSSL = "/usr/bin/openssl"


def _serve(*args: str, timeout: float = 20) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "server", "serve", *args], cwd=REPO,
                          env=dict(os.environ, PYTHONPATH=str(REPO)), capture_output=True,
                          text=True, timeout=timeout)


@pytest.mark.parametrize("args, words", [
    (["--port", "99999"], ["--port", "99999", "0 to 65535"]),
    (["--port", "-1"], ["--port", "0 to 65535"]),
    (["--port", "http"], ["--port", "not a whole number"]),
    (["--workers", "0"], ["--workers", "1 to 1024"]),
    (["--max-connections", "0"], ["--max-connections", "at least 1"]),
    (["--header-timeout", "-1"], ["--header-timeout", "more than 0"]),
    (["--body-timeout", "0"], ["--body-timeout", "more than 0"]),
    (["--keepalive-timeout", "inf"], ["--keepalive-timeout", "timeout"]),
    (["--drain-timeout", "nan"], ["--drain-timeout", "timeout"]),
    (["--drain-timeout", "-3"], ["--drain-timeout", "at least 0"]),
    (["--max-body-size", "12x"], ["--max-body-size", "not a size"]),
    (["--max-body-size", "-5"], ["--max-body-size", "too small"]),
    (["--max-header-size", "10"], ["--max-header-size", "at least 1024"]),
    (["--global-loan-budget", "0"], ["--global-loan-budget", "too small"]),
    (["--sendfile-step", "0"], ["--sendfile-step", "too small"]),
    (["--gather-max", "lots"], ["--gather-max", "not a size"]),
    (["--open-file-cache-inactive", "0"], ["--open-file-cache-inactive", "more than 0"]),
    (["--drain-delay", "-1"], ["--drain-delay", "at least 0"]),
])
@pytest.mark.slow
def test_numeric_options_are_range_checked(args, words):
    out = _serve(*args)
    assert out.returncode == 2
    for word in words:
        assert word in out.stderr, out.stderr
    assert "_size" not in out.stderr and "Traceback" not in out.stderr


def test_zero_drain_timeout_and_sizes_with_units_are_accepted():
    # parsing only: --help after the values still checks them, then exits 0
    out = _serve("--drain-timeout", "0", "--max-body-size", "1.5g", "--gather-max", "0",
                 "--max-header-size", "64KiB", "--help")
    assert out.returncode == 0, out.stderr


def test_address_in_use_names_the_address_and_the_fix():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        out = _serve("--port", str(port))
    assert out.returncode == 2
    assert f"cannot listen on 127.0.0.1:{port}: address already in use" in out.stderr
    assert "use --port" in out.stderr
    assert "Errno" not in out.stderr


def test_unknown_host_names_the_host():
    out = _serve("--host", "no-such-host.invalid", "--port", "0")
    assert out.returncode == 2
    assert "cannot listen on no-such-host.invalid:0: cannot resolve" in out.stderr
    assert "use --host" in out.stderr


@pytest.fixture(scope="module")
def pems(tmp_path_factory) -> Path:
    if not os.path.exists(OPENSSL):
        pytest.skip("openssl not installed")
    d = tmp_path_factory.mktemp("pems")
    for name in ("a", "b"):
        subprocess.run([OPENSSL, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout",
                        str(d / f"{name}.key"), "-out", str(d / f"{name}.crt"), "-days", "1",
                        "-subj", "/CN=localhost"], check=True, capture_output=True, timeout=60)
    (d / "junk.pem").write_text("not a certificate\n")
    (d / "cut.crt").write_text((d / "a.crt").read_text()[:300])
    return d


@pytest.mark.slow
def test_tls_errors_name_the_file(pems):
    cases = [
        (["--tls-cert", str(pems / "missing.crt"), "--tls-key", str(pems / "a.key")],
         f"cannot read --tls-cert {pems / 'missing.crt'}: no such file"),
        (["--tls-cert", str(pems / "a.crt"), "--tls-key", str(pems / "missing.key")],
         f"cannot read --tls-key {pems / 'missing.key'}: no such file"),
        (["--tls-cert", str(pems / "junk.pem"), "--tls-key", str(pems / "a.key")],
         f"--tls-cert {pems / 'junk.pem'} is not a PEM file"),
        (["--tls-cert", str(pems / "a.crt"), "--tls-key", str(pems / "a.crt")],
         f"--tls-key {pems / 'a.crt'} holds no PEM private key"),
        (["--tls-cert", str(pems / "a.crt"), "--tls-key", str(pems / "b.key")],
         f"cannot use --tls-cert {pems / 'a.crt'} with --tls-key {pems / 'b.key'}"),
        (["--tls-cert", str(pems / "cut.crt"), "--tls-key", str(pems / "a.key")],
         f"cannot use --tls-cert {pems / 'cut.crt'}"),
    ]
    for args, message in cases:
        out = _serve(*args, "--port", "0")
        assert out.returncode != 0
        assert message in out.stderr, out.stderr
        assert "_ssl.c" not in out.stderr and "Traceback" not in out.stderr
