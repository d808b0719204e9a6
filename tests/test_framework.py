"""The handler API over real sockets: return values, requests, hooks, errors, files.

Each test writes a small handler module, serves it in-process on 127.0.0.1 and
talks to it with http.client (in a thread) or a raw socket.
"""

from __future__ import annotations

import asyncio
import contextvars
import hashlib
import http.client
import inspect
import logging
from pathlib import Path

import pytest
from harness import raw_request

from server.core.message import FileRegion, Message
from server.framework.application import Application
from server.framework.registry import Registry
from server.framework.results import to_response
from server.framework.routing import Route
from server.http.request import Request
from server.http.responses import StreamResponse

# -- what a handler may return -------------------------------------------------------------

RETURNS = '''
from server import route
from server.http.responses import redirect_response, text_response
from server.core.message import Message
from server.http.wire import header_block

@route("/json-list")
def json_list(request):
    return [1, "two", None]

@route("/text")
async def text(request):
    return "héllo"

@route("/bytes")
def raw(request):
    return b"\\x00\\x01"

@route("/none", methods=["POST"])
def nothing(request):
    return None

@route("/created")
def created(request):
    return {"id": 9}, 201, [("Location", "/things/9")]

@route("/teapot")
def teapot(request):
    return "short and stout", 418

@route("/redirect")
def redirect(request):
    return redirect_response("/text", 303)

@route("/message")
def message(request):
    return Message(200, [header_block([("Content-Type", "text/x-demo"), ("Content-Length", "5")])],
                   [b"he", b"llo"])

@route("/stream")
async def stream(request):
    async def pieces():
        for i in range(5):
            yield f"piece {i}\\n"
    return pieces()

@route("/object")
def bad(request):
    return object()
'''



async def test_return_values_become_responses(handler_site):
    site = await handler_site({"returns.py": RETURNS})
    reply = await site.get("/json-list")
    assert (reply.header("Content-Type"), reply.json()) == ("application/json", [1, "two", None])
    reply = await site.get("/text")
    assert (reply.header("Content-Type"), reply.text) == ("text/plain; charset=utf-8", "héllo")
    reply = await site.get("/bytes")
    assert (reply.header("Content-Type"), reply.body) == ("application/octet-stream", b"\x00\x01")
    reply = await site.fetch("POST", "/none")
    assert (reply.status, reply.body, reply.header("Content-Length")) == (204, b"", None)
    reply = await site.get("/created")
    assert (reply.status, reply.json(), reply.header("Location")) == (201, {"id": 9}, "/things/9")
    assert (await site.get("/teapot")).status == 418
    reply = await site.get("/redirect")
    assert (reply.status, reply.header("Location")) == (303, "/text")
    reply = await site.get("/message")
    assert (reply.header("Content-Type"), reply.body) == ("text/x-demo", b"hello")
    reply = await site.get("/stream")
    assert reply.header("Transfer-Encoding") == "chunked"
    assert reply.text == "".join(f"piece {i}\n" for i in range(5))
    reply = await site.get("/object")
    assert reply.status == 500 and b"object" not in reply.body


def test_handlers_that_cannot_suspend_answer_inline_others_return_a_coroutine():
    """An `async def` with no await in its body is answered at once (the session
    creates no task); an `async def` that awaits comes back as a coroutine, and so does
    a `def`, which runs in the handler thread pool (it may block)."""
    def sync_hello(request, name):
        return {"hello": name}

    async def async_hello(request, name):
        return {"hello": name}

    async def awaiting_hello(request, name):
        await asyncio.sleep(0)
        return {"hello": name}

    registry = Registry()
    registry.routes += [Route("/s/{name}", sync_hello), Route("/a/{name}", async_hello),
                        Route("/w/{name}", awaiting_hello)]
    app = Application.from_registries([registry])

    answer = app(Request("GET", b"/a/x", "1.1", [], True, None, None))
    assert type(answer) is Message and answer.payload == (b'{"hello":"x"}',)

    for path in (b"/w/x", b"/s/x"):
        pending = app(Request("GET", path, "1.1", [], True, None, None))
        assert inspect.iscoroutine(pending)
        assert asyncio.run(pending).payload == (b'{"hello":"x"}',)


