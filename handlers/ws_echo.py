"""WebSockets: an echo at /ws/echo, chat rooms at /ws/rooms/{name} that broadcast, and
channel readers at /ws/channels/{name} (the channels of handlers/channels.py).

Try it:  python3 -m websockets ws://127.0.0.1:8080/ws/echo
"""

from server import HTTPError, WebSocket, broadcast, channel, channel_websocket, websocket

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


@websocket("/ws/channels/{name}")
async def follow(ws, name):
    start = ws.query.get("from", [None])[0]
    if start is not None and not start.isdigit():
        raise HTTPError(400, "from must be a sequence number")
    await ws.accept()
    # Each chunk published to the channel is one binary message, the same object for
    # every reader; ?from=SEQ starts from the replay window.
    await channel_websocket(ws, channel(name), from_seq=int(start) if start else None)
