"""Files in handler responses: one whole file with static semantics, or gathered slices.

Theory of operation.  A handler that answers with a file should get exactly what the
static site gives a file — ETag and Last-Modified, 304/412 for conditional requests,
206/416 for ranges, a precompressed sibling when the client accepts it — and the
same send path: the payload is a FileRegion of a descriptor held by the shared
open-file cache, so the bytes go by sendfile (or, for a small mapped file, as an
mmap window in the same writev as the header) and never pass through Python.
`file_response(request, path)` therefore hands the file to the application's
StaticSite rather than re-implementing any of that; the path is the handler's
choice, so no root confinement applies (confine client-supplied names yourself,
e.g. with `uploads.upload_path`).

`gather_response(slices, content_type)` opens the gather path to handlers: the
payload is any sequence of immutable slices — bytes, memoryviews, and FileRegions
from `file_region(request, path, offset, count)` — sent in order.  Regions of small
files come from mapped files, so the transmitter lends their pages to one writev
together with the header and the bytes between them; larger regions go by sendfile.
Nothing is concatenated in Python: the response is a list of loans (docs/design.md
rules 1-3).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from urllib.parse import quote

from ..core.filecache import OpenFile, OpenFileCache
from ..core.message import FileRegion, Message, Slice
from ..http.errors import HTTPError
from ..http.request import Request
from ..http.responses import message_response
from ..http.wire import header_block
from .site import StaticSite

__all__ = ["file_response", "file_region", "gather_response", "open_file"]

_fallback_site: StaticSite | None = None


def _site_of(request: Request | None) -> StaticSite:
    """The application's static site (its open-file cache), or a private one."""
    site = getattr(getattr(request, "app", None), "static", None)
    if isinstance(site, StaticSite):
        return site
    global _fallback_site
    if _fallback_site is None:
        _fallback_site = StaticSite("/", cache=OpenFileCache())
    return _fallback_site


def open_file(request: Request | None, path: os.PathLike | str) -> OpenFile:
    """The file at `path` from the shared open-file cache; HTTPError 404/403 if it cannot be."""
    file_path = os.path.abspath(os.fspath(path))
    try:
        return _site_of(request).cache.open(file_path)
    except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
        raise HTTPError(404) from None
    except PermissionError:
        raise HTTPError(403) from None


def file_response(request: Request, path: os.PathLike | str, *,
                  download_name: str | None = None) -> Message:
    """Answer with the file at `path`, with the static site's validators and ranges.

    `download_name` adds `Content-Disposition: attachment; filename=...`.
    """
    try:
        answer = _site_of(request).serve_file(request, path)
    except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
        raise HTTPError(404) from None
    except PermissionError:
        raise HTTPError(403) from None
    if download_name is not None and answer.status in (200, 206):
        answer.push(header_block([("Content-Disposition", _attachment(download_name))], end=False))
    return answer


def _attachment(name: str) -> str:
    fallback = "".join(c if c.isascii() and c.isprintable() and c not in '"\\' else "_" for c in name)
    return f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{quote(name)}"


def file_region(request: Request | None, path: os.PathLike | str, offset: int = 0,
                count: int | None = None) -> FileRegion:
    """`count` bytes of the file at `path` from `offset` (default: to the end), as a slice.

    The region holds the cache's OpenFile, which keeps the descriptor (and mapping)
    alive until the kernel has taken the bytes, even if the file is replaced meanwhile.
    """
    f = open_file(request, path)
    if count is None:
        count = f.size - offset
    if offset < 0 or count < 0 or offset + count > f.size:
        raise ValueError(f"region {offset}+{count} is outside {Path(f.path).name} ({f.size} bytes)")
    return FileRegion(f.fd, offset, count, f.handle)


def gather_response(slices: Iterable[Slice], content_type: str = "application/octet-stream",
                    status: int = 200, headers: Iterable[tuple[str, str]] = ()) -> Message:
    """A response whose body is `slices` in order (bytes, memoryviews, FileRegions)."""
    payload = tuple(slices)
    for s in payload:
        if not isinstance(s, (bytes, memoryview, FileRegion)):
            raise TypeError(f"gather_response takes bytes, memoryview or FileRegion, not {type(s).__name__}")
    return message_response(status, payload, content_type, headers)
