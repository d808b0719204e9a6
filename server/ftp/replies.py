"""FTP replies: how a code and text become control-connection bytes, and refusals.

Theory of operation: a reply is a three-digit code and text (RFC 959 §4.2).  A
one-line reply is `CODE SP TEXT CRLF`; a multi-line one opens with `CODE-`, carries
its middle lines indented by a space (so none can be mistaken for the closing line),
and closes with `CODE SP TEXT`.  Command handlers do not build error replies by hand:
they raise `FtpError(code, text)` and the dispatcher answers it, so every refusal
leaves through one place.  `reply_for_oserror` maps what the file system said to the
codes clients act on (550 "no such file" vs 452 "disk full"), and never puts an
exception's own text (which may hold server paths) on the wire.
"""

from __future__ import annotations

import errno

__all__ = ["FtpError", "format_reply", "reply_for_oserror", "quote_path"]


class FtpError(Exception):
    """Answer the current command with `code` and `text` instead of success."""

    def __init__(self, code: int, text: str) -> None:
        super().__init__(code, text)
        self.code = code
        self.text = text


def _clean(text: str) -> str:
    # A CR or LF inside reply text would end the reply early: a client-chosen file
    # name must not be able to forge reply lines.
    return text.replace("\r", " ").replace("\n", " ")


def format_reply(code: int, text: str, lines: list[str] | None = None) -> bytes:
    """Wire bytes of a reply; `lines` makes it multi-line (text opens and closes it)."""
    if not lines:
        return f"{code} {_clean(text)}\r\n".encode("utf-8", "surrogateescape")
    body = "".join(f" {_clean(line)}\r\n" for line in lines)
    return f"{code}-{_clean(text)}\r\n{body}{code} End.\r\n".encode("utf-8", "surrogateescape")


def quote_path(path: str) -> str:
    """A path inside a 257 reply: in double quotes, embedded quotes doubled (RFC 959)."""
    return '"' + path.replace('"', '""') + '"'


_ERRNO_REPLIES = {
    errno.ENOENT: (550, "No such file or directory."),
    errno.ENOTDIR: (550, "Not a directory."),
    errno.EISDIR: (550, "Is a directory."),
    errno.EEXIST: (550, "File exists."),
    errno.ENOTEMPTY: (550, "Directory not empty."),
    errno.EACCES: (550, "Permission denied."),
    errno.EPERM: (550, "Operation not permitted."),
    errno.EROFS: (550, "Read-only file system."),
    errno.ENAMETOOLONG: (553, "File name too long."),
    errno.EINVAL: (553, "File name not allowed."),
    errno.ENOSPC: (452, "Insufficient storage space."),
    errno.EDQUOT: (452, "Disk quota exceeded."),
    errno.EFBIG: (552, "File too large."),
}


def reply_for_oserror(exc: OSError) -> tuple[int, str]:
    return _ERRNO_REPLIES.get(exc.errno or 0, (451, "Local error in processing."))
