"""One server process: listening sockets, accepting, the timeout sweeper, draining.

Data flows straight down from here: accept → SocketConnection (read) → HttpSession
(parse, order) → the application (route, handler) → Message → transmitter → kernel.

Every connection shares one `ServerContext` (context.py).  The sweeper runs once a second and closes connections that made no progress for too
long (head, body and keep-alive timeouts, see HttpSession.progress; a client that
stopped reading what we send); one timer for all connections is cheaper than a
timer, or even a clock read, per request.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import socket
import ssl
from collections.abc import Callable
from typing import Any

from .config import ServerConfig
from .connection import SocketConnection, TlsConnection
from .context import ReplayCache, ServerContext

__all__ = ["ListenError", "Server", "TlsSetupError", "tls_context", "ServerContext", "make_listener"]

log = logging.getLogger("pageloan.server")

ACCEPT_BATCH = 64


class ListenError(OSError):
    """The server cannot listen where it was told to; the message says why and what to do."""

    def __init__(self, message: str, errno_: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.errno = errno_

    def __str__(self) -> str:
        return self.message


# errno → what it means for a listening socket, and the fix.
_LISTEN_ADVICE = {
    errno.EADDRINUSE: "address already in use (is another server running? use --port)",
    errno.EACCES: "permission denied (ports below 1024 need privileges; use --port)",
    errno.EADDRNOTAVAIL: "this machine has no such address (use --host)",
}


class TlsSetupError(ValueError):
    """The TLS certificate or key cannot be used; the message names the file."""


def tls_context(cert: os.PathLike | str, key: os.PathLike | str | None) -> ssl.SSLContext:
    """A server SSLContext for `cert` and `key`, or TlsSetupError naming the file at fault."""
    for option, path in (("--tls-cert", cert), ("--tls-key", key)):
        if path is None:
            continue
        try:
            with open(path, "rb") as f:
                head = f.read(1 << 16)
        except OSError as exc:
            raise TlsSetupError(f"cannot read {option} {path}: {(exc.strerror or str(exc)).lower()}") from None
        if b"-----BEGIN " not in head:
            raise TlsSetupError(f"{option} {path} is not a PEM file (expected a '-----BEGIN ...' block)")
        wanted = b"CERTIFICATE-----" if option == "--tls-cert" else b"PRIVATE KEY-----"
        if wanted not in head:
            kind = "certificate" if option == "--tls-cert" else "private key"
            raise TlsSetupError(f"{option} {path} holds no PEM {kind}")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(str(cert), str(key) if key else None)
    except ssl.SSLError as exc:
        what = (exc.reason or "").lower().replace("_", " ")
        if not what or what == "pem lib":
            what = "not a usable PEM certificate and private key"
        raise TlsSetupError(f"cannot use --tls-cert {cert} with --tls-key {key}: {what} "
                            "(is the key the certificate's, and both PEM?)") from None
    context.set_alpn_protocols(["http/1.1"])
    return context


def make_listener(host: str, port: int, *, reuse_port: bool = False, backlog: int = 4096) -> socket.socket:
    """A non-blocking listening TCP socket (IPv4 or IPv6 by the host's spelling).

    Raises ListenError naming the address and the fix (`cannot listen on
    127.0.0.1:8080: address already in use ...`).
    """
    where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    try:
        infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise ListenError(f"cannot listen on {where}: cannot resolve {host!r} ({exc.strerror}; use --host)") from None
    family, _type, _proto, _name, addr = infos[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.bind(addr)
        sock.listen(backlog)
    except OSError as exc:
        sock.close()
        reason = _LISTEN_ADVICE.get(exc.errno or 0, (exc.strerror or str(exc)).lower())
        raise ListenError(f"cannot listen on {where}: {reason}", exc.errno) from None
    sock.setblocking(False)
    return sock


def _sni_chooser(sites: tuple) -> Callable[[ssl.SSLObject, str, ssl.SSLContext], int | None]:
    """An SNI callback that gives each virtual host its own certificate (else the default)."""
    by_name: dict[str, ssl.SSLContext] = {}
    for names, cert, key in sites:
        context = tls_context(cert, key)
        for name in names:
            by_name.setdefault(name.lower().rstrip("."), context)

    def choose(sock: ssl.SSLObject, name: str, _default: ssl.SSLContext) -> int | None:
        if name is not None:      # None when the client sent no server name
            chosen = by_name.get(name.lower().rstrip("."))
            if chosen is not None:
                sock.context = chosen
        return None
    return choose


class Server:
    """Accepts connections on a listening socket and serves them until drained."""

    def __init__(self, config: ServerConfig, app: Callable[[Any], Any],
                 loop: asyncio.AbstractEventLoop | None = None, *,
                 replay: ReplayCache | None = None) -> None:
        self.config = config
        self.loop = loop or asyncio.get_event_loop()
        self.ctx = ServerContext(config, app, self.loop, replay=replay)
        self.listener: socket.socket | None = None
        self._tls_server: asyncio.AbstractServer | None = None
        self._sweeper: asyncio.TimerHandle | None = None
        self._accepting = False
        self.port: int | None = None

    async def start(self, listener: socket.socket | None = None) -> None:
        config = self.config
        sock = listener or make_listener(config.host, config.port, reuse_port=config.workers > 1)
        self.listener = sock
        self.port = sock.getsockname()[1]
        if config.tls_cert:
            context = tls_context(config.tls_cert, config.tls_key)
            if config.tls_sni:
                context.sni_callback = _sni_chooser(config.tls_sni)
            self._tls_server = await self.loop.create_server(
                lambda: TlsConnection(self.ctx), sock=sock, ssl=context,
                ssl_handshake_timeout=config.header_timeout)
        else:
            self.loop.add_reader(sock.fileno(), self._accept)
            self._accepting = True
        self._sweeper = self.loop.call_later(1.0, self._sweep)

    def _accept(self) -> None:
        assert self.listener is not None
        ctx = self.ctx
        for _ in range(ACCEPT_BATCH):
            try:
                sock, addr = self.listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                # EMFILE/ENFILE: out of descriptors.  Log and let the backlog wait;
                # the sweeper will free idle connections.
                log.error("accept failed: %s", exc)
                return
            conn = SocketConnection(ctx, sock, addr)
            if self.ctx.metrics.connections_open > self.config.max_connections:
                log.warning("connection limit (%d) reached: 503 to %s",
                            self.config.max_connections, addr)
                conn.session._reject(503, "too many connections")
                conn.session._dispatch()
                conn.transmitter.flush()

    def _sweep(self) -> None:
        """Once a second: fire timeouts for connections that made no progress."""
        now = self.loop.time()
        limits = {"head": self.config.header_timeout, "body": self.config.body_timeout,
                  "idle": self.config.keepalive_timeout}
        for conn in list(self.ctx.connections):
            session = getattr(conn, "session", None)
            if session is None or conn.closed:
                continue
            token = session.progress()
            if token is None:
                conn.progress_mark = None
                self._check_stall(conn, now)
                continue
            mark = getattr(conn, "progress_mark", None)
            if mark is None or mark[0] != token:
                conn.progress_mark = (token, now)
            elif now - mark[1] >= limits[token[0]]:
                conn.progress_mark = None
                session.on_timeout(token[0])
        if self.ctx.replay is not None:
            # Entries go stale with their Date second; dropping them here lets the
            # descriptors of replaced or evicted files close within a second or two.
            self.ctx.replay.drop_stale()
        self._sweeper = self.loop.call_later(1.0, self._sweep)

    def _check_stall(self, conn: Any, now: float) -> None:
        """A client that stops reading holds loans: cut it off after send_timeout."""
        transmitter = conn.transmitter
        if transmitter.idle:
            conn.stall_mark = None
            return
        mark = getattr(conn, "stall_mark", None)
        if mark is None or mark[0] != transmitter.accepted:
            conn.stall_mark = (transmitter.accepted, now)
        elif now - mark[1] >= self.config.send_timeout:
            log.warning("closing connection from %s: no send progress for %.0f s",
                        conn.session.client, now - mark[1])
            conn.abort()

    def stop_accepting(self) -> None:
        if self._accepting and self.listener is not None:
            self.loop.remove_reader(self.listener.fileno())
            self._accepting = False
        if self._tls_server is not None:
            self._tls_server.close()

    async def drain(self, timeout: float | None = None) -> None:
        """Stop accepting, let in-flight responses finish, close everything."""
        self.stop_accepting()
        for conn in list(self.ctx.connections):
            session = getattr(conn, "session", None)
            if session is not None:
                session.start_draining()
        limit = self.loop.time() + (self.config.drain_timeout if timeout is None else timeout)
        while self.ctx.connections and self.loop.time() < limit:
            await asyncio.sleep(0.05)
        for conn in list(self.ctx.connections):
            conn.abort()
        await self.close()

    async def close(self) -> None:
        self.stop_accepting()
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        for conn in list(self.ctx.connections):
            conn.abort()
        if self._tls_server is not None:
            self._tls_server.close()
            self._tls_server = None
        if self.listener is not None:
            self.listener.close()
            self.listener = None
