"""A test client for handler modules: a real pageloan server on 127.0.0.1, in-process.

Theory of operation.  `TestClient(handlers="handlers")` builds the application
exactly as `pageloan serve --handlers handlers` does (the same loader, the same
static site, the same hooks), starts a `Server` on 127.0.0.1 on a free port, on an
event loop of its own in a background thread, and runs the start-up hooks.  The
test then talks to it over a real socket with `http.client` — so what the test sees
is what a client sees: real framing, real headers, the real error pages — while the
test itself stays plain synchronous pytest (or async: the server does not run on the
test's loop, so a blocking call from an async test does not deadlock).  Closing the
client (or leaving its `with` block) runs the shut-down hooks and stops the thread.

The client keeps one keep-alive connection (reopened if the server closes it) and a
cookie jar (`http.cookiejar`, so Path, Expires and Max-Age=0 work as in a browser).
`get`, `post`, `put`, `patch`, `delete`, `head`, `options` take `params`, `headers`,
`cookies`, and one body: `content` (bytes or str), `json`, `data` (a dict:
urlencoded, or multipart when `files` is given) and `files` ({"field": (filename,
bytes, content_type)}, {"field": bytes} or {"field": open(path, "rb")}).  They return a `TestResponse` with
`status`, `headers`, `body`, `text` and `json()`.  A response is read whole: give
streaming endpoints an end (`?limit=`).
"""

from __future__ import annotations

import asyncio
import http.client
import http.cookiejar
import json as _json
import os
import secrets
import threading
import urllib.request
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from .framework.build import AppOptions, build_application
from .http.config import ServerConfig
from .http.server import Server
from .static.options import StaticOptions

__all__ = ["TestClient", "TestResponse"]

FileSpec = Any   # bytes, str, an open binary file, or (filename, content[, content_type])


class TestResponse:
    """A response as the client received it."""

    __test__ = False     # not a pytest test class, whatever its name

    def __init__(self, status: int, reason: str, headers: http.client.HTTPMessage, body: bytes) -> None:
        self.status = status
        self.status_code = status
        self.reason = reason
        self.headers = headers          # case-insensitive: headers["content-type"]
        self.body = body
        self.content = body

    @property
    def text(self) -> str:
        return self.body.decode(self.headers.get_content_charset() or "utf-8", errors="replace")

    def json(self) -> Any:
        return _json.loads(self.body)

    def header(self, name: str) -> str | None:
        return self.headers.get(name)

    def __repr__(self) -> str:
        return f"<TestResponse {self.status} {self.body[:60]!r}>"


class _CookieResponse:
    """What http.cookiejar wants of a response: its headers, from `info()`."""

    def __init__(self, headers: http.client.HTTPMessage) -> None:
        self._headers = headers

    def info(self) -> http.client.HTTPMessage:
        return self._headers


