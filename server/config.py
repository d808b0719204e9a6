"""The whole configuration of one `pageloan serve`: each layer's typed options together.

Theory of operation: every layer owns the options it understands — the HTTP
server's `ServerConfig`, the static site's `StaticOptions`, the framework's
`AppOptions`, FTP's `FtpConfig` — and adds its own flags to the `serve` command.
This module is the one place that knows them all: `config_from_args` turns the
parsed command line into a `Config`, checking what concerns more than one layer
(the root, the bundled site and handlers, TLS files) and naming the option at fault
when something is wrong.

The configuration file.  Theory of operation.  The file is TOML (stdlib `tomllib`).  It has no vocabulary of
its own for server options: a key in `[server]` is the long name of a `serve` flag
(`max-body-size = "64M"`, `workers = 4`, `no-precompressed = true`; underscores work
too), converted and checked by that flag's own argparse action, so every flag —
including those other layers add later — is available with the same meaning and
the same validation.  The values become the parser's defaults, and the command line
is parsed again on top: **flags override the file**.

Sites.  Each `[[site]]` is a virtual host: `hosts` (names it answers; matched
case-insensitively, port ignored), `root` (relative paths are relative to the
file), `default = true` for the site an unknown Host gets (else the first),
`handlers`, a TLS certificate (`tls-cert`/`tls-key`, chosen by SNI), any static-site
flag (`autoindex`, `cache-control`, `spa-fallback`, `compress`, ...), and the rule
tables `redirects`, `rewrites`, `[[site.auth]]`, `[[site.cors]]` (rules.py).  A site
starts from the server-wide values, overrides them with its own, and flags given on
the command line override both.

Errors name the file, the line and the key (`site.toml:12: site[1].autoindex:
expected true or false`).  tomllib reports lines only for syntax errors, so key
lines are found from the text: a scan that follows `[table]` and `[[array]]`
headers (counting array entries) and notes where each `key =` is written.  All
errors are collected, not just the first; `pageloan check-config FILE` prints them
and exits 2 (0 when the file is good).
"""

from __future__ import annotations

import argparse
import copy
import re
import sys
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .asgi.options import AsgiOptions, asgi_options_from_args
from .framework.build import AppOptions, build_application
from .framework.vhosts import VirtualHosts, normalise_host
from .ftp import FtpConfig, ftp_config_from_args
from .http.config import ServerConfig
from .http.forwarded import TrustedProxies
from .http.server import TlsSetupError, tls_context
from .static.options import add_static_arguments, static_options_from_args
from .static.rules import RuleError, make_auth, make_cors, make_redirect
from .websocket.options import WebSocketOptions, websocket_options_from_args

__all__ = [
    "BUNDLED_HANDLERS", "BUNDLED_STATIC", "Config", "ConfigFileError", "SiteConfig",
    "apply_config_file", "build_server_application", "check_config", "config_from_args",
    "load_config_file", "use_sites",
]

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
    # Virtual hosts from a config file (below); empty: the one site of `app`.
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


# -- the configuration file ------------------------------------------------------------

SITE_KEYS = {"hosts", "default", "root", "handlers", "tls-cert", "tls-key", "redirects", "rewrites", "auth",
             "cors", "name"}
AUTH_KEYS = {"path", "htpasswd", "realm"}
CORS_KEYS = {"path", "origins", "methods", "headers", "expose", "max-age", "credentials"}
REDIRECT_KEYS = {"from", "to", "status"}


