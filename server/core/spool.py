"""Spools: a fan-out channel's chunks, framed once, in memory files sent by sendfile.

Theory of operation (docs/design.md rule 6).  Lending the same `bytes` to a thousand
sockets saves Python's copies, but each `sendmsg` still has the kernel copy the
bytes into that socket's buffers: a thousand copies of every chunk, the largest
cost left in a fan-out.  `sendfile` from a file in memory does not copy: the
socket's buffers take references to the file's pages.  So a channel may keep, next
to its log, a *spool*: every chunk written once, in the wire form one kind of
reader sends (for a raw HTTP reader the chunk framed as one HTTP chunk, size line
and CRLF included), into an anonymous memory file (`memfd_create`).  Consecutive
chunks are then one contiguous region of that file, and a reader's whole batch is
one `FileRegion`: one sendfile, no copy, no framing per reader.

The file is only ever appended to: a byte is written before any reader can be
given a region over it and is never changed after, so the pages the kernel holds
references to (until the peer has the data) never change under it.  Spool files
are *segments* of at most `SEGMENT` bytes; a region never spans two.  A segment is
kept alive by the chunks of the log that lie in it and by every FileRegion over it
still queued in a transmitter (the region's `owner`), and its descriptor is closed
when the last of them lets go, so the memory held is the log's span (between the
slowest reader and the head, bounded by the lag limit) rounded up to segments.
The pages are shared memory, not mapped into the process: they are counted in the
system's Shmem, not in the process's RSS.

Where memory files do not exist (not Linux), `available()` is False and channels
lend the chunks themselves, as before.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from .message import FileRegion

__all__ = ["SEGMENT", "SpoolFile", "available"]

SEGMENT = 4 << 20      # bytes per spool file: the unit in which spool memory is let go


def available() -> bool:
    return hasattr(os, "memfd_create") and hasattr(os, "pwritev")


class SpoolFile:
    """One append-only memory file; its descriptor is closed when nothing refers to it."""

    __slots__ = ("fd", "size", "__weakref__")

    def __init__(self) -> None:
        self.fd = os.memfd_create("pageloan-spool", os.MFD_CLOEXEC)
        self.size = 0

    def append(self, pieces: Sequence[bytes | memoryview]) -> int:
        """Write `pieces` at the end (one copy, the only one); returns where they begin."""
        at = self.size
        want = sum(map(len, pieces))
        done = 0
        while done < want:
            # pwritev to a memory file writes everything unless memory runs out; loop
            # all the same rather than assume it.
            if done:
                rest = b"".join(pieces)[done:]
                n = os.pwrite(self.fd, rest, at + done)
            else:
                n = os.pwritev(self.fd, pieces, at)
            if n <= 0:
                raise OSError("spool write made no progress")
            done += n
        self.size = at + want
        return at

    def region(self, offset: int, count: int) -> FileRegion:
        return FileRegion(self.fd, offset, count, self)

    def __del__(self) -> None:
        try:
            os.close(self.fd)
        except (OSError, AttributeError):
            pass

    def __repr__(self) -> str:
        return f"<SpoolFile fd={self.fd} size={self.size}>"
