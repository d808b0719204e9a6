"""WebSockets: an echo at /ws/echo, and chat rooms at /ws/rooms/{name} that broadcast.

Try it:  python3 -m websockets ws://127.0.0.1:8080/ws/echo
"""

from server import WebSocket, broadcast, websocket

ROOMS: dict[str, set[WebSocket]] = {}


@websocket("/ws/echo")
async def echo(ws):
    await ws.accept(subprotocol="echo" if "echo" in ws.subprotocols else None)
    async for message in ws:          # str for text frames, bytes for binary ones
        await ws.send(message)


@websocket("/ws/rooms/{name}")
async def room(ws, name):
    await ws.accept()
    members = ROOMS.setdefault(name, set())
    members.add(ws)
    try:
        async for message in ws:
            # One frame, one payload object, queued on every member's socket.
            await broadcast(members, message)
    finally:
        members.discard(ws)
        if not members:
            ROOMS.pop(name, None)
