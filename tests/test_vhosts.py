"""Virtual hosts from a config file: one listener, each site answers its own Host (and SNI name).

`pageloan serve --config` as a subprocess, driven by curl with `--resolve` (a real
Host and SNI name), and by Python's ssl client for the certificate each name gets.
"""

from __future__ import annotations

import shutil
import socket
import ssl
import subprocess
import textwrap
from pathlib import Path

import pytest

CURL = shutil.which("curl")
OPENSSL = shutil.which("openssl")
pytestmark = pytest.mark.skipif(CURL is None, reason="curl is not installed")


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    for name in ("main", "blog", "docs"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "index.html").write_text(f"{name} home\n")
    (tmp_path / "blog" / "post.txt").write_text("a post\n")
    return tmp_path


def config(tree: Path, text: str) -> Path:
    path = tree / "sites.toml"
    path.write_text(textwrap.dedent(text).lstrip())
    return path


def curl(port: int, host: str, path: str = "/", *args: str, scheme: str = "http") -> tuple[int, bytes, str]:
    done = subprocess.run([CURL, "-s", "-k", "-D", "-", "-o", "/dev/stdout", "--resolve", f"{host}:{port}:127.0.0.1",
                           *args, f"{scheme}://{host}:{port}{path}"], capture_output=True, timeout=20, check=True)
    head, _, body = done.stdout.partition(b"\r\n\r\n")
    return int(head.split()[1]), body, head.decode("latin-1")


SITES = """
    [[site]]
    hosts = ["example.test", "www.example.test"]
    root = "main"

    [[site]]
    hosts = ["blog.example.test"]
    root = "blog"
    autoindex = true
    redirects = [ { from = "/feed", to = "/post.txt", status = 302 } ]

    [[site]]
    hosts = ["docs.example.test"]
    root = "docs"
    default = true
    spa-fallback = "index.html"
"""


def test_each_host_gets_its_own_site(server_process, tree):
    running = server_process(["--config", str(config(tree, SITES))])
    port = running.port
    assert curl(port, "example.test")[:2] == (200, b"main home\n")
    assert curl(port, "www.example.test")[:2] == (200, b"main home\n")
    assert curl(port, "blog.example.test", "/post.txt")[:2] == (200, b"a post\n")
    # Case and port do not matter.
    assert curl(port, "blog.example.test", "/", "-H", "Host: BLOG.Example.Test:1234")[:2] == (200, b"blog home\n")
    # Each site's own rules.
    status, _body, head = curl(port, "blog.example.test", "/feed")
    assert status == 302 and "Location: /post.txt" in head
    assert curl(port, "example.test", "/feed")[0] == 404
    assert curl(port, "docs.example.test", "/deep/link")[:2] == (200, b"docs home\n")     # SPA fallback
    assert curl(port, "example.test", "/deep/link")[0] == 404
    # An unknown Host gets the default site (the one marked default).
    assert curl(port, "unknown.test")[:2] == (200, b"docs home\n")
    assert curl(port, "127.0.0.1")[:2] == (200, b"docs home\n")


def test_without_a_default_the_first_site_is_it(server_process, tree):
    running = server_process(["--config", str(config(tree, SITES.replace("default = true", "")))])
    assert curl(running.port, "nobody.test")[:2] == (200, b"main home\n")


@pytest.mark.skipif(OPENSSL is None, reason="openssl CLI not installed")
def test_sni_picks_each_sites_certificate(server_process, tree):
    for name in ("example.test", "blog.example.test"):
        subprocess.run([OPENSSL, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", f"/CN={name}",
                        "-keyout", str(tree / f"{name}.key"), "-out", str(tree / f"{name}.pem")],
                       check=True, capture_output=True)
    text = f"""
        [[site]]
        hosts = ["example.test"]
        root = "main"
        tls-cert = "example.test.pem"
        tls-key = "example.test.key"

        [[site]]
        hosts = ["blog.example.test"]
        root = "blog"
        tls-cert = "{tree / 'blog.example.test.pem'}"
        tls-key = "{tree / 'blog.example.test.key'}"
    """
    running = server_process(["--config", str(config(tree, text))])
    for name in ("example.test", "blog.example.test"):
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        with socket.create_connection(("127.0.0.1", running.port), timeout=10) as raw, \
                context.wrap_socket(raw, server_hostname=name) as tls:
            got = tls.getpeercert(binary_form=True)
        expected = ssl.PEM_cert_to_DER_cert((tree / f"{name}.pem").read_text())
        assert got == expected, name
    status, body, _ = curl(running.port, "blog.example.test", "/post.txt", scheme="https")
    assert (status, body) == (200, b"a post\n")
