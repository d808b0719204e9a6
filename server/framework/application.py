"""The application: what answers a Request — /metrics, routes, the static site, then 404.

Theory of operation.  An application is any callable `app(request)` returning a
Message, a StreamResponse, or an awaitable of either; the HTTP session knows nothing
more.  This one tries, in order:

    1. `/metrics`, when enabled (before everything, so hooks cannot hide it);
    2. the handler routes and mounts (routing.py): a literal segment beats a
       parameter; a path that some route has, but not for this method, is a 405
       with `Allow`;
    3. the files under the static root;
    4. 404.

The static path stays synchronous: its Message is handed back at once (the session
queues it without creating a task).  Parameterless GET routes whose `async def` has
no await are also offered to the session as quick routes (`quick_routes`): for a
lone keep-alive GET the session calls the handler there without routing, and a dict
it returns goes out as the JSON answer's slices without a Message — the same bytes
the general path sends.  Like the static lane they are off whenever hooks,
middleware or a router-callable could change an answer.  An `async def` handler
with no await in its body is run to its end in one step; any other `async def` handler's coroutine is
wrapped in one small coroutine that converts its result.  A `def` handler may block
(a database driver, a file read), so it runs in a bounded thread pool
(`handler_threads`, `--handler-threads`), never on the loop.  Request hooks
(hooks.py) add a wrapping coroutine only when some are registered; with none,
`_entry` *is* the plain dispatcher.

Errors are answered here, not in the session, so that error hooks can shape them:
`HTTPError` and the engine's `BadRequest`/`BodyTooLarge` become their status; any
other exception is logged with its traceback and becomes a 500 whose body says
nothing about the cause unless the server runs with `--debug`.

Routes and hooks are installed as one unit (`install`), so a reload swaps them
together between two requests; a request in flight keeps what it started with.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import traceback
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextvars import copy_context
from functools import partial
from typing import Any

from ..core.message import Message
from ..core.metrics import METRICS
from ..http.errors import HTTPError
from ..http.request import BadRequest, BodyTooLarge, Request
from ..http.responses import StreamResponse, empty_response, error_response, text_response
from ..http.wire import DATE, header_block
from ..static.error_pages import default_error_page
from ..static.site import StaticSite
from .hooks import Hooks, call_lifecycle_hook, call_maybe_async
from .registry import Registry
from .results import JSON_HEAD, NotAResponse, encode_json, json_message, to_response
from .routing import Route, Router

__all__ = ["Application", "State", "router_from_registries"]

log = logging.getLogger("pageloan.handlers")

Answer = Message | StreamResponse


class State(dict):
    """Application state shared by handlers: `request.app.state.db` or `...state["db"]`."""

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None

    def __setattr__(self, name: str, value: Any) -> None:
        self[name] = value

    def __delattr__(self, name: str) -> None:
        try:
            del self[name]
        except KeyError:
            raise AttributeError(name) from None


def router_from_registries(registries: Iterable[Registry]) -> Router:
    """One router holding every registry's routes and mounts (RouteConflict on a clash)."""
    router = Router()
    for registry in registries:
        for r in registry.routes:
            r.origin = registry.name
            router.add(r)
        for m in registry.mounts:
            m.origin = registry.name
            router.add_mount(m)
    return router


DEFAULT_HANDLER_THREADS = 40


