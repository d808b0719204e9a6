"""The test harness: pageloan servers on 127.0.0.1, and one exact raw HTTP/1.1 client.

Servers, three ways, all built by `make_server` exactly as `pageloan serve` builds
them (answer memo included) and all answering with the same `RunningServer` face
(`server`, `app`, `host`, `port`, `url`):

* `start_in_loop(...)` — in the test's own event loop (the `serve` fixture), for async
  tests that look at server state directly or share asyncio objects with the app;
* `ThreadedServer` / `serve_site(root)` — on its own uvloop in a background thread,
  for blocking clients (raw sockets, http.client, curl, selenium);
* `ServerProcess` — `python -m server serve ...` as a subprocess (the `server_process`
  fixture), for signals, workers, strace and the command line itself.

Handler sites (`handler_site` fixture): modules written to a directory and built by
`build_application`, as `pageloan serve --handlers DIR` does.

Clients: `RawClient` (blocking) and `read_response` (asyncio) share one response
reader that trusts nothing but the framing a response declares — Content-Length,
chunked, nothing for HEAD / 1xx / 204 / 304, else until close — so a stray body byte
after a HEAD or a wrong length shows up as a garbled *next* response.  `fetch` /
`fetch_on` use the standard library's http.client instead, an independent reading of
the same framing.  All traffic goes to 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, TypeVar

import pytest
from polling import wait_until

from server.core.filecache import OpenFileCache
from server.framework.application import Application
from server.framework.build import AppOptions, build_application
from server.http.config import ServerConfig
from server.http.server import Server
from server.static.options import StaticOptions
from server.static.site import StaticSite

__all__ = [
    "REPO", "free_port", "wait_for_port", "make_server", "RunningServer", "start_in_loop",
    "ThreadedServer", "serve_site", "ServerProcess", "start_process",
    "write_modules", "Site", "start_handler_site",
    "Response", "RawClient", "read_response", "fetch_raw", "raw_exchange", "raw_request",
    "Reply", "fetch", "fetch_on", "needs_tools", "tool_marks",
]

REPO = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"


# -- external programs ---------------------------------------------------------------------------

# Debian packages that provide the programs tests drive (.ci/run installs the same).
TOOL_PACKAGES = {"chromedriver": "chromium-driver", "nginx": "nginx-light"}
_Test = TypeVar("_Test")


def _missing(names: tuple[str, ...]) -> list[str]:
    import shutil
    return [n for n in names if shutil.which(n) is None and not os.access(f"/usr/sbin/{n}", os.X_OK)]


def tool_marks(*names: str) -> list[pytest.MarkDecorator]:
    """`pytestmark = tool_marks("strace")`: marked `tools`, skipped when one is missing."""
    missing = _missing(names)
    packages = " ".join(TOOL_PACKAGES.get(n, n) for n in missing)
    return [pytest.mark.tools,
            pytest.mark.skipif(bool(missing), reason=f"{', '.join(missing)} not installed (apt-get install {packages})")]


def needs_tools(*names: str) -> Callable[[_Test], _Test]:
    """`@needs_tools("curl")`: the decorator form of `tool_marks`."""
    def apply(test: _Test) -> _Test:
        for mark in tool_marks(*names):
            test = mark(test)
        return test
    return apply


# -- ports ---------------------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection((HOST, port), timeout=0.5):
            return True
    except OSError:
        return False


def wait_for_port(port: int, timeout: float = 10.0, proc: subprocess.Popen | None = None) -> None:
    """Return once something accepts on `port`; fail early if `proc` exits first."""
    def up() -> bool:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server exited early with {proc.returncode}")
        return _accepts(port)
    wait_until(up, f"a server listening on port {port}", timeout=timeout, interval=0.05)


# -- servers -------------------------------------------------------------------------------------

def make_server(config: ServerConfig, app: Any, loop: asyncio.AbstractEventLoop) -> Server:
    """A Server for `app`, as `pageloan serve` makes it."""
    return Server(config, app, loop)


def _default_app(root: Path | None, map_max: int) -> Application:
    static = StaticSite(root, cache=OpenFileCache(map_max=map_max)) if root else None
    return Application(static)


class RunningServer:
    """A started in-process server: the Server, its app and its address."""

    def __init__(self, server: Server, app: Any) -> None:
        self.server = server
        self.app = app
        self.host = HOST
        self.site: StaticSite | None = None

    @property
    def port(self) -> int:
        return self.server.port or 0

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"


async def start_in_loop(app: Callable[..., Any] | None = None, root: Path | None = None,
                        **options: Any) -> RunningServer:
    """Start a server in the running loop: `app`, else a static site on `root`."""
    map_max = options.pop("map_max", StaticOptions.map_max)
    config = ServerConfig(host=HOST, port=0, **options)
    if app is None:
        app = _default_app(root, map_max)
    server = make_server(config, app, asyncio.get_running_loop())
    await server.start()
    return RunningServer(server, app)


def _new_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


class ThreadedServer(RunningServer):
    """A pageloan Server answering on 127.0.0.1 from its own loop in a background thread."""

    def __init__(self, app: Any, **config: Any) -> None:
        self.config = ServerConfig(host=HOST, port=0, **config)
        self.loop = _new_loop()
        super().__init__(make_server(self.config, app, self.loop), app)
        self._thread = threading.Thread(target=self.loop.run_forever, name="pageloan-test", daemon=True)

    def start(self) -> ThreadedServer:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self.server.start(), self.loop).result(10)
        return self

    def call(self, function: Callable[..., Any], *args: Any, timeout: float = 10.0) -> Any:
        """Run `function(*args)` in the server's loop (its state is not thread-safe) and
        return its result once it has run."""
        async def run() -> Any:
            return function(*args)
        return asyncio.run_coroutine_threadsafe(run(), self.loop).result(timeout)

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self.server.close(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()


@contextmanager
def serve_site(root: Path, **site_options: Any) -> Iterator[ThreadedServer]:
    """Serve `root` with a StaticSite(**site_options) behind the Application, in a thread."""
    gather_max = site_options.pop("gather_max", ServerConfig.gather_max)
    cache = site_options.pop("cache", None) or OpenFileCache(map_max=gather_max)
    site = StaticSite(root, cache=cache, **site_options)
    running = ThreadedServer(Application(site), gather_max=gather_max).start()
    running.site = site
    try:
        yield running
    finally:
        running.stop()


class ServerProcess:
    """`python -m server serve ...` in its own process group."""

    def __init__(self, proc: subprocess.Popen, port: int) -> None:
        self.proc = proc
        self.port = port
        self.url = f"http://{HOST}:{port}"

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> int:
        """Signal the whole process group: a wrapper (strace) and the server both stop."""
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        # strace exits on the signal without waiting for its tracee: reap the group too.
        def group_gone() -> bool:
            try:
                os.killpg(self.proc.pid, 0)
            except ProcessLookupError:
                return True
            return False
        try:
            wait_until(group_gone, "the server's process group to exit", timeout=timeout, interval=0.05)
        except AssertionError:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        return int(self.proc.returncode)


def start_process(args: list[str], prefix: list[str] | None = None, env: dict[str, str] | None = None,
                  stdout: int | IO[Any] | None = subprocess.DEVNULL,
                  stderr: int | IO[Any] | None = None) -> ServerProcess:
    """Start `[prefix...] python -m server serve ARGS --host 127.0.0.1 --port P` and wait
    until it listens."""
    full_env = dict(os.environ, PYTHONPATH=str(REPO), **(env or {}))
    for _attempt in range(3):
        # A port free a moment ago may be taken by another client's ephemeral port
        # before the server binds it (a busy machine): then pick another and retry.
        port = free_port()
        cmd = (prefix or []) + [sys.executable, "-m", "server", "serve", *args, "--host", HOST, "--port", str(port)]
        errors = tempfile.TemporaryFile() if stderr is None else None
        proc = subprocess.Popen(cmd, cwd=REPO, env=full_env, stdout=stdout, start_new_session=True,
                                stderr=stderr if errors is None else errors)
        running = ServerProcess(proc, port)
        try:
            wait_for_port(port, proc=proc)
            return running
        except RuntimeError:
            running.stop(signal.SIGKILL)
            if errors is None:
                raise
            errors.seek(0)
            said = errors.read()
            if b"already in use" not in said:
                raise RuntimeError(f"server exited early: {said[-2000:].decode(errors='replace')}") from None
        except BaseException:
            running.stop(signal.SIGKILL)
            raise
        finally:
            if errors is not None:
                errors.close()
    raise RuntimeError("no free port could be bound in three tries")


# -- handler sites -------------------------------------------------------------------------------

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


async def start_handler_site(directory: Path, modules: dict[str, str] | None = None, *,
                             root: Path | None = None, **options: Any) -> tuple[Site, RunningServer]:
    """Write `modules` into `directory`, build the app as `pageloan serve --handlers`
    does, start it in this loop and run its start-up hooks."""
    write_modules(directory, modules or {})
    app_options = {k: options.pop(k) for k in ("metrics", "reload") if k in options}
    config = AppOptions(root=root, handlers=directory, debug=options.get("debug", False), **app_options)
    app = build_application(config)
    running = await start_in_loop(app=app, root=root, **options)
    await app.startup()
    return Site(running.port, app, directory), running


# -- the raw client ------------------------------------------------------------------------------

class Response:
    """A parsed response: status, header fields (in order) and the exact body.

    Unpacks (and indexes) as `(status, headers, body)`, headers a dict of lower-cased
    names.
    """

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

    def __iter__(self) -> Iterator[Any]:
        return iter((self.status, self.headers, self.body))

    def __getitem__(self, index: int) -> Any:
        return (self.status, self.headers, self.body)[index]

    def __repr__(self) -> str:
        return f"<Response {self.status} {len(self.body)} bytes>"


def _parse_head(head: bytes) -> tuple[int, str, list[tuple[str, str]]]:
    lines = head.decode("latin-1").split("\r\n")
    version, status, reason = (lines[0].split(" ", 2) + [""])[:3]
    if not version.startswith("HTTP/1."):
        raise AssertionError(f"not an HTTP/1.x status line: {lines[0]!r}")
    headers = []
    for line in lines[1:]:
        if line:
            name, colon, value = line.partition(":")
            if not colon:
                raise AssertionError(f"header line without a colon: {line!r}")
            headers.append((name.strip(), value.strip()))
    return int(status), reason, headers


def _framing(method: str, status: int, headers: list[tuple[str, str]]) -> tuple[str, int]:
    """How the body is delimited: ("none"|"length"|"chunked"|"close", length)."""
    if method == "HEAD" or status in (204, 304) or 100 <= status < 200:
        return "none", 0
    fields = {k.lower(): v for k, v in headers}
    if "chunked" in fields.get("transfer-encoding", "").lower():
        return "chunked", 0
    if "content-length" in fields:
        return "length", int(fields["content-length"])
    return "close", 0


class RawClient:
    """One keep-alive HTTP/1.1 connection over a blocking socket; answers read in order."""

    def __init__(self, port: int, timeout: float = 10.0) -> None:
        self.timeout = timeout
        self.sock = socket.create_connection((HOST, port), timeout=timeout)
        self._buffer = b""

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> RawClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def send_raw(self, data: bytes) -> None:
        self.sock.sendall(data)

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

    def _line(self) -> bytes:
        while b"\r\n" not in self._buffer:
            self._fill()
        line, self._buffer = self._buffer.split(b"\r\n", 1)
        return line

    def read_response(self, method: str = "GET") -> Response:
        while b"\r\n\r\n" not in self._buffer:
            self._fill()
        head, self._buffer = self._buffer.split(b"\r\n\r\n", 1)
        status, reason, headers = _parse_head(head)
        kind, length = _framing(method, status, headers)
        body = b""
        if kind == "length":
            body = self._take(length)
        elif kind == "chunked":
            parts = []
            while True:
                size = int(self._line().split(b";")[0], 16)
                if size == 0:
                    while self._line():       # trailers, up to the empty line
                        pass
                    break
                parts.append(self._take(size))
                if self._take(2) != b"\r\n":
                    raise AssertionError("chunk not followed by CRLF")
            body = b"".join(parts)
        elif kind == "close":
            while True:
                try:
                    self._fill()
                except ConnectionError:
                    break
            body, self._buffer = self._buffer, b""
        return Response(status, reason, headers, body)

    def request(self, method: str, target: str | bytes,
                headers: list[tuple[str, str]] | dict | None = None) -> Response:
        self.send(method, target, headers)
        return self.read_response(method)

    def pending(self, wait: float = 0.2) -> bytes:
        """Bytes the server sent beyond what the responses so far framed (waits up to
        `wait` for them: a check that nothing more comes)."""
        self.sock.settimeout(wait)
        try:
            self._fill()
        except (TimeoutError, ConnectionError):
            pass
        finally:
            self.sock.settimeout(self.timeout)
        return self._buffer

    def read_until_close(self) -> bytes:
        """Everything the server sends until it closes (what is buffered first)."""
        while True:
            try:
                self._fill()
            except ConnectionError:
                break
        data, self._buffer = self._buffer, b""
        return data


def fetch_raw(port: int, target: str | bytes, headers: list[tuple[str, str]] | dict | None = None,
              method: str = "GET") -> Response:
    """One request on a fresh connection."""
    with RawClient(port) as client:
        return client.request(method, target, headers)


# A browser's request header set, for tests of what real traffic sends: no two requests
# alike once `browser_headers(n)` puts a counter in the Cookie.
BROWSER_HEADERS = [
    ("User-Agent", "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
                   "Chrome/131.0.0.0 Safari/537.36"),
    ("Accept", "text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,*/*;q=0.8"),
    ("Accept-Encoding", "gzip, deflate, br, zstd"),
    ("Accept-Language", "en-GB,en;q=0.9"),
    ("Sec-Fetch-Dest", "document"),
    ("Referer", "http://127.0.0.1/index.html"),
]


def browser_headers(n: int, *extra: tuple[str, str]) -> list[tuple[str, str]]:
    return [*BROWSER_HEADERS, ("Cookie", f"session={n}; theme=dark"), *extra]


def without_date(r: Response) -> list[tuple[str, str]]:
    """A response's header fields in order, but for Date (which changes every second)."""
    return [(k, v) for k, v in r.header_list if k.lower() != "date"]