def test_inline_async_handler_context_variables_do_not_leak():
    marker: contextvars.ContextVar[str] = contextvars.ContextVar("marker", default="unset")

    async def setter(request):
        before = marker.get()
        marker.set("set by the handler")
        return {"before": before}

    registry = Registry()
    registry.routes += [Route("/c", setter)]
    app = Application.from_registries([registry])
    for _ in range(2):
        answer = app(Request("GET", b"/c", "1.1", [], True, None, None))
        assert answer.payload == (b'{"before":"unset"}',)
    assert marker.get() == "unset"


def test_to_response_table():
    assert to_response("x").status == 200
    assert to_response(None).status == 204
    assert to_response(([1], 202)).status == 202
    assert isinstance(to_response(StreamResponse(_empty())), StreamResponse)
    with pytest.raises(TypeError):
        to_response({1.5j})


async def _empty():
    return
    yield  # pragma: no cover


# -- the request ---------------------------------------------------------------------------

REQUESTS = '''
from server import route

@route("/inspect/{rest:path}", methods=["GET", "POST"])
async def inspect_request(request, rest):
    body = await request.body()
    return {
        "method": request.method,
        "path": request.path,
        "rest": rest,
        "query": request.query,
        "tags": request.headers.getall("x-tag"),
        "agent": request.headers["USER-AGENT"],
        "cookies": request.cookies,
        "client": request.client[0],
        "length": len(body),
    }

@route("/json", methods=["POST"])
async def json_body(request):
    return {"got": await request.json()}

@route("/chunks", methods=["POST"])
async def chunks(request):
    sizes = [len(chunk) async for chunk in request.stream()]
    return {"total": sum(sizes)}
'''


async def test_request_fields(handler_site):
    site = await handler_site({"requests.py": REQUESTS})
    raw = (b"POST /inspect/a/b?x=1&x=2&empty= HTTP/1.1\r\nHost: t\r\nUser-Agent: probe\r\n"
           b"X-Tag: one\r\nx-tag: two\r\nCookie: session=abc; theme=dark\r\n"
           b"Content-Length: 5\r\nConnection: close\r\n\r\nhello")
    head, _, body = (await raw_request(site.port, raw)).partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    import json
    got = json.loads(body)
    assert got == {"method": "POST", "path": "/inspect/a/b", "rest": "a/b",
                   "query": {"x": ["1", "2"], "empty": [""]}, "tags": ["one", "two"],
                   "agent": "probe", "cookies": {"session": "abc", "theme": "dark"},
                   "client": "127.0.0.1", "length": 5}


async def test_bad_json_is_400_and_body_limit_is_413(handler_site):
    site = await handler_site({"requests.py": REQUESTS}, max_body_bytes=1000)
    reply = await site.fetch("POST", "/json", body=b"{not json")
    assert reply.status == 400 and b"JSON" in reply.body
    assert (await site.fetch("POST", "/json", body=b'{"a": 1}')).json() == {"got": {"a": 1}}
    # declared over the limit: refused by the protocol layer before the handler runs
    assert (await site.fetch("POST", "/json", body=b"x" * 2000)).status == 413
    # chunked, so only counted while arriving: the handler's read fails → 413
    raw = (b"POST /chunks HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
           + b"".join(b"200\r\n" + b"y" * 0x200 + b"\r\n" for _ in range(4)) + b"0\r\n\r\n")
    assert (await raw_request(site.port, raw)).startswith(b"HTTP/1.1 413")


# -- hooks --------------------------------------------------------------------------------

