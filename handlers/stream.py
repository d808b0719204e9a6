"""`GET /count/{n:int}`: a streamed (chunked) body from an async generator.

Returning an async generator streams it: each yielded piece leaves as one chunk
as soon as it is produced, and the session waits while the client is slow to read.
"""

import asyncio

from server import StreamResponse, route


@route("/count/{n:int}")
def count(request, n):
    async def lines():
        for i in range(1, min(n, 10_000) + 1):
            yield f"{i}\n"
            if i % 100 == 0:
                await asyncio.sleep(0)   # let other connections run

    return StreamResponse(lines(), content_type="text/plain; charset=utf-8")
