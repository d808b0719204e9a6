"""Real applications for the ASGI tests, written with Starlette and FastAPI as their users do.

Served by `pageloan serve --asgi asgi_apps:starlette_app` (or `:fastapi_app`) in a
subprocess with tests/ on PYTHONPATH.  The files they serve live in $ASGI_TEST_FILES (a tmp dir the test
fills); what happened out of band (background tasks, cleanup after a disconnect)
is reported by `/events`, so a test can poll for it instead of sleeping.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from pathlib import Path

from fastapi import FastAPI, Form, HTTPException, UploadFile
from pydantic import BaseModel
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, PlainTextResponse, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

FILES = Path(os.environ.get("ASGI_TEST_FILES", "."))
EVENTS: list[str] = []


@contextlib.asynccontextmanager
async def lifespan(app: Starlette):
    # Lifespan state: what startup yields is copied into every request's scope.
    yield {"greeting": "hello from startup", "started": 1}
    EVENTS.append("shutdown")


async def hello(request: Request) -> JSONResponse:
    return JSONResponse({"message": "hello", "greeting": request.state.greeting})


async def item(request: Request) -> JSONResponse:
    return JSONResponse({"id": request.path_params["item_id"], "q": request.query_params.getlist("q"),
                         "path": request.url.path, "root_path": request.scope["root_path"]})


async def echo_json(request: Request) -> JSONResponse:
    data = await request.json()
    return JSONResponse({"got": data, "length": len(await request.body())})


async def upload(request: Request) -> JSONResponse:
    async with request.form() as form:
        fields = {}
        for name, value in form.multi_items():
            if isinstance(value, str):
                fields[name] = value
            else:
                data = await value.read()
                fields[name] = {"filename": value.filename, "size": len(data), "head": data[:8].decode("latin-1")}
        return JSONResponse(fields)


async def stream(request: Request) -> StreamingResponse:
    count = int(request.query_params.get("n", "5"))

    async def pieces():
        for i in range(count):
            yield f"piece {i}\n"
            await asyncio.sleep(0)
    return StreamingResponse(pieces(), media_type="text/plain")


async def endless(request: Request) -> StreamingResponse:
    """Streams until the client goes away; records that its generator was closed."""
    block = b"x" * 65536

    async def forever():
        try:
            while True:
                yield block
        finally:
            EVENTS.append("endless closed")
    return StreamingResponse(forever(), media_type="application/octet-stream")


def _note(text: str) -> None:
    EVENTS.append(text)


async def with_background(request: Request) -> PlainTextResponse:
    tag = request.query_params.get("tag", "bg")
    return PlainTextResponse("accepted", background=BackgroundTask(_note, f"background {tag}"))


async def events(request: Request) -> JSONResponse:
    return JSONResponse(EVENTS)


async def boom(request: Request) -> PlainTextResponse:
    raise RuntimeError("the handler failed on purpose")


async def file_1m(request: Request) -> FileResponse:
    return FileResponse(FILES / "f1m.bin", media_type="application/octet-stream")


async def file_named(request: Request) -> FileResponse:
    return FileResponse(FILES / request.path_params["name"])


async def client_info(request: Request) -> JSONResponse:
    return JSONResponse({"client": list(request.client or ()), "scheme": request.url.scheme})


starlette_app = Starlette(
    routes=[
        Route("/hello", hello),
        Route("/items/{item_id:int}", item),
        Route("/echo", echo_json, methods=["POST"]),
        Route("/upload", upload, methods=["POST"]),
        Route("/stream", stream),
        Route("/endless", endless),
        Route("/background", with_background),
        Route("/events", events),
        Route("/boom", boom),
        Route("/file-1m", file_1m),
        Route("/files/{name}", file_named),
        Route("/client", client_info),
        Mount("/static", StaticFiles(directory=FILES / "static", check_dir=False), name="static"),
    ],
    lifespan=lifespan,
)


# -- FastAPI ---------------------------------------------------------------------------
fastapi_app = FastAPI(lifespan=lifespan)


class Order(BaseModel):
    name: str
    quantity: int
    tags: list[str] = []


@fastapi_app.get("/users/{user_id}")
async def get_user(user_id: int, verbose: bool = False, q: str | None = None) -> dict:
    return {"user_id": user_id, "verbose": verbose, "q": q}


@fastapi_app.post("/orders", status_code=201)
async def create_order(order: Order) -> dict:
    return {"total": order.quantity * 2, "order": order.model_dump()}


@fastapi_app.post("/form")
async def take_form(name: str = Form(...), upload: UploadFile | None = None) -> dict:
    size = len(await upload.read()) if upload is not None else None
    return {"name": name, "filename": upload.filename if upload else None, "size": size}


@fastapi_app.get("/missing")
async def missing() -> dict:
    raise HTTPException(status_code=404, detail="no such thing")


@fastapi_app.get("/crash")
async def crash() -> dict:
    raise ValueError("fastapi handler failed")


@fastapi_app.get("/state")
async def state(request: Request) -> dict:
    return {"greeting": request.state.greeting}
