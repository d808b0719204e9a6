"""ASGI over TLS: `scheme` is https, and pathsend goes through the counted copy path."""

from __future__ import annotations

import asyncio
import hashlib
import os
import ssl
import subprocess
from pathlib import Path
from typing import Any

import pytest
from harness import tool_marks
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse
from starlette.routing import Route

from server.asgi.adapter import AsgiAdapter

pytestmark = tool_marks("openssl")


@pytest.fixture(scope="module")
def cert_pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    d = tmp_path_factory.mktemp("tls")
    cert, key = d / "cert.pem", d / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                    "-subj", "/CN=localhost", "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    return cert, key


async def test_file_response_over_tls_is_copied_and_counted(serve: Any, tmp_path: Path,
                                                            cert_pair: tuple[Path, Path]) -> None:
    cert, key = cert_pair
    big = os.urandom(3 << 20)
    (tmp_path / "big.bin").write_bytes(big)

    async def scheme(request: Request) -> JSONResponse:
        return JSONResponse({"scheme": request.url.scheme})

    async def file(request: Request) -> FileResponse:
        return FileResponse(tmp_path / "big.bin")

    app = Starlette(routes=[Route("/scheme", scheme), Route("/big.bin", file)])
    adapter = AsgiAdapter(app, scheme="https", lifespan="off")
    srv = await serve(app=adapter, tls_cert=cert, tls_key=key)
    metrics = srv.server.ctx.metrics
    copied_before = metrics.bytes_copy
    client = ssl.create_default_context(cafile=str(cert))
    reader, writer = await asyncio.open_connection(srv.host, srv.port, ssl=client,
                                                   server_hostname="localhost", limit=1 << 20)
    writer.write(b"GET /scheme HTTP/1.1\r\nHost: x\r\n\r\nGET /big.bin HTTP/1.1\r\nHost: x\r\n\r\n")
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    assert b"200 OK" in head
    assert await reader.readexactly(18) == b'{"scheme":"https"}'
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    assert f"content-length: {len(big)}".encode() in head
    body = await asyncio.wait_for(reader.readexactly(len(big)), 20)
    assert hashlib.sha256(body).digest() == hashlib.sha256(big).digest()
    assert metrics.bytes_copy - copied_before >= len(big)
    writer.close()
