"""Finding the application: `MODULE:ATTR` imported as uvicorn does, errors that say where.

The module is imported with the current directory (or `--app-dir`) first on
`sys.path` (the console script does not put it there, `python -m` does), so `pageloan serve --asgi main:app`
finds `./main.py` either way.  ATTR may be dotted (`main:api.app`).  With `factory`,
the attribute is called with no arguments and its result is the application.  An
ASGI 2 application (a class instantiated with the scope) is wrapped into ASGI 3.

Every failure is an AppLoadError whose message names the module or attribute at
fault; when the module itself was found but raised while importing, the traceback
is included, because the mistake is somewhere inside it.
"""

from __future__ import annotations

import importlib
import inspect
import os
import sys
import traceback
from collections.abc import Callable
from typing import Any

__all__ = ["AppLoadError", "load_app"]


class AppLoadError(Exception):
    """The ASGI application named on the command line cannot be loaded."""


def load_app(spec: str, *, factory: bool = False, app_dir: str | None = None) -> Callable[..., Any]:
    module_name, sep, attr_path = spec.partition(":")
    if not sep or not module_name or not attr_path:
        raise AppLoadError(f'--asgi: expected "MODULE:ATTRIBUTE" (e.g. main:app), got {spec!r}')
    where = os.path.abspath(app_dir) if app_dir else os.getcwd()
    if app_dir and not os.path.isdir(where):
        raise AppLoadError(f"--app-dir: {app_dir} is not a directory")
    if where in sys.path:
        sys.path.remove(where)
    sys.path.insert(0, where)
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name is not None and (module_name == exc.name or module_name.startswith(exc.name + ".")):
            raise AppLoadError(f"--asgi: cannot import module {module_name!r} (no such module)") from None
        raise AppLoadError(f"--asgi: error importing module {module_name!r}:\n"
                           + "".join(traceback.format_exception(exc))) from None
    except Exception as exc:  # noqa: BLE001 - any failure inside the app's module
        raise AppLoadError(f"--asgi: error importing module {module_name!r}:\n"
                           + "".join(traceback.format_exception(exc))) from None
    app: Any = module
    for part in attr_path.split("."):
        try:
            app = getattr(app, part)
        except AttributeError:
            raise AppLoadError(f"--asgi: module {module_name!r} has no attribute {attr_path!r}") from None
    if factory:
        if not callable(app):
            raise AppLoadError(f"--asgi: {spec} is not callable, so it cannot be a --factory")
        try:
            app = app()
        except Exception as exc:  # noqa: BLE001
            raise AppLoadError(f"--asgi: factory {spec} failed:\n"
                               + "".join(traceback.format_exception(exc))) from None
    if not callable(app):
        raise AppLoadError(f"--asgi: {spec} is a {type(app).__name__}, not an ASGI application")
    if _is_asgi2(app):
        return _asgi2_to_3(app)
    found: Callable[..., Any] = app
    return found


def _is_asgi2(app: Any) -> bool:
    """A class whose instances are made per scope and then called with (receive, send)."""
    return inspect.isclass(app) and not _takes_three(app)


def _takes_three(cls: type) -> bool:
    try:
        params = inspect.signature(cls).parameters
    except (TypeError, ValueError):
        return False
    return len(params) >= 3


def _asgi2_to_3(app: Any) -> Callable[..., Any]:
    async def asgi3(scope: dict, receive: Callable, send: Callable) -> None:
        instance = app(scope)
        await instance(receive, send)
    return asgi3
