"""The whole configuration of one `pageloan serve`: each layer's typed options together.

Theory of operation: every layer owns the options it understands — the HTTP
server's `ServerConfig`, the static site's `StaticOptions`, the framework's
`AppOptions`, FTP's `FtpConfig` — and adds its own flags to the `serve` command.
This module is the one place that knows them all: `config_from_args` turns the
parsed command line into a `Config`, checking what concerns more than one layer
(the root, the bundled site and handlers, TLS files) and naming the option at fault
when something is wrong.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .asgi.options import AsgiOptions, asgi_options_from_args
from .framework.build import AppOptions
from .ftp import FtpConfig, ftp_config_from_args
from .http.config import ServerConfig
from .http.forwarded import TrustedProxies
from .http.server import TlsSetupError, tls_context
from .static.options import static_options_from_args
from .websocket.options import WebSocketOptions, websocket_options_from_args

__all__ = ["BUNDLED_HANDLERS", "BUNDLED_STATIC", "Config", "config_from_args"]

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


@dataclass
class Config:
    server: ServerConfig = field(default_factory=ServerConfig)
    app: AppOptions = field(default_factory=AppOptions)
    ftp: FtpConfig | None = None
    websocket: WebSocketOptions = field(default_factory=WebSocketOptions)
    asgi: AsgiOptions | None = None         # --asgi: an ASGI application answers
    # Virtual hosts from a config file (config_file.py); empty: the one site of `app`.
    sites: list[Any] = field(default_factory=list)


def _port_habit(args: argparse.Namespace) -> None:
    """`pageloan serve 8000`, as with `python -m http.server 8000`: a lone number is the
    port, unless a directory of that name exists (then it is the root: the file system
    wins).  `pageloan serve ROOT PORT` works too."""
    lone = getattr(args, "port_arg", None)
    root = args.root
    if lone is None and root is not None and str(root).isdigit() and not Path(root).is_dir():
        lone, args.root = int(str(root)), None
    if lone is not None:
        if args.port is not None and args.port != lone:
            raise SystemExit(f"pageloan: port given twice ({lone} and --port {args.port})")
        args.port = lone


def _native_forwarding(args: argparse.Namespace) -> str | None:
    """--forwarded-allow-ips for the native server: only when given (docs/deployment.md)."""
    allow = getattr(args, "forwarded_allow_ips", None)
    if allow is None or not getattr(args, "proxy_headers", True):
        return None
    try:
        TrustedProxies.parse(allow)
    except ValueError as exc:
        raise SystemExit(f"pageloan: {exc}") from None
    return str(allow)


def config_from_args(args: argparse.Namespace) -> Config:
    """The Config the `serve` flags describe; SystemExit naming the option at fault."""
    _port_habit(args)
    root_given = args.root is not None
    try:
        asgi = asgi_options_from_args(args)
    except ValueError as exc:
        raise SystemExit(f"pageloan: {exc}") from None
    root = (args.root if root_given else BUNDLED_STATIC).resolve()
    if not root.is_dir():
        raise SystemExit(f"pageloan: {root} is not a directory")
    handlers = args.handlers
    if handlers is None and not root_given and BUNDLED_HANDLERS.is_dir():
        handlers = BUNDLED_HANDLERS
    if asgi is not None:
        # The application is all there is, but for a ROOT named beside it.
        if args.handlers is not None:
            raise SystemExit("pageloan: --handlers and --asgi cannot be combined")
        handlers = None
        if not root_given:
            root = None
    if (args.tls_cert is None) != (args.tls_key is None):
        raise SystemExit("pageloan: --tls-cert and --tls-key go together")
    if args.tls_cert is not None:
        try:
            tls_context(args.tls_cert, args.tls_key)     # checked now, not in every worker
        except TlsSetupError as exc:
            raise SystemExit(f"pageloan: {exc}") from None
    if args.ready_path is not None and not args.ready_path.startswith("/"):
        raise SystemExit(f"pageloan: --ready-path must start with '/': {args.ready_path!r}")
    static = static_options_from_args(args)
    ftp = None
    if getattr(args, "ftp_port", None) is not None:
        try:
            # FTP serves the same root under the same name rules as the static site.
            ftp = ftp_config_from_args(args, root, show_dotfiles=static.show_dotfiles,
                                       follow_symlinks=static.follow_symlinks,
                                       tls_cert=args.tls_cert, tls_key=args.tls_key)
        except (OSError, ValueError) as exc:
            raise SystemExit(f"pageloan: FTP: {exc}") from None
    server = ServerConfig(
        host=args.host, port=8080 if args.port is None else args.port, workers=max(1, args.workers),
        access_log=args.access_log, debug=args.debug, tls_cert=args.tls_cert, tls_key=args.tls_key,
        max_header_bytes=args.max_header_size, max_body_bytes=args.max_body_size,
        max_connections=args.max_connections, header_timeout=args.header_timeout,
        body_timeout=args.body_timeout, keepalive_timeout=args.keepalive_timeout,
        drain_timeout=args.drain_timeout, connection_loan_budget=args.connection_loan_budget,
        global_loan_budget=args.global_loan_budget, sendfile_step=args.sendfile_step,
        gather_max=args.gather_max, zerocopy=args.zerocopy, zerocopy_min=args.zerocopy_min,
        zerocopy_copied_limit=args.zerocopy_copied_limit,
        proxy_protocol=args.proxy_protocol, ready_path=args.ready_path, drain_delay=args.drain_delay,
        forwarded_allow_ips=_native_forwarding(args))
    app = AppOptions(root=root, static=static, handlers=handlers,
                     reload=args.reload, metrics=args.metrics, debug=args.debug,
                     handler_threads=args.handler_threads)
    return Config(server=server, app=app, ftp=ftp, websocket=websocket_options_from_args(args), asgi=asgi)
