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
import math
import os
import signal
import socket
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .asgi.build import build_asgi_adapter
from .asgi.lifespan import LifespanFailure
from .asgi.options import add_asgi_arguments
from .config import (
    Config,
    ConfigFileError,
    SiteConfig,
    apply_config_file,
    build_server_application,
    check_config,
    config_from_args,
    use_sites,
)
from .core.allocator import tune_allocator
from .core.metrics import METRICS, SharedMetrics
from .framework.application import DEFAULT_HANDLER_THREADS
from .ftp import add_ftp_arguments, start_ftp
from .http.config import ServerConfig
from .http.server import Server, inherited_listener
from .static.compression import add_precompress_arguments
from .static.options import StaticOptions, add_static_arguments
from .websocket.native import WebSocketService
from .websocket.options import add_websocket_arguments

__all__ = ["main", "build_parser", "config_from_args", "run_worker"]

log = logging.getLogger("pageloan")

# Each layer adds its own `serve` flags, so this file does not know their meaning.
OPTION_PROVIDERS: list[Callable[[argparse.ArgumentParser], None]] = [
    add_static_arguments, add_ftp_arguments, add_websocket_arguments, add_asgi_arguments]


# -- numeric options, range-checked (argparse names the option in its message) ------------
def _size(text: str, minimum: int = 0) -> int:
    """A byte count: `512`, `64k`, `4MiB`, `1.5g` (powers of 1024)."""
    units = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
    spelled = text.strip().lower().removesuffix("b").removesuffix("i")
    try:
        if spelled and spelled[-1] in units:
            number = float(spelled[:-1])
            if not math.isfinite(number):
                raise ValueError(text)
            value = int(number * units[spelled[-1]])
        else:
            value = int(spelled)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a size (a number of bytes, or with a unit: 64k, 4m, 1g)") from None
    if value < minimum:
        raise argparse.ArgumentTypeError(f"{text!r} is too small (at least {minimum} bytes)")
    return value


def _positive_size(text: str) -> int:
    return _size(text, minimum=1)


def _header_size(text: str) -> int:
    # Below this not even a browser's request line and usual headers fit.
    return _size(text, minimum=1 << 10)


def _ranged_int(low: int, high: int | None, what: str) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < low or (high is not None and value > high):
            bound = f"from {low} to {high}" if high is not None else f"at least {low}"
            raise argparse.ArgumentTypeError(f"{value} is not a valid {what} ({bound})")
        return value
    parse.__name__ = what      # argparse's fallback wording names the type
    return parse


def _seconds(minimum: float, *, inclusive: bool) -> Callable[[str], float]:
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
        too_small = value < minimum if inclusive else value <= minimum
        if not math.isfinite(value) or too_small:
            bound = f"at least {minimum:g}" if inclusive else f"more than {minimum:g}"
            raise argparse.ArgumentTypeError(f"{text!r} is not a valid timeout ({bound} seconds)")
        return value
    parse.__name__ = "timeout"
    return parse


