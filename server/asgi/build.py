"""Putting an ASGI server together from options: the application, a static site, trust.

`build_asgi_adapter` is called once per worker process before the server listens,
like the framework's `build_application`: it imports the application
(loading.py; AppLoadError names what is missing), builds the static site when a
ROOT was given beside `--asgi`, and returns the AsgiAdapter.
"""

from __future__ import annotations

from ..framework.build import AppOptions
from ..static.options import static_site
from .adapter import AsgiAdapter
from .loading import load_app
from .options import AsgiOptions

__all__ = ["build_asgi_adapter"]


def build_asgi_adapter(options: AsgiOptions, app_options: AppOptions, *, tls: bool = False) -> AsgiAdapter:
    app = load_app(options.app, factory=options.factory, app_dir=options.app_dir)
    static = static_site(app_options.root, app_options.static) if app_options.root is not None else None
    return AsgiAdapter(app, static=static, root_path=options.root_path,
                       scheme="https" if tls else "http", trusted=options.trusted(),
                       lifespan=options.lifespan, debug=app_options.debug, metrics=app_options.metrics)
