"""TLS: the copy path (docs/design.md rule 5) serves the same bytes, and counts them."""

from __future__ import annotations

import asyncio
import hashlib
import os
import shutil
import ssl
import subprocess

import pytest
from harness import tool_marks

pytestmark = tool_marks("openssl")


@pytest.fixture(scope="module")
def cert_pair(tmp_path_factory):
    d = tmp_path_factory.mktemp("tls")
    cert, key = d / "cert.pem", d / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                    "-subj", "/CN=localhost", "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    return cert, key


async def test_tls_serves_files_through_the_counted_copy_path(serve, tmp_path, cert_pair):
    cert, key = cert_pair
    small = b"<h1>secure</h1>"
    big = os.urandom(3 << 20)
    (tmp_path / "index.html").write_bytes(small)
    (tmp_path / "big.bin").write_bytes(big)
    srv = await serve(root=tmp_path, tls_cert=cert, tls_key=key)
    metrics = srv.server.ctx.metrics
    copied_before = metrics.bytes_copy
    client = ssl.create_default_context(cafile=str(cert))
    reader, writer = await asyncio.open_connection(srv.host, srv.port, ssl=client,
                                                   server_hostname="localhost", limit=1 << 20)
    writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\nGET /big.bin HTTP/1.1\r\nHost: x\r\n\r\n")
    head = await reader.readuntil(b"\r\n\r\n")
    assert b"200 OK" in head and b"Content-Length: 15" in head
    assert await reader.readexactly(len(small)) == small
    head = await reader.readuntil(b"\r\n\r\n")
    assert f"Content-Length: {len(big)}".encode() in head
    body = await asyncio.wait_for(reader.readexactly(len(big)), 20)
    assert hashlib.sha256(body).digest() == hashlib.sha256(big).digest()
    assert metrics.bytes_copy - copied_before >= len(big) + len(small)
    writer.close()


async def test_repeat_requests_over_tls_take_the_lane_through_the_copy_path(serve, tmp_path, cert_pair):
    """The static lane's answers (static/lane.py) go through the TLS transmitter too."""
    cert, key = cert_pair
    page = os.urandom(5000)
    (tmp_path / "page.bin").write_bytes(page)
    srv = await serve(root=tmp_path, tls_cert=cert, tls_key=key)
    metrics = srv.server.ctx.metrics
    client = ssl.create_default_context(cafile=str(cert))
    reader, writer = await asyncio.open_connection(srv.host, srv.port, ssl=client,
                                                   server_hostname="localhost")
    copied_before = metrics.bytes_copy
    for n in range(5):
        writer.write(b"GET /page.bin?v=%d HTTP/1.1\r\nHost: x\r\nCookie: n=%d\r\n\r\n" % (n, n))
        head = await reader.readuntil(b"\r\n\r\n")
        assert b"200 OK" in head and b"Content-Length: 5000" in head
        assert await reader.readexactly(len(page)) == page
    assert srv.app.static.lane.hits == 4
    assert metrics.bytes_copy - copied_before >= 5 * len(page)
    writer.close()


def test_curl_over_tls(server_process, tmp_path, cert_pair):
    if shutil.which("curl") is None:
        pytest.skip("curl not installed")
    cert, key = cert_pair
    (tmp_path / "index.html").write_text("hello over tls\n")
    srv = server_process([str(tmp_path), "--tls-cert", str(cert), "--tls-key", str(key)])
    out = subprocess.run(["curl", "-sS", "--cacert", str(cert), f"https://127.0.0.1:{srv.port}/"],
                         capture_output=True, timeout=20)
    assert out.returncode == 0, out.stderr
    assert out.stdout == b"hello over tls\n"


async def test_a_channel_reader_over_tls_is_pushed_through_the_copy_path(serve, cert_pair):
    """A TLS reader of a channel takes the connection over like a plain one; its
    spooled batches are read back from the spool file and copied (rule 5), and keep-
    alive resumes after the stream."""
    from server.core.fanout import Channel
    from server.framework.channels import channel_response
    from server.http.pushstream import PushedStream
    from server.http.responses import json_response

    cert, key = cert_pair
    channel = Channel("secure", heartbeat=None)

    def app(request):
        if request.path == "/next":
            return json_response({"after": "stream"})
        return channel_response(request, channel)

    srv = await serve(app=app, tls_cert=cert, tls_key=key)
    client = ssl.create_default_context(cafile=str(cert))
    reader, writer = await asyncio.open_connection(srv.host, srv.port, ssl=client,
                                                   server_hostname="localhost", limit=1 << 20)
    writer.write(b"GET /sub HTTP/1.1\r\nHost: x\r\n\r\n")
    await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    assert [type(c.session) for c in srv.server.ctx.connections] == [PushedStream]
    data = [os.urandom(100_000) for _ in range(5)]
    for chunk in data:
        await channel.publish(chunk)
    channel.close()
    got = b""
    while True:
        size = int((await asyncio.wait_for(reader.readuntil(b"\r\n"), 10))[:-2], 16)
        if not size:
            assert await reader.readexactly(2) == b"\r\n"
            break
        got += await asyncio.wait_for(reader.readexactly(size), 10)
        assert await reader.readexactly(2) == b"\r\n"
    assert got == b"".join(data)
    writer.write(b"GET /next HTTP/1.1\r\nHost: x\r\n\r\n")
    assert (await asyncio.wait_for(reader.readuntil(b'{"after":"stream"}'), 10)).startswith(b"HTTP/1.1 200")
    writer.close()