HOOKS = '''
from server import route
from server.framework.hooks import (after_request, add_header, before_request, error_handler, middleware,
                          on_shutdown, on_startup)
from server.http.errors import HTTPError

EVENTS = []

@on_startup
def opened(app):
    app.state.counter = 0
    EVENTS.append("startup")

@on_shutdown
async def closed():
    EVENTS.append("shutdown")

@before_request
def guard(request):
    if request.headers.get("x-block"):
        return "blocked", 403
    request.state["seen_by_before"] = True

@middleware
async def count_and_time(request, call_next):
    request.app.state.counter += 1
    response = await call_next(request)
    add_header(response, "X-Count", str(request.app.state.counter))
    return response

@after_request
def stamp(request, response):
    add_header(response, "X-After", "yes")

@route("/ok")
def ok(request):
    return {"before": request.state.get("seen_by_before", False)}

@route("/missing-thing")
def missing(request):
    raise HTTPError(404, "no such thing")

@route("/key")
def key(request):
    return {}["nope"]

@route("/lookup")
def lookup(request):
    raise LookupError("generic")

@error_handler(404)
def not_found(request, error):
    return {"error": "not found", "path": request.path}, 404

@error_handler(KeyError)
async def key_error(request, exc):
    return {"error": "missing key", "key": str(exc)}, 422
'''


async def test_hooks_middleware_and_error_handlers(handler_site):
    site = await handler_site({"hooks.py": HOOKS})
    module = site.app.hooks.on_startup[0].__globals__
    assert module["EVENTS"] == ["startup"]

    reply = await site.get("/ok")
    assert reply.json() == {"before": True}
    assert (reply.header("X-After"), reply.header("X-Count")) == ("yes", "1")

    reply = await site.get("/ok", headers={"X-Block": "1"})
    assert (reply.status, reply.text, reply.header("X-After")) == (403, "blocked", "yes")

    reply = await site.get("/nothing/here")                    # no route: the 404 hook
    assert (reply.status, reply.json()) == (404, {"error": "not found", "path": "/nothing/here"})
    reply = await site.get("/missing-thing")                   # raised HTTPError(404)
    assert reply.json()["error"] == "not found"
    reply = await site.get("/key")                             # by exception class
    assert (reply.status, reply.json()) == (422, {"error": "missing key", "key": "'nope'"})
    reply = await site.get("/lookup")                          # KeyError's base: no hook
    assert reply.status == 500
    # middleware saw every request but the one a before-request hook answered
    assert reply.header("X-Count") == "5"
    assert site.app.state.counter == 5

    await site.app.shutdown()
    assert module["EVENTS"] == ["startup", "shutdown"]
    site.app.hooks.on_shutdown.clear()                          # the fixture shuts down again


def test_no_hooks_means_no_wrapping():
    app = Application.from_registries([Registry()])
    assert app._entry == app._dispatch


# -- errors -------------------------------------------------------------------------------

FAILING = '''
from server import route

SECRET = "password=hunter2"

@route("/fail")
async def fail(request):
    raise RuntimeError("internal detail " + SECRET)

@route("/fail-sync")
def fail_sync(request):
    raise ValueError("sync internal detail " + SECRET)
'''


@pytest.mark.parametrize("path", ["/fail", "/fail-sync"])
async def test_exception_is_500_without_internals_and_logged(handler_site, caplog, path):
    site = await handler_site({"failing.py": FAILING})
    with caplog.at_level(logging.ERROR, logger="pageloan.handlers"):
        reply = await site.get(path)
    assert reply.status == 500
    assert reply.text == "500 Internal Server Error\n"
    assert b"hunter2" not in reply.body and b"Traceback" not in reply.body
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "Traceback" in logged and "hunter2" in logged and path in logged
    # the connection and the server carry on
    assert (await site.get("/fail")).status == 500


async def test_debug_shows_the_traceback(handler_site):
    site = await handler_site({"failing.py": FAILING}, debug=True)
    reply = await site.get("/fail")
    assert reply.status == 500
    assert b"Traceback" in reply.body and b"RuntimeError: internal detail" in reply.body


