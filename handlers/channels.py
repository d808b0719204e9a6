"""Fan-out channels: one producer's stream to any number of readers, each chunk held once.

    POST /channels/{name}          publish the request body as it arrives (chunked or
                                   Content-Length; each received block is one chunk);
                                   the readers' responses end when this request does.
                                   ?policy=drop|skip|block sets what happens to a slow
                                   reader (block: the upload waits for it instead).
    GET  /channels/{name}          the stream as raw chunked bytes (?from=SEQ, ?limit=N)
    GET  /channels/{name}/events   the stream as server-sent events, id = sequence number
    WS   /channels/{name}/ws       the stream as WebSocket binary messages, one per chunk
                                   (closes 1000 when the stream ends, 1013 if dropped)
    GET  /channels                 the open channels: readers, sequence, bytes held
    GET  /stream                   a synthetic I/Q sample stream, 10 MB/s, shared by all
                                   readers (?limit=N blocks)

Try it with two terminals:

    curl -N http://127.0.0.1:8080/channels/news/events
    (for i in 1 2 3; do echo "tick $i"; sleep 1; done) | \\
        curl -T - -H 'Content-Type: text/plain' http://127.0.0.1:8080/channels/news

or watch the sample stream: `curl -s 'http://127.0.0.1:8080/stream?limit=20' | xxd | head`.

A `/stream` block is 64 KiB: a 16-byte header (b"PLIQ", the block's sequence number
as u32, the index of its first sample as u64, little-endian) and 16,380 samples of a
complex tone as interleaved int16 I/Q.  A block is generated once and lent to every
reader; a reader that falls behind skips to the newest block (the sequence numbers
show the gap).  The generator runs only while someone is reading.
"""

import asyncio
import math
import struct

from server import (
    HTTPError,
    channel,
    channel_events,
    channel_response,
    channel_websocket,
    channels,
    on_shutdown,
    publish_body,
    route,
    websocket,
)


@route("/channels/{name}", methods=["POST", "PUT"])
async def publish(request, name):
    ch = channel(name)
    chunks, size = await publish_body(request, ch, policy=request.query_value("policy"))
    return {"channel": name, "chunks": chunks, "bytes": size, "next_seq": ch.next_seq}


@route("/channels/{name}")
async def subscribe(request, name):
    return channel_response(request, channel(name))


@route("/channels/{name}/events")
async def subscribe_events(request, name):
    return channel_events(request, channel(name))


@websocket("/channels/{name}/ws")
async def subscribe_websocket(ws, name):
    start = ws.request.query_value("from")
    if start is not None and not start.isdigit():
        raise HTTPError(400, "from must be a sequence number")
    await ws.accept()
    await channel_websocket(ws, channel(name), from_seq=int(start) if start is not None else None)


@route("/channels")
async def list_channels(request):
    return [{"name": ch.name, "readers": ch.readers, "next_seq": ch.next_seq,
             "policy": ch.policy, "chunks_held": ch.chunks_held, "bytes_held": ch.bytes_held,
             "producing": ch.producer is not None} for ch in channels()]


# -- the synthetic sample stream ---------------------------------------------------------

RATE = 10_000_000                       # bytes per second, for all readers together
BLOCK = 64 << 10
HEADER = struct.Struct("<4sIQ")
SAMPLES = (BLOCK - HEADER.size) // 4    # int16 I + int16 Q per sample
PERIOD = 1000                           # samples per cycle of the tone


def _tone(count):
    """`count` samples of a complex tone at 1/PERIOD of the sample rate, int16 I/Q."""
    values = []
    for n in range(count):
        phase = 2 * math.pi * n / PERIOD
        values += (round(12000 * math.cos(phase)), round(12000 * math.sin(phase)))
    return struct.pack(f"<{2 * count}h", *values)


# One period plus a block, so that any block is one contiguous slice of the table.
_TABLE = _tone(PERIOD + SAMPLES)
_generators = {}


async def _generate(ch):
    """Publish a block every BLOCK/RATE seconds while the channel has readers."""
    loop = asyncio.get_running_loop()
    seq = sample = 0
    due = loop.time()
    try:
        while ch.readers:
            offset = (sample % PERIOD) * 4
            block = HEADER.pack(b"PLIQ", seq & 0xFFFFFFFF, sample) + _TABLE[offset:offset + SAMPLES * 4]
            await ch.publish(block)
            seq += 1
            sample += SAMPLES
            due += BLOCK / RATE
            now = loop.time()
            if due < now - 0.25:
                due = now               # fell far behind (a busy loop): do not burst
            await asyncio.sleep(max(0.0, due - now))
    finally:
        _generators.pop(ch, None)
        ch.close()


@route("/stream")
async def sample_stream(request):
    ch = channel("samples", policy="skip", replay_chunks=16)
    response = channel_response(request, ch)      # subscribe first: the generator sees a reader
    if ch not in _generators:
        _generators[ch] = asyncio.get_running_loop().create_task(_generate(ch))
    return response


@on_shutdown
async def stop_generators():
    tasks = list(_generators.values())
    for task in tasks:
        task.cancel()
    for task in tasks:
        try:
            await task
        except (asyncio.CancelledError, Exception):   # noqa: BLE001 - shutting down
            pass

