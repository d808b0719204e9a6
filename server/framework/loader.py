"""Discovering handler modules in a directory, importing them, and reloading them.

Theory of operation.  Every `*.py` file at the top of the handlers directory whose
name does not start with "_" is a *handler module*.  Each is imported with importlib
under a private package (`_pageloan_handlers.hello`, not `hello`), so a handler file
called `json.py` or `email.py` cannot shadow — or be shadowed by — a module of the
standard library or site-packages.  The package's `__path__` is the directory, so
handler modules may share code through relative imports (`from . import _common`);
files starting with "_" and subdirectories are such helpers, imported only on demand.

While a module is being imported, `registry.collecting` makes a fresh Registry
current, so its `@route`s and hooks land in a registry of its own; a module-level
`ROUTES = [...]` table is added to the same registry afterwards.

Handler modules are compiled from their source each time (no `__pycache__` is read
or written for them): a file edited twice in one second with the same size would
otherwise be matched by a stale cached byte-code file, whose check is mtime-in-
seconds and size.  (Helpers go through the ordinary import system and its cache.)

Start-up is strict: any module that fails to import stops the server, with the
traceback in the error.  Reload (`--reload`) is forgiving: a `Reloader` polls the
files' (mtime, size, inode) once a second with `loop.call_later` — a few `stat`s, no
thread, no inotify dependency — and re-imports what changed.  A module that fails
to import keeps its last good version in service and its traceback is logged; the
modules that did import go into service together, unless their routes clash, in
which case the whole previous set stays.  A module left out either way is retried
with the next change to any file, since that change may be its fix.  A change to a
helper re-imports every handler module, since any of them may use it.  The
listening socket and the open connections are never touched.
"""

from __future__ import annotations

import asyncio
import importlib.machinery
import importlib.util
import itertools
import logging
import os
import sys
import traceback
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .hooks import call_lifecycle_hook
from .registry import Registry, collecting
from .routing import Mount, Route

__all__ = ["HandlerLoadError", "HandlerDirectory", "Reloader", "PACKAGE_PREFIX"]

log = logging.getLogger("pageloan.handlers")

PACKAGE_PREFIX = "_pageloan_handlers"
POLL_INTERVAL = 1.0
MAX_SCANNED_FILES = 2000    # a runaway directory must not make each poll expensive
_package_numbers = itertools.count(1)

Stamp = tuple[int, int, int]


class HandlerLoadError(Exception):
    """One or more handler modules cannot be imported (or their routes clash)."""


class _FreshSourceLoader(importlib.machinery.SourceFileLoader):
    """A source loader that compiles from the file every time (see the module comment)."""

    def get_code(self, fullname: str) -> types.CodeType:
        source = self.get_data(self.path)
        return self.source_to_code(source, self.path)


class HandlerModule:
    """One imported handler module and what it declared."""

    __slots__ = ("file_name", "module", "registry")

    def __init__(self, file_name: str, module: types.ModuleType, registry: Registry) -> None:
        self.file_name = file_name
        self.module = module
        self.registry = registry


def is_handler_file(name: str) -> bool:
    return name.endswith(".py") and "/" not in name and not name.startswith(("_", "."))


def add_route_table(module: types.ModuleType, registry: Registry) -> None:
    """Add the entries of a module-level `ROUTES = [...]` to the module's registry.

    Entries: `Route(...)`, `mount(...)`, or tuples `(pattern, handler)` /
    `(pattern, handler, methods)`.
    """
    table = getattr(module, "ROUTES", None)
    if table is None:
        return
    known = {id(r) for r in registry.routes} | {id(m) for m in registry.mounts}
    for entry in table:
        if id(entry) in known:
            continue          # a mount(...) call inside the table registered itself already
        if isinstance(entry, Route):
            registry.routes.append(entry)
        elif isinstance(entry, Mount):
            registry.mounts.append(entry)
        elif isinstance(entry, tuple) and 2 <= len(entry) <= 3 and isinstance(entry[0], str):
            registry.routes.append(Route(*entry))
        else:
            raise TypeError(f"ROUTES entry {entry!r}: expected Route(...), mount(...) "
                            f"or (pattern, handler[, methods])")


