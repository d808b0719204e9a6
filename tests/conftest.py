"""Shared fixtures (harness.py has the servers and clients they hand out).

    serve           async: `await serve(app=..., root=..., **ServerConfig)` → RunningServer,
                    in the test's own loop; closed after the test
    server_process  `server_process(args, prefix=[...], env=..., stderr=...)` → ServerProcess,
                    `python -m server serve ARGS`; killed after the test
    handler_site    async: `await handler_site({"name.py": source}, root=..., **options)` → Site,
                    handler modules built as `pageloan serve --handlers` builds them
    serve_thread    `serve_thread(app, **ServerConfig)` → ThreadedServer (a thread of its
                    own, for blocking clients); stopped after the test

Older names stay importable from here (`from conftest import free_port, ...`).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from harness import (
    REPO,
    RunningServer,
    ServerProcess,
    Site,
    ThreadedServer,
    free_port,
    make_server,
    raw_exchange,
    start_handler_site,
    start_in_loop,
    start_process,
    wait_for_port,
)

__all__ = ["REPO", "free_port", "wait_for_port", "make_server", "raw_exchange", "Running", "ServerProcess"]

Running = RunningServer     # the old name of the in-loop server's face


@pytest.fixture
async def serve() -> AsyncIterator[Callable[..., Any]]:
    """Start servers in this test's loop: `await serve(app=..., root=..., **config)`."""
    started: list[RunningServer] = []

    async def start(app: Callable[..., Any] | None = None, root: Path | None = None,
                    **options: Any) -> RunningServer:
        running = await start_in_loop(app, root, **options)
        started.append(running)
        return running

    yield start
    for running in started:
        await running.server.close()


@pytest.fixture
def server_process() -> Iterator[Callable[..., ServerProcess]]:
    """Start `python -m server serve ...` as a subprocess: `server_process(args, prefix=[...])`."""
    procs: list[ServerProcess] = []

    def start(args: list[str], **options: Any) -> ServerProcess:
        running = start_process(args, **options)
        procs.append(running)
        return running

    yield start
    for running in procs:
        running.stop(9)


@pytest.fixture
def serve_thread() -> Iterator[Callable[..., ThreadedServer]]:
    """Start a server in a thread of its own: `serve_thread(app, **config)`."""
    started: list[ThreadedServer] = []

    def start(app: Any, **config: Any) -> ThreadedServer:
        running = ThreadedServer(app, **config).start()
        started.append(running)
        return running

    yield start
    for running in started:
        running.stop()


@pytest.fixture
async def handler_site(tmp_path: Path) -> AsyncIterator[Callable[..., Any]]:
    """`await handler_site({"name.py": source, ...}, root=..., debug=..., ...)` → Site."""
    started: list[tuple[Site, RunningServer]] = []

    async def start(modules: dict[str, str] | None = None, *, root: Path | None = None,
                    directory: Path | None = None, **options: Any) -> Site:
        directory = directory or tmp_path / f"handlers{len(started) + 1}"
        site, running = await start_handler_site(directory, modules, root=root, **options)
        started.append((site, running))
        return site

    yield start
    for site, running in reversed(started):
        await site.app.shutdown()
        await running.server.close()