# -- files -----------------------------------------------------------------------------------

FILES = '''
from pathlib import Path
from server import route
from server.static.file_response import file_region, file_response, gather_response

HERE = Path(__file__).parent

@route("/file/{name}")
def one_file(request, name):
    return file_response(request, HERE / "data" / name, download_name="réport.bin")

@route("/gathered")
def gathered(request):
    data = HERE / "data"
    return gather_response([b"<", file_region(request, data / "small.bin", 2, 3), b"|",
                            file_region(request, data / "large.bin"), b">"],
                           "application/octet-stream")
'''


async def test_file_response_has_static_semantics(handler_site, tmp_path: Path):
    directory = tmp_path / "files"
    (directory / "data").mkdir(parents=True)
    blob = bytes(range(256)) * 4096          # 1 MiB: over the gather limit, sent by sendfile
    (directory / "data" / "large.bin").write_bytes(blob)
    (directory / "data" / "small.bin").write_bytes(b"0123456789")
    site = await handler_site({"files.py": FILES}, directory=directory)

    reply = await site.get("/file/large.bin")
    assert reply.status == 200 and hashlib.sha256(reply.body).digest() == hashlib.sha256(blob).digest()
    etag = reply.header("ETag")
    assert etag and reply.header("Last-Modified") and reply.header("Accept-Ranges") == "bytes"
    assert reply.header("Content-Disposition").startswith('attachment; filename="r_port.bin"')

    assert (await site.get("/file/large.bin", headers={"If-None-Match": etag})).status == 304
    reply = await site.get("/file/large.bin", headers={"Range": "bytes=10-19"})
    assert (reply.status, reply.body) == (206, blob[10:20])
    assert reply.header("Content-Range") == f"bytes 10-19/{len(blob)}"
    assert (await site.get("/file/nope.bin")).status == 404


async def test_gather_response_sends_slices_in_order(handler_site, tmp_path: Path):
    directory = tmp_path / "files"
    (directory / "data").mkdir(parents=True)
    blob = bytes(range(256)) * 1500
    (directory / "data" / "large.bin").write_bytes(blob)
    (directory / "data" / "small.bin").write_bytes(b"0123456789")
    site = await handler_site({"files.py": FILES}, directory=directory)
    reply = await site.get("/gathered")
    assert reply.body == b"<234|" + blob + b">"
    assert int(reply.header("Content-Length")) == len(reply.body)


def test_gather_response_refuses_mutable_slices():
    from server.static.file_response import gather_response
    with pytest.raises(TypeError):
        gather_response([bytearray(b"mutable")])
    assert isinstance(gather_response([b"a", FileRegion(0, 0, 0)]).payload[1], FileRegion)


# -- streaming -------------------------------------------------------------------------------

STREAMING = '''
import asyncio
from server import route
from server.http.responses import StreamResponse

@route("/numbers/{n:int}")
def numbers(request, n):
    async def produce():
        for i in range(n):
            yield f"{i},"
            await asyncio.sleep(0)
    return StreamResponse(produce(), content_type="text/csv")
'''


async def test_streaming_is_chunked_and_parsed_by_http_client(handler_site):
    import asyncio
    site = await handler_site({"streaming.py": STREAMING})

    def read_twice() -> list[tuple[str | None, bytes]]:
        conn = http.client.HTTPConnection("127.0.0.1", site.port, timeout=10)
        out = []
        for n in (3, 2000):                     # two responses on one keep-alive connection
            conn.request("GET", f"/numbers/{n}")
            response = conn.getresponse()
            out.append((response.getheader("Transfer-Encoding"), response.read()))
        conn.close()
        return out

    (te1, body1), (te2, body2) = await asyncio.to_thread(read_twice)
    assert (te1, body1) == ("chunked", b"0,1,2,")
    assert te2 == "chunked" and body2 == "".join(f"{i}," for i in range(2000)).encode()
