"""granian + Starlette peer: the same Starlette app as starlette_app.py, on granian's
Rust HTTP/1.1 server (ASGI interface, one worker, one runtime thread, uvloop).

Run by the harness with the peers' venv python:  python granian_app.py ROOT PORT
granian imports its target by name in the worker, so the document root travels in
the environment and `app` is built at import time.
"""

import os
import sys
from pathlib import Path

from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles


async def json_hello(request):
    return JSONResponse({"message": "Hello, World!"})


def build() -> Starlette:
    return Starlette(routes=[
        Route("/json", json_hello),
        Mount("/", app=StaticFiles(directory=os.environ["PEER_DOCROOT"])),
    ])


def main() -> None:
    from granian import Granian

    root, port = sys.argv[1], int(sys.argv[2])
    os.environ["PEER_DOCROOT"] = root
    Granian("granian_app:build", address="127.0.0.1", port=port, interface="asgi", factory=True,
            workers=1, runtime_threads=1, loop="uvloop", log_level="warning",
            working_dir=Path(__file__).resolve().parent).serve()


if __name__ == "__main__":
    main()