def raw_exchange(port: int, data: bytes, *, timeout: float = 5.0) -> bytes:
    """Send raw bytes; return everything the server sends until it closes."""
    with RawClient(port, timeout=timeout) as client:
        client.send_raw(data)
        return client.read_until_close()


async def read_response(reader: asyncio.StreamReader, method: str = "GET") -> Response:
    """The next response on an asyncio stream, framed as RawClient frames it."""
    head = await reader.readuntil(b"\r\n\r\n")
    status, reason, headers = _parse_head(head[:-4])
    kind, length = _framing(method, status, headers)
    body = b""
    if kind == "length":
        body = await reader.readexactly(length)
    elif kind == "chunked":
        parts = []
        while True:
            size = int((await reader.readuntil(b"\r\n"))[:-2].split(b";")[0], 16)
            if size == 0:
                while await reader.readuntil(b"\r\n") != b"\r\n":
                    pass
                break
            parts.append(await reader.readexactly(size))
            if await reader.readexactly(2) != b"\r\n":
                raise AssertionError("chunk not followed by CRLF")
        body = b"".join(parts)
    elif kind == "close":
        body = await reader.read()
    return Response(status, reason, headers, body)


async def raw_request(port: int, data: bytes, *, timeout: float = 10.0) -> bytes:
    """Send raw bytes and read until the server closes the connection."""
    reader, writer = await asyncio.open_connection(HOST, port)
    try:
        writer.write(data)
        await writer.drain()
        return await asyncio.wait_for(reader.read(), timeout)
    finally:
        writer.close()