class ConfigFileError(Exception):
    """One or more problems in a config file, each naming file, line and key."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


@dataclass
class SiteConfig:
    """One virtual host: the names it answers, what it serves, its certificate."""

    hosts: tuple[str, ...]
    app: AppOptions
    default: bool = False
    name: str = ""
    tls_cert: Path | None = None
    tls_key: Path | None = None


# -- where keys are written ------------------------------------------------------------------------
_HEADER = re.compile(r"^\s*(\[\[?)\s*([A-Za-z0-9_.\-\" ]+?)\s*\]\]?\s*(?:#.*)?$")
_KEY = re.compile(r"^\s*([A-Za-z0-9_\-]+|\"[^\"]*\")\s*(?:\.\s*[A-Za-z0-9_\-\"]+\s*)*=")


class _Locator:
    """Lines of keys in a TOML text: ("site", 1, "autoindex") → 14."""

    def __init__(self, text: str) -> None:
        self.lines: dict[tuple, int] = {}
        self.tables: dict[tuple, int] = {}
        counts: dict[tuple, int] = {}
        context: tuple = ()
        depth = 0                         # inside a multi-line array or inline table
        for number, line in enumerate(text.splitlines(), 1):
            stripped = line.strip()
            if depth == 0:
                header = _HEADER.match(line)
                if header:
                    names = tuple(part.strip().strip('"') for part in header.group(2).split("."))
                    if header.group(1) == "[[":
                        parent = self._resolve(names[:-1], counts)
                        key = (*parent, names[-1])
                        counts[key] = counts.get(key, -1) + 1
                        context = (*key, counts[key])
                    else:
                        context = self._resolve(names, counts)
                    self.tables[context] = number
                    continue
                found = _KEY.match(line)
                if found:
                    self.lines[(*context, found.group(1).strip('"'))] = number
            depth += _balance(stripped)
            depth = max(depth, 0)

    @staticmethod
    def _resolve(names: tuple, counts: dict[tuple, int]) -> tuple:
        path: tuple = ()
        for name in names:
            path = (*path, name)
            if path in counts:                # an array of tables: its latest entry
                path = (*path, counts[path])
        return path

    def line_of(self, path: tuple) -> int | None:
        while path:
            if path in self.lines:
                return self.lines[path]
            if path in self.tables:
                return self.tables[path]
            path = path[:-1]
        return None


def _balance(line: str) -> int:
    """Net brackets opened on a line, outside strings and comments (roughly)."""
    depth = 0
    quote = ""
    for ch in line:
        if quote:
            if ch == quote:
                quote = ""
            continue
        if ch in "\"'":
            quote = ch
        elif ch == "#":
            break
        elif ch in "[{":
            depth += 1
        elif ch in "]}":
            depth -= 1
    return depth


# -- the file --------------------------------------------------------------------------------------
@dataclass
class ConfigFile:
    path: Path
    data: dict[str, Any]
    locator: _Locator
    problems: list[str] = field(default_factory=list)

    @property
    def base(self) -> Path:
        return self.path.resolve().parent

    def problem(self, where: tuple, message: str) -> None:
        line = self.locator.line_of(where)
        key = _dotted(where)
        place = f"{self.path}:{line}" if line is not None else str(self.path)
        self.problems.append(f"{place}: {key}: {message}" if key else f"{place}: {message}")


def _dotted(where: tuple) -> str:
    text = ""
    for part in where:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += ("." if text else "") + part
    return text


def load_config_file(path: Path) -> ConfigFile:
    """The parsed file; ConfigFileError if it cannot be read or is not TOML."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigFileError([f"{path}: cannot read: {exc}"]) from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        # tomllib's message ends with "(at line N, column M)": say it our way.
        message = str(exc)
        where = re.search(r"\(at line (\d+), column (\d+)\)", message)
        if where:
            message = message[:where.start()].strip()
            raise ConfigFileError([f"{path}:{where.group(1)}: {message} (column {where.group(2)})"]) from None
        raise ConfigFileError([f"{path}: {message}"]) from None
    config = ConfigFile(path, data, _Locator(text))
    for key in data:
        if key not in ("server", "site"):
            config.problem((key,), "unknown table (expected [server] and [[site]])")
    if "server" in data and not isinstance(data["server"], dict):
        config.problem(("server",), "must be a table: [server]")
    if "site" in data and not (isinstance(data["site"], list) and all(isinstance(s, dict) for s in data["site"])):
        config.problem(("site",), "must be an array of tables: [[site]]")
    return config