class Application:
    def __init__(self, static: StaticSite | None = None, *, metrics: bool = False,
                 router: Any = None, hooks: Hooks | None = None, debug: bool = False,
                 handler_threads: int = DEFAULT_HANDLER_THREADS) -> None:
        self.static = static
        if static is not None:
            static.last_resort = True     # nothing answers after it here (static/rules.py)
        self.metrics = metrics
        self.debug = debug
        self.state = State()
        self.reloader: Any = None    # handler_loader.Reloader, started by startup()
        # WebSocket limits for `@websocket` routes (server.websocket.WebSocketOptions),
        # set by the CLI; None means that package's defaults.
        self.websocket_options: Any = None
        # `def` handlers may block (a database driver, a file read, a sleep): they run
        # in this bounded pool, so one of them never stalls the other connections.
        # `async def` handlers stay on the loop.
        self._threads = ThreadPoolExecutor(max_workers=handler_threads,
                                           thread_name_prefix="pageloan-handler")
        # Raw path → QuickRoute, asked by the HTTP session; one dict for the
        # application's life (sessions keep it), refilled by each install.
        self.quick_routes: dict[bytes, QuickRoute] = {}
        self.install(router, hooks)

    @classmethod
    def from_registries(cls, registries: Iterable[Registry], static: StaticSite | None = None,
                        **options: Any) -> Application:
        registries = list(registries)
        return cls(static, router=router_from_registries(registries), hooks=Hooks(registries), **options)

    def install(self, router: Any, hooks: Hooks | None = None) -> None:
        """Put routes and hooks in service together.

        `router` is a Router, or any callable `router(request)` returning an answer or
        None (the older interface), or None.
        """
        self.router = router
        self.hooks = hooks or Hooks()
        self._router = router if isinstance(router, Router) else None
        self._router_callable = router if router is not None and self._router is None else None
        self._entry: Callable[[Request], Any] = self._dispatch
        if self.hooks.wraps_requests:
            self._chain = self._build_chain(self.hooks.middleware)
            self._entry = self._dispatch_with_hooks
        # The static lane and the quick routes answer before `__call__` runs, so they
        # may only serve what no hook, middleware or router-callable could change from
        # request to request -- nor a subclass that answers its own way.
        direct = not self.hooks.wraps_requests and (
            type(self).__call__ is Application.__call__ and type(self)._dispatch is Application._dispatch)
        static = self.static
        if static is not None:
            # New routes start the lane empty.
            static.lane.forget_all()
            static.lane.enabled = direct and self._router_callable is None
        quick = self.quick_routes
        quick.clear()
        if self._router is not None and direct:
            for path, found in self._router.exact_routes("GET").items():
                if found.never_suspends and not (self.metrics and path == b"/metrics"):
                    quick[path] = QuickRoute(self, found)

    # -- lifecycle -------------------------------------------------------------------------
    async def startup(self) -> None:
        for hook in self.hooks.on_startup:
            await call_lifecycle_hook(hook, self)
        if self.reloader is not None:
            self.reloader.start()

    async def shutdown(self) -> None:
        if self.reloader is not None:
            self.reloader.stop()
        for hook in reversed(self.hooks.on_shutdown):
            try:
                await call_lifecycle_hook(hook, self)
            except Exception:  # noqa: BLE001 - one failing hook must not skip the others
                log.exception("on_shutdown hook %r failed", hook)
        self._threads.shutdown(wait=False, cancel_futures=True)

    # -- answering -------------------------------------------------------------------------
    @property
    def quick_answers(self) -> Mapping[bytes, Any] | None:
        """Raw path → static lane entry, which the HTTP session asks before it builds
        a Request (static/lane.py); the same dict for the application's life."""
        return self.static.lane.entries if self.static is not None else None

    def __call__(self, request: Request) -> Any:
        # The target's first bytes first: a slot read, where raw_path is a property.
        if self.metrics and request.target[:8] == b"/metrics" and request.raw_path == b"/metrics":
            return text_response(METRICS.render(), content_type="text/plain; version=0.0.4; charset=utf-8")
        return self._entry(request)

    def _dispatch(self, request: Request) -> Any:
        """Route → handler, else static file, else 404; may return an awaitable."""
        try:
            router = self._router
            if router is not None:
                found = router.match(request.method, request.raw_path)
                route = found.route
                if route is not None:
                    params = found.params
                    if params:   # (an empty match shares one dict: never hand it out)
                        request.route_params = params   # for hooks and middleware
                    if not route.is_async:
                        return self._in_thread(request, route.handler, params)
                    result = route.handler(request, **params) if params else route.handler(request)
                    if route.never_suspends:
                        # No await in the body: one step runs it to the end.  It runs in
                        # a copy of the context, as a task would, so context variables a
                        # handler sets do not leak into the next request.
                        try:
                            copy_context().run(result.send, None)
                        except StopIteration as done:
                            value = done.value
                            if type(value) is dict:      # the common JSON answer
                                return json_message(value)
                            return self._convert_sync(request, value)
                        raise RuntimeError(f"{route.name} suspended with no await in its body")
                    return self._finish(request, result)
                if found.allowed:
                    allow = ", ".join(sorted({*found.allowed, "OPTIONS"}))
                    if request.method == "OPTIONS":     # what this path answers, not an error
                        return empty_response(204, [("Allow", allow)], length=False)
                    return self.error(request, 405, headers=[("Allow", allow)])
            elif self._router_callable is not None:
                answer = self._router_callable(request)
                if answer is not None:
                    return answer
            static = self.static
            if static is not None:
                answer = static.respond(request, keep=True)
                if answer is not None:
                    return answer
                if request.method not in ("GET", "HEAD"):
                    return self.error(request, 405, headers=[("Allow", "GET, HEAD, OPTIONS")])
            return self.error(request, 404)
        except Exception as exc:  # noqa: BLE001 - any handler failure becomes an answer
            return self.exception_answer(request, exc)

    def _convert_sync(self, request: Request, result: Any) -> Any:
        try:
            return to_response(result)
        except NotAResponse:
            if inspect.isawaitable(result):   # a `def` that returned a coroutine
                return self._finish(request, result)
            raise

    async def _in_thread(self, request: Request, handler: Callable[..., Any],
                         params: Mapping[str, Any]) -> Answer:
        """Run a `def` handler in the pool, in a copy of this context (as a task would)."""
        call = partial(copy_context().run, partial(handler, request, **params))
        try:
            result = await asyncio.get_running_loop().run_in_executor(self._threads, call)
            if inspect.isawaitable(result):    # a `def` that returned a coroutine
                result = await result
            return to_response(result)
        except Exception as exc:  # noqa: BLE001
            return await _resolved(self.exception_answer(request, exc))

    async def _finish(self, request: Request, pending: Any) -> Answer:
        try:
            return to_response(await pending)
        except Exception as exc:  # noqa: BLE001
            return await _resolved(self.exception_answer(request, exc))

    # -- hooks -----------------------------------------------------------------------------
    def _build_chain(self, middleware: list[Callable]) -> Callable[[Request], Any]:
        async def innermost(request: Request) -> Answer:
            return await _resolved(self._dispatch(request))

        call_next: Callable[[Request], Any] = innermost
        for mw in reversed(middleware):
            call_next = _wrap_middleware(mw, call_next)
        return call_next

    async def _dispatch_with_hooks(self, request: Request) -> Answer:
        hooks, chain = self.hooks, self._chain     # one set throughout, even across a reload
        try:
            answer = None
            for hook in hooks.before_request:
                early = await call_maybe_async(hook, request)
                if early is not None:
                    answer = to_response(early)
                    break
            if answer is None:
                answer = await chain(request)
            for hook in hooks.after_request:
                replaced = await call_maybe_async(hook, request, answer)
                if replaced is not None:
                    answer = to_response(replaced)
            return answer
        except Exception as exc:  # noqa: BLE001
            return await _resolved(self.exception_answer(request, exc))

    # -- errors ----------------------------------------------------------------------------
    def exception_answer(self, request: Request, exc: Exception) -> Any:
        """The answer for an exception raised while answering (may be an awaitable)."""
        hook = self.hooks.for_exception(exc)
        if hook is not None:
            return self._run_error_hook(request, hook, exc)
        if isinstance(exc, HTTPError):
            return self.error(request, exc.status, exc.detail, headers=exc.headers, cause=exc)
        if isinstance(exc, BadRequest):
            return self.error(request, 400, str(exc), cause=exc)
        if isinstance(exc, BodyTooLarge):
            return self.error(request, 413, str(exc), cause=exc)
        if _is_body_failure(request, exc):
            # The client hung up or stalled mid-body: its failure, not a server error,
            # so no traceback.  The answer is moot if the connection is gone.
            log.info("%s %r: request body failed: %s", request.method, request.target, exc)
            status = 408 if isinstance(exc, TimeoutError) else 400
            return error_response(status, close=True)
        text = "".join(traceback.format_exception(exc))
        log.error("error answering %s %r\n%s", request.method, request.target, text)
        return self.error(request, 500, text if self.debug else None, cause=exc)

    def error(self, request: Request, status: int, detail: str | None = None, *,
              headers: Iterable[tuple[str, str]] = (), cause: BaseException | None = None) -> Any:
        """The error answer for `status`: the registered hook's, else the default page."""
        hook = self.hooks.status_handlers.get(status)
        if hook is not None:
            return self._run_error_hook(request, hook, cause or HTTPError(status, detail, headers))
        return self.default_error(status, detail, headers)

    def default_error(self, status: int, detail: str | None = None,
                      headers: Iterable[tuple[str, str]] = ()) -> Message:
        # 413: the rest of the body is still coming and will not be read; close.
        close = status == 413
        page_of = getattr(self.static, "error_page", None)
        page: Message | None = page_of(status) if page_of is not None and detail is None else None
        if page is None and detail is None and self.static is not None:
            page = default_error_page(status)     # a root's errors look like a site's (error_pages.py)
        if page is None:
            return error_response(status, detail, close=close, headers=headers)
        headers = list(headers)
        if headers:
            page.push(header_block(headers, end=False))
        page.close = page.close or close
        return page

    def _run_error_hook(self, request: Request, hook: Callable, error: BaseException) -> Any:
        try:
            result = hook(request, error)
            if inspect.isawaitable(result):
                return self._finish_error_hook(request, result, error)
            return to_response(result)
        except Exception as exc:  # noqa: BLE001 - the error hook itself failed
            return self._hook_failed(request, exc, error)

    async def _finish_error_hook(self, request: Request, pending: Any, error: BaseException) -> Answer:
        try:
            return to_response(await pending)
        except Exception as exc:  # noqa: BLE001
            return self._hook_failed(request, exc, error)

    def _hook_failed(self, request: Request, exc: Exception, error: BaseException) -> Message:
        text = "".join(traceback.format_exception(exc))
        log.error("error hook failed while answering %s %r (%r)\n%s", request.method,
                  request.target, error, text)
        return error_response(500, text if self.debug else None)