class TestClient:
    """A pageloan server for `handlers` (and a static `root`), and a client for it."""

    __test__ = False

    def __init__(self, handlers: os.PathLike | str | None = None, *, root: os.PathLike | str | None = None,
                 app: Callable[[Any], Any] | None = None, metrics: bool = False, debug: bool = True,
                 timeout: float = 30.0, **server_options: Any) -> None:
        if app is None:
            options = AppOptions(root=Path(root) if root is not None else None,
                                 static=StaticOptions(),
                                 handlers=Path(handlers) if handlers is not None else None,
                                 metrics=metrics, debug=debug)
            app = build_application(options)      # HandlerLoadError if a module is broken
        self.app = app
        self.timeout = timeout
        self.cookies = http.cookiejar.CookieJar()
        self.host = "127.0.0.1"
        self.port = 0
        self.url = ""
        self._config = ServerConfig(host="127.0.0.1", port=0, debug=debug, **server_options)
        self._loop = _new_loop()
        self._server: Server | None = None
        self._conn: http.client.HTTPConnection | None = None
        self._thread = threading.Thread(target=self._loop.run_forever, name="pageloan-testclient",
                                        daemon=True)
        self._thread.start()
        try:
            self._call(self._start())
        except BaseException:
            self._stop_loop()
            raise
        server = self._server
        assert server is not None
        self.port = server.port
        self.url = f"http://{self.host}:{self.port}"

    # -- the server's thread -------------------------------------------------------------
    def _call(self, coro: Any) -> Any:
        future: Future = asyncio.run_coroutine_threadsafe(coro, self._loop)
        return future.result(self.timeout)

    async def _start(self) -> None:
        loop = asyncio.get_running_loop()
        server = Server(self._config, self.app, loop)
        await server.start()
        self._server = server
        startup = getattr(self.app, "startup", None)
        if startup is not None:
            await startup()

    async def _stop(self) -> None:
        try:
            shutdown = getattr(self.app, "shutdown", None)
            if shutdown is not None:
                await shutdown()
        finally:
            if self._server is not None:
                await self._server.close()

    def _stop_loop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(self.timeout)
        if not self._thread.is_alive():
            self._loop.close()

    def close(self) -> None:
        """Close the connection, run the shut-down hooks, stop the server."""
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        if self._server is not None:
            try:
                self._call(self._stop())
            finally:
                self._server = None
                self._stop_loop()

    def __enter__(self) -> TestClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- requests ------------------------------------------------------------------------
    def request(self, method: str, path: str, *, params: Mapping[str, Any] | None = None,
                headers: Mapping[str, str] | None = None, cookies: Mapping[str, str] | None = None,
                content: bytes | str | None = None, json: Any = None,
                data: Mapping[str, Any] | None = None,
                files: Mapping[str, FileSpec] | None = None) -> TestResponse:
        """Send one request and read its whole response."""
        if self._server is None:
            raise RuntimeError("the TestClient is closed")
        if params:
            path += ("&" if "?" in path else "?") + urlencode(params, doseq=True)
        fields: dict[str, str] = {"Host": f"{self.host}:{self.port}"}
        body: bytes | None = None
        if json is not None:
            body = _json.dumps(json).encode("utf-8")
            fields["Content-Type"] = "application/json"
        elif files is not None:
            body, fields["Content-Type"] = _multipart(data or {}, files)
        elif data is not None:
            body = urlencode(data, doseq=True).encode("ascii")
            fields["Content-Type"] = "application/x-www-form-urlencoded"
        elif content is not None:
            body = content.encode("utf-8") if isinstance(content, str) else bytes(content)
        fields.update(headers or {})
        url = self.url + path
        jar_request = urllib.request.Request(url, method=method)
        self.cookies.add_cookie_header(jar_request)
        cookie = jar_request.get_header("Cookie") or jar_request.unredirected_hdrs.get("Cookie")
        extra = "; ".join(f"{k}={v}" for k, v in (cookies or {}).items())
        if cookie or extra:
            fields["Cookie"] = "; ".join(c for c in (cookie, extra) if c)
        response = self._exchange(method, path, body, fields)
        self.cookies.extract_cookies(_CookieResponse(response.headers), jar_request)  # type: ignore[arg-type]
        return response

    def _exchange(self, method: str, path: str, body: bytes | None,
                  fields: dict[str, str]) -> TestResponse:
        for attempt in (1, 2):
            conn = self._conn
            fresh = conn is None
            if conn is None:
                conn = self._conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
            try:
                conn.request(method, path, body=body, headers=fields)
                answer = conn.getresponse()
                data = answer.read()
            except (ConnectionError, http.client.RemoteDisconnected, http.client.BadStatusLine):
                # The server closed the kept-alive connection between two requests:
                # once, on a fresh connection.
                conn.close()
                self._conn = None
                if fresh or attempt == 2:
                    raise
                continue
            if answer.will_close:
                conn.close()
                self._conn = None
            return TestResponse(answer.status, answer.reason, answer.headers, data)
        raise AssertionError("unreachable")

    def get(self, path: str, **kwargs: Any) -> TestResponse:
        return self.request("GET", path, **kwargs)

    def head(self, path: str, **kwargs: Any) -> TestResponse:
        return self.request("HEAD", path, **kwargs)

    def options(self, path: str, **kwargs: Any) -> TestResponse:
        return self.request("OPTIONS", path, **kwargs)

    def post(self, path: str, **kwargs: Any) -> TestResponse:
        return self.request("POST", path, **kwargs)

    def put(self, path: str, **kwargs: Any) -> TestResponse:
        return self.request("PUT", path, **kwargs)

    def patch(self, path: str, **kwargs: Any) -> TestResponse:
        return self.request("PATCH", path, **kwargs)

    def delete(self, path: str, **kwargs: Any) -> TestResponse:
        return self.request("DELETE", path, **kwargs)


def _new_loop() -> asyncio.AbstractEventLoop:
    """The loop `pageloan serve` runs on (uvloop), or asyncio's where it is missing."""
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


def _multipart(data: Mapping[str, Any], files: Mapping[str, FileSpec]) -> tuple[bytes, str]:
    """A multipart/form-data body for `data` fields and `files`."""
    boundary = "pageloan-" + secrets.token_hex(12)
    out: list[bytes] = []

    def part(disposition: str, content: bytes, content_type: str | None) -> None:
        head = f"--{boundary}\r\nContent-Disposition: form-data; {disposition}\r\n"
        if content_type:
            head += f"Content-Type: {content_type}\r\n"
        out.append(head.encode("utf-8") + b"\r\n" + content + b"\r\n")

    for name, value in data.items():
        for item in value if isinstance(value, list | tuple) else [value]:
            part(f'name="{_quote(name)}"', str(item).encode("utf-8"), None)
    for name, spec in files.items():
        content: Any
        if isinstance(spec, tuple):
            filename, content = spec[0], spec[1]
            content_type = spec[2] if len(spec) > 2 else "application/octet-stream"
        elif hasattr(spec, "read"):
            filename = os.path.basename(getattr(spec, "name", name) or name)
            content, content_type = spec, "application/octet-stream"
        else:
            filename, content, content_type = name, spec, "application/octet-stream"
        if hasattr(content, "read"):          # an open file, as requests and httpx take
            content = content.read()
        raw = content.encode("utf-8") if isinstance(content, str) else bytes(content)
        part(f'name="{_quote(name)}"; filename="{_quote(filename)}"', raw, content_type)
    out.append(f"--{boundary}--\r\n".encode())
    return b"".join(out), f"multipart/form-data; boundary={boundary}"


def _quote(text: str) -> str:
    # As browsers do (WHATWG multipart/form-data encoding): escape ", CR and LF.
    return text.replace('"', "%22").replace("\r", "%0D").replace("\n", "%0A")
