"""Starlette and FastAPI applications on `pageloan serve --asgi`, over real sockets.

Each test talks HTTP to a `python -m server serve --asgi tests.asgi_apps:...`
subprocess with httpx (or a raw socket where the wire matters): routing, params,
JSON and form bodies, uploads, streaming, background tasks, lifespan state, errors,
FileResponse ranges and validators, StaticFiles, and a client that leaves mid-stream.
"""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

STARLETTE = "asgi_apps:starlette_app"
FASTAPI = "asgi_apps:fastapi_app"
TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent




def app_env(files: Path) -> dict[str, str]:
    return {"ASGI_TEST_FILES": str(files)}


def asgi(spec: str, *more: str) -> list[str]:
    """The app modules live beside this file (a `tests` package elsewhere may shadow ours)."""
    return ["--asgi", spec, "--app-dir", str(TESTS), *more]


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("asgi-files")
    (root / "f1m.bin").write_bytes(os.urandom(1 << 20))
    (root / "small.txt").write_bytes(b"0123456789abcdefghij")
    static = root / "static"
    static.mkdir()
    (static / "hello.txt").write_bytes(b"hello, static\n")
    (static / "page.html").write_bytes(b"<!doctype html><title>x</title>")
    return root


@pytest.fixture
def starlette(server_process: Any, files: Path) -> Any:
    return server_process(asgi(STARLETTE), env=app_env(files))


@pytest.fixture
def fastapi(server_process: Any, files: Path) -> Any:
    return server_process(asgi(FASTAPI), env=app_env(files))


def _poll_events(url: str, wanted: str, timeout: float = 5.0) -> list[str]:
    deadline = time.monotonic() + timeout
    seen: list[str] = []
    while time.monotonic() < deadline:
        seen = httpx.get(url + "/events").json()
        if wanted in seen:
            return seen
        time.sleep(0.02)
    raise AssertionError(f"{wanted!r} never happened; events: {seen}")


# -- Starlette ---------------------------------------------------------------------------
def test_route_with_lifespan_state(starlette: Any) -> None:
    r = httpx.get(starlette.url + "/hello")
    assert r.status_code == 200
    assert r.json() == {"message": "hello", "greeting": "hello from startup"}
    assert r.headers["content-length"] == str(len(r.content))
    assert r.headers["server"] == "pageloan"


def test_path_and_query_params(starlette: Any) -> None:
    r = httpx.get(starlette.url + "/items/42", params=[("q", "a b"), ("q", "é")])
    assert r.json() == {"id": 42, "q": ["a b", "é"], "path": "/items/42", "root_path": ""}
    assert httpx.get(starlette.url + "/items/notanint").status_code == 404


def test_json_body(starlette: Any) -> None:
    payload = {"name": "ünïcode", "values": list(range(1000))}
    r = httpx.post(starlette.url + "/echo", json=payload)
    assert r.status_code == 200
    assert r.json()["got"] == payload


def test_large_body_streams_in_pieces(starlette: Any) -> None:
    payload = {"blob": "y" * (3 << 20)}
    r = httpx.post(starlette.url + "/echo", json=payload, timeout=30)
    assert r.json()["length"] > 3 << 20


def test_form_and_file_upload(starlette: Any) -> None:
    data = os.urandom(300_000)
    r = httpx.post(starlette.url + "/upload", data={"title": "report"},
                   files={"doc": ("report.bin", b"%PDF-1.7" + data, "application/octet-stream")})
    assert r.status_code == 200
    body = r.json()
    assert body["title"] == "report"
    assert body["doc"] == {"filename": "report.bin", "size": len(data) + 8, "head": "%PDF-1.7"}


def test_urlencoded_form(starlette: Any) -> None:
    r = httpx.post(starlette.url + "/upload", data={"a": "1", "b": "two words"})
    assert r.json() == {"a": "1", "b": "two words"}


def test_streaming_response_is_chunked(starlette: Any) -> None:
    with httpx.stream("GET", starlette.url + "/stream", params={"n": "50"}) as r:
        assert r.headers["transfer-encoding"] == "chunked"
        text = r.read().decode()
    assert text == "".join(f"piece {i}\n" for i in range(50))


def test_background_task_runs_after_the_response(starlette: Any) -> None:
    r = httpx.get(starlette.url + "/background", params={"tag": "one"})
    assert r.text == "accepted"
    _poll_events(starlette.url, "background one")


def test_handler_exception_is_500_and_server_lives(starlette: Any) -> None:
    r = httpx.get(starlette.url + "/boom")
    assert r.status_code == 500
    assert httpx.get(starlette.url + "/hello").status_code == 200


def test_unknown_route_is_404(starlette: Any) -> None:
    assert httpx.get(starlette.url + "/nope").status_code == 404


def test_file_response_whole_and_head(starlette: Any, files: Path) -> None:
    data = (files / "f1m.bin").read_bytes()
    r = httpx.get(starlette.url + "/file-1m")
    assert r.status_code == 200 and r.content == data
    assert r.headers["content-length"] == str(len(data))
    h = httpx.head(starlette.url + "/file-1m")
    assert h.status_code == 200 and h.content == b""
    assert h.headers["content-length"] == str(len(data))
    assert h.headers["etag"] == r.headers["etag"]