# -- flags as keys ---------------------------------------------------------------------------------
def _serve_parser(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            serve: argparse.ArgumentParser = action.choices["serve"]
            return serve
    raise RuntimeError("no serve subcommand")


def _flag_actions(serve: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    """Key spelling (long option without dashes, and dest) → the action."""
    actions: dict[str, argparse.Action] = {}
    for action in serve._actions:
        if isinstance(action, argparse._HelpAction) or action.dest in ("config",):
            continue
        for option in action.option_strings:
            if option.startswith("--"):
                actions[option[2:]] = action
                actions[option[2:].replace("-", "_")] = action
        if not action.option_strings:
            actions[action.dest] = action
    return actions


def _static_dests() -> set[str]:
    scratch = argparse.ArgumentParser(add_help=False)
    add_static_arguments(scratch)
    return {action.dest for action in scratch._actions}


def _convert(config: ConfigFile, where: tuple, action: argparse.Action, value: Any) -> tuple[bool, Any]:
    """(ok, the value to store in `action.dest`) for a file value, else a problem noted."""
    def one(item: Any) -> Any:
        if isinstance(item, bool) or isinstance(item, (dict, list)):
            raise ValueError(f"expected a {'number' if action.type in (int, float) else 'string'}, got {item!r}")
        text = str(item)
        if action.type is Path or (action.type is None and action.dest in _PATH_DESTS):
            path = Path(text)
            return path if path.is_absolute() else config.base / path
        convert: Any = action.type
        try:
            converted = convert(text) if convert is not None else text
        except ValueError:
            if convert in (int, float):
                raise ValueError(f"expected a number, got {item!r}") from None
            raise
        if action.choices is not None and converted not in action.choices:
            raise ValueError(f"{text!r} is not one of {', '.join(map(str, action.choices))}")
        return converted

    try:
        if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction)):
            if not isinstance(value, bool):
                raise ValueError(f"expected true or false, got {value!r}")
            return True, action.const if value else action.default
        if isinstance(action, argparse._AppendAction):
            if isinstance(value, dict):       # cache-control = { "*.html" = "no-cache" }
                value = [f"{k}={v}" for k, v in value.items()]
            items = value if isinstance(value, list) else [value]
            return True, [one(item) for item in items]
        if action.nargs == "?" and action.const is not None and isinstance(value, bool):
            return True, action.const if value else None
        return True, one(value)
    except (ValueError, TypeError, argparse.ArgumentTypeError, RuleError) as exc:
        config.problem(where, str(exc))
        return False, None


_PATH_DESTS = {"access_log"}


def _server_values(config: ConfigFile, actions: dict[str, argparse.Action]) -> dict[str, Any]:
    values: dict[str, Any] = {}
    table = config.data.get("server", {})
    if not isinstance(table, dict):
        return values
    for key, value in table.items():
        where = ("server", key)
        action = actions.get(key)
        if action is None:
            config.problem(where, "unknown option (keys are `pageloan serve` flags: see --help)")
            continue
        if action.dest == "root" and config.data.get("site"):
            config.problem(where, "with [[site]] tables, each site names its own root")
            continue
        ok, converted = _convert(config, where, action, value)
        if ok:
            values[action.dest] = converted
    return values


# -- sites -----------------------------------------------------------------------------------------
def _site(config: ConfigFile, index: int, table: dict[str, Any], base_args: argparse.Namespace,
          explicit: dict[str, Any], actions: dict[str, argparse.Action], static_dests: set[str]) -> SiteConfig | None:
    where = ("site", index)
    before = len(config.problems)
    args = copy.copy(base_args)
    for dest in ("redirect", "rewrite", "basic_auth", "cors", "cache_control"):
        setattr(args, dest, list(getattr(args, dest, []) or []))
    hosts: tuple[str, ...] = ()
    default = False
    name = str(table.get("name", ""))
    tls: dict[str, Path] = {}
    root: Path | None = None
    handlers: Path | None = None
    for key, value in table.items():
        here = (*where, key)
        if key == "hosts":
            items = value if isinstance(value, list) else [value]
            if not items or not all(isinstance(h, str) and h.strip() for h in items):
                config.problem(here, "expected a host name or a list of them")
                continue
            hosts = tuple(items)
        elif key == "default":
            if not isinstance(value, bool):
                config.problem(here, f"expected true or false, got {value!r}")
            default = value is True
        elif key == "name":
            continue
        elif key in ("root", "handlers", "tls-cert", "tls-key", "tls_cert", "tls_key"):
            if not isinstance(value, str) or not value:
                config.problem(here, "expected a path")
                continue
            path = Path(value) if Path(value).is_absolute() else config.base / value
            if key == "root":
                root = path
            elif key == "handlers":
                handlers = path
            else:
                tls[key.replace("_", "-")] = path
        elif key in ("redirects", "rewrites"):
            _redirects(config, here, value, args, rewrite=key == "rewrites")
        elif key == "auth":
            _auth(config, here, value, args)
        elif key == "cors":
            _cors(config, here, value, args)
        else:
            action = actions.get(key)
            if action is None or action.dest not in static_dests:
                config.problem(here, "unknown site option (a site takes hosts, root, default, handlers, "
                                     "tls-cert, tls-key, redirects, rewrites, auth, cors, and the static-file flags)")
                continue
            ok, converted = _convert(config, here, action, value)
            if ok:
                if isinstance(action, argparse._AppendAction):
                    converted = list(getattr(base_args, action.dest, []) or []) + converted
                setattr(args, action.dest, converted)
    for dest, value in explicit.items():          # flags on the command line win
        if dest in static_dests:
            setattr(args, dest, value)
    if index == 0 or default:
        if explicit.get("root") is not None:
            root = explicit["root"]
        if explicit.get("handlers") is not None:
            handlers = explicit["handlers"]
    if root is None:
        config.problem(where, "a site needs a root")
    elif not root.is_dir():
        config.problem((*where, "root"), f"{root} is not a directory")
    if handlers is not None and not handlers.is_dir():
        config.problem((*where, "handlers"), f"{handlers} is not a directory")
    if ("tls-cert" in tls) != ("tls-key" in tls):
        config.problem(where, "tls-cert and tls-key go together")
    for key, path in tls.items():
        if not path.is_file():
            config.problem((*where, key), f"{path} is not a file")
    if len(config.problems) > before or root is None:
        return None
    try:
        static = static_options_from_args(args)
    except (RuleError, ValueError) as exc:
        config.problem(where, str(exc))
        return None
    app = AppOptions(root=root.resolve(), static=static, handlers=handlers, reload=args.reload,
                     metrics=args.metrics, debug=args.debug)
    return SiteConfig(hosts=hosts, app=app, default=default, name=name or (hosts[0] if hosts else f"site {index}"),
                      tls_cert=tls.get("tls-cert"), tls_key=tls.get("tls-key"))


