"""One server process: listening sockets, accepting, the timeout sweeper, draining.

Data flows straight down from here: accept → SocketConnection (read) → HttpSession
(parse, order) → the application (route, handler) → Message → transmitter → kernel.

Every connection shares one `ServerContext` (context.py).  The sweeper runs once a
second and closes connections that made no progress for too long (head, body and
keep-alive timeouts, see HttpSession.progress; a client that stopped reading what
we send); one timer for all connections is cheaper than a timer, or even a clock
read, per request.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import resource
import socket
import ssl
import time
from collections.abc import Callable
from typing import Any

from .config import ServerConfig
from .connection import PendingConnection, SocketConnection, TlsConnection
from .context import ServerContext

__all__ = ["ListenError", "Server", "TlsSetupError", "connection_limit", "inherited_listener",
           "raise_descriptor_limit", "tls_context", "ServerContext", "make_listener"]

log = logging.getLogger("pageloan.server")

ACCEPT_BATCH = 64
ACCEPT_BACKOFF = 0.5          # seconds without accepting after EMFILE (nginx's 500 ms)
ACCEPT_LOG_INTERVAL = 5.0     # at most one "accept failed" line per this many seconds
FD_RESERVE = 64               # descriptors kept for files, logs, listeners, the loop
_OUT_OF_RESOURCES = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
_CLIENT_GONE = frozenset({errno.ECONNABORTED, errno.ECONNRESET, errno.EPROTO, errno.EPERM})


def raise_descriptor_limit() -> int:
    """Raise this process's soft RLIMIT_NOFILE to the hard limit; the new soft limit.

    The soft limit is often 1024 while the hard one is far higher: an event-driven
    server holds one descriptor per connection, so it takes what it is allowed.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        hard = 1 << 20
    if soft == resource.RLIM_INFINITY or soft >= hard:
        return soft if soft != resource.RLIM_INFINITY else hard
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (ValueError, OSError):
        return soft
    return hard


