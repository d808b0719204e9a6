"""uvicorn + Starlette peer: httptools parser, uvloop, one worker; StaticFiles and /json.

Run by the harness with the peers' venv python:  python starlette_app.py ROOT PORT
"""

import sys

import uvicorn
from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles


async def json_hello(request):
    return JSONResponse({"message": "Hello, World!"})


def main() -> None:
    root, port = sys.argv[1], int(sys.argv[2])
    app = Starlette(routes=[
        Route("/json", json_hello),
        Mount("/", app=StaticFiles(directory=root)),
    ])
    uvicorn.run(app, host="127.0.0.1", port=port, loop="uvloop", http="httptools",
                workers=1, lifespan="off", access_log=False, log_level="warning")


if __name__ == "__main__":
    main()