def test_file_response_ranges(starlette: Any, files: Path) -> None:
    data = (files / "f1m.bin").read_bytes()
    r = httpx.get(starlette.url + "/file-1m", headers={"Range": "bytes=100-199"})
    assert r.status_code == 206
    assert r.content == data[100:200]
    assert r.headers["content-range"] == f"bytes 100-199/{len(data)}"
    multi = httpx.get(starlette.url + "/file-1m", headers={"Range": "bytes=0-9,500-509"})
    assert multi.status_code == 206
    assert multi.headers["content-type"].startswith("multipart/byteranges")
    assert data[0:10] in multi.content and data[500:510] in multi.content
    bad = httpx.get(starlette.url + "/file-1m", headers={"Range": f"bytes={len(data) + 5}-"})
    assert bad.status_code == 416


def test_file_response_if_range(starlette: Any, files: Path) -> None:
    data = (files / "f1m.bin").read_bytes()
    etag = httpx.head(starlette.url + "/file-1m").headers["etag"]
    fresh = httpx.get(starlette.url + "/file-1m", headers={"Range": "bytes=0-3", "If-Range": etag})
    assert fresh.status_code == 206 and fresh.content == data[:4]
    stale = httpx.get(starlette.url + "/file-1m", headers={"Range": "bytes=0-3", "If-Range": '"other"'})
    assert stale.status_code == 200 and stale.content == data


def test_static_files_and_validators(starlette: Any) -> None:
    r = httpx.get(starlette.url + "/static/hello.txt")
    assert r.status_code == 200 and r.text == "hello, static\n"
    assert r.headers["content-type"].startswith("text/plain")
    again = httpx.get(starlette.url + "/static/hello.txt", headers={"If-None-Match": r.headers["etag"]})
    assert again.status_code == 304 and again.content == b""
    since = httpx.get(starlette.url + "/static/hello.txt",
                      headers={"If-Modified-Since": r.headers["last-modified"]})
    assert since.status_code == 304
    assert httpx.get(starlette.url + "/static/missing.txt").status_code == 404


def test_keep_alive_connection_serves_many(starlette: Any) -> None:
    with httpx.Client(base_url=starlette.url) as client:
        for i in range(50):
            path = "/static/hello.txt" if i % 2 else "/hello"
            assert client.get(path).status_code == 200


def test_client_leaving_mid_stream_closes_the_generator(starlette: Any) -> None:
    with socket.create_connection(("127.0.0.1", starlette.port)) as sock:
        sock.sendall(b"GET /endless HTTP/1.1\r\nHost: x\r\n\r\n")
        got = 0
        while got < 1 << 20:
            chunk = sock.recv(65536)
            assert chunk
            got += len(chunk)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    # The send after the reset raises in the app; Starlette closes the generator.
    _poll_events(starlette.url, "endless closed")
    assert httpx.get(starlette.url + "/hello").status_code == 200


def test_proxy_headers_from_localhost_are_trusted(starlette: Any) -> None:
    r = httpx.get(starlette.url + "/client", headers={"X-Forwarded-For": "203.0.113.9",
                                                      "X-Forwarded-Proto": "https"})
    assert r.json() == {"client": ["203.0.113.9", 0], "scheme": "https"}


def test_no_proxy_headers_keeps_the_peer(server_process: Any, files: Path) -> None:
    proc = server_process(asgi(STARLETTE, "--no-proxy-headers"), env=app_env(files))
    r = httpx.get(proc.url + "/client", headers={"X-Forwarded-For": "203.0.113.9"})
    assert r.json()["client"][0] == "127.0.0.1"


def test_root_path_is_in_scope(server_process: Any, files: Path) -> None:
    proc = server_process(asgi(STARLETTE, "--asgi-root-path", "/api"),
                          env=app_env(files))
    r = httpx.get(proc.url + "/items/7")
    assert r.json()["root_path"] == "/api"
    assert r.json()["path"] == "/api/items/7"


# -- FastAPI -------------------------------------------------------------------------------
def test_fastapi_path_and_query_validation(fastapi: Any) -> None:
    r = httpx.get(fastapi.url + "/users/5", params={"verbose": "true", "q": "x"})
    assert r.json() == {"user_id": 5, "verbose": True, "q": "x"}
    assert httpx.get(fastapi.url + "/users/abc").status_code == 422


def test_fastapi_json_model(fastapi: Any) -> None:
    r = httpx.post(fastapi.url + "/orders", json={"name": "tea", "quantity": 3, "tags": ["hot"]})
    assert r.status_code == 201
    assert r.json() == {"total": 6, "order": {"name": "tea", "quantity": 3, "tags": ["hot"]}}
    assert httpx.post(fastapi.url + "/orders", json={"name": "tea"}).status_code == 422


def test_fastapi_form_upload(fastapi: Any) -> None:
    r = httpx.post(fastapi.url + "/form", data={"name": "n"}, files={"upload": ("a.txt", b"abc" * 1000)})
    assert r.json() == {"name": "n", "filename": "a.txt", "size": 3000}


def test_fastapi_errors(fastapi: Any) -> None:
    r = httpx.get(fastapi.url + "/missing")
    assert r.status_code == 404 and r.json() == {"detail": "no such thing"}
    assert httpx.get(fastapi.url + "/crash").status_code == 500
    assert httpx.get(fastapi.url + "/state").json() == {"greeting": "hello from startup"}
    assert httpx.get(fastapi.url + "/openapi.json").json()["paths"]["/orders"]
