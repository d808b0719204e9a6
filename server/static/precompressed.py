"""Precompressed siblings: `style.css.br` / `.zst` / `.gz` served for `style.css`.

Theory of operation: compressing on every request costs CPU and defeats sendfile;
compressing once at deploy time costs nothing per request.  So when a client's
Accept-Encoding allows it, and a sibling file with the coding's suffix exists, the
sibling's bytes are sent as they are, with `Content-Encoding`, the *original's*
Content-Type, `Vary: Accept-Encoding`, and validators of its own (a distinct ETag per
encoding: the bytes differ, so a cache must not mix them up).  Ranges then apply to
the compressed bytes — the selected representation.

A sibling is only ever a regular file that stays inside the served root: a sibling
that is a symlink out of the root is refused exactly as the original would be
(aiohttp CVE-2024-42367 followed such links), and so is one whose target is a
dotfile or lies under a dot-directory of the root (`app.js.gz -> ../.env`,
`-> .git/config`) unless dotfiles are served: a link's target is held to the rule
its own URL would be.  Looking for siblings costs two
`lstat`s; their absence is remembered for `RECHECK_SECONDS` (the way nginx's
open_file_cache remembers lookups for `open_file_cache_valid`), so a plain hit
does not pay for them, and a sibling added later is noticed within that time.

Accept-Encoding is parsed with q-values: `q=0` refuses a coding, `*` stands for
every coding not named, `x-gzip` is gzip.  The best q wins; on a tie brotli is
preferred, being the smaller file.  Parsed headers are memoised: real clients send
a handful of distinct values.
"""

from __future__ import annotations

import os
import stat as stat_mod
from collections.abc import Callable

__all__ = ["CODINGS", "RECHECK_SECONDS", "coding_preferences", "choose_coding",
           "find_siblings", "target_rule"]

# (Content-Encoding token, file suffix), in order of preference on equal q.
CODINGS: tuple[tuple[str, str], ...] = (("br", ".br"), ("zstd", ".zst"), ("gzip", ".gz"))
RECHECK_SECONDS = 1.0

_PREFS_CACHE: dict[bytes, dict[str, float]] = {}
_PREFS_CACHE_MAX = 512


def coding_preferences(header: bytes) -> dict[str, float]:
    """q-value per coding named in an Accept-Encoding header (`*` kept as "*")."""
    prefs = _PREFS_CACHE.get(header)
    if prefs is not None:
        return prefs
    prefs = {}
    for member in header.decode("latin-1").split(","):
        name, _, params = member.partition(";")
        name = name.strip().lower()
        if not name:
            continue
        if name == "x-gzip":
            name = "gzip"
        q = 1.0
        for param in params.split(";"):
            key, eq, value = param.partition("=")
            if eq and key.strip().lower() == "q":
                try:
                    q = float(value.strip())
                except ValueError:
                    q = 0.0          # unparseable weight: do not guess in the client's favour
                q = min(max(q, 0.0), 1.0)
        prefs[name] = max(q, prefs[name]) if name in prefs else q
    if len(_PREFS_CACHE) >= _PREFS_CACHE_MAX:
        _PREFS_CACHE.clear()
    _PREFS_CACHE[header] = prefs
    return prefs


def _quality(prefs: dict[str, float], coding: str) -> float:
    q = prefs.get(coding)
    if q is None:
        q = prefs.get("*", 0.0)
    return q


def choose_coding(header: bytes, available: tuple[str, ...]) -> str | None:
    """The coding to send among `available` (in preference order), or None for identity."""
    prefs = coding_preferences(header)
    best, best_q = None, 0.0
    for coding in available:
        q = _quality(prefs, coding)
        if q > best_q:
            best, best_q = coding, q
    if best is None:
        return None
    identity_q = prefs.get("identity")
    if identity_q is not None and identity_q > best_q:
        return None                  # the client explicitly prefers the plain bytes
    return best


def target_rule(root: str, show_dotfiles: bool) -> Callable[[str], bool]:
    """Whether a resolved path may be served: inside `root`, and (unless
    `show_dotfiles`) with no component below the root that starts with "."."""
    root = root.rstrip("/") or "/"
    prefix = root if root.endswith("/") else root + "/"

    def allowed(real_path: str) -> bool:
        if real_path == root:
            return True
        if not real_path.startswith(prefix):
            return False
        if show_dotfiles:
            return True
        return not any(part.startswith(".") for part in real_path[len(prefix):].split("/"))
    return allowed


def find_siblings(path: str, inside_root: Callable[[str], bool]) -> tuple[tuple[str, str], ...]:
    """(coding, sibling path) for each coding whose sibling is a servable regular file.

    `inside_root(real_path)` decides whether a symlinked sibling's target may be
    served (`target_rule` gives the site's rule: inside the root, no dotfile); a
    plain (non-link) sibling next to a served file is inside by construction.
    """
    found = []
    for coding, suffix in CODINGS:
        sibling = path + suffix
        try:
            st = os.lstat(sibling)
        except OSError:
            continue
        if stat_mod.S_ISLNK(st.st_mode):
            real = os.path.realpath(sibling)
            if not inside_root(real):
                continue
            try:
                st = os.stat(real)
            except OSError:
                continue
        if stat_mod.S_ISREG(st.st_mode):
            found.append((coding, sibling))
    return tuple(found)
