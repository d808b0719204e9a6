"""WebSocket peer: a Starlette app with /ws/echo and /ws/broadcast.

Run by the harness with the peers' python on uvicorn (httptools, uvloop, the
`websockets` implementation):   python ws_app.py ROOT PORT
and by pageloan as the same application:   pageloan serve --asgi ws_app:app --app-dir loadtest/peers

/ws/broadcast: every connection joins one room; a text message "broadcast SIZE" sends
one SIZE-byte binary message to every other member, the same bytes object to each,
all sends at once (asyncio.gather), so one member that does not read does not hold up
the others -- what a Starlette app does, as Starlette has no broadcast of its own.
"""

import asyncio
import os
import sys

from starlette.applications import Starlette
from starlette.routing import WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

MEMBERS: set = set()


async def echo(ws: WebSocket) -> None:
    await ws.accept()
    try:
        while True:
            message = await ws.receive()
            if message["type"] == "websocket.disconnect":
                return
            if message.get("bytes") is not None:
                await ws.send_bytes(message["bytes"])
            else:
                await ws.send_text(message["text"])
    except WebSocketDisconnect:
        return


async def room(ws: WebSocket) -> None:
    await ws.accept()
    MEMBERS.add(ws)
    try:
        while True:
            text = await ws.receive_text()
            if text.startswith("broadcast "):
                payload = os.urandom(int(text.split()[1]))   # resident memory, unlike bytes(n)
                others = [m for m in MEMBERS if m is not ws]
                # A member that left raises; the others still get the message.
                await asyncio.gather(*(m.send_bytes(payload) for m in others), return_exceptions=True)
    except WebSocketDisconnect:
        pass
    finally:
        MEMBERS.discard(ws)


app = Starlette(routes=[WebSocketRoute("/ws/echo", echo), WebSocketRoute("/ws/broadcast", room)])


def main() -> None:
    import uvicorn
    port = int(sys.argv[2])
    uvicorn.run(app, host="127.0.0.1", port=port, loop="uvloop", http="httptools", ws="websockets",
                ws_per_message_deflate=False, workers=1, lifespan="off", access_log=False,
                log_level="warning")


if __name__ == "__main__":
    main()
