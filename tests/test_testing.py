"""server.testing.TestClient: what a handler author's own pytest suite does with it."""

from __future__ import annotations

import socket
import textwrap
from pathlib import Path

import pytest

from server.framework.loader import HandlerLoadError
from server.testing import TestClient

APP = '''
from server import json_response, on_shutdown, on_startup, route, set_cookie

@on_startup
def start(app):
    app.state.started = True
    app.state.log = []

@on_shutdown
def stop(app):
    app.state.log.append("stopped")

@route("/items/{id:int}")
def item(request, id):
    return {"id": id, "q": request.query_value("q"), "started": request.app.state.started}

@route("/items", methods=["POST"])
async def create(request):
    return {"got": await request.json()}, 201

@route("/form", methods=["POST"])
async def form(request):
    form = await request.form()
    upload = form.get("upload")
    return {"name": form.get("name"),
            "upload": None if upload is None else [upload.filename, (await upload.read()).decode()]}

@route("/login", methods=["POST"])
def login(request):
    return set_cookie(json_response({"ok": True}), "sid", "s3cret")

@route("/me")
def me(request):
    return {"sid": request.cookies.get("sid"), "extra": request.cookies.get("extra")}

@route("/boom")
def boom(request):
    raise RuntimeError("kaput")
'''


@pytest.fixture
def handlers(tmp_path: Path) -> Path:
    directory = tmp_path / "handlers"
    directory.mkdir()
    (directory / "app.py").write_text(textwrap.dedent(APP))
    return directory


def test_requests_run_against_the_real_application(handlers: Path):
    with TestClient(handlers) as client:
        reply = client.get("/items/7", params={"q": "x y"})
        assert reply.status == 200 and reply.json() == {"id": 7, "q": "x y", "started": True}
        assert reply.headers["content-type"] == "application/json"
        assert client.post("/items", json={"a": 1}).status == 201
        assert client.get("/items/nope").status == 404
        assert client.delete("/items/7").status == 405
        assert client.head("/items/7").body == b""
        reply = client.post("/form", data={"name": "Zoë"}, files={"upload": ("a.txt", b"hello", "text/plain")})
        assert reply.json() == {"name": "Zoë", "upload": ["a.txt", "hello"]}
        assert client.post("/form", data={"name": "plain"}).json() == {"name": "plain", "upload": None}


def test_files_may_be_open_files(handlers: Path, tmp_path: Path):
    (tmp_path / "notes.txt").write_text("from disk")
    with TestClient(handlers) as client, open(tmp_path / "notes.txt", "rb") as f:
        reply = client.post("/form", data={"name": "n"}, files={"upload": f})
        assert reply.json() == {"name": "n", "upload": ["notes.txt", "from disk"]}


def test_cookies_are_kept_between_requests(handlers: Path):
    with TestClient(handlers) as client:
        assert client.get("/me").json() == {"sid": None, "extra": None}
        client.post("/login")
        assert client.get("/me").json() == {"sid": "s3cret", "extra": None}
        assert client.get("/me", cookies={"extra": "1"}).json() == {"sid": "s3cret", "extra": "1"}


def test_errors_are_answered_as_a_client_sees_them(handlers: Path):
    with TestClient(handlers, debug=False) as client:
        reply = client.get("/boom")
        assert reply.status == 500 and b"kaput" not in reply.body
    with TestClient(handlers) as client:       # debug by default: the traceback helps a test
        assert b"kaput" in client.get("/boom").body


def test_it_is_a_real_socket_and_close_runs_shutdown_hooks(handlers: Path):
    client = TestClient(handlers)
    with socket.create_connection(("127.0.0.1", client.port)) as sock:
        sock.sendall(b"GET /items/1 HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 200")
    state = client.app.state
    client.close()
    assert state.log == ["stopped"]
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", client.port), timeout=2).close()
    with pytest.raises(RuntimeError):
        client.get("/items/1")


def test_a_static_root_is_served_beside_the_handlers(handlers: Path, tmp_path: Path):
    root = tmp_path / "site"
    root.mkdir()
    (root / "index.html").write_text("<h1>home</h1>\n")
    with TestClient(handlers, root=root) as client:
        assert client.get("/").text == "<h1>home</h1>\n"
        assert client.get("/items/2").json()["id"] == 2


def test_a_broken_module_fails_at_construction(tmp_path: Path):
    (tmp_path / "bad.py").write_text("import nonexistent_module_xyz\n")
    with pytest.raises(HandlerLoadError):
        TestClient(tmp_path)


async def test_usable_from_an_async_test(handlers: Path):
    with TestClient(handlers) as client:      # its server runs on its own loop
        assert client.get("/items/3").json()["id"] == 3
