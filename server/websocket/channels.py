"""Channel readers over WebSocket: every chunk of a fan-out channel as one message.

Theory of operation.  A channel (core/fanout.py) hands each reader the very chunk
objects the producer published; `channel_websocket` sends each as one binary message
whose payload slice *is* that chunk (frames.py), so a thousand WebSocket readers of
one stream hold one copy of each chunk, as the HTTP readers do.  The reader's pace is
its socket's: `send` waits while the socket is over its send budget, the
subscription falls behind, and the channel's policy decides — "skip" jumps it to the
live edge, "drop" ends it (close 1013, try again later), "block" slows the producer.
Messages the client sends are read and ignored by a small watcher task, which also
notices a close from the client while the channel is silent and ends the
subscription at once.  When the channel closes, the socket closes with 1000.
"""

from __future__ import annotations

import asyncio

from ..core.fanout import Channel, SlowReader, Subscription
from .native import WebSocket, WebSocketDisconnect

__all__ = ["channel_websocket"]

BATCH_CHUNKS = 64
BATCH_BYTES = 1 << 20


async def channel_websocket(ws: WebSocket, ch: Channel, *, from_seq: int | None = None,
                            limit: int | None = None) -> int:
    """Send `ch` to an accepted WebSocket until the channel ends, the client leaves or
    `limit` chunks went out; returns how many chunks were sent."""
    sub = ch.subscribe(from_seq)
    watcher = asyncio.ensure_future(_watch(ws, sub))
    sent = 0
    try:
        while limit is None or sent < limit:
            try:
                _seq, chunks = sub.take(min(BATCH_CHUNKS, (limit - sent) if limit else BATCH_CHUNKS),
                                        BATCH_BYTES)
            except SlowReader:
                await ws.close(1013, "too slow for this channel")
                return sent
            for chunk in chunks:
                await ws.send(chunk)
                sent += 1
            if not chunks:
                if sub.ended:
                    break
                await sub.wait()
        await ws.close(1000)
    except WebSocketDisconnect:
        pass
    finally:
        sub.close()
        watcher.cancel()
    return sent


async def _watch(ws: WebSocket, sub: Subscription) -> None:
    try:
        async for _message in ws:      # a reader's own messages are not part of the stream
            pass
    except (WebSocketDisconnect, RuntimeError):
        pass
    finally:
        sub.close()
