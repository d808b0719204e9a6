"""I/O drivers: move bytes between one client socket and its HttpSession.

`SocketConnection` owns a raw non-blocking socket.  uvloop's transports would hide
the socket behind a PseudoSocket that refuses `sendmsg` and `sendfile`, and would
keep their own write buffer that our sendfile could overtake (headers after body,
aiohttp #1093); so for plain TCP we use no transport at all: readiness callbacks
(`add_reader`/`add_writer`) on the socket, `recv` here, and every send in the
transmitter.  That works the same on uvloop and on the stock asyncio loop.

`TlsConnection` is an asyncio Protocol for TLS transports, which cannot gather or
sendfile: it pairs the session with the CopyTransmitter (the one copy path).

`PendingConnection` holds an accepted socket before either driver gets it, while
the server still has to learn something from its first bytes: the PROXY protocol
header a load balancer sends first (proxy_protocol.py), and, on a TLS port,
whether the client speaks TLS at all.  It reads with MSG_PEEK and consumes exactly
the header, so the client's own first bytes stay in the socket for the driver.  A
TLS record starts with byte 0x16 (handshake); anything else on a TLS port is a
client speaking plain HTTP, which gets nginx's answer — 400, "The plain HTTP
request was sent to HTTPS port" — on a plain driver, then the close.

Closing is *lingering*: after the last response we shut down our sending side and
read (and drop) what the client still sends for a moment before closing.  Closing a
socket with unread input makes the kernel send RST, which can destroy a response the
client has not read yet — e.g. a 413 sent while the client is still uploading.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Callable
from typing import Any

from ..core import zerocopy
from ..core.transmitter import CopyTransmitter, SocketTransmitter
from .context import ServerContext
from .proxy_protocol import MAX_HEADER, ProxyProtocolError, parse_header
from .session import HttpSession

__all__ = ["PendingConnection", "SocketConnection", "TlsConnection"]

log = logging.getLogger("pageloan.connection")

RECV_SIZE = 64 << 10
TLS_HANDSHAKE_RECORD = 0x16
LINGER_SECONDS = 2.0
LINGER_BYTES = 1 << 20


class SocketConnection:
    """Raw-socket driver: recv → session; pause/resume; lingering close.

    Slotted: a thousand readers of one stream hold a thousand of these.
    `progress_mark` and `stall_mark` belong to the server's sweeper."""

    __slots__ = ("ctx", "loop", "sock", "fd", "session", "_zc", "transmitter", "_reading",
                 "_lingering", "closed", "_linger_left", "_linger_timer", "progress_mark",
                 "stall_mark")

    def __init__(self, ctx: ServerContext, sock: socket.socket, addr: tuple | None) -> None:
        self.ctx = ctx
        # The loop, or under --zerocopy a wrapper that remembers our reader (zerocopy.py).
        self.loop: Any = ctx.loop
        self.sock = sock
        self.fd = sock.fileno()
        sock.setblocking(False)
        try:
            # We batch our own writes (one gather call per flush), so Nagle only adds delay;
            # header-before-file coalescing is done per call with MSG_MORE instead.
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass   # AF_UNIX and friends
        config = ctx.config
        self.session = HttpSession(ctx, self, None, _peer(addr))
        forwarding = ctx.app_for(self.session.client)
        if forwarding is not None:       # a trusted proxy: believe its forwarding headers
            self.session._app = forwarding
        # --zerocopy picks another transmitter here, so the ordinary one never asks.
        self._zc = zerocopy.attach(sock, self.loop, ctx.metrics, ctx.ledger,
                                   config.zerocopy_copied_limit) if config.zerocopy else None
        if self._zc is None:
            self.transmitter = SocketTransmitter(
                sock, self.loop, ledger=ctx.ledger, metrics=ctx.metrics,
                on_error=self._send_failed, on_idle=self.session.on_transmit_idle,
                sendfile_step=config.sendfile_step, gather_max=config.gather_max)
        else:
            self.loop = self._zc.loop   # remembers our reader, to re-arm it (zerocopy.py)
            self.transmitter = zerocopy.ZeroCopyTransmitter(
                sock, self._zc, min_bytes=config.zerocopy_min, ledger=ctx.ledger,
                metrics=ctx.metrics, on_error=self._send_failed,
                on_idle=self.session.on_transmit_idle, sendfile_step=config.sendfile_step)
        self.session.transmitter = self.transmitter
        self._reading = True
        self._lingering = False
        self.closed = False
        self.progress_mark: tuple | None = None
        self.stall_mark: tuple | None = None
        self.loop.add_reader(self.fd, self._on_readable)
        ctx.connection_opened(self)

    # -- reading -----------------------------------------------------------------------
    def _on_readable(self) -> None:
        try:
            data = self.sock.recv(RECV_SIZE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            log.debug("recv failed: %s", exc)
            self.abort()
            return
        if data:
            self.session.data_received(data)
        else:
            self.pause_reading()
            self.session.eof_received()

    def pause_reading(self) -> None:
        if self._reading and not self.closed:
            self._reading = False
            self.loop.remove_reader(self.fd)

    def resume_reading(self) -> None:
        if not self._reading and not self.closed and not self._lingering:
            self._reading = True
            self.loop.add_reader(self.fd, self._on_readable)

    # -- closing -------------------------------------------------------------------------
    def _send_failed(self, exc: BaseException) -> None:
        self.abort()

    def close(self) -> None:
        """Graceful close: FIN after what was sent, then drain the client briefly."""
        if self.closed or self._lingering:
            return
        self.pause_reading()
        self.transmitter.close()
        self.session.connection_lost()
        try:
            self.sock.shutdown(socket.SHUT_WR)
        except OSError:
            self.abort()
            return
        self._lingering = True
        self._linger_left = LINGER_BYTES
        self._linger_timer = self.loop.call_later(LINGER_SECONDS, self.abort)
        self.loop.add_reader(self.fd, self._linger_read)

    def _linger_read(self) -> None:
        try:
            data = self.sock.recv(RECV_SIZE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        self._linger_left -= len(data)
        if not data or self._linger_left <= 0:
            self.abort()

    def abort(self) -> None:
        """Close now."""
        if self.closed:
            return
        self.closed = True
        if self._lingering:
            self._linger_timer.cancel()
        if self._reading or self._lingering:
            self.loop.remove_reader(self.fd)
        self._reading = False
        self.transmitter.close()
        self.session.connection_lost()
        if self._zc is not None:
            self._zc.retire()    # closes the fd once no completion notice is owed
        else:
            try:
                self.sock.close()
            except OSError:
                pass
        self.ctx.connection_closed(self)


class TlsConnection(asyncio.Protocol):
    """TLS driver: asyncio's SSL transport in, CopyTransmitter out."""

    def __init__(self, ctx: ServerContext, peer: tuple[str, int] | None = None) -> None:
        self.ctx = ctx
        self.loop = ctx.loop
        self.closed = False
        self.transport: asyncio.Transport | None = None
        self._peer = peer          # from a PROXY protocol header, else the socket's

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        addr = self._peer or transport.get_extra_info("peername")
        self.session = HttpSession(self.ctx, self, None, _peer(addr))
        forwarding = self.ctx.app_for(self.session.client)
        if forwarding is not None:
            self.session._app = forwarding
        if self.ctx.config.zerocopy:
            zerocopy.note_unsupported("TLS connections (the copy path)")
        self.transmitter = CopyTransmitter(
            transport, self.loop, ledger=self.ctx.ledger, metrics=self.ctx.metrics,  # type: ignore[arg-type]
            on_error=lambda exc: self.abort(), on_idle=self.session.on_transmit_idle)
        self.session.transmitter = self.transmitter
        self.ctx.connection_opened(self)

    def data_received(self, data: bytes) -> None:
        self.session.data_received(data)

    def eof_received(self) -> bool:
        self.session.eof_received()
        return True   # keep our side open until the answers are written

    def pause_writing(self) -> None:
        self.transmitter.pause_writing()

    def resume_writing(self) -> None:
        self.transmitter.resume_writing()

    def pause_reading(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.resume_reading()

    def close(self) -> None:
        if not self.closed and self.transport is not None:
            self.transport.close()    # flushes what the copy path already wrote

    def abort(self) -> None:
        if not self.closed and self.transport is not None:
            self.transport.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.closed:
            return
        self.closed = True
        self.transmitter.close(exc)
        self.session.connection_lost()
        self.ctx.connection_closed(self)


def _peer(addr: object) -> tuple[str, int] | None:
    if isinstance(addr, tuple) and len(addr) >= 2:
        return (str(addr[0]), int(addr[1]))
    return None


class PendingConnection:
    """An accepted socket whose first bytes decide what serves it (PROXY header, TLS sniff).

    `on_ready(sock, peer, tls)` is called once the prelude is done: `tls` says
    whether the client started a TLS handshake (always False on a plain port).
    A bad PROXY header, EOF, or silence past `timeout` closes the socket.
    """

    def __init__(self, ctx: ServerContext, sock: socket.socket, addr: tuple | None, *,
                 proxy_protocol: bool, tls: bool, timeout: float,
                 on_ready: Callable[[socket.socket, tuple | None, bool], None],
                 on_done: Callable[[PendingConnection], None]) -> None:
        self.ctx = ctx
        self.loop = ctx.loop
        self.sock = sock
        self.fd = sock.fileno()
        self.peer: tuple | None = addr
        self._want_proxy = proxy_protocol
        self._tls = tls
        self._header = b""
        self._on_ready = on_ready
        self._on_done = on_done
        self.closed = False
        sock.setblocking(False)
        self._timer = self.loop.call_later(timeout, self._timed_out)
        self.loop.add_reader(self.fd, self._on_readable)

    def _on_readable(self) -> None:
        try:
            if self._want_proxy:
                if not self._read_proxy_header():
                    return
            if self._tls:
                first = self.sock.recv(1, socket.MSG_PEEK)
                if not first:
                    self.abort()
                    return
                self._finish(first[0] == TLS_HANDSHAKE_RECORD)
            else:
                self._finish(False)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            log.debug("connection from %s failed before HTTP: %s", self.peer, exc)
            self.abort()

    def _read_proxy_header(self) -> bool:
        """Consume the PROXY header; True once it is complete and valid."""
        peeked = self.sock.recv(MAX_HEADER - len(self._header), socket.MSG_PEEK)
        if not peeked:
            log.warning("%s: closed before its PROXY protocol header", _host(self.peer))
            self.abort()
            return False
        data = self._header + peeked
        try:
            header = parse_header(data)
        except ProxyProtocolError as exc:
            log.warning("%s: closing: %s", _host(self.peer), exc)
            self.abort()
            return False
        if header is None:
            # Everything peeked belongs to the header: consume it, so the socket is not
            # readable again until more arrives (level-triggered polling would spin).
            self._header += self.sock.recv(len(peeked))
            return False
        rest = header.length - len(self._header)
        if rest:
            self.sock.recv(rest)
        self._want_proxy = False
        if header.client is not None:
            self.peer = header.client
        return True

    def _finish(self, tls: bool) -> None:
        self._detach()
        self._on_ready(self.sock, self.peer, tls)

    def _detach(self) -> None:
        if not self.closed:
            self.closed = True
            self._timer.cancel()
            self.loop.remove_reader(self.fd)
            self._on_done(self)

    def _timed_out(self) -> None:
        log.info("%s: closing: nothing sent in time", _host(self.peer))
        self.abort()

    def abort(self) -> None:
        if self.closed:
            return
        self._detach()
        try:
            self.sock.close()
        except OSError:
            pass


def _host(peer: object) -> str:
    return str(peer[0]) if isinstance(peer, tuple) and peer else "-"