class _ReloadPlan:
    """Re-imported modules, not yet in service: `commit()` or `abandon()`."""

    def __init__(self, directory: HandlerDirectory, modules: dict[str, HandlerModule],
                 replaced: list[tuple[HandlerModule | None, HandlerModule | None]]) -> None:
        self.directory = directory
        self.modules = modules
        self.replaced = replaced      # (old, new); new None: removed; old None: added

    def registries(self) -> list[Registry]:
        return [self.modules[name].registry for name in sorted(self.modules)]

    def commit(self) -> None:
        self.directory.modules = self.modules
        self.directory.pending.clear()
        for old, new in self.replaced:
            if new is None and old is not None:
                sys.modules.pop(self.directory.module_name(old.file_name), None)

    def abandon(self) -> None:
        for old, new in self.replaced:
            if old is not None:
                sys.modules[self.directory.module_name(old.file_name)] = old.module
            if new is not None:
                self.directory.pending.add(new.file_name)


class HandlerDirectory:
    """The handler modules of one directory, as last imported successfully."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory).resolve()
        number = next(_package_numbers)
        self.package = PACKAGE_PREFIX if number == 1 else f"{PACKAGE_PREFIX}_{number}"
        self.modules: dict[str, HandlerModule] = {}      # file name → last good import
        self._seen: dict[str, Stamp] = {}                # relative path → stamp at last look
        # Modules whose newest version is not in service (it failed to import, or
        # clashed with another module): retried with the next change of any file,
        # since that change may be what fixes them.
        self.pending: set[str] = set()

    def module_name(self, file_name: str) -> str:
        return f"{self.package}.{file_name.removesuffix('.py')}"

    def registries(self) -> list[Registry]:
        return [self.modules[name].registry for name in sorted(self.modules)]

    # -- start-up ----------------------------------------------------------------------
    def load(self) -> list[Registry]:
        """Import every handler module; HandlerLoadError (with tracebacks) if any fails."""
        if not self.directory.is_dir():
            raise HandlerLoadError(f"handlers directory {self.directory} is not a directory")
        self._install_package()
        failures = []
        self._seen = self.scan()
        for name in sorted(n for n in self._seen if is_handler_file(n)):
            try:
                self.modules[name] = self._import(name)
            # A handler module is user code: whatever its import raises (even
            # sys.exit) is reported with its traceback; it never crashes the server.
            except (Exception, SystemExit) as exc:  # noqa: BLE001 - user code
                failures.append(f"handler module {name} (in {self.directory}) failed to import:\n"
                                f"{self.traceback_of(exc)}")
        if failures:
            raise HandlerLoadError("\n".join(failures))
        return self.registries()

    def _install_package(self) -> None:
        package = types.ModuleType(self.package, f"pageloan handler modules from {self.directory}")
        spec = importlib.machinery.ModuleSpec(self.package, None, is_package=True)
        spec.submodule_search_locations = [str(self.directory)]
        package.__spec__ = spec
        package.__path__ = spec.submodule_search_locations
        package.__package__ = self.package
        sys.modules[self.package] = package

    def _import(self, file_name: str) -> HandlerModule:
        name = self.module_name(file_name)
        path = str(self.directory / file_name)
        loader = _FreshSourceLoader(name, path)
        spec = importlib.util.spec_from_file_location(name, path, loader=loader)
        assert spec is not None
        module = importlib.util.module_from_spec(spec)
        registry = Registry(file_name)
        previous = sys.modules.get(name)
        sys.modules[name] = module
        try:
            with collecting(registry):
                loader.exec_module(module)
            add_route_table(module, registry)
        except BaseException:
            if previous is not None:
                sys.modules[name] = previous
            else:
                sys.modules.pop(name, None)
            raise
        return HandlerModule(file_name, module, registry)

    def traceback_of(self, exc: BaseException) -> str:
        """The traceback from the first frame in the handlers directory on.

        The importlib and loader frames above it say nothing about the user's bug; a
        SyntaxError has no user frame at all, and its own text shows file and line.
        """
        tb = exc.__traceback__
        inside = str(self.directory) + os.sep
        while tb is not None and not tb.tb_frame.f_code.co_filename.startswith(inside):
            tb = tb.tb_next
        if tb is None:
            return "".join(traceback.format_exception_only(exc))
        return "".join(traceback.format_exception(type(exc), exc, tb))

    # -- watching ----------------------------------------------------------------------
    def scan(self) -> dict[str, Stamp]:
        """Relative path → (mtime_ns, size, inode) of every Python file in the directory."""
        stamps: dict[str, Stamp] = {}
        for top, dirs, files in os.walk(self.directory):
            dirs[:] = [d for d in dirs if not d.startswith(".") and d != "__pycache__"]
            for file_name in files:
                if not file_name.endswith(".py"):
                    continue
                path = os.path.join(top, file_name)
                try:
                    st = os.stat(path)
                except OSError:
                    continue          # removed between listing and stat
                stamps[os.path.relpath(path, self.directory)] = (st.st_mtime_ns, st.st_size, st.st_ino)
                if len(stamps) >= MAX_SCANNED_FILES:
                    return stamps
        return stamps

    def reload(self) -> _ReloadPlan | None:
        """Re-import what changed since the last look; None if nothing changed or
        every changed module failed (the failures are logged)."""
        now = self.scan()
        if now == self._seen:
            return None
        changed = {n for n in now.keys() | self._seen.keys() if now.get(n) != self._seen.get(n)}
        self._seen = now
        if any(not is_handler_file(n) for n in changed):
            self._forget_helpers()
            targets = sorted(n for n in now if is_handler_file(n))
        else:
            targets = sorted(n for n in changed | self.pending if n in now and is_handler_file(n))
        modules = dict(self.modules)
        replaced: list[tuple[HandlerModule | None, HandlerModule | None]] = []
        for name in sorted(n for n in self.modules if n not in now):
            replaced.append((modules.pop(name), None))
        for name in targets:
            try:
                fresh = self._import(name)
            except (Exception, SystemExit) as exc:  # noqa: BLE001 - user code; keep the last good version
                log.error("reloading handler module %s failed; keeping the last good version\n%s",
                          name, self.traceback_of(exc))
                self.pending.add(name)
                continue
            replaced.append((self.modules.get(name), fresh))
            modules[name] = fresh
        if not replaced:
            return None
        return _ReloadPlan(self, modules, replaced)

    def _forget_helpers(self) -> None:
        handler_names = {self.module_name(n) for n in self.modules}
        prefix = self.package + "."
        for name in [m for m in sys.modules if m.startswith(prefix) and m not in handler_names]:
            del sys.modules[name]


class Reloader:
    """Polls a HandlerDirectory once a second and installs what reloads cleanly."""

    def __init__(self, directory: HandlerDirectory, install: Callable[[list[Registry]], None],
                 *, app: Any = None, interval: float = POLL_INTERVAL) -> None:
        self.directory = directory
        self.install = install
        self.app = app             # passed to lifecycle hooks that take it
        self.interval = interval
        self._timer: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._lifecycle: set[asyncio.Task] = set()
        self.generation = 0        # successful reloads so far

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._timer = self._loop.call_later(self.interval, self._tick)

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _tick(self) -> None:
        try:
            self.check()
        except Exception:  # noqa: BLE001 - the poller must survive anything
            log.exception("handler reload check failed")
        if self._timer is not None and self._loop is not None:
            self._timer = self._loop.call_later(self.interval, self._tick)

    def check(self) -> bool:
        """Reload changed modules now; True if a new set went into service."""
        plan = self.directory.reload()
        if plan is None:
            return False
        try:
            self.install(plan.registries())
        except Exception as exc:  # noqa: BLE001 - e.g. a RouteConflict between modules
            log.error("reloaded handler modules not installed (%s); keeping the last good set", exc)
            plan.abandon()
            return False
        plan.commit()
        self.generation += 1
        names = ", ".join(module.file_name for old, new in plan.replaced if (module := new or old) is not None)
        log.info("reloaded handler modules: %s", names)
        if self._loop is not None:
            task = self._loop.create_task(self._cycle_lifecycle_hooks(plan.replaced))
            self._lifecycle.add(task)
            task.add_done_callback(self._lifecycle.discard)
        return True

    async def _cycle_lifecycle_hooks(self, replaced: list[tuple[Any, Any]]) -> None:
        """The replaced modules' on_shutdown hooks, then the new ones' on_startup hooks."""
        for old, _new in replaced:
            for hook in reversed(old.registry.on_shutdown if old else []):
                await _run_logged(hook, "on_shutdown", self.app)
        for _old, new in replaced:
            for hook in new.registry.on_startup if new else []:
                await _run_logged(hook, "on_startup", self.app)


async def _run_logged(hook: Callable, kind: str, app: Any) -> None:
    try:
        await call_lifecycle_hook(hook, app)
    except Exception:  # noqa: BLE001
        log.exception("%s hook %r failed during reload", kind, hook)
