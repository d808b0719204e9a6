"""The `--asgi` flags of `pageloan serve`, read back as typed AsgiOptions.

Names and defaults follow uvicorn, so its users need not relearn them:
`--proxy-headers` is on by default and believes `X-Forwarded-*`/`Forwarded` only from
the addresses in `--forwarded-allow-ips` (default 127.0.0.1, or the environment's
FORWARDED_ALLOW_IPS); `--factory` calls the named attribute to get the application;
`--app-dir` puts a directory first on `sys.path`; `--asgi-root-path` is uvicorn's `--root-path` (the prefix a proxy mounted the app
under), named so that it cannot be mistaken for the static ROOT.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass

from ..http.forwarded import DEFAULT_TRUSTED, TrustedProxies

__all__ = ["AsgiOptions", "add_asgi_arguments", "asgi_options_from_args"]


@dataclass
class AsgiOptions:
    app: str                                  # "module:attribute"
    factory: bool = False                     # call the attribute to get the app
    root_path: str = ""                       # scope["root_path"]
    proxy_headers: bool = True                # believe forwarding headers from trusted peers
    forwarded_allow_ips: str = DEFAULT_TRUSTED
    lifespan: str = "auto"                    # auto | on | off
    app_dir: str | None = None                # where MODULE is looked for (default: cwd)

    def trusted(self) -> TrustedProxies | None:
        """The trusted proxies (None: forwarding headers are never believed)."""
        return TrustedProxies.parse(self.forwarded_allow_ips) if self.proxy_headers else None


def add_asgi_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("ASGI application")
    group.add_argument("--asgi", metavar="MODULE:ATTR",
                       help="serve this ASGI 3 application (with ROOT: static files first, the app for the rest)")
    group.add_argument("--app-dir", default=None, metavar="DIR",
                       help="look for MODULE in DIR (put first on sys.path; default: the current directory)")
    group.add_argument("--factory", action="store_true",
                       help="MODULE:ATTR is a factory: call it with no arguments to get the application")
    group.add_argument("--asgi-root-path", default="", metavar="PATH",
                       help="scope root_path: the prefix a proxy serves the application under")
    group.add_argument("--proxy-headers", dest="proxy_headers", action="store_true", default=True,
                       help="take client address and scheme from X-Forwarded-For/-Proto or Forwarded "
                            "sent by a trusted proxy (default)")
    group.add_argument("--no-proxy-headers", dest="proxy_headers", action="store_false",
                       help="ignore forwarding headers")
    group.add_argument("--forwarded-allow-ips", default=None, metavar="IPS",
                       help="comma-separated proxy addresses/networks to trust, or '*' "
                            "(default: $FORWARDED_ALLOW_IPS or 127.0.0.1)")
    group.add_argument("--lifespan", choices=["auto", "on", "off"], default="auto",
                       help="ASGI lifespan protocol: auto (use it if the app supports it), on, off")


def asgi_options_from_args(args: argparse.Namespace) -> AsgiOptions | None:
    """The AsgiOptions the flags describe, None without --asgi; ValueError naming the flag."""
    spec = getattr(args, "asgi", None)
    if not spec:
        return None
    allow = args.forwarded_allow_ips
    if allow is None:
        allow = os.environ.get("FORWARDED_ALLOW_IPS", DEFAULT_TRUSTED)
    root_path = args.asgi_root_path.rstrip("/")
    if root_path and not root_path.startswith("/"):
        raise ValueError(f"--asgi-root-path must start with '/': {args.asgi_root_path!r}")
    options = AsgiOptions(app=spec, factory=args.factory, root_path=root_path,
                          proxy_headers=args.proxy_headers, forwarded_allow_ips=allow,
                          lifespan=args.lifespan, app_dir=args.app_dir)
    options.trusted()            # a bad --forwarded-allow-ips fails here, named
    return options
