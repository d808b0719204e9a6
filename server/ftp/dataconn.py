"""FTP data connections: passive listeners, active targets, and who may use them.

Theory of operation: FTP moves file bytes on a second TCP connection, set up by the
client before each transfer with PASV/EPSV (we listen, it connects) or PORT/EPRT (it
listens, we connect).  Both directions are attack surfaces, so the rules are:

* **No bounce.**  PORT/EPRT may only name the address the control connection comes
  from, and never a privileged port (< 1024): otherwise a client could make this
  server connect to a third host and send it chosen bytes (the "FTP bounce" attack,
  CERT CA-1997-27).  A refusal is logged.
* **No theft.**  A passive listener accepts only a connection from the control
  connection's address; anything else that races to the port is closed and logged.
* **Bounded waits.**  Accepting or connecting has the data timeout; after that the
  transfer command is answered 425.  A passive listener accepts one connection and
  closes; the next transfer needs a new PASV.

A data socket is handed out non-blocking and owned by the caller: the transfer code
gives it to a SocketTransmitter (sending) or receive_to_file (receiving).
Addresses are compared after unmapping IPv4-mapped IPv6 ("::ffff:127.0.0.1" is
127.0.0.1) so a dual-stack listener does not refuse its own clients.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import random
import socket

from .replies import FtpError

__all__ = ["DataChannel", "normalize_ip", "parse_port_arg", "parse_eprt_arg"]

log = logging.getLogger("pageloan.ftp")

MAX_PORT_TRIES = 256          # passive ports tried before giving up on a busy range
MAX_FOREIGN_ACCEPTS = 16      # strangers turned away while waiting for the client


def normalize_ip(address: str) -> str:
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if ip.version == 6 and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return str(ip)


def _family_of(address: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ipaddress.ip_address(address).version == 6 else socket.AF_INET


def parse_port_arg(arg: str) -> tuple[str, int]:
    """`h1,h2,h3,h4,p1,p2` (RFC 959 PORT) → (host, port); FtpError 501 if malformed."""
    try:
        numbers = [int(x) for x in arg.split(",")]
    except ValueError:
        raise FtpError(501, "Syntax error in PORT argument.") from None
    if len(numbers) != 6 or not all(0 <= n <= 255 for n in numbers):
        raise FtpError(501, "Syntax error in PORT argument.")
    return ".".join(map(str, numbers[:4])), numbers[4] * 256 + numbers[5]


def parse_eprt_arg(arg: str) -> tuple[int, str, int]:
    """`|proto|addr|port|` (RFC 2428 EPRT) → (proto, host, port)."""
    if len(arg) < 2 or not 33 <= ord(arg[0]) <= 126:
        raise FtpError(501, "Syntax error in EPRT argument.")
    fields = arg.split(arg[0])
    if len(fields) != 5 or fields[0] or fields[4]:
        raise FtpError(501, "Syntax error in EPRT argument.")
    proto, host, port_text = fields[1:4]
    if proto not in ("1", "2"):
        raise FtpError(522, "Network protocol not supported, use (1,2).")
    try:
        port = int(port_text)
        version = ipaddress.ip_address(host).version
    except ValueError:
        raise FtpError(501, "Syntax error in EPRT argument.") from None
    if not 0 < port < 65536 or version != (4 if proto == "1" else 6):
        raise FtpError(501, "Syntax error in EPRT argument.")
    return int(proto), host, port


class DataChannel:
    """The pending data connection of one session: a passive listener or an active target."""

    def __init__(self, loop: asyncio.AbstractEventLoop, client_ip: str, local_ip: str,
                 passive_ports: tuple[int, int] | None) -> None:
        self._loop = loop
        self.client_ip = normalize_ip(client_ip)
        self.local_ip = normalize_ip(local_ip)
        self._passive_ports = passive_ports
        self._listener: socket.socket | None = None
        self._target: tuple[str, int] | None = None

    @property
    def ready(self) -> bool:
        return self._listener is not None or self._target is not None

    # -- passive: we listen ----------------------------------------------------------
    def listen_passive(self) -> int:
        """Open a listener on the control connection's local address; return its port."""
        self.close()
        family = _family_of(self.local_ip)
        if self._passive_ports is None:
            candidates = [0]
        else:
            lo, hi = self._passive_ports
            count = hi - lo + 1
            # Random order: predictable passive ports make connection theft easier.
            candidates = [lo + i for i in random.sample(range(count), min(count, MAX_PORT_TRIES))]
        for port in candidates:
            sock = socket.socket(family, socket.SOCK_STREAM)
            try:
                sock.bind((self.local_ip, port))
                sock.listen(1)
                sock.setblocking(False)
            except OSError:
                sock.close()
                continue
            self._listener = sock
            return int(sock.getsockname()[1])
        raise FtpError(425, "No free passive port.")

    async def _accept(self, listener: socket.socket, timeout: float) -> socket.socket:
        deadline = self._loop.time() + timeout
        for _ in range(MAX_FOREIGN_ACCEPTS):
            remaining = deadline - self._loop.time()
            if remaining <= 0:
                break
            conn, addr = await asyncio.wait_for(self._loop.sock_accept(listener), remaining)
            if normalize_ip(addr[0]) == self.client_ip:
                return conn
            log.warning("refused passive data connection from %s (client is %s)",
                        addr[0], self.client_ip)
            conn.close()
        raise TimeoutError("no data connection from the client")

    # -- active: we connect ------------------------------------------------------------
    def set_active(self, host: str, port: int) -> None:
        """Remember PORT/EPRT's target after refusing bounces and privileged ports."""
        self.close()
        if normalize_ip(host) != self.client_ip:
            log.warning("refused FTP bounce: client %s asked for a data connection to %s:%d",
                        self.client_ip, host, port)
            raise FtpError(501, "Rejected data connection to a foreign address.")
        if port < 1024:
            log.warning("refused PORT to privileged port %d from %s", port, self.client_ip)
            raise FtpError(501, "Rejected data connection to a privileged port.")
        self._target = (host, port)

    async def _connect(self, target: tuple[str, int], timeout: float) -> socket.socket:
        sock = socket.socket(_family_of(target[0]), socket.SOCK_STREAM)
        try:
            sock.setblocking(False)
            # Leave from the address the client talks to (matters on multi-homed hosts).
            if _family_of(target[0]) == _family_of(self.local_ip):
                sock.bind((self.local_ip, 0))
            await asyncio.wait_for(self._loop.sock_connect(sock, target), timeout)
        except BaseException:
            sock.close()
            raise
        return sock

    # -- both --------------------------------------------------------------------------
    async def open(self, timeout: float) -> socket.socket:
        """The data socket (non-blocking), consuming the PASV/PORT setup.

        Raises TimeoutError or OSError when no connection comes within `timeout`.
        """
        listener, target = self._listener, self._target
        self._listener = self._target = None
        if listener is not None:
            try:
                conn = await self._accept(listener, timeout)
            finally:
                listener.close()
        elif target is not None:
            conn = await self._connect(target, timeout)
        else:
            raise FtpError(425, "Use PORT, EPRT, PASV or EPSV first.")
        conn.setblocking(False)
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return conn

    def close(self) -> None:
        if self._listener is not None:
            self._listener.close()
        self._listener = None
        self._target = None