# -- http.client: the independent reading ----------------------------------------------------------

class Reply:
    """A response read by http.client: status, headers (case-insensitive), body."""

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
    """One request on a new connection, from a worker thread (the server may be
    answering from this very loop)."""
    def run() -> Reply:
        conn = http.client.HTTPConnection(HOST, port, timeout=timeout)
        try:
            return fetch_on(conn, method, path, body, headers)
        finally:
            conn.close()
    return await asyncio.to_thread(run)


# -- a real browser ------------------------------------------------------------------------------

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
BROWSER_MISSING = not (os.access(CHROMIUM, os.X_OK) and os.access(CHROMEDRIVER, os.X_OK))


@contextmanager
def chromium(*flags: str) -> Iterator[Any]:
    """Headless Debian Chromium through selenium, with its own empty profile; the test
    skips if it cannot start.  The flags keep it off the network (this machine has none)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="pageloan-chromium-")
    options = Options()
    options.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--no-first-run", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", f"--user-data-dir={profile}", *flags):
        options.add_argument(flag)
    try:
        driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    except Exception as exc:  # noqa: BLE001 - any start-up failure means no browser here
        shutil.rmtree(profile, ignore_errors=True)
        pytest.skip(f"Chromium did not start: {exc}")
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def wait_js(driver: Any, condition: str, timeout: float = 10.0) -> Any:
    """Wait until the page's JavaScript `condition` (a `return ...` statement) is truthy."""
    from selenium.webdriver.support.ui import WebDriverWait
    return WebDriverWait(driver, timeout).until(lambda d: d.execute_script(condition))
