"""Handler answers are checked before they reach the wire; bad JSON bodies are 400s;
a full disk during an upload is a 507 that damages nothing.

Handlers are served in-process (the handler_site fixture); the disk-full case runs
`pageloan serve` as a subprocess under a small RLIMIT_FSIZE, the kernel's own
per-process file size limit, so the upload's write fails with EFBIG for real.
"""

from __future__ import annotations

import http.client
import logging
import os
import resource
import subprocess
import sys
from pathlib import Path

import pytest
from harness import free_port, raw_request, wait_for_port

from server.core.receive import is_partial_name

REPO = Path(__file__).resolve().parent.parent


BAD_ANSWERS = '''
from server import Message, StreamResponse, json_response, route

@route("/status/{code:int}")
def status(request, code):
    return "body", code

@route("/message/{code:int}")
def message(request, code):
    return Message(code, (b"Content-Length: 4\\r\\n\\r\\n",), (b"body",))

@route("/stream/{code:int}")
def stream(request, code):
    async def chunks():
        yield b"x"
    return StreamResponse(chunks(), status=code)

@route("/header/{kind}")
def header(request, kind):
    value = {"nul": "a\\x00b", "cr": "a\\rb", "lf": "a\\nInjected: yes",
             "ctl": "a\\x7fb", "tab": "a\\tb"}[kind]
    return json_response({"ok": True}, headers=[("X-Test", value)])

@route("/name/{kind}")
def name(request, kind):
    field = {"colon": "X:Y", "space": "X Y", "nul": "X\\x00"}[kind]
    return "body", 200, [(field, "v")]

@route("/raw-nul")
def raw_nul(request):
    return Message(200, (b"X-Raw: a\\x00b\\r\\nContent-Length: 2\\r\\n\\r\\n",), (b"ok",))

@route("/json", methods=["POST"])
async def echo(request):
    return {"got": await request.json()}

@route("/object", methods=["POST"])
async def obj(request):
    data = await request.json(expect=dict)
    return {"keys": sorted(data)}
'''


def _status_of(raw: bytes) -> int:
    return int(raw.split(b" ", 2)[1])


@pytest.mark.parametrize("code", [100, 101, 199, 99, 0, 600, 1000])
async def test_handler_status_outside_final_range_is_a_500(handler_site, caplog, code):
    site = await handler_site({"bad.py": BAD_ANSWERS})
    for kind in ("status", "message", "stream"):
        caplog.clear()
        with caplog.at_level(logging.ERROR):
            raw = await raw_request(site.port, f"GET /{kind}/{code} HTTP/1.1\r\nHost: t\r\n"
                                    "Connection: close\r\n\r\n".encode())
        assert raw.startswith(b"HTTP/1.1 500 "), (kind, raw[:60])
        assert raw.count(b"HTTP/1.1") == 1            # one final response, nothing else
        assert any("status" in r.getMessage() for r in caplog.records), kind