def _table_list(config: ConfigFile, where: tuple, value: Any, keys: set[str]) -> list[tuple[tuple, dict]]:
    items = value if isinstance(value, list) else [value]
    good = []
    for n, item in enumerate(items):
        here = (*where, n) if isinstance(value, list) else where
        if not isinstance(item, dict):
            config.problem(here, "expected a table, e.g. { from = \"/old\", to = \"/new\" }")
            continue
        unknown = sorted(set(item) - keys - {k.replace("-", "_") for k in keys})
        if unknown:
            config.problem((*here, unknown[0]), f"unknown key (expected {', '.join(sorted(keys))})")
            continue
        good.append((here, item))
    return good


def _redirects(config: ConfigFile, where: tuple, value: Any, args: argparse.Namespace, *, rewrite: bool) -> None:
    for here, item in _table_list(config, where, value, REDIRECT_KEYS):
        try:
            if not isinstance(item.get("from"), str) or not isinstance(item.get("to"), str):
                raise RuleError("needs from = \"...\" and to = \"...\"")
            status = item.get("status", 0 if rewrite else 301)
            if rewrite and "status" in item:
                raise RuleError("a rewrite has no status (it is internal): use redirects for that")
            if not isinstance(status, int) or isinstance(status, bool):
                raise RuleError(f"status must be a number, got {status!r}")
            (args.rewrite if rewrite else args.redirect).append(make_redirect(item["from"], item["to"], status))
        except RuleError as exc:
            config.problem(here, str(exc))


def _auth(config: ConfigFile, where: tuple, value: Any, args: argparse.Namespace) -> None:
    for here, item in _table_list(config, where, value, AUTH_KEYS):
        try:
            if not isinstance(item.get("path"), str) or not isinstance(item.get("htpasswd"), str):
                raise RuleError("needs path = \"/private/*\" and htpasswd = \"FILE\"")
            realm = item.get("realm", "Restricted")
            if not isinstance(realm, str):
                raise RuleError("realm must be a string")
            args.basic_auth.append(make_auth(item["path"], item["htpasswd"], realm, config.base))
        except RuleError as exc:
            about_file = str(exc).startswith(str(config.base / str(item.get("htpasswd"))))
            config.problem((*here, "htpasswd") if about_file else here, str(exc))


def _cors(config: ConfigFile, where: tuple, value: Any, args: argparse.Namespace) -> None:
    for here, item in _table_list(config, where, value, CORS_KEYS):
        try:
            options: dict[str, Any] = {}
            for key in ("methods", "headers", "expose"):
                if key in item:
                    if not isinstance(item[key], list) or not all(isinstance(v, str) for v in item[key]):
                        raise RuleError(f"{key} must be a list of strings")
                    options[key] = tuple(item[key])
            max_age = item.get("max-age", item.get("max_age"))
            if max_age is not None:
                if not isinstance(max_age, int) or isinstance(max_age, bool) or max_age < 0:
                    raise RuleError("max-age must be a number of seconds")
                options["max_age"] = max_age
            if "credentials" in item:
                if not isinstance(item["credentials"], bool):
                    raise RuleError("credentials must be true or false")
                options["credentials"] = item["credentials"]
            origins = item.get("origins", ["*"])
            if isinstance(origins, str):
                origins = [origins]
            if not isinstance(item.get("path"), str) or not all(isinstance(o, str) for o in origins):
                raise RuleError("needs path = \"/api/*\" and origins = [\"https://...\"]")
            args.cors.append(make_cors(item["path"], origins, **options))
        except RuleError as exc:
            config.problem(here, str(exc))


