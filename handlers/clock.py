"""`GET /clock`: a server-sent-events clock, one event a second.

Open it in a browser with `new EventSource("/clock")`, or `curl -N`.  The stream
ends after `?n=` events (default 60, at most 3600) or when the client goes away —
the server cancels the generator, and its `finally` would run.
"""

import asyncio
import time

from server import Event, HTTPError, route, sse_response


@route("/clock")
def clock(request):
    try:
        count = int(request.query_value("n", "60"))
    except ValueError:
        raise HTTPError(400, "n must be a number") from None
    if not 1 <= count <= 3600:
        raise HTTPError(400, "n must be between 1 and 3600")

    async def ticks():
        for number in range(count):
            if number:
                await asyncio.sleep(1.0)
            now = time.time()
            yield Event({"time": now, "text": time.strftime("%H:%M:%S", time.gmtime(now))},
                        event="tick", id=str(number))

    return sse_response(ticks(), heartbeat=15.0)
