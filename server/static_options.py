"""Command-line options of the static site, and the StaticSite they describe.

Theory of operation: server/cli.py knows nothing about static-file semantics; it
asks this module to add its flags to the `serve` subcommand (`add_static_arguments`)
and keeps the parsed namespace in `config.extra["args"]`.  `static_site_from_config`
turns that back into a StaticSite, so the flags and their meaning live in one place.
A config built without the CLI (tests, embedding) has no "args" and gets the
defaults, which are the safe ones: no listings, no dotfiles, no symlinks out of the
root; precompressed siblings on (they only ever *add* a smaller representation).

    --autoindex                   HTML listing of directories without index.html
    --follow-symlinks             serve symlinks that lead out of the root
    --show-dotfiles               serve names starting with "."
    --cache-control PATTERN=VALUE Cache-Control for URL paths matching a glob
                                  (repeatable, first match wins, tried before the
                                  defaults: *.html → "max-age=0,
                                  must-revalidate", anything else →
                                  "max-age=3600"; an empty VALUE sends none)
    --no-precompressed            ignore .br/.gz siblings
    --open-file-cache N           open files kept (descriptors, stat, mappings)
"""

from __future__ import annotations

import argparse
from typing import Any

from .cache_policy import CacheControlRules, parse_rule
from .filecache import OpenFileCache
from .static import StaticSite

__all__ = ["add_static_arguments", "static_site_from_config", "DEFAULT_OPEN_FILES"]

DEFAULT_OPEN_FILES = 1024


def _rule(text: str) -> tuple[str, str]:
    try:
        return parse_rule(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def add_static_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the static-site flags to the `serve` subcommand."""
    group = parser.add_argument_group("static files")
    group.add_argument("--autoindex", action="store_true",
                       help="list directories that have no index.html (off by default)")
    group.add_argument("--follow-symlinks", action="store_true",
                       help="serve symlinks that lead out of the root (refused by default)")
    group.add_argument("--show-dotfiles", action="store_true",
                       help="serve files and directories whose name starts with '.'")
    group.add_argument("--cache-control", action="append", type=_rule, default=[],
                       metavar="PATTERN=VALUE",
                       help="Cache-Control for URL paths matching the glob PATTERN; repeatable, "
                            "first match wins, before the defaults (*.html: 'max-age=0, must-revalidate'; "
                            "others: 'max-age=3600'); empty VALUE: none")
    group.add_argument("--no-precompressed", action="store_true",
                       help="do not serve .br/.gz siblings to clients that accept them")
    group.add_argument("--open-file-cache", type=_positive, default=DEFAULT_OPEN_FILES, metavar="N",
                       help=f"open files to keep (default {DEFAULT_OPEN_FILES})")


def static_site_from_config(config: Any) -> StaticSite:
    """The StaticSite for a ServerConfig (reads the flags from config.extra["args"])."""
    args = config.extra.get("args") if getattr(config, "extra", None) else None

    def option(name: str, default: Any) -> Any:
        return getattr(args, name, default) if args is not None else default

    cache = OpenFileCache(max_entries=option("open_file_cache", DEFAULT_OPEN_FILES),
                          map_max=config.map_max)
    return StaticSite(
        config.root, cache=cache,
        autoindex=option("autoindex", False),
        follow_symlinks=option("follow_symlinks", False),
        show_dotfiles=option("show_dotfiles", False),
        cache_control=CacheControlRules(option("cache_control", None) or ()),
        precompressed=not option("no_precompressed", False),
    )