# -- putting it together ---------------------------------------------------------------------------
def apply_config_file(path: Path, make_parser: Callable[[], argparse.ArgumentParser],
                      argv: list[str]) -> tuple[argparse.Namespace, list[SiteConfig]]:
    """The `serve` arguments with the file under the flags, and the file's sites.

    ConfigFileError lists every problem found.
    """
    config = load_config_file(path)
    parser = make_parser()
    serve = _serve_parser(parser)
    actions = _flag_actions(serve)
    values = _server_values(config, actions)
    serve.set_defaults(**values)
    args = parser.parse_args(argv)
    explicit = _explicit(make_parser, argv)
    sites: list[SiteConfig] = []
    static_dests = _static_dests()
    for index, table in enumerate(config.data.get("site", []) if isinstance(config.data.get("site"), list) else []):
        site = _site(config, index, table, args, explicit, actions, static_dests)
        if site is not None:
            sites.append(site)
    if sum(1 for s in sites if s.default) > 1:
        config.problem(("site",), "more than one site says default = true")
    seen: dict[str, int] = {}
    for index, table in enumerate(config.data.get("site", []) if isinstance(config.data.get("site"), list) else []):
        for host in table.get("hosts", []) if isinstance(table.get("hosts"), list) else [table.get("hosts")]:
            if not isinstance(host, str):
                continue
            key = normalise_host(host)
            if key in seen:
                config.problem(("site", index, "hosts"), f"{host!r} is already a host of site[{seen[key]}]")
            seen[key] = index
    if config.problems:
        raise ConfigFileError(config.problems)
    sites.sort(key=lambda s: not s.default)         # the default site first
    return args, sites


def _explicit(make_parser: Callable[[], argparse.ArgumentParser], argv: list[str]) -> dict[str, Any]:
    """The `serve` options actually written on the command line."""
    parser = make_parser()
    serve = _serve_parser(parser)
    positional = set()
    for action in serve._actions:
        if action.option_strings:
            action.default = argparse.SUPPRESS
        else:
            action.default = None       # (argparse would run a positional's type on SUPPRESS)
            positional.add(action.dest)
    parsed = vars(parser.parse_args(argv))
    return {k: v for k, v in parsed.items()
            if k not in ("command", "config") and not (k in positional and v is None)}


def check_config(path: Path, make_parser: Callable[[], argparse.ArgumentParser]) -> int:
    """`pageloan check-config FILE`: 0 and a summary, or 2 and every problem."""
    try:
        _args, sites = apply_config_file(path, make_parser, ["serve", "--config", str(path)])
    except ConfigFileError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        return 2
    except SystemExit as exc:       # a flag's own error, printed by argparse
        return 2 if exc.code else 0
    names = ", ".join(s.name for s in sites) or "one site from [server]"
    print(f"{path}: OK ({len(sites) or 1} site{'s' if len(sites) > 1 else ''}: {names})")
    return 0


def use_sites(config: Any, sites: list[SiteConfig]) -> None:
    """Make `config` (a server.config.Config) serve `sites`: the default one is `config.app`;
    certificates of the sites go to SNI, the default's (or the first) to the listener."""
    if not sites:
        return
    config.app = sites[0].app
    config.sites = sites
    server = config.server
    with_tls = [s for s in sites if s.tls_cert is not None]
    if with_tls and server.tls_cert is None:
        server.tls_cert, server.tls_key = with_tls[0].tls_cert, with_tls[0].tls_key
    server.tls_sni = tuple((s.hosts, s.tls_cert, s.tls_key) for s in with_tls if s.hosts)


def build_server_application(config: Any) -> Any:
    """The application for `config`: its one site's, or virtual hosts over its sites."""
    if len(config.sites) < 2:
        return build_application(config.app)
    apps = [(site.hosts, build_application(site.app)) for site in config.sites]
    return VirtualHosts(apps, default=apps[0][1])
