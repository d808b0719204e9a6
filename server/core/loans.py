"""Loans: bytes handed to the kernel and not yet accepted, and the budgets that bound them.

Theory of operation (docs/design.md rules 3 and 4): every payload slice a transmitter holds
is *on loan* from the moment its Message is queued until the kernel has accepted its
bytes (`sendmsg` returned past them, `sendfile` advanced past them).  While on loan the
slice is referenced by the transmitter's queue, which is what keeps an mmap window
mapped and a file descriptor open; nobody may change or unmap it.

Pinned memory without flow control is a denial of service (the 9P lesson), so loans
are bounded twice: a per-connection budget (checked by the connection before it takes
on more work) and this global ledger shared by all connections.  When a budget is
full the connection *waits* — it stops dispatching requests and reading — it does not
buffer.  A single message is always admitted when nothing else is outstanding, so a
message larger than a budget cannot deadlock.

A file region is charged one sendfile step at a time: the rest of the region has not
been lent to anybody yet, it is still only a promise in the page cache.
"""

from __future__ import annotations

import asyncio

__all__ = ["LoanLedger"]


class LoanLedger:
    """Global count of bytes on loan, with a budget and waiters for when it is full."""

    __slots__ = ("budget", "outstanding", "peak", "_waiters")

    def __init__(self, budget: int) -> None:
        self.budget = budget
        self.outstanding = 0
        self.peak = 0
        self._waiters: list[asyncio.Future] = []

    @property
    def full(self) -> bool:
        return self.outstanding >= self.budget

    def lend(self, nbytes: int) -> None:
        """Record `nbytes` handed to a transmitter (never refuses: admission is earlier)."""
        self.outstanding += nbytes
        if self.outstanding > self.peak:
            self.peak = self.outstanding

    def repay(self, nbytes: int) -> None:
        """Record `nbytes` accepted by the kernel (or dropped with a failed connection)."""
        self.outstanding -= nbytes
        if self._waiters and self.outstanding < self.budget:
            waiters, self._waiters = self._waiters, []
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_result(None)

    async def wait_for_room(self) -> None:
        """Wait until the ledger is below its budget."""
        while self.outstanding >= self.budget:
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            await waiter