def _is_body_failure(request: Request, exc: Exception) -> bool:
    """Whether `exc` is the request body's own failure (disconnect, body timeout)."""
    body = request.body_stream
    # RequestBody keeps the exception it was failed with; a handler's own
    # ConnectionError (a database refusing, say) is a different object.
    return body is not None and exc is getattr(body, "error", None)


def _wrap_middleware(mw: Callable, call_next: Callable[[Request], Any]) -> Callable[[Request], Any]:
    async def call(request: Request) -> Answer:
        return to_response(await call_maybe_async(mw, request, call_next))
    return call


async def _resolved(answer: Any) -> Answer:
    if inspect.isawaitable(answer):
        answer = await answer
    resolved: Answer = answer
    return resolved


class QuickRoute:
    """A parameterless GET route whose `async def` never suspends, as the session's
    quick route: `answer(request)` runs the handler in one step (in a copy of the
    context, as `_dispatch` does) and returns a dict's JSON answer as slices — Date
    line first, as the session's `_send` would lay it out — or else whatever
    `_dispatch` would have returned for the value or the exception."""

    __slots__ = ("app", "route", "hits")

    def __init__(self, app: Application, route: Route) -> None:
        self.app = app
        self.route = route
        self.hits = 0          # requests answered here, for tests and tuning

    def answer(self, request: Request) -> Any:
        self.hits += 1
        try:
            result = self.route.handler(request)
            try:
                copy_context().run(result.send, None)
            except StopIteration as done:
                value = done.value
                if type(value) is dict:
                    body = encode_json(value)
                    return [DATE.head(200), JSON_HEAD % len(body), body]
                return self.app._convert_sync(request, value)
            raise RuntimeError(f"{self.route.name} suspended with no await in its body")
        except Exception as exc:  # noqa: BLE001 - any handler failure becomes an answer
            return self.app.exception_answer(request, exc)
