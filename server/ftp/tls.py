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
between: it forwards the transport's flow control to the transmitter, and during an
upload hands each decrypted chunk straight to the file's writer from data_received
(`pour`), so no plaintext waits in a queue.  Bytes that arrive when no upload is
pouring are buffered up to a bound, past which the transport is paused (the client
then waits, we do not buffer).

The end of an upload is the client's close_notify; a connection that ends without
one (a bare FIN, or a reset) fails the upload with 426 and commits nothing, since a
FIN is all an attacker on the path needs to truncate the stream (RFC 4217 §10,
RFC 8446 §6.1).  The SSL layer reports both endings through eof_received, so the TLS
object is asked which one it was.

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
from collections.abc import Callable
from pathlib import Path

from ..core.transmitter import CopyTransmitter

__all__ = ["TlsData", "make_tls_context", "open_tls_data"]

log = logging.getLogger("pageloan.ftp")

READ_HIGH = 1 << 20        # plaintext buffered on a TLS data connection before pausing it
# An upload's data connection holds more before its first chunk is poured: see data_received.
UPLOAD_HOLD = 16 << 20
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
    """One TLS data connection: a CopyTransmitter out, plaintext poured into a writer in."""

    def __init__(self, hold: int = READ_HIGH) -> None:
        self.hold = hold                   # bytes buffered, when not pouring, before pausing
        self.transport: asyncio.Transport | None = None
        self.transmitter: CopyTransmitter | None = None
        self._chunks: deque[bytes] = deque()
        self._buffered = 0
        self._eof = False
        self._truncated = False            # the stream ended without close_notify
        self._lost: BaseException | None = None
        self._waiter: asyncio.Future | None = None
        self._paused = False
        # While an upload pours (`pour`), each decrypted chunk goes straight to its
        # writer from data_received: nothing is queued, so reading is never paused.
        self._sink: Callable[[bytes], None] | None = None
        self._sink_error: BaseException | None = None

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
        sink = self._sink
        if sink is not None:
            try:
                sink(data)
            except BaseException as exc:  # noqa: BLE001 - the upload fails with it (disk full, ...)
                self._sink = None
                self._sink_error = exc
            self._wake()
            return
        # Not pouring (before the transfer starts, or bytes a download's client sent):
        # buffered up to a bound, then the client waits.  uvloop's SSL layer drops what
        # it holds for a paused reader when the peer's FIN comes -- close_notify
        # included -- and reports a clean loss (MagicStack/uvloop#661, open; the
        # upload then fails with 426, never commits short).  So an upload pours as
        # soon as it can, and its connection holds UPLOAD_HOLD meanwhile: a client
        # sends a whole small upload and closes within the few loop turns between
        # the handshake and the first pour.
        self._chunks.append(data)
        self._buffered += len(data)
        if self._buffered >= self.hold and not self._paused and self.transport is not None:
            self._paused = True
            self.transport.pause_reading()
        self._wake()

    def eof_received(self) -> bool:
        # The SSL layer reports the end of the stream here whether or not the peer's
        # close_notify came before it: asyncio's sslproto (and uvloop's port of it)
        # takes a bare TCP FIN for a clean end too.  Only a close_notify makes an
        # upload complete, so ask the TLS object which one it was.
        self._eof = True
        if not self._close_notify_received():
            self._truncated = True
        self._wake()
        return False

    def _close_notify_received(self) -> bool:
        sslobj = self.transport.get_extra_info("ssl_object") if self.transport is not None else None
        if sslobj is None:
            return False
        # After the peer's close_notify OpenSSL answers every read with "zero return"
        # (b""); with no close_notify it still wants more records.  The SSL layer has
        # already drained what was decrypted, so a read finds at most a late record.
        for _ in range(64):
            try:
                rest = sslobj.read(READ_HIGH)
            except ssl.SSLError:             # SSLWantReadError: no close_notify came
                return False
            if not rest:
                return True
            self.data_received(rest)         # to the upload's writer, or the buffer
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost = exc
        if exc is None and not self._eof:
            # Gone with no end of stream reported at all: not a complete upload either.
            # (A download is unaffected: what it sent was sent.)
            self._truncated = True
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

    async def pour(self, write: Callable[[bytes], None], stall_timeout: float) -> None:
        """Hand every plaintext chunk of an upload to `write`, as it is decrypted,
        until the client's close_notify.  ConnectionError if the stream ends any
        other way, TimeoutError after `stall_timeout` seconds without a byte, and
        whatever `write` raised."""
        while self._chunks:                  # what came before the transfer began
            data = self._chunks.popleft()
            self._buffered -= len(data)
            write(data)
        self._sink = write
        if self._paused and self.transport is not None:
            self._paused = False
            self.transport.resume_reading()
        loop = asyncio.get_running_loop()
        try:
            while True:
                if self._sink_error is not None:
                    raise self._sink_error
                # EOF first: a client that sent close_notify and closed may reset the
                # connection when our own close_notify reaches it, and that late reset
                # must not turn a complete upload into a failed one.
                if self._eof and not self._truncated:
                    return
                if self._truncated:
                    raise ConnectionAbortedError("TLS data connection closed without close_notify")
                if self._lost is not None:
                    raise ConnectionError(f"TLS data connection lost: {self._lost!r}")
                # Woken by each chunk written, so the stall clock restarts with each.
                self._waiter = loop.create_future()
                try:
                    await asyncio.wait_for(self._waiter, stall_timeout)
                finally:
                    self._waiter = None
        finally:
            self._sink = None

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


async def open_tls_data(sock: socket.socket, context: ssl.SSLContext, timeout: float, *,
                        upload: bool = False) -> TlsData:
    """Run the server side of the TLS handshake on a connected data socket.

    The socket belongs to the returned TlsData's transport from here on.  Raises
    TimeoutError, ssl.SSLError or ConnectionError when the handshake fails.
    """
    loop = asyncio.get_running_loop()
    # Our own instance: uvloop returns its internal SSLProtocol, not the app protocol.
    protocol = TlsData(UPLOAD_HOLD if upload else READ_HIGH)
    await asyncio.wait_for(
        loop.connect_accepted_socket(lambda: protocol, sock, ssl=context, ssl_handshake_timeout=timeout,
                                     ssl_shutdown_timeout=SHUTDOWN_TIMEOUT),
        timeout + 1)
    return protocol
