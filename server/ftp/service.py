"""The FTP service: the listening socket, admission per client address, and shutdown.

Theory of operation: one listening socket per process, with SO_REUSEADDR (restart
without waiting out TIME_WAIT) and SO_REUSEPORT (several worker processes bind the
same port and the kernel spreads connections over them).  It also sets SO_OOBINLINE,
which accepted sockets inherit, so a client's urgent-data ABOR arrives in the
command stream instead of being dropped from it.

Each accepted control connection becomes a Session task.  Admission is per client
address: past `max_per_ip` open control connections a newcomer gets 421 and is
closed before it can send a command — that bounds the sessions, and with them the
data listeners and login attempts, one address can hold.  The LoginThrottle lives
here too, shared by all sessions of the process, so reconnecting does not reset a
guesser's delay.

`close()` stops listening, cancels every session (which cancels its transfer and
deletes a partial upload) and waits for them, bounded.
"""

from __future__ import annotations

import asyncio
import logging
import socket

from .accounts import LoginThrottle
from .commands import COMMANDS, Command
from .config import FtpConfig
from .dataconn import normalize_ip
from .replies import format_reply
from .session import MAX_LINE, Session
from .tls import make_tls_context

__all__ = ["FtpService", "start_ftp"]

log = logging.getLogger("pageloan.ftp")

CLOSE_WAIT = 5.0     # seconds close() waits for sessions to finish their cleanup


def _listening_socket(host: str, port: int, reuse_port: bool) -> socket.socket:
    family, kind, proto, _name, address = socket.getaddrinfo(
        host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port and hasattr(socket, "SO_REUSEPORT"):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_OOBINLINE, 1)
        if family == socket.AF_INET6 and address[0] == "::":
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)   # dual stack
        sock.bind(address)
        sock.listen(128)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


class FtpService:
    """A running FTP listener and its sessions."""

    def __init__(self, config: FtpConfig) -> None:
        self.config = config
        self.throttle = LoginThrottle(config.login_delay)
        self.commands: dict[str, Command] = COMMANDS     # the verb table its sessions dispatch on
        # One context for every control and data connection: its session cache is what
        # lets a client resume the control connection's TLS session on a data connection.
        self.tls_context = (make_tls_context(config.tls_cert, config.tls_key)
                            if config.tls_cert is not None and config.tls_key is not None else None)
        self.port = 0
        self._server: asyncio.AbstractServer | None = None
        self._sessions: set[asyncio.Task] = set()
        self._per_ip: dict[str, int] = {}

    async def start(self) -> None:
        sock = _listening_socket(self.config.host, self.config.port, self.config.reuse_port)
        self.port = sock.getsockname()[1]
        self._server = await asyncio.start_server(self._on_client, sock=sock, limit=MAX_LINE)
        log.info("FTP serving %s on %s port %d", self.config.root, self.config.host, self.port)
        if self.tls_context is not None:
            log.info("FTP offers AUTH TLS with %s%s", self.config.tls_cert,
                     " (required before login)" if self.config.tls_required else "")
        if not self.config.accounts and not self.config.anonymous:
            log.warning("FTP has neither --ftp-users nor --ftp-anonymous: nobody can log in")

    @property
    def sessions(self) -> int:
        return len(self._sessions)

    async def _on_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._sessions.add(task)
        try:
            peer = writer.get_extra_info("peername")
            local = writer.get_extra_info("sockname")
            ip = normalize_ip(peer[0])
            if self._per_ip.get(ip, 0) >= self.config.max_per_ip:
                log.warning("refused FTP connection from %s: %d already open", ip, self._per_ip[ip])
                writer.write(format_reply(421, "Too many connections from your address."))
                return
            self._per_ip[ip] = self._per_ip.get(ip, 0) + 1
            try:
                await Session(self, reader, writer, ip, local[0]).run()
            finally:
                left = self._per_ip.pop(ip) - 1
                if left:
                    self._per_ip[ip] = left
        except Exception:    # noqa: BLE001 - one broken session must not reach the server
            log.exception("FTP session failed")
        finally:
            if task is not None:
                self._sessions.discard(task)
            writer.close()

    async def close(self) -> None:
        """Stop listening, end every session, wait (bounded) for their cleanup."""
        if self._server is not None:
            self._server.close()
        sessions = list(self._sessions)
        for task in sessions:
            task.cancel()
        if sessions:
            await asyncio.wait(sessions, timeout=CLOSE_WAIT)
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None


async def start_ftp(config: FtpConfig) -> FtpService:
    """Bind and start serving; `.port` is the bound port (config.port 0 picks one)."""
    service = FtpService(config)
    await service.start()
    return service
