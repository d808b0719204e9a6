"""The ASGI benchmark application: one Starlette app, served by pageloan, uvicorn and granian.

    /json          JSONResponse {"message": "Hello, World!"}
    /1m.bin        FileResponse of ROOT/1m.bin      (a Route: FileResponse as apps use it)
    /256m.bin      FileResponse of ROOT/256m.bin
    /<anything>    StaticFiles(directory=ROOT)      (so /1k.bin is StaticFiles, 1 KiB)

ROOT is $ASGI_BENCH_ROOT.  The same module object is what every server runs:

    pageloan serve --asgi asgi_bench_app:app --app-dir loadtest/peers
    python asgi_bench_app.py ROOT PORT uvicorn     # httptools, uvloop, 1 worker
    python asgi_bench_app.py ROOT PORT granian     # --interface asgi, 1 worker, 1 runtime thread, uvloop

No application code differs between them: what pageloan gains on the files comes
from the `http.response.pathsend` extension Starlette uses when the server offers it.
"""

import os
import sys
from pathlib import Path

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles


async def json_hello(request: Request) -> JSONResponse:
    return JSONResponse({"message": "Hello, World!"})


def make_app(root: Path) -> Starlette:
    async def file_response(request: Request) -> FileResponse:
        return FileResponse(root / request.url.path.lstrip("/"), media_type="application/octet-stream")

    return Starlette(routes=[
        Route("/json", json_hello),
        Route("/1m.bin", file_response),
        Route("/256m.bin", file_response),
        Mount("/", app=StaticFiles(directory=root, check_dir=False)),
    ])


app = make_app(Path(os.environ.get("ASGI_BENCH_ROOT", ".")))


def main() -> None:
    root, port, server = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    os.environ["ASGI_BENCH_ROOT"] = root      # for granian's worker, which imports this module
    if server == "uvicorn":
        import uvicorn
        uvicorn.run(make_app(Path(root)), host="127.0.0.1", port=port, loop="uvloop", http="httptools",
                    workers=1, lifespan="off", access_log=False, log_level="warning")
    elif server == "granian":
        from granian import Granian
        from granian.constants import HTTPModes, Interfaces, Loops
        from granian.log import LogLevels
        here = Path(__file__).resolve().parent
        Granian("asgi_bench_app:app", address="127.0.0.1", port=port, interface=Interfaces.ASGI,
                workers=1, runtime_threads=1, loop=Loops.uvloop, http=HTTPModes.http1, websockets=False,
                log_access=False, log_level=LogLevels.warning, working_dir=here).serve()
    else:
        raise SystemExit(f"unknown server {server!r} (uvicorn or granian)")


if __name__ == "__main__":
    main()