def connection_limit(configured: int) -> tuple[int, int]:
    """(limit, margin): the connections the descriptor limit allows, at most `configured`,
    and how many more may be answered 503 before new ones are closed unanswered.

    Each connection costs one descriptor; a reserve (a quarter of the limit, at least
    FD_RESERVE) stays for the open-file cache, logs and listeners, so the 503 guard
    answers before accept() ever fails with EMFILE.  A 503 holds its descriptor while
    it lingers (connection.py), so those may use only half of the reserve.
    """
    fds = raise_descriptor_limit()
    reserve = max(FD_RESERVE, fds // 4)
    allowed = max(1, fds - reserve)
    margin = max(8, reserve // 2)
    if allowed < configured:
        log.warning("pageloan: --max-connections %d lowered to %d: the descriptor limit is %d "
                    "(raise it with `ulimit -n` or LimitNOFILE=)", configured, allowed, fds)
        return allowed, margin
    return configured, margin


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


SD_LISTEN_FDS_START = 3


def inherited_listener() -> socket.socket | None:
    """The listening socket systemd passed us (socket activation), or None.

    sd_listen_fds(3): LISTEN_PID names the process meant, LISTEN_FDS how many
    descriptors from 3 up it was given.  The variables are removed so that
    processes we start do not believe the sockets are theirs.  Only the first
    socket is used (pageloan listens on one address).
    """
    pid, count = os.environ.get("LISTEN_PID"), os.environ.get("LISTEN_FDS")
    if not pid or not count:
        return None
    if pid != str(os.getpid()):
        return None
    for name in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
        os.environ.pop(name, None)
    try:
        fds = int(count)
    except ValueError:
        raise ListenError(f"LISTEN_FDS={count!r} is not a number of descriptors") from None
    if fds < 1:
        return None
    if fds > 1:
        log.warning("pageloan: %d sockets passed by the service manager; using the first", fds)
    try:
        sock = socket.socket(fileno=SD_LISTEN_FDS_START)
    except OSError as exc:
        raise ListenError(f"descriptor {SD_LISTEN_FDS_START} passed by the service manager "
                          f"is not a socket ({exc.strerror})") from None
    if sock.type != socket.SOCK_STREAM or not sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
        sock.detach()
        raise ListenError(f"descriptor {SD_LISTEN_FDS_START} passed by the service manager "
                          "is not a listening TCP socket (ListenStream= in the .socket unit)")
    os.set_inheritable(sock.fileno(), False)
    sock.setblocking(False)
    return sock


class Server:
    """Accepts connections on a listening socket and serves them until drained."""

    def __init__(self, config: ServerConfig, app: Callable[[Any], Any],
                 loop: asyncio.AbstractEventLoop | None = None) -> None:
        self.config = config
        self.loop = loop or asyncio.get_event_loop()
        self.ctx = ServerContext(config, app, self.loop)
        self.listener: socket.socket | None = None
        self._tls_context: ssl.SSLContext | None = None
        self._sweeper: asyncio.TimerHandle | None = None
        self._resume_timer: asyncio.TimerHandle | None = None
        self._accepting = False
        self._stopped = False
        self._pending: set[PendingConnection] = set()
        self._accept_log = _RateLimitedLog(log, ACCEPT_LOG_INTERVAL)
        self.max_connections = config.max_connections
        self._overload_margin = 64
        self.port: int | None = None

    async def start(self, listener: socket.socket | None = None) -> None:
        config = self.config
        self.max_connections, self._overload_margin = connection_limit(config.max_connections)
        sock = listener or make_listener(config.host, config.port, reuse_port=config.workers > 1)
        sock.setblocking(False)
        self.listener = sock
        self.port = sock.getsockname()[1]
        if config.tls_cert:
            self._tls_context = tls_context(config.tls_cert, config.tls_key)
            if config.tls_sni:
                self._tls_context.sni_callback = _sni_chooser(config.tls_sni)
        self._resume_accepting()
        self._sweeper = self.loop.call_later(1.0, self._sweep)

    # -- accepting ---------------------------------------------------------------------------
    def _resume_accepting(self) -> None:
        self._resume_timer = None
        if not self._accepting and not self._stopped and self.listener is not None:
            self.loop.add_reader(self.listener.fileno(), self._accept)
            self._accepting = True

    def _pause_accepting(self, seconds: float) -> None:
        """Out of descriptors: stop polling the listener for a while (nginx: 500 ms).

        Level-triggered polling would report the waiting connection again at once and
        every accept would fail again: a busy loop that logs as fast as it can.
        Closing connections (timeouts, clients leaving) frees descriptors meanwhile.
        """
        if self._accepting and self.listener is not None:
            self.loop.remove_reader(self.listener.fileno())
            self._accepting = False
        if self._resume_timer is None and not self._stopped:
            self._resume_timer = self.loop.call_later(seconds, self._resume_accepting)

    def _accept(self) -> None:
        listener = self.listener
        if listener is None:
            return
        ctx = self.ctx
        config = self.config
        prelude = config.proxy_protocol or config.tls_cert is not None
        for _ in range(ACCEPT_BATCH):
            try:
                sock, addr = listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno in _OUT_OF_RESOURCES:
                    self._accept_log.error("accept failed: %s; pausing accepts for %.1f s "
                                           "(open connections: %d, limit %d)",
                                           os.strerror(exc.errno or 0), ACCEPT_BACKOFF,
                                           len(ctx.connections), self.max_connections)
                    self._pause_accepting(ACCEPT_BACKOFF)
                    return
                if exc.errno in _CLIENT_GONE:
                    continue          # the client reset before we accepted: next one
                self._accept_log.error("accept failed: %s", exc)
                return
            held = len(ctx.connections) + len(self._pending)
            if held >= self.max_connections + self._overload_margin:
                # Far past the limit (a flood while earlier 503s linger): the 503 goes
                # out at once and the descriptor is closed with it, not held to linger.
                self._accept_log.warning("connection limit (%d) far exceeded: 503 to %s, closed at once",
                                         self.max_connections, _host(addr))
                _refuse_at_once(sock)
                continue
            if held >= self.max_connections:
                self._accept_log.warning("connection limit (%d) reached: 503 to %s",
                                         self.max_connections, _host(addr))
                self._refuse(sock, addr, 503, "too many connections")
                continue
            if prelude:
                self._pending.add(PendingConnection(
                    ctx, sock, addr, proxy_protocol=config.proxy_protocol,
                    tls=self._tls_context is not None, timeout=config.header_timeout,
                    on_ready=self._prelude_done, on_done=self._pending.discard))
            else:
                SocketConnection(ctx, sock, addr)

    def _prelude_done(self, sock: socket.socket, peer: tuple | None, tls: bool) -> None:
        if self._tls_context is None:
            SocketConnection(self.ctx, sock, peer)
        elif tls:
            self.loop.create_task(self._start_tls(sock, peer))
        else:
            log.info("%s: plain HTTP sent to the TLS port: 400", _host(peer))
            self._refuse(sock, peer, 400, "The plain HTTP request was sent to HTTPS port")

    async def _start_tls(self, sock: socket.socket, peer: tuple | None) -> None:
        try:
            await self.loop.connect_accepted_socket(
                lambda: TlsConnection(self.ctx, _peer_tuple(peer)), sock, ssl=self._tls_context,
                ssl_handshake_timeout=self.config.header_timeout)
        except (TimeoutError, OSError, ssl.SSLError) as exc:
            log.debug("TLS handshake with %s failed: %s", _host(peer), exc)
            sock.close()

    def _refuse(self, sock: socket.socket, addr: tuple | None, status: int, reason: str) -> None:
        """Answer `status` on a plain driver and close (lingering, so the client reads it)."""
        conn = SocketConnection(self.ctx, sock, addr)
        conn.session.refuse(status, reason)

    # -- once a second ---------------------------------------------------------------------
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
        for tick in self.ctx.ticks:
            try:
                tick(now)
            except Exception:  # noqa: BLE001 - one failing tick must not stop the sweeper
                log.exception("periodic task %r failed", tick)
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

    # -- stopping ----------------------------------------------------------------------------
    def stop_accepting(self) -> None:
        """Stop accepting and close the listening socket now.

        Closing (not just ignoring) it matters with SO_REUSEPORT: the kernel keeps
        routing new connections to every open socket of the group, and those queued
        on ours would wait for an accept that never comes.  Once it is closed they go
        to the workers that are still serving.
        """
        self._stopped = True
        if self._resume_timer is not None:
            self._resume_timer.cancel()
            self._resume_timer = None
        if self._accepting and self.listener is not None:
            self.loop.remove_reader(self.listener.fileno())
            self._accepting = False
        if self.listener is not None:
            self.listener.close()
            self.listener = None
        for pending in list(self._pending):
            pending.abort()

    async def drain(self, timeout: float | None = None) -> None:
        """Turn unready, stop accepting, let in-flight responses finish, close everything.

        With `drain_delay` the server first answers its readiness path with 503 for
        that long while still serving, so a load balancer polling it stops sending
        new connections before the listener closes.
        """
        self.ctx.ready = False
        delay = self.config.drain_delay
        if delay > 0 and not self._stopped:
            log.info("pageloan: unready; closing the listener in %.1f s", delay)
            await asyncio.sleep(delay)
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


_BUSY = (b"HTTP/1.1 503 Service Unavailable\r\nServer: pageloan\r\nContent-Type: text/plain\r\n"
         b"Content-Length: 45\r\nRetry-After: 1\r\nConnection: close\r\n\r\n"
         b"503 Service Unavailable\ntoo many connections\n")


def _refuse_at_once(sock: socket.socket) -> None:
    """503 and close without lingering: read what the client sent (so the close is a
    FIN, not a RST), send the answer if the socket takes it, close."""
    try:
        sock.setblocking(False)
        try:
            while sock.recv(65536):
                pass
        except (BlockingIOError, InterruptedError):
            pass
        sock.send(_BUSY)
        sock.shutdown(socket.SHUT_WR)
    except OSError:
        pass
    finally:
        sock.close()


class _RateLimitedLog:
    """At most one line per `interval` seconds per message, with a count of the rest."""

    def __init__(self, logger: logging.Logger, interval: float) -> None:
        self.logger = logger
        self.interval = interval
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}

    def _emit(self, level: int, message: str, *args: Any) -> None:
        now = time.monotonic()
        last = self._last.get(message)
        if last is not None and now - last < self.interval:
            self._suppressed[message] = self._suppressed.get(message, 0) + 1
            return
        self._last[message] = now
        skipped = self._suppressed.pop(message, 0)
        if skipped:
            message = message + f" (and {skipped} more like it in the last %.0f s)"
            args = (*args, self.interval)
        self.logger.log(level, message, *args)

    def error(self, message: str, *args: Any) -> None:
        self._emit(logging.ERROR, message, *args)

    def warning(self, message: str, *args: Any) -> None:
        self._emit(logging.WARNING, message, *args)


def _host(addr: object) -> str:
    return str(addr[0]) if isinstance(addr, tuple) and addr else "-"


def _peer_tuple(addr: object) -> tuple[str, int] | None:
    if isinstance(addr, tuple) and len(addr) >= 2:
        return (str(addr[0]), int(addr[1]))
    return None
