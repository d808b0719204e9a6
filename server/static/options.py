"""Command-line options of the static site, and the StaticSite they describe.

Theory of operation: server/cli.py knows nothing about static-file semantics; it
asks this module to add its flags to the `serve` subcommand (`add_static_arguments`)
and to read them back as a typed `StaticOptions` (`static_options_from_args`).
`static_site(root, options)` turns that into a StaticSite, so the flags and their
meaning live in one place.  Options built without the CLI (tests, embedding) get
the defaults, which are the safe ones: no listings, no dotfiles, no symlinks out of
the root; precompressed siblings on (they only ever *add* a smaller representation).

    --autoindex                   HTML listing of directories without index.html
    --follow-symlinks             serve symlinks that lead out of the root
    --show-dotfiles               serve names starting with "."
    --cache-control PATTERN=VALUE Cache-Control for URL paths matching a glob
                                  (repeatable, first match wins, tried before the
                                  defaults: *.html → "max-age=0,
                                  must-revalidate", anything else →
                                  "max-age=3600"; an empty VALUE sends none)
    --no-precompressed            ignore .br/.zst/.gz siblings
    --no-compress                 do not build compressed variants in memory
    --compress-cache SIZE         bytes of compressed variants kept (default 32M)
    --open-file-cache N           open files kept (descriptors, stat, mappings)
    --open-file-cache-inactive S  close a cached file unused this long (nginx's inactive=)
    --spa-fallback FILE           a missing path without an extension gets FILE (200)
    --redirect 'FROM TO [STATUS]' redirect (301 default; FROM may end in /* for a prefix)
    --rewrite 'FROM TO'           serve TO for FROM, internally
    --basic-auth 'PATH FILE [REALM]'  passwords from an htpasswd file for PATH
    --cors 'PATH ORIGIN[,ORIGIN]' CORS for PATH (preflight answered)
(rules.py says what each does; the config file has the full set of options.)
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..core.filecache import DEFAULT_INACTIVE, OpenFileCache
from .cache_policy import CacheControlRules, parse_rule
from .compression import DEFAULT_BUDGET, Compressor
from .rules import RuleError, RuleSpec, SiteRules, parse_auth, parse_cors, parse_redirect
from .site import StaticSite

__all__ = ["DEFAULT_OPEN_FILES", "StaticOptions", "add_static_arguments", "static_options_from_args",
           "static_site"]

DEFAULT_OPEN_FILES = 1024


@dataclass(frozen=True)
class StaticOptions:
    """How a root is served; the defaults are the safe ones."""

    autoindex: bool = False
    follow_symlinks: bool = False
    show_dotfiles: bool = False
    cache_control: tuple[tuple[str, str], ...] = ()   # (glob, value), first match wins
    precompressed: bool = True
    open_files: int = DEFAULT_OPEN_FILES
    open_files_inactive: float = DEFAULT_INACTIVE
    map_max: int = 16 << 20           # files up to this size are mapped (so small ranges gather)
    compress: bool = True             # build br/zstd/gzip variants once, in memory
    compress_budget: int = DEFAULT_BUDGET
    rules: RuleSpec = RuleSpec()      # redirects, rewrites, auth, CORS, SPA fallback (rules.py)


def _rule(text: str) -> tuple[str, str]:
    try:
        return parse_rule(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _size(text: str) -> int:
    units = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30}
    text = text.strip().lower().removesuffix("b").removesuffix("i")
    try:
        if text and text[-1] in units:
            return int(float(text[:-1]) * units[text[-1]])
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (e.g. 32M)") from None


def _rule_type(parse: Callable[[str], Any]) -> Callable[[str], Any]:
    def convert(text: str) -> Any:
        try:
            return parse(text)
        except RuleError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
    return convert


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def _inactive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r} is not a valid time (more than 0 seconds)")
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
    group.add_argument("--no-compress", action="store_true",
                       help="do not compress text files without a sibling (by default each is "
                            "compressed once per coding, off the event loop, and kept in memory)")
    group.add_argument("--compress-cache", type=_size, default=DEFAULT_BUDGET, metavar="SIZE",
                       help="bytes of compressed variants kept in memory (default 32M)")
    rules = parser.add_argument_group("site rules")
    rules.add_argument("--spa-fallback", metavar="FILE",
                       help="single-page app: a missing path without an extension gets FILE "
                            "(relative to the root, e.g. index.html) with 200")
    rules.add_argument("--redirect", action="append", default=[], metavar="'FROM TO [STATUS]'",
                       type=_rule_type(parse_redirect),
                       help="redirect FROM (exact, or a prefix ending in /*) to TO with STATUS "
                            "(301, 302, 303, 307, 308; default 301); TO may use $uri, $rest, $query")
    rules.add_argument("--rewrite", action="append", default=[], metavar="'FROM TO'",
                       type=_rule_type(lambda text: parse_redirect(text, rewrite=True)),
                       help="serve the root's TO for FROM without telling the client")
    rules.add_argument("--basic-auth", action="append", default=[], metavar="'PATH HTPASSWD [REALM]'",
                       type=_rule_type(parse_auth),
                       help="ask for a user and password (bcrypt/argon2/scrypt htpasswd file) under PATH")
    rules.add_argument("--cors", action="append", default=[], metavar="'PATH ORIGIN[,ORIGIN...]'",
                       type=_rule_type(parse_cors),
                       help="allow cross-origin requests to PATH from ORIGINs (* for any)")
    group.add_argument("--open-file-cache", type=_positive, default=DEFAULT_OPEN_FILES, metavar="N",
                       help=f"open files to keep (default {DEFAULT_OPEN_FILES})")
    group.add_argument("--open-file-cache-inactive", type=_inactive, default=DEFAULT_INACTIVE,
                       metavar="SECONDS",
                       help=f"close a cached file nobody used for this long (default {DEFAULT_INACTIVE:g}; "
                            "deleted files are closed within a second regardless)")


def static_options_from_args(args: argparse.Namespace) -> StaticOptions:
    """The StaticOptions the parsed `serve` flags describe."""
    return StaticOptions(
        autoindex=args.autoindex, follow_symlinks=args.follow_symlinks,
        show_dotfiles=args.show_dotfiles, cache_control=tuple(args.cache_control),
        precompressed=not args.no_precompressed, open_files=args.open_file_cache,
        open_files_inactive=args.open_file_cache_inactive,
        map_max=args.map_max,
        compress=not args.no_compress, compress_budget=args.compress_cache,
        rules=RuleSpec(redirects=tuple(args.redirect) + tuple(args.rewrite), auth=tuple(args.basic_auth),
                       cors=tuple(args.cors), spa_fallback=args.spa_fallback))


def static_site(root: Path, options: StaticOptions | None = None) -> StaticSite:
    """The StaticSite serving `root` as `options` say (the safe defaults without).

    RuleError if a rule cannot apply to this root (an SPA fallback file missing).
    """
    options = options or StaticOptions()
    cache = OpenFileCache(max_entries=options.open_files, map_max=options.map_max,
                          inactive=options.open_files_inactive)
    site = StaticSite(
        root, cache=cache,
        autoindex=options.autoindex,
        follow_symlinks=options.follow_symlinks,
        show_dotfiles=options.show_dotfiles,
        cache_control=CacheControlRules(options.cache_control),
        precompressed=options.precompressed,
        compression=Compressor(budget=options.compress_budget) if options.compress else None,
    )
    if options.rules:
        # Only a root with rules pays for them (a wrapper around respond).
        SiteRules(options.rules, site.root).install(site)
    return site
