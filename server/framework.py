"""Putting the handler framework together: config → static site + handler modules → app.

Theory of operation: `cli.build_app` calls `build_application(config)` once per
worker process, before the server listens.  It builds the static site for
`config.root`, imports the handler modules of `config.handlers` (handler_loader.py),
merges their registries into one router and one set of hooks, and returns the
Application.  A module that fails to import — or two modules routing the same
pattern and method — raises HandlerLoadError, whose message carries the
tracebacks: the CLI logs it and exits with status 2 rather than serve a site with
routes silently missing.  With `config.reload`, a Reloader is attached;
`app.startup()` starts it on the running loop.
"""

from __future__ import annotations

from typing import Any

from .app import Application, router_from_registries
from .config import ServerConfig
from .filecache import OpenFileCache
from .handler_loader import HandlerDirectory, HandlerLoadError, Reloader
from .hooks import Hooks
from .registry import Registry
from .routing import RouteConflict
from .static import StaticSite

__all__ = ["build_application", "static_site_for"]


def static_site_for(config: ServerConfig) -> Any:
    """The static site the config asks for (None without a root)."""
    if config.root is None:
        return None
    try:
        from .static_options import static_site_from_config
    except ImportError:
        return StaticSite(config.root, cache=OpenFileCache(map_max=config.map_max))
    return static_site_from_config(config)


def build_application(config: ServerConfig) -> Application:
    """The application for `config`; HandlerLoadError if a handler module is broken."""
    app = Application(static_site_for(config), metrics=config.metrics, debug=config.debug)
    app.state.config = config
    if config.handlers is None:
        return app
    directory = HandlerDirectory(config.handlers)
    registries = directory.load()

    def install(registries: list[Registry]) -> None:
        app.install(router_from_registries(registries), Hooks(registries))

    try:
        install(registries)
    except RouteConflict as exc:
        raise HandlerLoadError(f"handler routes clash: {exc}") from exc
    if config.reload:
        app.reloader = Reloader(directory, install, app=app)
    return app