_port = _ranged_int(0, 65535, "port")
_workers = _ranged_int(1, 1024, "worker count")
_handler_threads = _ranged_int(1, 1024, "handler thread count")
_connections = _ranged_int(1, None, "connection limit")
_timeout = _seconds(0.0, inclusive=False)
_drain = _seconds(0.0, inclusive=True)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pageloan", description="minimal-copy HTTP/1.1 file and handler server")
    parser.add_argument("--version", action="version", version=f"pageloan {_version()}")
    sub = parser.add_subparsers(dest="command")
    serve = sub.add_parser("serve", help="serve a directory (default: the bundled static/ site)")
    serve.add_argument("root", nargs="?", type=Path,
                       help="directory to serve (default: bundled static/); a lone number is the port "
                            "(pageloan serve 8000) unless a directory of that name exists")
    serve.add_argument("port_arg", nargs="?", type=_port, metavar="PORT", help="port, after ROOT")
    serve.add_argument("--config", type=Path, metavar="FILE",
                       help="TOML file with any of these options and several sites (flags override it)")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    serve.add_argument("--port", type=_port, default=None, help="port (default 8080; 0 picks a free one)")
    serve.add_argument("--workers", type=_workers, default=1, help="worker processes sharing the port (SO_REUSEPORT)")
    serve.add_argument("--handlers", type=Path, help="directory of drop-in handler modules")
    serve.add_argument("--handler-threads", type=_handler_threads, default=DEFAULT_HANDLER_THREADS, metavar="N",
                       help=f"threads that run `def` handlers, which may block (default {DEFAULT_HANDLER_THREADS}); "
                            "`async def` handlers run on the event loop")
    serve.add_argument("--reload", action="store_true", help="reload changed handler modules")
    serve.add_argument("--access-log", nargs="?", const="-", default=None, metavar="FILE",
                       help="combined-format access log to FILE (or stdout)")
    serve.add_argument("--metrics", action="store_true", help="serve Prometheus metrics at /metrics")
    serve.add_argument("--debug", action="store_true", help="show tracebacks in 500 responses")
    serve.add_argument("--tls-cert", type=Path, help="PEM certificate chain (enables TLS)")
    serve.add_argument("--tls-key", type=Path, help="PEM private key")
    serve.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    limits = serve.add_argument_group("limits")
    limits.add_argument("--max-header-size", type=_header_size, default=ServerConfig.max_header_bytes)
    limits.add_argument("--max-body-size", type=_size, default=ServerConfig.max_body_bytes)
    limits.add_argument("--max-connections", type=_connections, default=ServerConfig.max_connections)
    limits.add_argument("--header-timeout", type=_timeout, default=ServerConfig.header_timeout)
    limits.add_argument("--body-timeout", type=_timeout, default=ServerConfig.body_timeout)
    limits.add_argument("--keepalive-timeout", type=_timeout, default=ServerConfig.keepalive_timeout)
    limits.add_argument("--drain-timeout", type=_drain, default=ServerConfig.drain_timeout)
    balancer = serve.add_argument_group("behind a load balancer (docs/deployment.md)")
    balancer.add_argument("--proxy-protocol", action="store_true",
                          help="every connection starts with a PROXY protocol v1/v2 header "
                               "(HAProxy send-proxy); its client address is used")
    balancer.add_argument("--ready-path", default=None, metavar="PATH",
                          help="answer GET PATH with 200 'ready', and 503 once SIGTERM starts draining "
                               "(e.g. /readyz; off by default)")
    balancer.add_argument("--drain-delay", type=_drain, default=ServerConfig.drain_delay, metavar="SECONDS",
                          help="on SIGTERM, answer the ready path 503 for this long before closing "
                               "the listener (default 0: close at once)")
    limits.add_argument("--connection-loan-budget", type=_positive_size, default=ServerConfig.connection_loan_budget)
    limits.add_argument("--global-loan-budget", type=_positive_size, default=ServerConfig.global_loan_budget)
    tuning = serve.add_argument_group("send path")
    tuning.add_argument("--sendfile-step", type=_positive_size, default=ServerConfig.sendfile_step)
    tuning.add_argument("--gather-max", type=_size, default=ServerConfig.gather_max,
                        help="file regions up to this size leave as mmap windows in the header's writev")
    tuning.add_argument("--map-max", type=_size, default=StaticOptions.map_max,
                        help="files up to this size are mapped, so their small ranges can be gathered")
    tuning.add_argument("--zerocopy", action="store_true",
                        help="send large memory slices and mapped files with MSG_ZEROCOPY (Linux; docs/zerocopy.md)")
    tuning.add_argument("--zerocopy-min", type=_size, default=ServerConfig.zerocopy_min, metavar="SIZE",
                        help="smallest gather call sent with MSG_ZEROCOPY (default 10k)")
    tuning.add_argument("--zerocopy-copied-limit", type=int, default=ServerConfig.zerocopy_copied_limit,
                        metavar="N", help="copied-anyway sends in a row before a connection stops using "
                        "zerocopy (default 8; 0 never)")
    for provide in OPTION_PROVIDERS:
        provide(serve)
    sub.add_parser("hash-password", help="read a password on stdin, print a hash for --ftp-users")
    check = sub.add_parser("check-config", help="check a --config file; exit 0, or 2 with every problem")
    check.add_argument("file", type=Path)
    precompress = sub.add_parser("precompress", help="write .br/.zst/.gz siblings of the text files under ROOT")
    add_precompress_arguments(precompress)
    return parser


def _version() -> str:
    try:
        from importlib.metadata import PackageNotFoundError, version
        return version("pageloan")
    except PackageNotFoundError:      # a checkout that was never installed
        return "0.1.0"


def _new_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop
    except ImportError:   # plain asyncio works too, only slower
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


def _build(config: Config) -> Any:
    """The application callable: the handler framework's, or an ASGI app's (--asgi)."""
    if config.asgi is not None:
        return build_asgi_adapter(config.asgi, config.app, tls=config.server.tls_cert is not None)
    return build_server_application(config)


