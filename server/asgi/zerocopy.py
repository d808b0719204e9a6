"""The zero-copy response extensions: a file named by the application becomes a FileRegion.

Theory of operation.  Starlette's `FileResponse` (and so `StaticFiles`) sends
`http.response.pathsend` when the scope lists it; other frameworks send
`http.response.zerocopysend` with an open file.  Either way the body is a file the
server can hand to the kernel, so the adapter turns the message into a FileRegion
payload slice and the transmitter does the rest: `os.sendfile` for large regions, or
— for a small file the open-file cache keeps mapped — an mmap window gathered in the
same writev as the head.  No file byte is read into Python (on TLS the copy path
reads it, counted, as for every file).

* pathsend: the path is opened through an OpenFileCache — the static site's when
  pageloan serves a ROOT beside the app, else a small one of the adapter's own — so a
  hot file is not reopened per request and its descriptor stays open exactly as long
  as a send still uses it, even if the file is replaced meanwhile.
* zerocopysend: the spec says the application closes its file once `send` returns,
  but the kernel may not have taken the bytes yet.  So the descriptor is duplicated
  and the duplicate is the region's owner (an OpenDescriptor), closed when the last
  send from it is done.  Without `offset` the file's current position is used and
  then advanced past `count`, as sendfile(2) with a NULL offset would.
"""

from __future__ import annotations

import os
import stat as stat_mod
from typing import Any

from ..core.filecache import OpenDescriptor, OpenFileCache
from ..core.message import FileRegion

__all__ = ["FileSource", "OWN_CACHE_ENTRIES"]

OWN_CACHE_ENTRIES = 256


class FileSource:
    """Opens what the zero-copy messages name, as FileRegions."""

    __slots__ = ("cache",)

    def __init__(self, cache: OpenFileCache | None = None) -> None:
        self.cache = cache if cache is not None else OpenFileCache(max_entries=OWN_CACHE_ENTRIES)

    def path_region(self, path: Any) -> FileRegion:
        """The whole file at `path` (OSError as os.open raises it; IsADirectoryError...)."""
        if not isinstance(path, (str, bytes, os.PathLike)):
            raise TypeError(f"http.response.pathsend 'path' must be a str, not {type(path).__name__}")
        f = self.cache.open(os.path.abspath(os.fsdecode(path)))
        return FileRegion(f.fd, 0, f.size, f.handle)

    def descriptor_region(self, file: Any, offset: int | None, count: int | None) -> FileRegion:
        """`count` bytes of the application's open file from `offset`, on a private dup."""
        fd = file if isinstance(file, int) else file.fileno()
        st = os.fstat(fd)
        if not stat_mod.S_ISREG(st.st_mode):
            raise ValueError("http.response.zerocopysend needs a regular file")
        advance = offset is None
        if offset is None:
            offset = os.lseek(fd, 0, os.SEEK_CUR)
        if offset < 0 or offset > st.st_size:
            raise ValueError(f"zerocopysend offset {offset} is outside the file ({st.st_size} bytes)")
        if count is None:
            count = st.st_size - offset
        if count < 0 or offset + count > st.st_size:
            raise ValueError(f"zerocopysend {offset}+{count} is outside the file ({st.st_size} bytes)")
        owner = OpenDescriptor(os.dup(fd), st.st_size, None)
        if advance:
            os.lseek(fd, offset + count, os.SEEK_SET)
        return FileRegion(owner.fd, offset, count, owner)
