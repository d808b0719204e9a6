"""Starlette on uvicorn peer for the fan-out scenario: a queue per reader.

Run by the harness with the peers' venv python:  python fanout_starlette.py ROOT PORT

    GET  /channels/{name}   a StreamingResponse fed from this reader's bounded queue
    POST /channels/{name}   each block of the request body is put on every reader's
                            queue (waiting while a queue is full: lossless,
                            back-pressure from the slowest reader), then None ends them

The usual way to fan out with an ASGI framework: uvicorn writes each chunk to each
reader's transport (one copy per reader), flow-controlled per connection.
"""

import asyncio
import sys

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, StreamingResponse
from starlette.routing import Route

QUEUES: dict[str, set[asyncio.Queue]] = {}


async def subscribe(request: Request) -> StreamingResponse:
    queue: asyncio.Queue = asyncio.Queue(maxsize=16)
    queues = QUEUES.setdefault(request.path_params["name"], set())
    queues.add(queue)

    async def body():
        try:
            while True:
                chunk = await queue.get()
                if chunk is None:
                    return
                yield chunk
        finally:
            queues.discard(queue)

    return StreamingResponse(body(), media_type="application/octet-stream")


async def publish(request: Request) -> JSONResponse:
    queues = QUEUES.setdefault(request.path_params["name"], set())
    size = 0
    async for chunk in request.stream():
        if chunk:
            size += len(chunk)
            for queue in list(queues):
                await queue.put(chunk)
    for queue in list(queues):
        await queue.put(None)
    return JSONResponse({"bytes": size})


app = Starlette(routes=[Route("/channels/{name}", subscribe, methods=["GET"]),
                        Route("/channels/{name}", publish, methods=["POST"])])


def main() -> None:
    import uvicorn
    port = int(sys.argv[2])
    uvicorn.run(app, host="127.0.0.1", port=port, loop="uvloop", http="httptools", workers=1,
                lifespan="off", access_log=False, log_level="warning")


if __name__ == "__main__":
    main()
