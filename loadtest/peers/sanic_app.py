"""Sanic peer in a single process: static files from ROOT and GET /json.

Ranges on (`use_content_range`); files of 8 MiB and more streamed rather than read
whole into memory (`stream_large_files`). Sanic streams in 4 KiB reads, so its own
default threshold (1 MiB) would stream 1m.bin too and make that scenario about the
chunk size; 8 MiB keeps the 1 MiB file on the plain path and streams only 256m.bin.
Run by the harness with the peers' venv python:  python sanic_app.py ROOT PORT
"""

import sys

from sanic import Sanic
from sanic.response import json


def main() -> None:
    root, port = sys.argv[1], int(sys.argv[2])
    app = Sanic("pageloan_peer")

    @app.get("/json")
    async def json_hello(request):
        return json({"message": "Hello, World!"})

    app.static("/", root, use_content_range=True, stream_large_files=8 * 1024 * 1024)
    app.run(host="127.0.0.1", port=port, single_process=True, access_log=False, motd=False)


if __name__ == "__main__":
    main()
