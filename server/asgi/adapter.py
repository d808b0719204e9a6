"""An ASGI application as the HTTP session's application callable, a static site first.

Theory of operation.  The session calls `adapter(request)` and accepts a Message, a
StreamResponse, an awaitable of either, or a RelayedAnswer.  With a static ROOT
beside the application, the StaticSite is asked first and its answer — a Message
of cached file regions, on pageloan's own fast path — is returned synchronously
(and a repeat of it is answered from the site's lane before any Request is made);
only what it does not name (a missing file, a method other than GET/HEAD) reaches
the application.  Everything else becomes an
HttpExchange (http.py) over a freshly built scope (scope.py).  A path that is not
valid UTF-8 is answered 400 without calling the application.

`startup()` / `shutdown()` run the lifespan protocol (lifespan.py); shutdown first
gives application tasks still running (background tasks after their response) a
moment to finish.  With `--metrics`, `GET /metrics` is pageloan's, answered before
the static site and the application.  `listening_on(host, port)` tells the scopes
the server address once the listener is bound.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from ..core.filecache import OpenFileCache
from ..core.metrics import METRICS
from ..http.request import BadRequest, Request
from ..http.responses import error_response, text_response
from ..static.site import StaticSite
from .http import ExchangeSettings, HttpExchange
from .lifespan import Lifespan
from .scope import ScopeMaker
from .websocket import AsgiWebSocket, WebSocketOpener, is_websocket_request
from .zerocopy import FileSource

__all__ = ["AsgiAdapter"]

log = logging.getLogger("pageloan.asgi")

TASKS_GRACE = 5.0


class AsgiAdapter:
    """`adapter(request)` → the static site's answer, or an ASGI exchange."""

    def __init__(self, app: Callable[..., Any], *, static: StaticSite | None = None,
                 root_path: str = "", scheme: str = "http", trusted: Any = None,
                 lifespan: str = "auto", debug: bool = False, metrics: bool = False) -> None:
        self.asgi_app = app
        self.metrics = metrics          # --metrics: GET /metrics is ours, before the app
        self.static = static
        state: dict[str, Any] = {}
        self.scopes = ScopeMaker(scheme=scheme, root_path=root_path, trusted=trusted, state=state)
        cache = static.cache if static is not None else OpenFileCache(max_entries=256)
        self.settings = ExchangeSettings(FileSource(cache), debug=debug)
        self.lifespan = Lifespan(app, state, lifespan)
        # The WebSocket implementation for `websocket` scopes (server.websocket's
        # WebSocketService, set by the CLI); None: upgrade requests get the http scope.
        self.websockets: WebSocketOpener | None = None
        if static is not None:
            # The site answers first, by path alone: its lane (static/lane.py) may keep
            # what it answered, and the session asks the lane before it builds a Request.
            static.lane.forget_all()
            static.lane.enabled = True

    @property
    def quick_answers(self) -> Any:
        """The static site's lane entries, asked by the HTTP session (static/lane.py)."""
        return self.static.lane.entries if self.static is not None else None

    def listening_on(self, host: str, port: int) -> None:
        self.scopes.server = (host, port)

    async def startup(self) -> None:
        await self.lifespan.startup()

    async def shutdown(self) -> None:
        tasks = [t for t in self.settings.tasks if not t.done()]
        if tasks:
            await asyncio.wait(tasks, timeout=TASKS_GRACE)
        await self.lifespan.shutdown()

    def __call__(self, request: Request) -> Any:
        if self.metrics and request.raw_path == b"/metrics":
            return text_response(METRICS.render(), content_type="text/plain; version=0.0.4; charset=utf-8")
        static = self.static
        if static is not None:
            answer = static.respond(request, keep=True)
            if answer is not None:
                return answer
        # (A head without an Upgrade field, told by one search of the lowered head the
        # session already made, is no upgrade: the common request skips the call.)
        if self.websockets is not None and (request.head is None or request.lowered_head.find(
                b"\r\nupgrade:") >= 0) and is_websocket_request(request):
            return AsgiWebSocket.for_request(self.asgi_app, self.scopes, request, self.websockets,
                                             self.settings)
        try:
            scope = self.scopes.http(request)
        except BadRequest as exc:
            return error_response(400, str(exc))
        return HttpExchange(self.asgi_app, scope, request, self.settings)
