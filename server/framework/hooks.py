"""Hooks: code that runs around requests, on errors, and at start-up and shut-down.

Theory of operation.  Handler modules declare hooks with decorators, the same way
they declare routes; the decorators collect into the module's registry
(registry.py), and the application merges every module's registry into one `Hooks`
in module load order (file names, sorted).  Hooks are application-wide: a
`@before_request` in one module sees the requests routed to another module, and the
static files too — everything except `/metrics`.

    @before_request      f(request)                 → None to go on, or a response
    @after_request       f(request, response)       → None to keep it, or a new response
    @middleware          f(request, call_next)      → await call_next(request), or not
    @error_handler(404)  f(request, error)          → the response for that status
    @error_handler(Exc)  f(request, exc)            → the response for that exception
    @on_startup / @on_shutdown   f() or f(app)       → run by app.startup() / shutdown()

Each may be `def` or `async def`; responses may be anything a handler may return.
When no request hook exists the application does not wrap requests at all, so an
application without hooks pays nothing for the feature.

Status error handlers are consulted for the errors the application produces itself
(404 no route or file, 405 wrong method, 400 bad request, 413 body too large, 500 a
handler failed) and for `raise HTTPError(status)`; a response a handler *returns*
with an error status is sent as it is.  Exception handlers are found along the
exception's class hierarchy (most specific first).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

from ..core.message import Message
from ..http.responses import StreamResponse
from ..http.wire import header_block
from .registry import Registry, current_registry

__all__ = [
    "before_request", "after_request", "middleware", "error_handler", "on_startup",
    "on_shutdown", "Hooks", "add_header", "call_maybe_async", "call_lifecycle_hook",
]

F = TypeVar("F", bound=Callable[..., Any])


def before_request(func: F) -> F:
    """Run `func(request)` before routing; a non-None return answers the request."""
    current_registry().before_request.append(func)
    return func


def after_request(func: F) -> F:
    """Run `func(request, response)` after the answer is built; may return a new one."""
    current_registry().after_request.append(func)
    return func


def middleware(func: F) -> F:
    """Wrap request handling: `async def mw(request, call_next): return await call_next(request)`.

    The first middleware registered is the outermost.
    """
    current_registry().middleware.append(func)
    return func


def error_handler(key: int | type[BaseException]) -> Callable[[F], F]:
    """Answer a status (`@error_handler(404)`) or an exception class (`@error_handler(KeyError)`)."""
    if not (isinstance(key, int) or (isinstance(key, type) and issubclass(key, BaseException))):
        raise TypeError("error_handler takes an HTTP status code or an exception class")

    def register(func: F) -> F:
        current_registry().error_handlers.append((key, func))
        return func
    return register


def on_startup(func: F) -> F:
    """Run `func()` when the server starts (and when its module is reloaded)."""
    current_registry().on_startup.append(func)
    return func


def on_shutdown(func: F) -> F:
    """Run `func()` when the server stops (and before its module is reloaded)."""
    current_registry().on_shutdown.append(func)
    return func


async def call_lifecycle_hook(func: Callable[..., Any], app: Any) -> Any:
    """Call an on_startup/on_shutdown hook, with the application if it takes an argument."""
    try:
        takes_app = bool(inspect.signature(func).parameters)
    except (TypeError, ValueError):   # a builtin without a signature
        takes_app = False
    return await call_maybe_async(func, app) if takes_app else await call_maybe_async(func)


async def call_maybe_async(func: Callable[..., Any], *args: Any) -> Any:
    """Call a hook that may be `def` or `async def`."""
    result = func(*args)
    if inspect.isawaitable(result):
        result = await result
    return result


def add_header(response: Message | StreamResponse, name: str, value: str) -> None:
    """Add a header field to a response (for after-request hooks and middleware).

    On a Message this pushes one more header slice: the stack goes on the wire top
    first, so it lands after the status line and before the entity block.
    """
    if isinstance(response, StreamResponse):
        response.headers.append((name, value))
    else:
        response.push(header_block([(name, value)], end=False))


class Hooks:
    """Every registry's hooks, merged in load order."""

    def __init__(self, registries: Iterable[Registry] = ()) -> None:
        self.before_request: list[Callable] = []
        self.after_request: list[Callable] = []
        self.middleware: list[Callable] = []
        self.on_startup: list[Callable] = []
        self.on_shutdown: list[Callable] = []
        self.status_handlers: dict[int, Callable] = {}
        self.exception_handlers: dict[type[BaseException], Callable] = {}
        for registry in registries:
            self.before_request += registry.before_request
            self.after_request += registry.after_request
            self.middleware += registry.middleware
            self.on_startup += registry.on_startup
            self.on_shutdown += registry.on_shutdown
            for key, func in registry.error_handlers:
                if isinstance(key, int):
                    self.status_handlers[key] = func
                else:
                    self.exception_handlers[key] = func

    @property
    def wraps_requests(self) -> bool:
        return bool(self.before_request or self.after_request or self.middleware)

    def for_exception(self, exc: BaseException) -> Callable | None:
        if not self.exception_handlers:
            return None
        for cls in type(exc).__mro__:
            func = self.exception_handlers.get(cls)
            if func is not None:
                return func
        return None

