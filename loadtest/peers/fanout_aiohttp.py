"""aiohttp peer for the fan-out scenario: the producer's chunks written to every reader.

Run by the harness with the peers' venv python:  python fanout_aiohttp.py ROOT PORT

    GET  /channels/{name}   a chunked StreamResponse that receives the stream
    POST /channels/{name}   each block of the request body is written to every
                            reader's StreamResponse in turn (`await resp.write`, which
                            waits while that reader's transport is over its
                            high-water mark), then every reader's response is ended

This is the straightforward aiohttp way to fan a stream out: lossless, back-pressure
from the slowest reader, one write (and one copy into the transport) per reader per
chunk.
"""

import asyncio
import sys

import uvloop
from aiohttp import web

READERS: dict[str, dict[web.StreamResponse, asyncio.Future]] = {}


async def subscribe(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
    response.enable_chunked_encoding()
    await response.prepare(request)
    ended = asyncio.get_running_loop().create_future()
    readers = READERS.setdefault(request.match_info["name"], {})
    readers[response] = ended
    try:
        await ended
    finally:
        readers.pop(response, None)
    return response


async def publish(request: web.Request) -> web.Response:
    readers = READERS.setdefault(request.match_info["name"], {})
    size = 0
    async for chunk in request.content.iter_any():
        size += len(chunk)
        for response, ended in list(readers.items()):
            try:
                await response.write(chunk)
            except (ConnectionResetError, RuntimeError):
                readers.pop(response, None)
                if not ended.done():
                    ended.set_result(None)
    for response, ended in list(readers.items()):
        try:
            await response.write_eof()
        except (ConnectionResetError, RuntimeError):
            pass
        if not ended.done():
            ended.set_result(None)
    return web.json_response({"bytes": size})


def main() -> None:
    port = int(sys.argv[2])
    app = web.Application(client_max_size=1 << 40)
    app.router.add_get("/channels/{name}", subscribe)
    app.router.add_post("/channels/{name}", publish)
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None,
                loop=uvloop.new_event_loop())


if __name__ == "__main__":
    main()
