"""Cookies: reading the Cookie header, and Set-Cookie fields for answers.

Theory of operation.  Reading is lenient, the way browsers send cookies: the Cookie
header is split on ";", each piece on its first "=", and a value in double quotes is
unquoted.  One odd pair does not lose the others (the standard library's
`SimpleCookie.load` stops at the first piece it does not like), and a name seen
twice keeps its first value — the most specific path comes first (RFC 6265 §5.4).

Writing goes through the standard library's `http.cookies.Morsel`, which lays out
the attributes; names and values are checked here first: a name must be an RFC 9110
token, a value only RFC 6265 cookie-octets (the stdlib would quote anything else
with backslash escapes that browsers keep as part of the value, so such a value is
refused: percent-encode it), SameSite one of Strict, Lax, None, and SameSite=None
needs Secure, or browsers drop the cookie.  `cookie_header`
returns the ("Set-Cookie", value) pair for a `(body, status, headers)` return or a
response builder; `set_cookie(response, ...)` adds one to a response a handler has
built (a Message or a StreamResponse), as `add_header` does.  `delete_cookie` sets
an empty value that expired in 1970 and Max-Age=0, with the same path and domain,
since a browser matches the cookie to delete by name, path and domain.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from http.cookies import CookieError, Morsel

from ..core.message import Message
from .responses import StreamResponse
from .wire import header_block

__all__ = ["parse_cookie_header", "cookie_header", "set_cookie", "delete_cookie"]

_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
# RFC 6265 cookie-octet: what a value may hold without quoting (browsers do not unquote).
_COOKIE_OCTETS = re.compile(r"[\x21\x23-\x2B\x2D-\x3A\x3C-\x5B\x5D-\x7E]*")
_SAMESITE = {"strict": "Strict", "lax": "Lax", "none": "None"}


def parse_cookie_header(value: str) -> dict[str, str]:
    """`a=1; b="two"` → {"a": "1", "b": "two"} (see the module comment)."""
    jar: dict[str, str] = {}
    for piece in value.split(";"):
        name, eq, val = piece.partition("=")
        name = name.strip()
        if not eq or not name:
            continue
        val = val.strip()
        if len(val) >= 2 and val[0] == '"' and val[-1] == '"':
            val = val[1:-1]
        jar.setdefault(name, val)
    return jar


def cookie_header(name: str, value: str = "", *, max_age: int | None = None,
                  expires: datetime | int | float | None = None, path: str | None = "/",
                  domain: str | None = None, secure: bool = False, httponly: bool = False,
                  samesite: str | None = "Lax", partitioned: bool = False) -> tuple[str, str]:
    """The ("Set-Cookie", ...) header field for one cookie.

    `expires` is a datetime, or seconds from now; `max_age` is seconds.  SameSite
    defaults to Lax, as browsers assume when it is missing.
    """
    if not _TOKEN.fullmatch(name):
        raise ValueError(f"cookie name {name!r} is not a token")
    if not _COOKIE_OCTETS.fullmatch(value):
        raise ValueError(f"cookie value {value!r} has characters a cookie cannot carry "
                         f"(space, quote, comma, semicolon, backslash, non-ASCII): percent-encode it")
    morsel: Morsel = Morsel()
    try:
        morsel.set(name, value, value)
    except CookieError as exc:        # a reserved name such as "path" or "expires"
        raise ValueError(f"cookie name {name!r} cannot be used: {exc}") from None
    if max_age is not None:
        morsel["max-age"] = str(int(max_age))
    if expires is not None:
        if not isinstance(expires, datetime):
            expires = datetime.now(UTC) + timedelta(seconds=float(expires))
        morsel["expires"] = format_datetime(expires.astimezone(UTC), usegmt=True)
    if path is not None:
        morsel["path"] = path
    if domain is not None:
        morsel["domain"] = domain
    if samesite is not None:
        spelled = _SAMESITE.get(samesite.lower())
        if spelled is None:
            raise ValueError("samesite must be 'strict', 'lax' or 'none'")
        if spelled == "None" and not secure:
            raise ValueError("samesite='none' needs secure=True (browsers refuse it otherwise)")
        morsel["samesite"] = spelled
    if secure:
        morsel["secure"] = True
    if httponly:
        morsel["httponly"] = True
    text = morsel.OutputString()
    if partitioned:
        text += "; Partitioned"
    if "\r" in text or "\n" in text:
        raise ValueError("a cookie attribute cannot contain a line break")
    return ("Set-Cookie", text)


def set_cookie(response: Message | StreamResponse, name: str, value: str = "",
               **attributes: object) -> Message | StreamResponse:
    """Add a Set-Cookie field to `response` (keywords as for `cookie_header`)."""
    field = cookie_header(name, value, **attributes)  # type: ignore[arg-type]
    if isinstance(response, StreamResponse):
        response.headers.append(field)
    else:
        response.push(header_block([field], end=False))
    return response


def delete_cookie(response: Message | StreamResponse, name: str, *, path: str | None = "/",
                  domain: str | None = None, secure: bool = False, httponly: bool = False,
                  samesite: str | None = "Lax") -> Message | StreamResponse:
    """Tell the browser to forget cookie `name` (same path and domain it was set with)."""
    return set_cookie(response, name, "", max_age=0,
                      expires=datetime(1970, 1, 1, tzinfo=UTC), path=path,
                      domain=domain, secure=secure, httponly=httponly, samesite=samesite)
