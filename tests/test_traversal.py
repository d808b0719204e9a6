"""Path traversal in every spelling we know: always 400 or 404, never a file outside the root.

The served root sits next to a secret file, next to a directory whose name shares
the root's prefix (the `commonprefix` hole of Starlette CVE-2023-29159), and has a
symlink pointing out.  Each request goes out byte for byte on a raw socket — no
client library normalises the path first — and each answer must be 400 or 404,
carry none of the secrets, and leave the server answering normally.
"""

from __future__ import annotations

import os
import socket

import pytest
from harness import fetch_raw as fetch
from harness import serve_site

SECRET = b"TOPSECRET-next-to-root"
PREFIX_SECRET = b"TOPSECRET-in-site1"


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    base = tmp_path_factory.mktemp("traversal")
    root = base / "site"
    (root / "dir" / "sub").mkdir(parents=True)
    (root / "index.html").write_text("<p>home</p>")
    (root / "a.txt").write_text("inside")
    (root / "dir" / "b.txt").write_text("inside b")
    (base / "secret.txt").write_bytes(SECRET)
    (base / "site1").mkdir()
    (base / "site1" / "secret.txt").write_bytes(PREFIX_SECRET)
    os.symlink(base, root / "up")
    os.symlink(base / "secret.txt", root / "dir" / "alias.txt")
    with serve_site(root) as running:
        yield running


SPELLINGS = [
    b"/../secret.txt",
    b"/dir/../../secret.txt",
    b"/./../secret.txt",
    b"/../../../../../../../../etc/passwd",
    b"/..%2fsecret.txt",
    b"/..%2Fsecret.txt",
    b"/%2e%2e/secret.txt",
    b"/%2E%2E/secret.txt",
    b"/%2e%2e%2fsecret.txt",
    b"/.%2e/secret.txt",
    b"/%2e./secret.txt",
    b"/dir/%2e%2e/%2e%2e/secret.txt",
    b"/%252e%252e/secret.txt",
    b"/%252e%252e%252fsecret.txt",
    b"/..%252fsecret.txt",
    b"/%c0%ae%c0%ae/secret.txt",
    b"/%c0%ae%c0%ae%c0%afsecret.txt",
    b"/%e0%80%ae%e0%80%ae/secret.txt",
    b"/..%c0%afsecret.txt",
    b"/..%c1%9csecret.txt",
    b"/..\\secret.txt",
    b"/..%5csecret.txt",
    b"/..%5Csecret.txt",
    b"/%5c..%5csecret.txt",
    b"/%2e%2e%5csecret.txt",
    b"/a.txt%00.html",
    b"/..%00/secret.txt",
    b"/../secret.txt%00",
    b"//etc/passwd",
    b"/%2fetc/passwd",
    b"/%2f%2fetc%2fpasswd",
    b"/..;/secret.txt",
    b"/dir/..;/..;/secret.txt",
    b"/%ef%bc%8e%ef%bc%8e/secret.txt",
    b"/%ef%bc%8e%ef%bc%8e%ef%bc%8fsecret.txt",
    b"/..%ef%bc%8fsecret.txt",
    b"/%u002e%u002e/secret.txt",
    b"/....//secret.txt",
    b"/..../secret.txt",
    b"/../site1/secret.txt",
    b"/%2e%2e/site1/secret.txt",
    b"/up/secret.txt",
    b"/up/site1/secret.txt",
    b"/dir/alias.txt",
    b"/dir/sub/../../../secret.txt",
    b"http://127.0.0.1/../secret.txt",
    b"/%2e%2e%2f%2e%2e%2fetc%2fpasswd",
    b"/.%00./secret.txt",
    b"/%20../secret.txt",
]


def _raw_request(port: int, target: bytes) -> tuple[int | None, bytes]:
    """Send one request with the target exactly as given; the status and whole answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(b"GET " + target + b" HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        data = b""
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    status = int(data.split(b" ", 2)[1]) if data.startswith(b"HTTP/1.1 ") else None
    return status, data


@pytest.mark.parametrize("target", SPELLINGS, ids=[s.decode("latin-1") for s in SPELLINGS])
def test_traversal_refused(site, target):
    status, answer = _raw_request(site.port, target)
    assert status in (400, 404), answer[:200]
    assert SECRET not in answer and PREFIX_SECRET not in answer
    assert b"root:" not in answer
    # The server is still fine afterwards.
    assert fetch(site.port, "/a.txt").body == b"inside"


def test_at_least_thirty_spellings():
    assert len(set(SPELLINGS)) >= 30


@pytest.mark.parametrize("target, body", [
    (b"/dir/./b.txt", b"inside b"), (b"/dir//b.txt", b"inside b"), (b"/%64ir/b.txt", b"inside b"),
    (b"/a.txt?../../secret.txt", b"inside"), (b"/a.txt#../secret.txt", b"inside"),
])
def test_harmless_spellings_still_work(site, target, body):
    status, answer = _raw_request(site.port, target)
    assert status == 200 and answer.endswith(body)
