"""aiohttp peer on uvloop, one process: static files from ROOT and GET /json.

Run by the harness with the peers' venv python:  python aiohttp_app.py ROOT PORT
"""

import sys

import uvloop
from aiohttp import web


async def json_hello(request: web.Request) -> web.Response:
    return web.json_response({"message": "Hello, World!"})


def main() -> None:
    root, port = sys.argv[1], int(sys.argv[2])
    app = web.Application()
    app.router.add_get("/json", json_hello)
    app.router.add_static("/", root)
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None,
                loop=uvloop.new_event_loop())


if __name__ == "__main__":
    main()
