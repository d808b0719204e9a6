"""Waiting in tests: poll a condition until it holds or a deadline passes.

A fixed sleep is either too short on a loaded machine (the test flakes) or too long on
an idle one (the suite crawls); polling is neither.  Every helper here takes the
condition as a callable, re-evaluates it every `interval` seconds, returns as soon as
it is true (its truthy value, so a poll can also fetch), and fails with a message
naming what it waited for when `timeout` passes.  The deadline is on the monotonic
clock, never the wall clock.

    wait_until(lambda: len(memo) == 1, "the answer to be remembered")
    await until(lambda: transmitter.outstanding == 0, "the send queue to drain")
    settled = wait_stable(lambda: os.path.getsize(path), hold=0.3)
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import TypeVar

__all__ = ["wait_until", "until", "wait_stable", "until_stable", "DEFAULT_TIMEOUT"]

T = TypeVar("T")

DEFAULT_TIMEOUT = 10.0     # generous: a loaded CI machine, never the expected wait


class Timeout(AssertionError):
    """The condition did not hold by the deadline (an assertion failure, for pytest)."""


def _fail(what: str, timeout: float, last: object) -> Timeout:
    return Timeout(f"timed out after {timeout:g} s waiting for {what} (last value: {last!r})")


def wait_until(condition: Callable[[], T], what: str = "the condition", *,
               timeout: float = DEFAULT_TIMEOUT, interval: float = 0.01) -> T:
    """Block until `condition()` is truthy; return its value.  For threads and
    subprocesses (the server runs elsewhere)."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise _fail(what, timeout, value)
        time.sleep(interval)


async def until(condition: Callable[[], T], what: str = "the condition", *,
                timeout: float = DEFAULT_TIMEOUT, interval: float = 0.005) -> T:
    """`wait_until` for a test that shares the server's event loop: yields the loop
    between polls so the server can make the progress being waited for."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise _fail(what, timeout, value)
        await asyncio.sleep(interval)


class _Settling:
    """The bookkeeping `wait_stable` and `until_stable` share: has the value held still?"""

    def __init__(self, first: object, hold: float, timeout: float, what: str) -> None:
        self.last, self.since = first, time.monotonic()
        self.deadline = self.since + timeout
        self.hold, self.timeout, self.what = hold, timeout, what

    def settled(self, value: object) -> bool:
        now = time.monotonic()
        if value != self.last:
            self.last, self.since = value, now
        elif now - self.since >= self.hold:
            return True
        if now >= self.deadline:
            raise _fail(self.what, self.timeout, value)
        return False


def wait_stable(measure: Callable[[], T], *, hold: float = 0.2, timeout: float = DEFAULT_TIMEOUT,
                interval: float = 0.02, what: str = "the value to settle") -> T:
    """Block until `measure()` has returned the same value for `hold` seconds; return it.

    For "nothing more happens" checks (a stalled sender, a paused producer): the hold
    is the quiet period asked of the server, the deadline bounds a value that never
    settles.
    """
    settling = _Settling(measure(), hold, timeout, what)
    while True:
        time.sleep(interval)
        value = measure()
        if settling.settled(value):
            return value


async def until_stable(measure: Callable[[], T], *, hold: float = 0.2, timeout: float = DEFAULT_TIMEOUT,
                       interval: float = 0.02, what: str = "the value to settle") -> T:
    """`wait_stable` in the server's own event loop."""
    settling = _Settling(measure(), hold, timeout, what)
    while True:
        await asyncio.sleep(interval)
        value = measure()
        if settling.settled(value):
            return value
