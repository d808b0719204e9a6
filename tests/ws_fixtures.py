"""Test support for WebSockets: a server built from handler modules, and a raw client.

`ws_site` builds the application from handler modules exactly as `pageloan serve
--handlers DIR` does and serves it in the test's loop (so the server's context —
connections, ledger — can be inspected); the WebSocket options are set on the app as
the CLI sets them.  Most tests talk to it with the `websockets` client library; the
few that must misbehave on purpose (never read, never answer a ping, vanish with a
RST, send frames the library refuses to build) use `RawSocket`, a blocking socket
in a worker thread with a masked-frame encoder and a frame reader.
"""

from __future__ import annotations

import asyncio
import base64
import os
import socket
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from handler_fixtures import write_modules

from server.framework.build import AppOptions, build_application
from server.websocket.options import WebSocketOptions

__all__ = ["WsSite", "RawSocket", "ws_site", "masked_frame"]


class WsSite:
    def __init__(self, running: Any, app: Any) -> None:
        self.running = running
        self.app = app
        self.port = running.port
        self.ctx = running.server.ctx

    def url(self, path: str) -> str:
        return f"ws://127.0.0.1:{self.port}{path}"


@pytest.fixture
async def ws_site(serve: Any, tmp_path: Path) -> Any:
    """`await ws_site({"mod.py": source}, **websocket_options)` → WsSite."""
    apps: list[Any] = []
    count = 0

    async def start(modules: dict[str, str], *, config: dict[str, Any] | None = None,
                    **ws_options: Any) -> WsSite:
        nonlocal count
        count += 1
        directory = write_modules(tmp_path / f"wshandlers{count}", modules)
        app = build_application(AppOptions(handlers=directory))
        app.websocket_options = WebSocketOptions(**ws_options)
        running = await serve(app=app, **(config or {}))
        await app.startup()
        apps.append(app)
        return WsSite(running, app)

    yield start
    for app in apps:
        await app.shutdown()


def masked_frame(opcode: int, payload: bytes, *, fin: bool = True, mask: bool = True,
                 declared: int | None = None) -> bytes:
    """A client frame; `declared` lies about the length (for limit tests)."""
    length = len(payload) if declared is None else declared
    first = (0x80 if fin else 0) | opcode
    bit = 0x80 if mask else 0
    if length < 126:
        head = struct.pack("!BB", first, bit | length)
    elif length < 65536:
        head = struct.pack("!BBH", first, bit | 126, length)
    else:
        head = struct.pack("!BBQ", first, bit | 127, length)
    if not mask:
        return head + payload
    key = os.urandom(4)
    body = bytes(b ^ key[i % 4] for i, b in enumerate(payload))
    return head + key + body


class RawSocket:
    """A hand-driven WebSocket client on a blocking socket (use via `await raw.call(...)`)."""

    def __init__(self, port: int, path: str = "/", *, rcvbuf: int | None = None,
                 extra: bytes = b"", headers: dict[str, str] | None = None) -> None:
        self.port = port
        self.path = path
        self.rcvbuf = rcvbuf
        self.extra = extra
        self.headers = headers
        self.sock: socket.socket | None = None
        self.buffer = bytearray()

    def request(self) -> bytes:
        key = base64.b64encode(os.urandom(16)).decode()
        fields = {"Host": f"127.0.0.1:{self.port}", "Upgrade": "websocket", "Connection": "Upgrade",
                  "Sec-WebSocket-Key": key, "Sec-WebSocket-Version": "13"}
        fields.update(self.headers or {})
        lines = "".join(f"{k}: {v}\r\n" for k, v in fields.items() if v is not None)
        return f"GET {self.path} HTTP/1.1\r\n{lines}\r\n".encode()

    def open(self) -> bytes:
        """Connect, send the handshake (plus `extra` in the same write); return the head."""
        sock = socket.socket()
        if self.rcvbuf:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self.rcvbuf)
        sock.settimeout(10)
        sock.connect(("127.0.0.1", self.port))
        self.sock = sock
        sock.sendall(self.request() + self.extra)
        while b"\r\n\r\n" not in self.buffer:
            chunk = sock.recv(65536)
            if not chunk:
                break
            self.buffer += chunk
        head, _, rest = bytes(self.buffer).partition(b"\r\n\r\n")
        self.buffer = bytearray(rest)
        return head

    def send(self, data: bytes) -> None:
        assert self.sock is not None
        self.sock.sendall(data)

    def _need(self, n: int) -> bool:
        assert self.sock is not None
        while len(self.buffer) < n:
            chunk = self.sock.recv(65536)
            if not chunk:
                return False
            self.buffer += chunk
        return True

    def read_frame(self) -> tuple[int, bytes] | None:
        """(opcode, payload) of the next server frame, or None at EOF."""
        if not self._need(2):
            return None
        first, second = self.buffer[0], self.buffer[1]
        assert not second & 0x80, "server frames must not be masked"
        length, offset = second & 0x7F, 2
        if length == 126:
            self._need(4)
            length, offset = struct.unpack("!H", self.buffer[2:4])[0], 4
        elif length == 127:
            self._need(10)
            length, offset = struct.unpack("!Q", self.buffer[2:10])[0], 10
        if not self._need(offset + length):
            return None
        payload = bytes(self.buffer[offset:offset + length])
        del self.buffer[:offset + length]
        return first & 0x0F, payload

    def read_until_eof(self) -> bytes:
        assert self.sock is not None
        data = bytes(self.buffer)
        while True:
            try:
                chunk = self.sock.recv(65536)
            except OSError:
                break
            if not chunk:
                break
            data += chunk
        self.buffer = bytearray()
        return data

    def reset(self) -> None:
        """Vanish: close with RST (SO_LINGER 0), as a crashed client or a cut cable does."""
        if self.sock is not None:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.sock.close()
            self.sock = None

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None

    async def call(self, method: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.to_thread(method, *args)
