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
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

from ..core.filecache import OpenFileCache
from .cache_policy import CacheControlRules, parse_rule
from .compression import DEFAULT_BUDGET, Compressor
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
    map_max: int = 16 << 20           # files up to this size are mapped (so small ranges gather)
    answer_memo: bool = True          # replay answers to byte-identical requests
    compress: bool = True             # build br/zstd/gzip variants once, in memory
    compress_budget: int = DEFAULT_BUDGET


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
    group.add_argument("--no-compress", action="store_true",
                       help="do not compress text files without a sibling (by default each is "
                            "compressed once per coding, off the event loop, and kept in memory)")
    group.add_argument("--compress-cache", type=_size, default=DEFAULT_BUDGET, metavar="SIZE",
                       help="bytes of compressed variants kept in memory (default 32M)")
    group.add_argument("--open-file-cache", type=_positive, default=DEFAULT_OPEN_FILES, metavar="N",
                       help=f"open files to keep (default {DEFAULT_OPEN_FILES})")


def static_options_from_args(args: argparse.Namespace) -> StaticOptions:
    """The StaticOptions the parsed `serve` flags describe."""
    return StaticOptions(
        autoindex=args.autoindex, follow_symlinks=args.follow_symlinks,
        show_dotfiles=args.show_dotfiles, cache_control=tuple(args.cache_control),
        precompressed=not args.no_precompressed, open_files=args.open_file_cache,
        map_max=args.map_max, answer_memo=args.answer_memo,
        compress=not args.no_compress, compress_budget=args.compress_cache)


def static_site(root: Path, options: StaticOptions | None = None) -> StaticSite:
    """The StaticSite serving `root` as `options` say (the safe defaults without)."""
    options = options or StaticOptions()
    cache = OpenFileCache(max_entries=options.open_files, map_max=options.map_max)
    return StaticSite(
        root, cache=cache,
        autoindex=options.autoindex,
        follow_symlinks=options.follow_symlinks,
        show_dotfiles=options.show_dotfiles,
        cache_control=CacheControlRules(options.cache_control),
        precompressed=options.precompressed,
        compression=Compressor(budget=options.compress_budget) if options.compress else None,
    )
