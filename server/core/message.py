"""The Message: what a response *is* before the transmitter hands it to the kernel.

Theory of operation (docs/design.md rule 1, after Plan 9's "Messages replacing Blocks"):
a Message is a small mutable *stack of header slices* plus a tuple of *immutable
payload slices*.  Producers build the payload once — `bytes`, `memoryview` windows of
an mmap'd file, or `FileRegion`s (fd, offset, count) — and never change it again.
Layers then *push* their headers on top: the static layer pushes the entity block
(Content-Type, Content-Length, ...), the HTTP layer pushes the status line and the
connection headers last, because they go out first.  The wire order is therefore the
stack from top to bottom, then the payload.

Nothing here copies or reads payload bytes.  A memoryview window of an mmap'd file is
lent to the kernel by the transmitter; until the kernel has accepted it, no code may
unmap or touch those pages (rule 3).  Holding a reference to the view is what keeps
the mapping alive, so the Message itself *is* the loan record.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Union

__all__ = ["FileRegion", "Message", "Slice"]


class FileRegion:
    """`count` bytes of an open file from `offset`, to be sent by `os.sendfile`.

    `owner` is whatever keeps `fd` open (an OpenFile of the file cache, usually): the
    region holds a reference to it so the descriptor cannot be closed under a send.
    `view` is the transmitter's memo of the owner's mmap window for this region, so a
    region reused across responses (a cached whole-file or range answer) is windowed
    once; only the kernel ever reads through it.
    """

    __slots__ = ("fd", "offset", "count", "owner", "view")

    def __init__(self, fd: int, offset: int, count: int, owner: object = None) -> None:
        if offset < 0 or count < 0:
            raise ValueError("file region offset and count must be >= 0")
        self.fd = fd
        self.offset = offset
        self.count = count
        self.owner = owner
        self.view: memoryview | None = None

    def __len__(self) -> int:
        return self.count

    def __repr__(self) -> str:
        return f"FileRegion(fd={self.fd}, offset={self.offset}, count={self.count})"


# A payload slice: memory the kernel can gather (bytes / memoryview) or a file region.
Slice = Union[bytes, memoryview, FileRegion]


class Message:
    """A response: a header stack on top of immutable payload slices.

    `status` is the HTTP status code (0 for non-HTTP uses such as FTP data).  `close`
    asks the connection to close once this message is sent.  `head_only` marks a reply
    to HEAD: the headers describe the payload, but the payload is not sent.
    """

    __slots__ = ("status", "_stack", "payload", "close", "head_only")

    def __init__(
        self,
        status: int = 200,
        headers: Iterable[bytes] = (),
        payload: Iterable[Slice] = (),
        *,
        close: bool = False,
    ) -> None:
        self.status = status
        # Bottom of the stack first: the last element is the top (first on the wire).
        self._stack: list[bytes] = list(headers)
        self.payload: tuple[Slice, ...] = payload if type(payload) is tuple else tuple(payload)
        self.close = close
        self.head_only = False

    # -- the header stack ---------------------------------------------------------
    def push(self, header: bytes) -> None:
        """Push a header slice; it goes on the wire before everything below it."""
        self._stack.append(header)

    def pop(self) -> bytes:
        return self._stack.pop()

    @property
    def top(self) -> bytes | None:
        return self._stack[-1] if self._stack else None

    @top.setter
    def top(self, header: bytes) -> None:
        # The top is the only mutable part of a Message.
        self._stack[-1] = header

    def header_slices(self) -> list[bytes]:
        """Header slices in wire order (top of the stack first)."""
        return self._stack[::-1]

    # -- the payload ----------------------------------------------------------------
    @property
    def payload_length(self) -> int:
        return sum(len(s) for s in self.payload)

    def wire_slices(self) -> list[Slice]:
        """Everything this message puts on the wire, in order."""
        head: list[Slice] = list(self._stack[::-1])
        if self.head_only:
            return head
        head.extend(self.payload)
        return head

    def __repr__(self) -> str:
        return (f"Message(status={self.status}, headers={len(self._stack)}, "
                f"payload={len(self.payload)} slices/{self.payload_length} bytes)")
