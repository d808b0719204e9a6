"""Explicit FTPS (RFC 4217): the server's TLS context and TLS data connections.

Theory of operation: the control connection starts in clear text; `AUTH TLS` is
answered 234 and the same connection is upgraded in place (StreamWriter.start_tls,
see session.py).  `PBSZ 0` + `PROT P` then ask for the data connections to be TLS
too.  This server is always the TLS *server* on a data connection, whichever side
opened the TCP connection (RFC 4217 §7), and it uses the control connection's
SSLContext for it: OpenSSL's server-side session cache lives in that context, so a
TLS 1.2 client that resumes its control session on the data connection (curl,
lftp/GnuTLS and FileZilla offer to; ftplib does not) gets an abbreviated handshake.
Resumption is accepted, not required.  TLS 1.3 sessions are not resumed: that
would need session tickets, which are sent after the handshake and break uploads
(see make_tls_context); TLS 1.3 data connections do a full handshake.

Bytes on a TLS data connection cannot go by sendfile or splice — the kernel would
send plaintext — so they take the one copy path (DESIGN.md rule 5): downloads go
through core's `CopyTransmitter` (pread off the loop, counted in `bytes_copy`),
uploads through `receive_stream_to_file`.  `TlsData` is the asyncio Protocol in
between: it forwards the transport's flow control to the transmitter, and buffers
received plaintext up to a bound, pausing the transport past it (the client then
waits, we do not buffer).

Closing: after the last byte we send close_notify and reply 226 without waiting for
the client's own close_notify (some clients send theirs only after reading the
226); the transport finishes its shutdown in the background, bounded by
SHUTDOWN_TIMEOUT.  An aborted transfer aborts the transport at once.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
from collections import deque
from pathlib import Path

from ..core.transmitter import CopyTransmitter

__all__ = ["TlsData", "make_tls_context", "open_tls_data"]

log = logging.getLogger("pageloan.ftp")

READ_HIGH = 1 << 20        # plaintext buffered from a TLS upload before pausing the client
SHUTDOWN_TIMEOUT = 10.0    # background wait for the client's close_notify


def make_tls_context(cert: Path, key: Path) -> ssl.SSLContext:
    """A server-side context for FTPS; ValueError naming the files if they do not load."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    # No TLS 1.3 session tickets: they are records sent *after* the handshake, and a
    # client that only uploads never reads them, so its close() resets the connection
    # (unread data) and the reset destroys the upload's tail in our receive queue
    # (curl -T lost 17 of 20 uploads so).  TLS 1.2 sessions still resume: their
    # session IDs and tickets travel inside the handshake.
    context.num_tickets = 0
    try:
        context.load_cert_chain(str(cert), str(key))
    except (OSError, ssl.SSLError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise ValueError(f"cannot load the FTP TLS certificate {cert} with key {key}: {reason} "
                         "(--ftp-tls-cert/--ftp-tls-key, else --tls-cert/--tls-key)") from None
    return context


class TlsData(asyncio.Protocol):
    """One TLS data connection: a CopyTransmitter out, a bounded plaintext buffer in."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.transmitter: CopyTransmitter | None = None
        self._chunks: deque[bytes] = deque()
        self._buffered = 0
        self._eof = False
        self._lost: BaseException | None = None
        self._waiter: asyncio.Future | None = None
        self._paused = False

    # -- the transport's callbacks ------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.transmitter = CopyTransmitter(transport, asyncio.get_running_loop())  # type: ignore[arg-type]

    def pause_writing(self) -> None:
        if self.transmitter is not None:
            self.transmitter.pause_writing()

    def resume_writing(self) -> None:
        if self.transmitter is not None:
            self.transmitter.resume_writing()

    def data_received(self, data: bytes) -> None:
        self._chunks.append(data)
        self._buffered += len(data)
        if self._buffered >= READ_HIGH and not self._paused and self.transport is not None:
            self._paused = True
            self.transport.pause_reading()
        self._wake()

    def eof_received(self) -> bool:
        self._eof = True
        self._wake()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if exc is None:
            self._eof = True
        self._lost = exc
        if self.transmitter is not None:
            self.transmitter.close(exc)
            # The copy path waits on writability: a closed transport will never resume it.
            self.transmitter.resume_writing()
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # -- what transfers use ---------------------------------------------------------------
    @property
    def session_reused(self) -> bool:
        sslobj = self.transport.get_extra_info("ssl_object") if self.transport else None
        return bool(sslobj is not None and sslobj.session_reused)

    async def read(self, stall_timeout: float) -> bytes:
        """The next plaintext chunk; b"" at the end; TimeoutError after a stall."""
        while not self._chunks:
            # EOF first: a client that sent close_notify and closed may reset the
            # connection when our own close_notify reaches it, and that late reset
            # must not turn a complete upload into a failed one.
            if self._eof:
                return b""
            if self._lost is not None:
                raise ConnectionError(f"TLS data connection lost: {self._lost!r}")
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await asyncio.wait_for(self._waiter, stall_timeout)
            finally:
                self._waiter = None
        data = self._chunks.popleft()
        self._buffered -= len(data)
        if self._paused and self._buffered < READ_HIGH // 2 and self.transport is not None:
            self._paused = False
            self.transport.resume_reading()
        return data

    def close(self) -> None:
        """close_notify after what was written; the shutdown ends in the background."""
        if self.transmitter is not None:
            self.transmitter.close()
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()

    def abort(self) -> None:
        if self.transmitter is not None:
            self.transmitter.close()
        if self.transport is not None:
            self.transport.abort()


async def open_tls_data(sock: socket.socket, context: ssl.SSLContext, timeout: float) -> TlsData:
    """Run the server side of the TLS handshake on a connected data socket.

    The socket belongs to the returned TlsData's transport from here on.  Raises
    TimeoutError, ssl.SSLError or ConnectionError when the handshake fails.
    """
    loop = asyncio.get_running_loop()
    # Our own instance: uvloop returns its internal SSLProtocol, not the app protocol.
    protocol = TlsData()
    await asyncio.wait_for(
        loop.connect_accepted_socket(lambda: protocol, sock, ssl=context, ssl_handshake_timeout=timeout,
                                     ssl_shutdown_timeout=SHUTDOWN_TIMEOUT),
        timeout + 1)
    return protocol
