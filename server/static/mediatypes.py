"""Media types for file names: what `Content-Type` a static file is served with.

Theory of operation: the table is built once, at import, from the standard library's
*built-in* `mimetypes` defaults only — never from /etc/mime.types or other system
files, which differ between machines (one maps `.ts` to Qt Linguist, another to MPEG
transport streams) and would make a site's headers depend on the host it runs on.
On top of those defaults we lay the modern types a web server needs and older
Pythons lack or get wrong, so the answer is the same on every machine.

Only the *last* suffix counts: `site.tar.gz` is an `application/gzip` file here.
`mimetypes.guess_type` would say "application/x-tar, encoding gzip", which is the
right answer for a browser that stores a download, and the wrong one for a server
that sends the bytes as they are (no Content-Encoding is implied by a file name).

Text types get `; charset=utf-8`: a static site written today is UTF-8, and a
browser left to guess may pick a legacy encoding and show mojibake.
"""

from __future__ import annotations

import mimetypes
import os

__all__ = ["media_type", "FALLBACK_TYPE"]

FALLBACK_TYPE = "application/octet-stream"

# Types the web relies on, laid over the built-in defaults (which may be old or absent).
_MODERN: dict[str, str] = {
    ".html": "text/html", ".htm": "text/html", ".css": "text/css",
    ".js": "text/javascript", ".mjs": "text/javascript",          # RFC 9239
    ".json": "application/json", ".map": "application/json",
    ".jsonld": "application/ld+json", ".webmanifest": "application/manifest+json",
    ".wasm": "application/wasm", ".xml": "application/xml", ".xhtml": "application/xhtml+xml",
    ".rss": "application/rss+xml", ".atom": "application/atom+xml",
    ".txt": "text/plain", ".md": "text/markdown", ".csv": "text/csv",
    ".yaml": "application/yaml", ".yml": "application/yaml", ".toml": "application/toml",
    ".svg": "image/svg+xml", ".png": "image/png", ".apng": "image/apng",
    ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".gif": "image/gif",
    ".webp": "image/webp", ".avif": "image/avif", ".jxl": "image/jxl",
    ".ico": "image/vnd.microsoft.icon", ".bmp": "image/bmp",
    ".woff2": "font/woff2", ".woff": "font/woff", ".ttf": "font/ttf", ".otf": "font/otf",
    ".opus": "audio/ogg", ".ogg": "audio/ogg", ".oga": "audio/ogg", ".m4a": "audio/mp4",
    ".mp3": "audio/mpeg", ".wav": "audio/wav", ".flac": "audio/flac", ".aac": "audio/aac",
    ".mp4": "video/mp4", ".m4v": "video/mp4", ".webm": "video/webm", ".ogv": "video/ogg",
    ".ts": "video/mp2t", ".m3u8": "application/vnd.apple.mpegurl",
    ".vtt": "text/vtt", ".pdf": "application/pdf", ".zip": "application/zip",
    ".gz": "application/gzip", ".tgz": "application/gzip", ".zst": "application/zstd",
    ".xz": "application/x-xz", ".bz2": "application/x-bzip2", ".br": FALLBACK_TYPE,
    ".tar": "application/x-tar",
}

# Non-text types whose content is text all the same (charset applies).
_TEXTUAL = frozenset({
    "application/javascript", "application/json", "application/xml",
    "application/yaml", "application/toml", "application/vnd.apple.mpegurl",
    "image/svg+xml",
})


def _is_textual(ctype: str) -> bool:
    return (ctype.startswith("text/") or ctype in _TEXTUAL
            or ctype.endswith("+json") or ctype.endswith("+xml"))


def _build_table() -> dict[str, str]:
    # A fresh MimeTypes() starts from the built-in defaults only; it does not read the
    # system's mime.types files into its own maps.
    builtin = mimetypes.MimeTypes()
    table: dict[str, str] = {}
    for strict in (False, True):          # strict entries win over non-strict ones
        table.update({ext.lower(): ctype for ext, ctype in builtin.types_map[strict].items()})
    table.update(_MODERN)
    return {ext: ctype + "; charset=utf-8" if _is_textual(ctype) else ctype
            for ext, ctype in table.items()}


_TABLE = _build_table()


def media_type(name: str) -> str:
    """The Content-Type value for a file called `name` (a path or a bare name)."""
    ext = os.path.splitext(name)[1].lower()
    return _TABLE.get(ext, FALLBACK_TYPE)
