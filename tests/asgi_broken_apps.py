"""Applications that cannot start, for tests/test_asgi_cli.py."""

from __future__ import annotations

import contextlib

from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route


@contextlib.asynccontextmanager
async def _refuse(app: Starlette):
    raise RuntimeError("database unreachable at startup")
    yield


failing_startup = Starlette(routes=[Route("/", lambda r: PlainTextResponse("never"))], lifespan=_refuse)


async def raw_startup_failed(scope, receive, send):
    if scope["type"] == "lifespan":
        await receive()
        await send({"type": "lifespan.startup.failed", "message": "config file missing: /etc/app.toml"})


def make_app():
    """A factory, for --factory."""
    async def app(scope, receive, send):
        if scope["type"] != "http":
            return
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
        await send({"type": "http.response.body", "body": b"made by factory " + scope["path"].encode()})
    return app


not_an_app = 42
