"""Conditional requests (RFC 9110 §13): validators in, a verdict out.

Theory of operation: a static representation has two validators — a strong ETag
made from the file's identity (inode, size, mtime; never from its content, so it
costs no read) and a Last-Modified date in whole seconds.  `evaluate` runs the
preconditions in the order RFC 9110 §13.2.2 fixes, which is also the order that
closes the bugs other servers shipped:

1. If-Match (strong comparison) — or, only when it is absent, If-Unmodified-Since
   → 412 when the representation is not the one the client expects;
2. If-None-Match (*weak* comparison, a list or `*`) → 304 for GET/HEAD;
3. If-Modified-Since → 304 — but only when If-None-Match is *absent*: a present
   If-None-Match that did not match means the client's copy is stale, whatever
   its date says (Starlette #3052).

If-Range (§13.1.5) is separate: it decides whether a Range is honoured at all.  It
holds only for an exact strong ETag match or an exact Last-Modified date; anything
else (weak tag, other tag, other date, garbage) means "send the whole thing", never
a 206 of the new file spliced onto the client's stale bytes (aiohttp #13480).

Entity-tag lists are tokenised, not split on commas: a tag's opaque part may itself
contain a comma.  Dates that do not parse are ignored, as the RFC requires.
"""

from __future__ import annotations

import re
from calendar import timegm
from email.utils import parsedate_tz

__all__ = ["entity_tags", "parse_http_date", "evaluate", "if_range_holds",
           "NOT_MODIFIED", "PRECONDITION_FAILED"]

NOT_MODIFIED = 304
PRECONDITION_FAILED = 412

# One entity-tag: optional weakness prefix, then a quoted opaque string (no DQUOTE).
_ETAG = re.compile(rb'\s*(W/)?("[^"]*")\s*(?:,|$)')
_DATE_CACHE: dict[bytes, int | None] = {}
_DATE_CACHE_MAX = 256


def entity_tags(value: bytes) -> list[tuple[bool, bytes]] | None:
    """Parse an If-Match/If-None-Match list into (weak, "opaque") pairs.

    Returns None for `*`.  Malformed members are skipped (the rest still count), so a
    garbage header matches nothing rather than everything.
    """
    stripped = value.strip()
    if stripped == b"*":
        return None
    tags: list[tuple[bool, bytes]] = []
    pos, end = 0, len(value)
    while pos < end:
        m = _ETAG.match(value, pos)
        if m is None:
            # Skip one malformed member: up to the next comma.
            comma = value.find(b",", pos)
            if comma < 0:
                break
            pos = comma + 1
            continue
        tags.append((m.group(1) is not None, m.group(2)))
        pos = m.end()
    return tags


def _weak_match(value: bytes, etag: bytes) -> bool:
    # Weak comparison: opaque parts equal, W/ prefixes ignored on both sides.
    tags = entity_tags(value)
    if tags is None:
        return True
    opaque = etag.removeprefix(b"W/")
    return any(tag == opaque for _weak, tag in tags)


def _strong_match(value: bytes, etag: bytes) -> bool:
    # Strong comparison: neither tag may be weak, and the opaque parts are equal.
    tags = entity_tags(value)
    if tags is None:
        return True                  # "*": the representation exists (we have a file)
    if etag.startswith(b"W/"):
        return False
    return any(not weak and tag == etag for weak, tag in tags)


def parse_http_date(value: bytes) -> int | None:
    """An HTTP-date (IMF-fixdate, RFC 850 or asctime) as Unix seconds, or None."""
    cached = _DATE_CACHE.get(value, -1)
    if cached != -1:
        return cached
    seconds: int | None = None
    try:
        parsed = parsedate_tz(value.decode("latin-1"))
    except (ValueError, TypeError, IndexError, OverflowError):
        parsed = None
    if parsed is not None:
        # HTTP dates are always GMT; parsedate_tz reports None offset for "GMT"-less text.
        offset = parsed[9] or 0
        try:
            seconds = timegm(parsed[:6] + (0, 0, 0)) - offset
        except (ValueError, OverflowError):
            seconds = None
    if len(_DATE_CACHE) >= _DATE_CACHE_MAX:
        _DATE_CACHE.clear()
    _DATE_CACHE[value] = seconds
    return seconds


def evaluate(if_match: bytes | None, if_unmodified_since: bytes | None,
             if_none_match: bytes | None, if_modified_since: bytes | None,
             etag: bytes, last_modified: int) -> int | None:
    """304, 412, or None (go on and serve), for a GET or HEAD of a representation.

    `etag` is the quoted tag as sent in ETag; `last_modified` the Last-Modified date
    in whole seconds.
    """
    if if_match is not None:
        if not _strong_match(if_match, etag):
            return PRECONDITION_FAILED
    elif if_unmodified_since is not None:
        date = parse_http_date(if_unmodified_since)
        if date is not None and last_modified > date:
            return PRECONDITION_FAILED
    if if_none_match is not None:
        return NOT_MODIFIED if _weak_match(if_none_match, etag) else None
    if if_modified_since is not None:
        date = parse_http_date(if_modified_since)
        if date is not None and last_modified <= date:
            return NOT_MODIFIED
    return None


def if_range_holds(if_range: bytes, etag: bytes, last_modified_text: bytes) -> bool:
    """True when the Range may be honoured: exact strong ETag or exact date."""
    value = if_range.strip()
    if value.startswith(b'"'):
        return not etag.startswith(b"W/") and value == etag
    if value.startswith(b"W/"):
        return False                 # a weak tag never validates a range
    # A date must be the Last-Modified we send, byte for byte after parsing.
    date = parse_http_date(value)
    return date is not None and date == parse_http_date(last_modified_text)