def run_worker(config: Config, ready: Callable[[int], None] | None = None, *,
               listener: socket.socket | None = None) -> int:
    """Serve in this process until SIGTERM/SIGINT; returns the exit status.

    `listener` is a socket to accept on instead of binding one (systemd's).
    """
    loop = _new_loop()
    asyncio.set_event_loop(loop)
    try:
        app = _build(config)
    except Exception as exc:  # noqa: BLE001 - a handler failing to import stops start-up
        log.error("pageloan: cannot start: %s", exc)
        return 2
    app.websocket_options = config.websocket
    if config.asgi is not None:
        app.websockets = WebSocketService(config.websocket)   # the ASGI websocket scope
    server = Server(config.server, app, loop)
    stop = asyncio.Event()
    extras: list[Any] = []

    async def start() -> None:
        # Start-up hooks run before the first connection is accepted, so no handler
        # can see state that does not exist yet.
        startup = getattr(app, "startup", None)
        if startup is not None:
            await startup()
        await server.start(listener)
        listening_on = getattr(app, "listening_on", None)
        if listening_on is not None:
            listening_on(config.server.host, server.port)
        ftp_config = config.ftp
        if ftp_config is not None:
            service = await start_ftp(ftp_config)
            extras.append(service)
            log.info("pageloan: FTP on %s port %s", ftp_config.host, service.port)

    async def serve_until_stopped() -> None:
        await stop.wait()
        log.info("pageloan: draining %d connection(s)", len(server.ctx.connections))
        await server.drain()
        for service in extras:
            await service.close()
        shutdown = getattr(app, "shutdown", None)
        if shutdown is not None:
            await shutdown()

    async def start_and_serve() -> int:
        # One run of the loop from start to stop: a SIGTERM that arrives while the
        # loop is not running (between two run_until_complete calls) can be lost by
        # uvloop, and the server would then never drain.
        try:
            await start()
        except Exception as exc:  # noqa: BLE001 - a failing start-up hook or bind stops start-up
            log.error("pageloan: cannot start: %s", exc,
                      exc_info=not isinstance(exc, (OSError, LifespanFailure)))
            return 2
        # Everything built at start-up (modules, routes, caches) lives for the whole run:
        # move it out of the collector's generations so collections scan only request garbage.
        gc.freeze()
        scheme = "https" if config.server.tls_cert else "http"
        served = config.app.root if config.asgi is None else \
            f"ASGI app {config.asgi.app}" + (f" with {config.app.root}" if config.app.root else "")
        log.info("pageloan: serving %s on %s://%s:%d/ (pid %d)", served, scheme,
                 config.server.host, server.port, os.getpid())
        if ready is not None:
            ready(server.port or 0)
        await serve_until_stopped()
        return 0

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        code = loop.run_until_complete(start_and_serve())
    finally:
        loop.close()
    if code:
        return code
    log.info("pageloan: stopped")
    return 0


def run_workers(config: Config, listener: socket.socket | None = None) -> int:
    """Fork `config.server.workers` workers and keep that many alive until told to stop.

    The application is built once here first, so a handler module that cannot be
    imported stops start-up with one clear message instead of a restart loop; a
    worker that exits with status 2 (cannot start) is not restarted either.
    """
    try:
        _build(config)
    except Exception as exc:  # noqa: BLE001
        log.error("pageloan: cannot start: %s", exc)
        return 2
    children: dict[int, int] = {}
    # /metrics answers for all workers (core/metrics.py): the array is mapped before fork.
    shared = SharedMetrics(config.server.workers)
    stopping = False
    status_code = 0

    def spawn(slot: int) -> None:
        pid = os.fork()
        if pid == 0:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            METRICS.attach(shared, slot)
            os._exit(run_worker(config, listener=listener))
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
    for slot in range(config.server.workers):
        spawn(slot)
    recent_deaths: list[float] = []
    while children:
        try:
            pid, status = os.wait()
        except ChildProcessError:
            break
        except InterruptedError:
            continue
        if pid not in children:
            continue
        slot = children.pop(pid)
        if stopping:
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
        if len(recent_deaths) > 5 * config.server.workers:
            log.error("pageloan: workers keep dying; giving up")
            status_code = 1
            on_stop(signal.SIGTERM, None)
            continue
        spawn(slot)
    return status_code


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else argv
    args = parser.parse_args(argv)
    if args.command == "check-config":
        return check_config(args.file, build_parser)
    if args.command == "hash-password":
        from .core.passwords import main as hash_main
        return hash_main() or 0
    if args.command == "precompress":
        from .static.compression import main as precompress_main
        return precompress_main(args)
    if args.command != "serve":
        parser.print_help()
        return 2
    sites: list[SiteConfig] = []
    if args.config is not None:
        try:
            args, sites = apply_config_file(args.config, build_parser, argv)
        except ConfigFileError as exc:
            for problem in exc.problems:
                print(f"pageloan: {problem}", file=sys.stderr)
            return 2
        if sites:                      # the default site's root and handlers
            args.root, args.handlers = sites[0].app.root, sites[0].app.handlers
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)
    config = config_from_args(args)
    use_sites(config, sites)
    access_log = config.server.access_log
    if access_log:
        access = logging.getLogger("pageloan.access")
        access.propagate = False
        handler = logging.StreamHandler(sys.stdout) if access_log == "-" \
            else logging.FileHandler(access_log)
        handler.setFormatter(logging.Formatter("%(message)s"))
        access.addHandler(handler)
        access.setLevel(logging.INFO)
    try:
        listener = inherited_listener()      # systemd socket activation
    except OSError as exc:
        log.error("pageloan: cannot start: %s", exc)
        return 2
    if listener is not None:
        log.info("pageloan: listening on the socket passed by the service manager")
    tune_allocator()                         # (inherited by forked workers)
    if config.server.workers > 1:
        return run_workers(config, listener)
    return run_worker(config, listener=listener)
