"""Test support for the static-site tests: a server in a thread, and an exact client.

The server runs in-process on its own uvloop (or asyncio) loop in a background
thread, so that tests can use blocking clients — raw sockets, http.client, curl,
selenium — without blocking the loop that serves them.  `RawClient` speaks
HTTP/1.1 over one keep-alive socket and reads exactly what each response's framing
promises (Content-Length; nothing for HEAD, 304 and 204), so a stray body byte
after a HEAD or a wrong length shows up as a garbled *next* response.
"""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from conftest import make_server

from server.core.filecache import OpenFileCache
from server.framework.application import Application
from server.http.config import ServerConfig
from server.static.site import StaticSite

__all__ = ["ThreadedServer", "serve_site", "RawClient", "Response", "fetch"]


def _new_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


class ThreadedServer:
    """A pageloan Server answering on 127.0.0.1 from a background thread."""

    def __init__(self, app: Any, **config: Any) -> None:
        self.config = ServerConfig(host="127.0.0.1", port=0, **config)
        self.app = app
        self.loop = _new_loop()
        self.server = make_server(self.config, app, self.loop)
        self._thread = threading.Thread(target=self.loop.run_forever, name="pageloan-test", daemon=True)
        self.port = 0

    def start(self) -> ThreadedServer:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self.server.start(), self.loop).result(10)
        self.port = self.server.port or 0
        return self

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self.server.close(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@contextmanager
def serve_site(root: Path, **site_options: Any) -> Iterator[ThreadedServer]:
    """Serve `root` with a StaticSite(**site_options) behind the Application."""
    gather_max = site_options.pop("gather_max", ServerConfig.gather_max)
    cache = site_options.pop("cache", None) or OpenFileCache(map_max=gather_max)
    site = StaticSite(root, cache=cache, **site_options)
    running = ThreadedServer(Application(site), gather_max=gather_max).start()
    running.site = site  # type: ignore[attr-defined]
    try:
        yield running
    finally:
        running.stop()


class Response:
    """A parsed response: status, header fields (in order) and the exact body."""

    def __init__(self, status: int, reason: str, headers: list[tuple[str, str]], body: bytes) -> None:
        self.status = status
        self.reason = reason
        self.header_list = headers
        self.body = body

    def header(self, name: str) -> str | None:
        values = [v for k, v in self.header_list if k.lower() == name.lower()]
        return ", ".join(values) if values else None

    @property
    def headers(self) -> dict[str, str]:
        out: dict[str, str] = {}
        for k, v in self.header_list:
            out[k.lower()] = out[k.lower()] + ", " + v if k.lower() in out else v
        return out

    def __repr__(self) -> str:
        return f"<Response {self.status} {len(self.body)} bytes>"


class RawClient:
    """One keep-alive HTTP/1.1 connection; requests are answered strictly in order."""

    def __init__(self, port: int, timeout: float = 10.0) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self._buffer = b""

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> RawClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def send(self, method: str, target: str | bytes, headers: list[tuple[str, str]] | dict | None = None) -> None:
        if isinstance(headers, dict):
            headers = list(headers.items())
        if isinstance(target, str):
            target = target.encode("latin-1")
        lines = [method.encode("ascii") + b" " + target + b" HTTP/1.1", b"Host: 127.0.0.1"]
        lines += [f"{k}: {v}".encode("latin-1") for k, v in headers or ()]
        self.sock.sendall(b"\r\n".join(lines) + b"\r\n\r\n")

    def _fill(self) -> None:
        chunk = self.sock.recv(1 << 20)
        if not chunk:
            raise ConnectionError("server closed the connection")
        self._buffer += chunk

    def _take(self, count: int) -> bytes:
        while len(self._buffer) < count:
            self._fill()
        data, self._buffer = self._buffer[:count], self._buffer[count:]
        return data

    def read_response(self, method: str = "GET") -> Response:
        while b"\r\n\r\n" not in self._buffer:
            self._fill()
        head, self._buffer = self._buffer.split(b"\r\n\r\n", 1)
        lines = head.decode("latin-1").split("\r\n")
        _version, status, reason = (lines[0].split(" ", 2) + [""])[:3]
        headers = []
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers.append((name.strip(), value.strip()))
        code = int(status)
        body = b""
        if method != "HEAD" and code not in (204, 304) and not 100 <= code < 200:
            length = [v for k, v in headers if k.lower() == "content-length"]
            if length:
                body = self._take(int(length[0]))
            else:
                while True:                         # close-delimited
                    try:
                        self._fill()
                    except ConnectionError:
                        break
                body, self._buffer = self._buffer, b""
        return Response(code, reason, headers, body)

    def request(self, method: str, target: str | bytes,
                headers: list[tuple[str, str]] | dict | None = None) -> Response:
        self.send(method, target, headers)
        return self.read_response(method)

    def pending(self, wait: float = 0.2) -> bytes:
        """Bytes the server sent beyond what the responses so far framed."""
        self.sock.settimeout(wait)
        try:
            self._fill()
        except (TimeoutError, ConnectionError):
            pass
        finally:
            self.sock.settimeout(10.0)
        return self._buffer


def fetch(port: int, target: str | bytes, headers: list[tuple[str, str]] | dict | None = None,
          method: str = "GET") -> Response:
    """One request on a fresh connection."""
    with RawClient(port) as client:
        return client.request(method, target, headers)