async def test_negative_status_is_a_500(handler_site):
    site = await handler_site({"bad.py": BAD_ANSWERS.replace("{code:int}", "{code}")
                               .replace("return \"body\", code", "return \"body\", int(code)")})
    raw = await raw_request(site.port, b"GET /status/-1 HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
    assert raw.startswith(b"HTTP/1.1 500 ")


async def test_valid_statuses_still_pass(handler_site):
    site = await handler_site({"bad.py": BAD_ANSWERS})
    for code in (200, 201, 299, 418, 599):
        reply = await site.get(f"/status/{code}")
        assert reply.status == code
        assert reply.body == b"body"


@pytest.mark.parametrize("kind", ["nul", "cr", "lf", "ctl"])
async def test_control_bytes_in_header_values_are_a_500(handler_site, kind):
    site = await handler_site({"bad.py": BAD_ANSWERS})
    raw = await raw_request(site.port, f"GET /header/{kind} HTTP/1.1\r\nHost: t\r\n"
                            "Connection: close\r\n\r\n".encode())
    assert raw.startswith(b"HTTP/1.1 500 ")
    assert b"X-Test" not in raw and b"Injected" not in raw and b"\x00" not in raw


async def test_tab_in_a_header_value_is_fine(handler_site):
    site = await handler_site({"bad.py": BAD_ANSWERS})
    reply = await site.get("/header/tab")
    assert reply.status == 200
    assert reply.header("X-Test") == "a\tb"


@pytest.mark.parametrize("kind", ["colon", "space", "nul"])
async def test_bad_header_names_are_a_500(handler_site, kind):
    site = await handler_site({"bad.py": BAD_ANSWERS})
    assert (await site.get(f"/name/{kind}")).status == 500


async def test_nul_in_a_raw_header_slice_is_a_500(handler_site):
    site = await handler_site({"bad.py": BAD_ANSWERS})
    raw = await raw_request(site.port, b"GET /raw-nul HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
    assert raw.startswith(b"HTTP/1.1 500 ") and b"\x00" not in raw


@pytest.mark.parametrize("body", [b"NaN", b"[Infinity]", b'{"a": -Infinity}', b"{nope",
                                  b"[" * 5000 + b"]" * 5000, b'{"a":' * 3000 + b"1" + b"}" * 3000,
                                  b"\xff\xfe", b'"\xed\xa0\x80"'])
async def test_bad_json_bodies_are_a_400(handler_site, body):
    site = await handler_site({"bad.py": BAD_ANSWERS})
    reply = await site.fetch("POST", "/json", body=body, headers={"Content-Type": "application/json"})
    assert reply.status == 400, reply


async def test_good_json_bodies_are_parsed(handler_site):
    site = await handler_site({"bad.py": BAD_ANSWERS})
    nested: list = []
    for _ in range(49):
        nested = [nested]
    for body, value in ((b'{"a": [1, 2.5, "x"]}', {"a": [1, 2.5, "x"]}), (b"3", 3), (b"", None),
                        (b"[" * 50 + b"]" * 50, nested)):
        reply = await site.fetch("POST", "/json", body=body)
        assert reply.status == 200 and reply.json() == {"got": value}


@pytest.mark.parametrize("body", [b"3", b'"text"', b"[1]", b"null", b"true", b""])
async def test_json_of_the_wrong_kind_is_a_400_when_an_object_is_expected(handler_site, body):
    site = await handler_site({"bad.py": BAD_ANSWERS})
    reply = await site.fetch("POST", "/object", body=body)
    assert reply.status == 400, reply
    assert b"object" in reply.body or b"empty" in reply.body
    assert (await site.fetch("POST", "/object", body=b'{"b": 1, "a": 2}')).json() == {"keys": ["a", "b"]}


# -- a full disk during an upload ---------------------------------------------------------

def _limit_file_size(limit: int):
    def apply() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return apply


def _post(port: int, path: str, body: bytes) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=20)
    try:
        conn.request("POST", path, body=body)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def test_upload_past_the_file_size_limit_is_a_507_and_damages_nothing(tmp_path):
    target = tmp_path / "uploads"
    target.mkdir()
    old = b"the old, complete version\n" * 100
    (target / "keep.bin").write_bytes(old)
    port = free_port()
    env = dict(os.environ, PYTHONPATH=str(REPO), PAGELOAN_UPLOAD_DIR=str(target))
    proc = subprocess.Popen(
        [sys.executable, "-m", "server", "serve", str(tmp_path), "--handlers", str(REPO / "handlers"),
         "--host", "127.0.0.1", "--port", str(port)],
        cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        preexec_fn=_limit_file_size(1 << 20), start_new_session=True)
    try:
        wait_for_port(port, proc=proc)
        status, body = _post(port, "/upload/keep.bin", os.urandom(3 << 20))
        assert status == 507, body
        assert b"storage" in body
        assert (target / "keep.bin").read_bytes() == old
        assert not [n for n in os.listdir(target) if is_partial_name(n)]
        assert not (target / "new.bin").exists()
        status, _ = _post(port, "/upload/new.bin", os.urandom(2 << 20))
        assert status == 507
        assert not (target / "new.bin").exists()
        # a small upload still works: the server carried on
        status, _ = _post(port, "/upload/small.bin", b"small")
        assert status == 201
        assert (target / "small.bin").read_bytes() == b"small"
    finally:
        proc.terminate()
        _out, err = proc.communicate(timeout=20)
    assert b"keep.bin" in err and b"File too large" in err
