"""Putting the handler framework together: options → static site + handler modules → app.

Theory of operation: the CLI calls `build_application(options)` once per worker
process, before the server listens.  It builds the static site for `options.root`,
imports the handler modules of `options.handlers` (loader.py), merges their
registries into one router and one set of hooks, and returns the Application.  A
module that fails to import — or two modules routing the same pattern and method —
raises HandlerLoadError, whose message carries the tracebacks: the CLI logs it and
exits with status 2 rather than serve a site with routes silently missing.  With
`options.reload`, a Reloader is attached; `app.startup()` starts it on the running
loop.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..static.options import StaticOptions, static_site
from ..static.site import StaticSite
from .application import DEFAULT_HANDLER_THREADS, Application, router_from_registries
from .hooks import Hooks
from .loader import HandlerDirectory, HandlerLoadError, Reloader
from .registry import Registry
from .routing import RouteConflict

__all__ = ["AppOptions", "build_application"]


@dataclass
class AppOptions:
    """What the Application is made of: a static root, handler modules, switches."""

    root: Path | None = None                # static root (None: handlers only)
    static: StaticOptions = field(default_factory=StaticOptions)
    handlers: Path | None = None            # drop-in handler directory
    reload: bool = False                    # re-import changed handler modules
    metrics: bool = False                   # GET /metrics
    debug: bool = False                     # tracebacks in 500 answers
    handler_threads: int = DEFAULT_HANDLER_THREADS   # the pool `def` handlers run in


def build_application(options: AppOptions) -> Application:
    """The application for `options`; HandlerLoadError if a handler module is broken."""
    static: StaticSite | None = static_site(options.root, options.static) if options.root else None
    app = Application(static, metrics=options.metrics, debug=options.debug,
                      handler_threads=options.handler_threads)
    app.state.options = options
    if options.handlers is None:
        return app
    directory = HandlerDirectory(options.handlers)
    registries = directory.load()

    def install(registries: list[Registry]) -> None:
        app.install(router_from_registries(registries), Hooks(registries))

    try:
        install(registries)
    except RouteConflict as exc:
        raise HandlerLoadError(f"handler routes clash: {exc}") from exc
    if options.reload:
        app.reloader = Reloader(directory, install, app=app)
    return app
