"""The static flags of `pageloan serve`, and the StaticSite they build."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import pytest

from server.cli import build_parser
from server.config import config_from_args
from server.static.cache_policy import CacheControlRules, parse_rule
from server.static.options import StaticOptions, add_static_arguments, static_site

REPO = Path(__file__).resolve().parent.parent


def test_defaults_from_plain_config(tmp_path):
    site = static_site(tmp_path, StaticOptions(map_max=4096))
    assert not site.autoindex and not site.follow_symlinks and not site.show_dotfiles
    assert site.precompressed
    assert site.cache.map_max == 4096 and site.cache.max_entries == 1024
    assert site.cache_control.for_path("/a/b.html") == "max-age=0, must-revalidate"
    assert site.cache_control.for_path("/a/b.css") == "max-age=3600"


def test_flags_reach_the_site(tmp_path):
    args = build_parser().parse_args([
        "serve", str(tmp_path), "--autoindex", "--follow-symlinks", "--show-dotfiles",
        "--no-precompressed", "--open-file-cache", "77",
        "--cache-control", "/assets/*=max-age=31536000, immutable", "--cache-control", "*.txt=",
    ])
    config = config_from_args(args)
    site = static_site(config.app.root, config.app.static)
    assert site.autoindex and site.follow_symlinks and site.show_dotfiles and not site.precompressed
    assert site.cache.max_entries == 77
    rules = site.cache_control
    assert rules.for_path("/assets/app.css") == "max-age=31536000, immutable"
    assert rules.for_path("/notes.txt") is None
    assert rules.for_path("/index.html") == "max-age=0, must-revalidate"


@pytest.mark.parametrize("bad", [["--cache-control", "novalue"], ["--cache-control", "=x"],
                                 ["--open-file-cache", "0"]])
def test_bad_flags_rejected(bad):
    parser = argparse.ArgumentParser()
    add_static_arguments(parser)
    with pytest.raises(SystemExit):
        parser.parse_args(bad)


def test_parse_rule_keeps_equals_in_value():
    assert parse_rule("*.js=max-age=60, stale-while-revalidate=30") == ("*.js", "max-age=60, stale-while-revalidate=30")


def test_first_match_wins():
    rules = CacheControlRules([("/a/*", "one"), ("*.css", "two")])
    assert rules.for_path("/a/x.css") == "one"
    assert rules.for_path("/b/x.css") == "two"
    assert CacheControlRules([], defaults=False).for_path("/x") is None


def test_help_lists_flags():
    out = subprocess.run([sys.executable, "-m", "server", "serve", "--help"], cwd=REPO,
                         capture_output=True, text=True, check=True).stdout
    for flag in ("--autoindex", "--follow-symlinks", "--show-dotfiles", "--cache-control",
                 "--no-precompressed", "--open-file-cache"):
        assert flag in out


def test_cli_fallback_constructor_still_works(tmp_path):
    # server/cli.py's fallback build_app constructs StaticSite(root, cache=OpenFileCache(map_max=...)).
    from server.core.filecache import OpenFileCache
    from server.static.site import StaticSite
    site = StaticSite(tmp_path, cache=OpenFileCache(map_max=1234))
    assert site.cache.map_max == 1234 and site.precompressed
