"""HTTPError: how a handler says "answer with this status" from anywhere in its code.

Theory of operation: a handler (or a helper it calls, or a before-request hook)
raises `HTTPError(404)`; the application catches it where it catches every handler
exception and turns it into the error answer for that status — through an
`@error_handler(404)` hook if one is registered, else the plain error page.  Raising
is what lets a helper deep in a call stack refuse a request without every caller
checking a return value.  An HTTPError is an expected outcome, so it is never logged
with a traceback.
"""

from __future__ import annotations

from collections.abc import Iterable

__all__ = ["HTTPError"]


class HTTPError(Exception):
    """Answer the request with `status` (and an optional one-line `detail`)."""

    def __init__(self, status: int, detail: str | None = None,
                 headers: Iterable[tuple[str, str]] = ()) -> None:
        super().__init__(f"{status}" + (f": {detail}" if detail else ""))
        self.status = status
        self.detail = detail
        self.headers = list(headers)
