"""The `pageloan` command: `serve` (one process, or N workers) and `hash-password`.

With `--workers N` the parent forks N worker processes, each with its own listening
socket bound with SO_REUSEPORT so the kernel spreads connections across them; a
worker that dies is restarted.  SIGTERM or SIGINT makes every worker stop accepting,
finish the responses in flight (up to --drain-timeout) and exit.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import os
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .config import ServerConfig

__all__ = ["main", "build_parser", "config_from_args", "run_worker"]

log = logging.getLogger("pageloan")

PACKAGE_DIR = Path(__file__).resolve().parent


def _bundled(name: str) -> Path:
    """The bundled `static/` or `handlers/`: beside the package (a checkout or an
    editable install), else where a wheel install put its data files."""
    beside = PACKAGE_DIR.parent / name
    if beside.is_dir():
        return beside
    installed = Path(sys.prefix) / "share" / "pageloan" / name
    return installed if installed.is_dir() else beside


BUNDLED_STATIC = _bundled("static")
BUNDLED_HANDLERS = _bundled("handlers")

# Other modules add their own options here (name → add_arguments(parser)); kept as a
# list so a capability can plug in without this file knowing its flags.
_OPTION_PROVIDERS: list[Callable[[argparse.ArgumentParser], None]] = []


def _size(text: str) -> int:
    units = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30}
    text = text.strip().lower().removesuffix("b").removesuffix("i")
    if text and text[-1] in units:
        return int(float(text[:-1]) * units[text[-1]])
    return int(text)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pageloan", description="minimal-copy HTTP/1.1 file and handler server")
    sub = parser.add_subparsers(dest="command")
    serve = sub.add_parser("serve", help="serve a directory (default: the bundled static/ site)")
    serve.add_argument("root", nargs="?", type=Path, help="directory to serve (default: bundled static/)")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=8080, help="port (default 8080; 0 picks a free one)")
    serve.add_argument("--workers", type=int, default=1, help="worker processes sharing the port (SO_REUSEPORT)")
    serve.add_argument("--handlers", type=Path, help="directory of drop-in handler modules")
    serve.add_argument("--reload", action="store_true", help="reload changed handler modules")
    serve.add_argument("--access-log", nargs="?", const="-", default=None, metavar="FILE",
                       help="combined-format access log to FILE (or stdout)")
    serve.add_argument("--metrics", action="store_true", help="serve Prometheus metrics at /metrics")
    serve.add_argument("--debug", action="store_true", help="show tracebacks in 500 responses")
    serve.add_argument("--tls-cert", type=Path, help="PEM certificate chain (enables TLS)")
    serve.add_argument("--tls-key", type=Path, help="PEM private key")
    serve.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    limits = serve.add_argument_group("limits")
    limits.add_argument("--max-header-size", type=_size, default=ServerConfig.max_header_bytes)
    limits.add_argument("--max-body-size", type=_size, default=ServerConfig.max_body_bytes)
    limits.add_argument("--max-connections", type=int, default=ServerConfig.max_connections)
    limits.add_argument("--header-timeout", type=float, default=ServerConfig.header_timeout)
    limits.add_argument("--body-timeout", type=float, default=ServerConfig.body_timeout)
    limits.add_argument("--keepalive-timeout", type=float, default=ServerConfig.keepalive_timeout)
    limits.add_argument("--drain-timeout", type=float, default=ServerConfig.drain_timeout)
    limits.add_argument("--connection-loan-budget", type=_size, default=ServerConfig.connection_loan_budget)
    limits.add_argument("--global-loan-budget", type=_size, default=ServerConfig.global_loan_budget)
    tuning = serve.add_argument_group("send path")
    tuning.add_argument("--sendfile-step", type=_size, default=ServerConfig.sendfile_step)
    tuning.add_argument("--gather-max", type=_size, default=ServerConfig.gather_max,
                        help="file regions up to this size leave as mmap windows in the header's writev")
    tuning.add_argument("--map-max", type=_size, default=ServerConfig.map_max,
                        help="files up to this size are mapped, so their small ranges can be gathered")
    tuning.add_argument("--no-answer-memo", dest="answer_memo", action="store_false",
                        help="parse and build every request, even byte-identical repeats of static ones")
    for provide in _option_providers():
        provide(serve)
    sub.add_parser("hash-password", help="read a password on stdin, print a hash for --ftp-users")
    return parser


def _option_providers() -> list[Callable[[argparse.ArgumentParser], None]]:
    providers = list(_OPTION_PROVIDERS)
    try:
        from .static_options import add_static_arguments
        providers.append(add_static_arguments)
    except ImportError:
        pass
    try:
        from .ftp import add_ftp_arguments
        providers.append(add_ftp_arguments)
    except ImportError:
        pass
    return providers


def config_from_args(args: argparse.Namespace) -> ServerConfig:
    root_given = args.root is not None
    root = (args.root if root_given else BUNDLED_STATIC).resolve()
    if not root.is_dir():
        raise SystemExit(f"pageloan: {root} is not a directory")
    handlers = args.handlers
    if handlers is None and not root_given and BUNDLED_HANDLERS.is_dir():
        handlers = BUNDLED_HANDLERS
    if (args.tls_cert is None) != (args.tls_key is None):
        raise SystemExit("pageloan: --tls-cert and --tls-key go together")
    extra: dict[str, Any] = {"args": args}
    if getattr(args, "ftp_port", None) is not None:
        from .ftp import ftp_config_from_args
        try:
            extra["ftp"] = ftp_config_from_args(args, root)
        except (OSError, ValueError) as exc:
            raise SystemExit(f"pageloan: FTP: {exc}") from None
    return ServerConfig(
        root=root, host=args.host, port=args.port, workers=max(1, args.workers),
        handlers=handlers, reload=args.reload, access_log=args.access_log,
        metrics=args.metrics, debug=args.debug, tls_cert=args.tls_cert, tls_key=args.tls_key,
        max_header_bytes=args.max_header_size, max_body_bytes=args.max_body_size,
        max_connections=args.max_connections, header_timeout=args.header_timeout,
        body_timeout=args.body_timeout, keepalive_timeout=args.keepalive_timeout,
        drain_timeout=args.drain_timeout, connection_loan_budget=args.connection_loan_budget,
        global_loan_budget=args.global_loan_budget, sendfile_step=args.sendfile_step,
        gather_max=args.gather_max, map_max=args.map_max, answer_memo=args.answer_memo,
        extra=extra,
    )


def _new_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop
    except ImportError:   # plain asyncio works too, only slower
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


def build_app(config: ServerConfig) -> Any:
    """The application for this config: handler routes beside the static site."""
    try:
        from .framework import build_application
    except ImportError:
        from .app import Application
        from .filecache import OpenFileCache
        from .static import StaticSite
        static = StaticSite(config.root, cache=OpenFileCache(map_max=config.map_max)) if config.root else None
        return Application(static, metrics=config.metrics)
    return build_application(config)


def run_worker(config: ServerConfig, ready: Callable[[int], None] | None = None) -> int:
    """Serve in this process until SIGTERM/SIGINT; returns the exit status."""
    from .server import Server

    loop = _new_loop()
    asyncio.set_event_loop(loop)
    try:
        app = build_app(config)
    except Exception as exc:  # noqa: BLE001 - a handler failing to import stops start-up
        log.error("pageloan: cannot start: %s", exc)
        return 2
    server = Server(config, app, loop)
    stop = asyncio.Event()
    extras: list[Any] = []

    async def start() -> None:
        # Start-up hooks run before the first connection is accepted, so no handler
        # can see state that does not exist yet.
        startup = getattr(app, "startup", None)
        if startup is not None:
            await startup()
        await server.start()
        ftp_config = config.extra.get("ftp")
        if ftp_config is not None:
            from .ftp import start_ftp
            service = await start_ftp(ftp_config)
            extras.append(service)
            log.info("pageloan: FTP on %s port %s", ftp_config.host, service.port)

    try:
        loop.run_until_complete(start())
    except Exception as exc:  # noqa: BLE001 - a failing start-up hook or bind stops start-up
        log.error("pageloan: cannot start: %s", exc, exc_info=not isinstance(exc, OSError))
        loop.close()
        return 2
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    # Everything built at start-up (modules, routes, caches) lives for the whole run:
    # move it out of the collector's generations so collections scan only request garbage.
    gc.freeze()
    scheme = "https" if config.tls_cert else "http"
    log.info("pageloan: serving %s on %s://%s:%d/ (pid %d)", config.root, scheme,
             config.host, server.port, os.getpid())
    if ready is not None:
        ready(server.port or 0)

    async def serve_until_stopped() -> None:
        await stop.wait()
        log.info("pageloan: draining %d connection(s)", len(server.ctx.connections))
        await server.drain()
        for service in extras:
            await service.close()
        shutdown = getattr(app, "shutdown", None)
        if shutdown is not None:
            await shutdown()

    try:
        loop.run_until_complete(serve_until_stopped())
    finally:
        loop.close()
    log.info("pageloan: stopped")
    return 0


def run_workers(config: ServerConfig) -> int:
    """Fork `config.workers` workers and keep that many alive until told to stop.

    The application is built once here first, so a handler module that cannot be
    imported stops start-up with one clear message instead of a restart loop; a
    worker that exits with status 2 (cannot start) is not restarted either.
    """
    try:
        build_app(config)
    except Exception as exc:  # noqa: BLE001
        log.error("pageloan: cannot start: %s", exc)
        return 2
    children: dict[int, int] = {}
    stopping = False
    status_code = 0

    def spawn(slot: int) -> None:
        pid = os.fork()
        if pid == 0:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            os._exit(run_worker(config))
        children[pid] = slot

    def on_stop(signum: int, _frame: Any) -> None:
        nonlocal stopping
        stopping = True
        for pid in list(children):
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass

    signal.signal(signal.SIGTERM, on_stop)
    signal.signal(signal.SIGINT, on_stop)
    for slot in range(config.workers):
        spawn(slot)
    recent_deaths: list[float] = []
    while children:
        try:
            pid, status = os.wait()
        except ChildProcessError:
            break
        except InterruptedError:
            continue
        slot = children.pop(pid, None)
        if slot is None or stopping:
            continue
        code = os.waitstatus_to_exitcode(status)
        if code == 2:
            log.error("pageloan: worker %d cannot start; stopping", pid)
            status_code = 2
            on_stop(signal.SIGTERM, None)
            continue
        log.warning("pageloan: worker %d exited (%d); restarting", pid, code)
        now = time.monotonic()
        recent_deaths = [t for t in recent_deaths if now - t < 10] + [now]
        if len(recent_deaths) > 5 * config.workers:
            log.error("pageloan: workers keep dying; giving up")
            status_code = 1
            on_stop(signal.SIGTERM, None)
            continue
        spawn(slot)
    return status_code


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "hash-password":
        from .passwords import main as hash_main
        return hash_main() or 0
    if args.command != "serve":
        parser.print_help()
        return 2
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)
    config = config_from_args(args)
    if config.access_log:
        access = logging.getLogger("pageloan.access")
        access.propagate = False
        handler = logging.StreamHandler(sys.stdout) if config.access_log == "-" \
            else logging.FileHandler(config.access_log)
        handler.setFormatter(logging.Formatter("%(message)s"))
        access.addHandler(handler)
        access.setLevel(logging.INFO)
    if config.workers > 1:
        return run_workers(config)
    return run_worker(config)
