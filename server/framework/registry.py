"""Where `@route` and the hook decorators put what they collect.

Theory of operation: decorators run at import time, when no application exists yet,
so they cannot register with one.  Instead they append to the *current registry*:
the handler loader opens a fresh `Registry` around the import of each handler module
(`collecting(...)`), so everything a module declares is scoped to that module.  That
scoping is what lets `--reload` replace one module's routes and hooks without
touching the others, and lets a failed re-import keep the module's previous
registry.  Outside any loader (a script or a test building an application by hand)
the decorators fill `DEFAULT_REGISTRY`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

__all__ = ["Registry", "DEFAULT_REGISTRY", "current_registry", "collecting"]


class Registry:
    """Routes, mounts and hooks declared by one handler module."""

    def __init__(self, name: str = "<default>") -> None:
        self.name = name
        self.routes: list[Any] = []            # routing.Route
        self.mounts: list[Any] = []            # routing.Mount
        self.before_request: list[Callable] = []
        self.after_request: list[Callable] = []
        self.middleware: list[Callable] = []
        self.error_handlers: list[tuple[int | type[BaseException], Callable]] = []
        self.on_startup: list[Callable] = []
        self.on_shutdown: list[Callable] = []

    def __repr__(self) -> str:
        return f"<Registry {self.name}: {len(self.routes)} routes, {len(self.mounts)} mounts>"


DEFAULT_REGISTRY = Registry()
_collecting: list[Registry] = []


def current_registry() -> Registry:
    """The registry a decorator running now should add to."""
    return _collecting[-1] if _collecting else DEFAULT_REGISTRY


@contextmanager
def collecting(registry: Registry) -> Iterator[Registry]:
    """Make `registry` current for the duration of the block (one module's import)."""
    _collecting.append(registry)
    try:
        yield registry
    finally:
        _collecting.pop()
