"""The ASGI `websocket` scope: Starlette and FastAPI WebSocket endpoints on `pageloan serve --asgi`.

Real applications, a real server process, the `websockets` client: echo of text and
binary, subprotocols, close codes in both directions (what the application saw is read
back over HTTP), the denial extension (`send_denial_response`), refusal by closing
before accepting (403), an application failing before accepting (500) and after
(1011), FastAPI path and query parameters, and a client that vanishes.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import socket
import struct
import textwrap
from pathlib import Path

import pytest
from polling import until
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus
from ws_fixtures import RawSocket

pytest.importorskip("starlette")
pytest.importorskip("fastapi")

STARLETTE_APP = '''
from starlette.applications import Starlette
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocketDisconnect

SEEN = {}


async def echo(ws):
    await ws.accept(subprotocol="echo" if "echo" in ws.scope["subprotocols"] else None)
    try:
        while True:
            message = await ws.receive()
            if message["type"] == "websocket.disconnect":
                SEEN["echo"] = message["code"]
                return
            if message.get("text") is not None:
                await ws.send_text(message["text"])
            else:
                await ws.send_bytes(message["bytes"])
    finally:
        SEEN["scope"] = {k: ws.scope[k] for k in ("type", "scheme", "path", "http_version")}
        SEEN["extensions"] = sorted(ws.scope.get("extensions") or {})


async def record(ws):
    await ws.accept()
    try:
        await ws.receive_text()
    except WebSocketDisconnect as exc:
        SEEN["record"] = [exc.code, exc.reason]


async def closer(ws):
    await ws.accept()
    await ws.receive_text()
    await ws.close(code=4002, reason="done here")


async def refuse(ws):
    await ws.close()


async def deny(ws):
    await ws.send_denial_response(PlainTextResponse("members only", status_code=401,
                                                    headers={"X-Why": "token"}))


async def broken_before(ws):
    raise RuntimeError("no")


async def broken_after(ws):
    await ws.accept()
    await ws.receive_text()
    raise RuntimeError("late")


async def flood(ws):
    await ws.accept()
    chunk = bytes(256 << 10)
    try:
        while True:
            await ws.send_bytes(chunk)
    except Exception as exc:
        SEEN["flood"] = [type(exc).__name__, getattr(exc, "code", None)]
        raise


async def seen(request):
    return JSONResponse(SEEN)


app = Starlette(routes=[
    WebSocketRoute("/echo", echo), WebSocketRoute("/record", record),
    WebSocketRoute("/closer", closer), WebSocketRoute("/refuse", refuse),
    WebSocketRoute("/deny", deny), WebSocketRoute("/broken-before", broken_before),
    WebSocketRoute("/broken-after", broken_after), WebSocketRoute("/flood", flood),
    Route("/seen", seen),
])
'''

FASTAPI_APP = '''
from fastapi import FastAPI, WebSocket, WebSocketDisconnect

app = FastAPI()


@app.websocket("/items/{item_id}")
async def items(websocket: WebSocket, item_id: int, q: str | None = None):
    await websocket.accept()
    await websocket.send_json({"item_id": item_id, "q": q})
    try:
        while True:
            data = await websocket.receive_text()
            await websocket.send_text(f"{item_id}:{data}")
    except WebSocketDisconnect:
        pass


@app.get("/plain")
def plain():
    return {"ok": True}
'''


def _serve_app(server_process, tmp_path: Path, name: str, source: str):
    app_dir = tmp_path / f"app_{name}"
    app_dir.mkdir()
    (app_dir / f"{name}.py").write_text(textwrap.dedent(source))
    return server_process(["--asgi", f"{name}:app", "--app-dir", str(app_dir)])


def _seen(port: int) -> dict:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", "/seen")
        return json.loads(conn.getresponse().read())
    finally:
        conn.close()


@pytest.fixture
def starlette_server(server_process, tmp_path):
    return _serve_app(server_process, tmp_path, "wsstarlette", STARLETTE_APP)


async def test_starlette_echo_text_binary_and_subprotocol(starlette_server):
    url = f"ws://127.0.0.1:{starlette_server.port}/echo"
    async with connect(url, subprotocols=["chat", "echo"]) as ws:
        assert ws.subprotocol == "echo"
        await ws.send("héllo")
        assert await ws.recv() == "héllo"
        big = bytes(range(256)) * 1024
        await ws.send(big)
        assert await ws.recv() == big
    assert ws.close_code == 1000
    seen = await until(lambda: "echo" in (s := _seen(starlette_server.port)) and s, "the app's disconnect")
    assert seen["echo"] == 1000
    assert seen["scope"] == {"type": "websocket", "scheme": "ws", "path": "/echo", "http_version": "1.1"}
    assert seen["extensions"] == ["websocket.http.response"]


async def test_starlette_close_codes_both_ways(starlette_server):
    port = starlette_server.port
    async with connect(f"ws://127.0.0.1:{port}/record") as ws:
        await ws.close(4001, "bye")
    seen = await until(lambda: "record" in (s := _seen(port)) and s, "the app's WebSocketDisconnect")
    assert seen["record"] == [4001, "bye"]
    async with connect(f"ws://127.0.0.1:{port}/closer") as ws:
        await ws.send("x")
        with pytest.raises(ConnectionClosed) as info:
            await ws.recv()
    assert (info.value.rcvd.code, info.value.rcvd.reason) == (4002, "done here")


async def test_starlette_refusals(starlette_server):
    port = starlette_server.port
    for path, status in (("/refuse", 403), ("/broken-before", 500)):
        with pytest.raises(InvalidStatus) as info:
            async with connect(f"ws://127.0.0.1:{port}{path}"):
                pass
        assert info.value.response.status_code == status, path
    with pytest.raises(InvalidStatus) as info:
        async with connect(f"ws://127.0.0.1:{port}/deny"):
            pass
    response = info.value.response
    assert response.status_code == 401
    assert response.headers["X-Why"] == "token"
    assert response.body == b"members only"


async def test_starlette_error_after_accept_closes_1011(starlette_server):
    async with connect(f"ws://127.0.0.1:{starlette_server.port}/broken-after") as ws:
        await ws.send("x")
        with pytest.raises(ConnectionClosed):
            await ws.recv()
    assert ws.close_code == 1011


async def test_bad_handshake_is_400_and_plain_http_still_works(starlette_server):
    def get(headers: dict[str, str], path: str = "/echo") -> int:
        conn = http.client.HTTPConnection("127.0.0.1", starlette_server.port, timeout=10)
        try:
            conn.request("GET", path, headers=headers)
            return conn.getresponse().status
        finally:
            conn.close()
    status = await asyncio.to_thread(get, {"Upgrade": "websocket", "Connection": "Upgrade",
                                           "Sec-WebSocket-Version": "13", "Sec-WebSocket-Key": "short"})
    assert status == 400
    assert await asyncio.to_thread(get, {}, "/seen") == 200
    # Without `Connection: Upgrade` the head takes the bare parse (no callbacks): its
    # Upgrade field is still found, so the handshake check refuses it rather than the
    # application answering a plain GET (a WebSocketRoute: 404).
    status = await asyncio.to_thread(get, {"upgrade": "websocket", "Sec-WebSocket-Version": "13",
                                           "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="})
    assert status == 400
    assert await asyncio.to_thread(get, {}, "/echo") == 404


async def test_client_vanishing_mid_send_raises_in_the_app(starlette_server):
    raw = RawSocket(starlette_server.port, "/flood", rcvbuf=16 << 10)
    assert (await raw.call(raw.open)).startswith(b"HTTP/1.1 101")
    await raw.call(raw.read_frame)
    raw.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    raw.close()
    seen = await until(lambda: "flood" in (s := _seen(starlette_server.port)) and s, "send to fail")
    # send raised an OSError (ASGI 2.4), which Starlette turns into WebSocketDisconnect(1006).
    assert seen["flood"] == ["WebSocketDisconnect", 1006]


async def test_fastapi_websocket_with_path_and_query(server_process, tmp_path):
    proc = _serve_app(server_process, tmp_path, "wsfastapi", FASTAPI_APP)
    async with connect(f"ws://127.0.0.1:{proc.port}/items/42?q=blue") as ws:
        assert json.loads(await ws.recv()) == {"item_id": 42, "q": "blue"}
        await ws.send("hi")
        assert await ws.recv() == "42:hi"
    with pytest.raises(InvalidStatus) as info:
        async with connect(f"ws://127.0.0.1:{proc.port}/items/not-a-number"):
            pass
    assert info.value.response.status_code == 403     # FastAPI closes on a validation error


LEAVER_APP = '''
import asyncio
from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.routing import Route, WebSocketRoute

SEEN = {}


async def slow(ws):
    SEEN["started"] = True
    await asyncio.sleep(0.3)                 # deciding while the client leaves
    try:
        await ws.accept()
    except Exception as exc:
        SEEN["accept"] = type(exc).__name__
    message = await ws.receive()
    SEEN["receive"] = message["type"]


async def seen(request):
    return JSONResponse(SEEN)


app = Starlette(routes=[WebSocketRoute("/slow", slow), Route("/seen", seen)])
'''


async def test_client_leaving_during_the_handshake_is_a_disconnect_for_the_app(server_process, tmp_path):
    proc = _serve_app(server_process, tmp_path, "wsleaver", LEAVER_APP)
    raw = RawSocket(proc.port, "/slow")
    opening = asyncio.ensure_future(asyncio.to_thread(raw.open))
    await until(lambda: _seen(proc.port).get("started"), "the app to start deciding")
    raw.reset()
    await asyncio.gather(opening, return_exceptions=True)
    seen = await until(lambda: "receive" in (s := _seen(proc.port)) and s, "the app to see the disconnect")
    assert seen["receive"] == "websocket.disconnect"
    # accept() itself may still "succeed": reading is paused during the handshake, so
    # the reset is noticed when the 101 is sent; either way the app learns it at once.
    assert seen.get("accept") in (None, "WebSocketDisconnect")


RAW_APP = '''
import json

SEEN = {}


async def app(scope, receive, send):
    if scope["type"] == "http":
        body = json.dumps(SEEN).encode()
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": body})
        return
    assert (await receive())["type"] == "websocket.connect"
    await send({"type": "websocket.accept"})
    for _ in range(2):
        message = await receive()
        if message.get("bytes") is not None:
            await send({"type": "websocket.send", "bytes": message["bytes"]})
        else:
            await send({"type": "websocket.send", "text": message["text"]})
    first, again = await receive(), await receive()
    try:
        await send({"type": "websocket.send", "text": "too late"})
    except OSError as exc:
        SEEN["send"] = type(exc).__name__
    SEEN["after"] = [first, again]
'''


async def test_raw_app_messages_then_disconnect_on_every_receive(server_process, tmp_path):
    """An accepted socket's messages go straight between the app and the connection;
    once the client has closed, every receive reports the disconnect and send raises
    an OSError."""
    proc = _serve_app(server_process, tmp_path, "wsraw", RAW_APP)
    async with connect(f"ws://127.0.0.1:{proc.port}/raw") as ws:
        await ws.send(b"\x00\x01binary")
        assert await ws.recv() == b"\x00\x01binary"
        await ws.send("text é")
        assert await ws.recv() == "text é"
        await ws.close(4003, "enough")
    seen = await until(lambda: "after" in (s := _seen(proc.port)) and s, "the app to see the close")
    disconnect = {"type": "websocket.disconnect", "code": 4003, "reason": "enough"}
    assert seen["after"] == [disconnect, disconnect]
    assert seen["send"] == "ClientDisconnected"
