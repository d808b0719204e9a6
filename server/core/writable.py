"""One shared writability poll for the many sockets of a fan-out.

Theory of operation.  A transmitter whose socket is full waits for writability with
the event loop's `add_writer`; uvloop makes a poll handle for each such socket —
about 0.75 KiB per socket, for as long as it waits.  A thousand readers of one
channel are each full a moment every round, so at the peak a thousand handles are
held, more than the rest of a subscribed reader.  `WritablePoll` is one epoll set of
our own for such sockets (the kernel keeps its entries, outside the process's
memory), watched by the loop as one readable descriptor: when the set has a ready
socket, its callback runs, exactly as the loop's own writer callback would.  It is
level-triggered like the loop's, so a socket that stays full stays registered and
is called again once it has room.

A transmitter uses it in place of the loop for writability only (`add_writer`,
`remove_writer`); everything else it asks of the loop goes to the loop.  One poll is
kept per event loop (`for_loop`), and holds the loop only weakly.
"""

from __future__ import annotations

import asyncio
import logging
import select
import weakref
from collections.abc import Callable
from typing import Any

__all__ = ["WritablePoll", "for_loop", "available"]

log = logging.getLogger("pageloan.transmitter")

_POLLS: weakref.WeakKeyDictionary[Any, WritablePoll] = weakref.WeakKeyDictionary()
_BATCH = 1024          # ready sockets taken from the kernel per readiness callback


def available() -> bool:
    return hasattr(select, "epoll")


class WritablePoll:
    """add_writer/remove_writer over one shared epoll set; the rest is the loop's."""

    __slots__ = ("_loop", "_epoll", "_callbacks", "__weakref__")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = weakref.ref(loop)
        self._epoll = select.epoll()
        self._callbacks: dict[int, Callable[[], Any]] = {}
        loop.add_reader(self._epoll.fileno(), self._ready)

    def add_writer(self, fd: int, callback: Callable[[], Any]) -> None:
        if fd not in self._callbacks:
            self._epoll.register(fd, select.EPOLLOUT)
        self._callbacks[fd] = callback

    def remove_writer(self, fd: int) -> bool:
        if self._callbacks.pop(fd, None) is None:
            return False
        try:
            self._epoll.unregister(fd)
        except OSError:
            pass          # closed already: the kernel dropped it from the set
        return True

    def _ready(self) -> None:
        for fd, _events in self._epoll.poll(0, _BATCH):
            callback = self._callbacks.get(fd)
            if callback is not None:
                try:
                    callback()
                except Exception:  # noqa: BLE001 - one socket's failure must not stop the others
                    log.exception("writable callback for fd %d failed", fd)

    def __getattr__(self, name: str) -> Any:
        loop = self._loop()
        if loop is None:
            raise RuntimeError("the event loop of this writable poll is gone")
        return getattr(loop, name)

    def __repr__(self) -> str:
        return f"<WritablePoll waiting={len(self._callbacks)}>"


def for_loop(loop: asyncio.AbstractEventLoop) -> WritablePoll:
    """The shared poll of `loop`, made on first use."""
    poll = _POLLS.get(loop)
    if poll is None:
        poll = _POLLS[loop] = WritablePoll(loop)
    return poll
