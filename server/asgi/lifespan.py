"""The ASGI `lifespan` protocol: the application's startup and shutdown, and its state.

Theory of operation.  Before the server accepts its first connection, the
application is called once with a `lifespan` scope in a task that lives for the
whole run.  Its `receive` yields `lifespan.startup`, then — when the server has
drained at shutdown — `lifespan.shutdown`; the application answers each with
`...complete` or `...failed` (with a message).  The scope's `state` dict is what
the application fills at startup; every request scope gets a shallow copy of it.

Modes, as uvicorn's `--lifespan`: `auto` (the default) takes an application that
raises before completing startup as one that does not speak lifespan — many raw
ASGI apps raise on a scope type they do not know — and serves it anyway, with a
log line; `startup.failed` is always fatal.  `on` makes any startup exception fatal.
`off` never calls it.  A fatal startup raises LifespanFailure carrying the
application's own message, which `pageloan serve` prints before exiting non-zero.
"""

from __future__ import annotations

import asyncio
import logging
import traceback
from typing import Any

__all__ = ["Lifespan", "LifespanFailure"]

log = logging.getLogger("pageloan.asgi")

SHUTDOWN_TIMEOUT = 30.0
_RETURNED: dict[str, Any] = {"type": "(returned)"}


class LifespanFailure(Exception):
    """The application refused to start (or failed to shut down cleanly)."""


class Lifespan:
    """Drives one application's lifespan protocol."""

    def __init__(self, app: Any, state: dict[str, Any], mode: str = "auto") -> None:
        self.app = app
        self.state = state
        self.mode = mode
        self.supported = False
        self._task: asyncio.Task | None = None
        self._inbox: asyncio.Queue[dict[str, Any]] | None = None
        self._replies: asyncio.Queue[dict[str, Any] | BaseException] | None = None

    async def startup(self) -> None:
        if self.mode == "off":
            return
        self._inbox = asyncio.Queue()
        self._replies = asyncio.Queue()
        scope = {"type": "lifespan", "asgi": {"version": "3.0", "spec_version": "2.0"},
                 "state": self.state}
        self._task = asyncio.get_running_loop().create_task(self._run(scope))
        await self._inbox.put({"type": "lifespan.startup"})
        reply = await self._replies.get()
        if reply is _RETURNED:
            reply = RuntimeError("the application returned from the lifespan scope without answering")
        if isinstance(reply, BaseException):
            if self.mode == "on":
                raise LifespanFailure(f"ASGI lifespan startup raised: {reply!r}") from reply
            log.info("ASGI 'lifespan' protocol appears unsupported by the application (%r); serving without it",
                     reply)
            return
        if reply["type"] == "lifespan.startup.failed":
            raise LifespanFailure(f"application startup failed: {reply.get('message') or '(no message)'}")
        if reply["type"] != "lifespan.startup.complete":
            raise LifespanFailure(f"unexpected ASGI message {reply['type']!r} during lifespan startup")
        self.supported = True

    async def shutdown(self) -> None:
        if not self.supported or self._task is None or self._task.done():
            return
        assert self._inbox is not None and self._replies is not None
        await self._inbox.put({"type": "lifespan.shutdown"})
        try:
            reply = await asyncio.wait_for(self._replies.get(), SHUTDOWN_TIMEOUT)
        except TimeoutError:
            log.error("ASGI lifespan shutdown did not complete within %.0f s", SHUTDOWN_TIMEOUT)
            self._task.cancel()
            return
        if reply is _RETURNED:
            return
        if isinstance(reply, BaseException):
            log.error("ASGI lifespan shutdown raised:\n%s", "".join(traceback.format_exception(reply)))
        elif reply["type"] == "lifespan.shutdown.failed":
            log.error("application shutdown failed: %s", reply.get("message") or "(no message)")

    async def _run(self, scope: dict[str, Any]) -> None:
        assert self._replies is not None
        try:
            await self.app(scope, self._receive, self._send)
        except BaseException as exc:  # noqa: BLE001 - reported to whoever waits for a reply
            await self._replies.put(exc)
            if not isinstance(exc, Exception):
                raise
            return
        # Returned without a word (or after its last one): nothing more will come.
        await self._replies.put(_RETURNED)

    async def _receive(self) -> dict[str, Any]:
        assert self._inbox is not None
        return await self._inbox.get()

    async def _send(self, message: dict[str, Any]) -> None:
        assert self._replies is not None
        kind = message.get("type")
        if kind not in ("lifespan.startup.complete", "lifespan.startup.failed",
                        "lifespan.shutdown.complete", "lifespan.shutdown.failed"):
            raise RuntimeError(f"unexpected ASGI message {kind!r} in the lifespan protocol")
        await self._replies.put(message)
