"""Test support for the handler framework: handler modules on disk, a server, a client.

`handler_site` writes handler modules into a temporary directory, builds the
application exactly as `pageloan serve --handlers DIR` does (framework.py), starts
it on 127.0.0.1 in the test's own loop (conftest's `serve`), and runs its start-up
hooks.  The client calls (`fetch`) use blocking http.client in a worker thread,
because the server answers from the same loop the test awaits on; http.client
also gives a strict, independent reading of the framing (Content-Length, chunked).
"""

from __future__ import annotations

import asyncio
import http.client
import json
import textwrap
from pathlib import Path
from typing import Any

import pytest

from server.framework.build import AppOptions, build_application

__all__ = ["Reply", "fetch", "fetch_on", "handler_site", "Site", "write_modules", "raw_request"]


class Reply:
    """A parsed response: status, headers (case-insensitive), body."""

    def __init__(self, status: int, headers: http.client.HTTPMessage, body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body

    def header(self, name: str) -> str | None:
        return self.headers.get(name)

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def text(self) -> str:
        return self.body.decode("utf-8")

    def __repr__(self) -> str:
        return f"<Reply {self.status} {self.body[:80]!r}>"


def fetch_on(conn: http.client.HTTPConnection, method: str, path: str, body: bytes | None = None,
             headers: dict[str, str] | None = None) -> Reply:
    """One request on an existing (keep-alive) connection; blocking."""
    conn.request(method, path, body=body, headers=headers or {})
    response = conn.getresponse()
    data = response.read()
    return Reply(response.status, response.headers, data)


async def fetch(port: int, method: str, path: str, body: bytes | None = None,
                headers: dict[str, str] | None = None, timeout: float = 10.0) -> Reply:
    """One request on a new connection, from a worker thread."""
    def run() -> Reply:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
        try:
            return fetch_on(conn, method, path, body, headers)
        finally:
            conn.close()
    return await asyncio.to_thread(run)


async def raw_request(port: int, data: bytes, *, timeout: float = 10.0) -> bytes:
    """Send raw bytes and read until the server closes the connection."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        await writer.drain()
        return await asyncio.wait_for(reader.read(), timeout)
    finally:
        writer.close()


def write_modules(directory: Path, modules: dict[str, str]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for name, text in modules.items():
        (directory / name).write_text(textwrap.dedent(text))
    return directory


class Site:
    """A running application built from handler modules."""

    def __init__(self, port: int, app: Any, directory: Path) -> None:
        self.port = port
        self.app = app
        self.directory = directory

    async def fetch(self, method: str, path: str, body: bytes | None = None,
                    headers: dict[str, str] | None = None) -> Reply:
        return await fetch(self.port, method, path, body, headers)

    async def get(self, path: str, headers: dict[str, str] | None = None) -> Reply:
        return await fetch(self.port, "GET", path, None, headers)


@pytest.fixture
async def handler_site(serve: Any, tmp_path: Path) -> Any:
    """`await handler_site({"name.py": source, ...}, root=..., debug=..., ...)` → Site."""
    apps: list[Any] = []
    count = 0

    async def start(modules: dict[str, str] | None = None, *, root: Path | None = None,
                    directory: Path | None = None, **options: Any) -> Site:
        nonlocal count
        count += 1
        directory = write_modules(directory or tmp_path / f"handlers{count}", modules or {})
        app_options = {k: options.pop(k) for k in ("metrics", "reload") if k in options}
        config = AppOptions(root=root, handlers=directory, debug=options.get("debug", False),
                            **app_options)
        app = build_application(config)
        running = await serve(app=app, root=root, **options)
        await app.startup()
        apps.append(app)
        return Site(running.port, app, directory)

    yield start
    for app in apps:
        await app.shutdown()
