"""Cache-Control per URL pattern: how long browsers and proxies may reuse a file.

Theory of operation: an ordered list of (glob pattern, header value) rules, matched
against the URL path of the file being served (for a directory, its index file:
`/docs/` is matched as `/docs/index.html`); the first match wins.  Patterns are
`fnmatch` globs in which `*` also crosses `/`, so `*.html` matches every HTML file at
any depth and `/assets/*` everything under /assets/.  An empty value means "send no
Cache-Control" for the paths it matches.

The defaults follow the way static sites are usually deployed: HTML is revalidated
on every use (`max-age=0, must-revalidate` — the ETag makes that a cheap 304), so a
new deploy is visible at once; everything else may be reused for an hour without
asking.  Sites with fingerprinted asset names can say
`/assets/*=max-age=31536000, immutable`.  User rules are tried before the defaults.
No `public`: it only matters for responses to authenticated requests, which a static
site does not answer differently, and linters (REDbot) flag it as unnecessary.

The answer is computed once per file (the static layer stores it with the route),
never per request.
"""

from __future__ import annotations

from collections.abc import Iterable
from fnmatch import fnmatchcase

__all__ = ["CacheControlRules", "DEFAULT_RULES", "parse_rule"]

HTML_POLICY = "max-age=0, must-revalidate"
ASSET_POLICY = "max-age=3600"

DEFAULT_RULES: tuple[tuple[str, str], ...] = (
    ("*.html", HTML_POLICY),
    ("*.htm", HTML_POLICY),
    ("*", ASSET_POLICY),
)


def parse_rule(text: str) -> tuple[str, str]:
    """`PATTERN=VALUE` → (pattern, value).  The value may itself contain `=`."""
    pattern, eq, value = text.partition("=")
    pattern, value = pattern.strip(), value.strip()
    if not eq or not pattern:
        raise ValueError(f"expected PATTERN=VALUE, got {text!r}")
    if "\r" in value or "\n" in value:
        raise ValueError("a Cache-Control value cannot contain a line break")
    return pattern, value


class CacheControlRules:
    """Ordered glob rules; `for_path` gives the Cache-Control value or None."""

    def __init__(self, rules: Iterable[tuple[str, str]] = (), *, defaults: bool = True) -> None:
        self.rules: list[tuple[str, str]] = list(rules)
        if defaults:
            self.rules.extend(DEFAULT_RULES)

    def for_path(self, url_path: str) -> str | None:
        for pattern, value in self.rules:
            if fnmatchcase(url_path, pattern):
                return value or None
        return None

    def __repr__(self) -> str:
        return f"CacheControlRules({self.rules!r})"
