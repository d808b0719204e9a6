"""The built-in error pages: a small self-contained HTML page per status, in pageloan's style.

Theory of operation: a root may carry its own `404.html`, `403.html`, `401.html`,
`500.html`... (StaticSite.error_page serves those, as files, with validators of
their own).  A root without one still gets a readable page rather than a bare line of
text: the same palette and type as the bundled site, but with its stylesheet inline,
since a custom root has no `/style.css` of ours.  The page says the status and its
reason and nothing about the request (no path echoed back: nothing to inject into).
The bytes are built once per status and shared by every answer (an immutable
payload slice); each call returns a new Message, so callers may push headers on it.
"""

from __future__ import annotations

from ..core.message import Message
from ..http.wire import REASONS, header_block

__all__ = ["default_error_page", "error_page_body"]

_EXPLANATIONS = {
    400: "The request could not be understood.",
    401: "This address needs a user name and password.",
    403: "You may not see what is at this address.",
    404: "There is no file at this address.",
    405: "This address does not answer that method.",
    410: "What was at this address is gone.",
    413: "The request is larger than this server accepts.",
    416: "The requested range is not part of the file.",
    429: "Too many requests; try again in a moment.",
    500: "Something went wrong on the server. It has been logged.",
    502: "The server behind this one did not answer properly.",
    503: "The server is busy; try again in a moment.",
}

_STYLE = (
    ":root{--ink:#1d2430;--muted:#5b6575;--paper:#fafaf7;--band:#1f3b5c;--link:#2563a8}"
    "html{background:var(--paper)}"
    "body{margin:0;color:var(--ink);font:17px/1.6 system-ui,-apple-system,\"Segoe UI\",Roboto,"
    "\"Helvetica Neue\",Arial,sans-serif}"
    ".band{background:var(--band);color:#fff;padding:1.1rem 0}"
    ".wrap{max-width:62rem;margin:0 auto;padding:0 1.25rem}"
    ".band p{margin:0;font-weight:600;letter-spacing:.01em}"
    "h1{font-size:3rem;margin:2.5rem 0 .25rem}h2{margin:0 0 1rem;font-weight:500;color:var(--muted)}"
    "a{color:var(--link)}"
)

_BODIES: dict[int, bytes] = {}
_HEADS: dict[int, bytes] = {}


def error_page_body(status: int) -> bytes:
    """The HTML of the built-in page for `status`."""
    body = _BODIES.get(status)
    if body is None:
        reason = REASONS.get(status, "Error")
        text = _EXPLANATIONS.get(status, "The server could not answer this request.")
        body = (
            "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
            f"<title>{status} {reason}</title>\n<style>{_STYLE}</style>\n</head>\n<body>\n"
            "<header class=\"band\"><div class=\"wrap\"><p>pageloan</p></div></header>\n"
            f"<main class=\"wrap\">\n<h1>{status}</h1>\n<h2>{reason}</h2>\n<p>{text}</p>\n"
            "<p><a href=\"/\">Go to the start page</a></p>\n</main>\n</body>\n</html>\n"
        ).encode()
        _BODIES[status] = body
    return body


def default_error_page(status: int, headers: list[tuple[str, str]] | None = None) -> Message:
    """A new Message with the built-in page for `status` (and `headers`, if any)."""
    head = _HEADS.get(status)
    body = error_page_body(status)
    if head is None:
        head = _HEADS[status] = header_block([("Content-Type", "text/html; charset=utf-8"),
                                              ("Content-Length", str(len(body))),
                                              ("Cache-Control", "no-cache")])
    msg = Message(status, (head,), (body,))
    if headers:
        msg.push(header_block(headers, end=False))
    return msg
