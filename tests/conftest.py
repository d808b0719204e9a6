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

`slow` (deselected by `-m "not slow"`, the under-a-minute run) is normally put on a
test where it is defined; `SLOW_MODULES` / `SLOW_TESTS` below add it centrally to
tests measured at several seconds each on a busy two-core machine (a subprocess with
a framework to import per test, real timeouts, many connections), so the quick run
stays quick as the suite grows.  The full run (`python3 -m pytest -q`) runs them all.
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

SLOW_MODULES = frozenset({
    "test_asgi_apps.py",          # each test starts `pageloan serve --asgi` importing FastAPI
    "test_websocket_asgi.py",     # likewise, with Starlette/FastAPI websockets
    "test_ftp_fuzz.py",           # hypothesis examples against a server process
})
SLOW_TESTS = frozenset({
    "tests/test_channels.py::test_each_reader_gets_the_chunk_in_one_gather_call_unjoined",
    "tests/test_channels.py::test_stalled_reader_is_dropped_without_delaying_the_others",
    "tests/test_channels.py::test_stalled_sse_reader_is_skipped_to_the_live_edge_and_told",
    "tests/test_compression.py::test_precompress_refuses_bad_usage",
    "tests/test_config_file.py::test_check_config_exit_status",
    "tests/test_config_file.py::test_serve_dot_lists_only_with_autoindex_and_an_index_wins",
    "tests/test_ftp_transfers.py::test_retr_uses_sendfile_and_stor_uses_splice",
    "tests/test_hardening_server.py::test_systemd_socket_activation",
    "tests/test_hardening_server.py::test_unlinked_file_is_closed_by_the_sweep",
    "tests/test_limits_descriptors.py::test_connection_limit_follows_the_descriptor_limit",
    "tests/test_vhosts.py::test_sni_picks_each_sites_certificate",
    "tests/test_websocket.py::test_broadcast_lends_one_payload_to_every_socket",
    "tests/test_zerocopy.py::test_a_connection_closed_with_notices_pending_keeps_its_socket_until_they_arrive",
})


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if item.path.name in SLOW_MODULES or item.nodeid.split("[")[0] in SLOW_TESTS:
            item.add_marker(pytest.mark.slow)

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
