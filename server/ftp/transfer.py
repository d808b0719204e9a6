"""Moving a transfer's bytes over an open data socket, in both directions.

Theory of operation: a download is a FileRegion lent to a SocketTransmitter, exactly
as an HTTP response body is: the transmitter sends it with `os.sendfile` from the
REST offset, and no byte of the file ever becomes a Python object.  `gather_max=0`
keeps the transmitter from turning small regions into mmap windows — the data
socket carries nothing else, so there is no header to share a segment with, and a
multi-GiB file must never be mapped.

The region is lent one window at a time (`WINDOW` bytes), and each window first
waits for room in the global loan ledger (docs/design.md rule 4: when the budget is full
the connection waits, it does not buffer).  The sendfile calls the kernel sees are
the same either way: the transmitter steps through a region in `sendfile_step`
chunks.

A stall is "the kernel took nothing for `data_timeout`", read from the transmitter's
`accepted` counter — not "the transfer took too long": a slow but steady client is
never cut off, a client that stopped reading is, within one timeout.  Cancelling a
send does not withdraw its message from the transmitter, so every exit path closes
the transmitter, which repays whatever is still on loan.

An upload is `receive.receive_to_file`: splice into a temporary file renamed into
place only when the data connection ended cleanly.

A TLS data connection (PROT P, see tls.py) is a `TlsData` instead of a socket: the
same windows go to its CopyTransmitter (the counted copy path), and an upload is
`receive_stream_to_file`, into which the connection pours each decrypted chunk.  Everything else — windows,
ledger, stall rule, temporary file — is the same.
"""

from __future__ import annotations

import asyncio
import os
import socket
from pathlib import Path

from ..core.message import FileRegion, Message
from ..core.metrics import METRICS
from ..core.receive import receive_stream_to_file, receive_to_file
from ..core.transmitter import CopyTransmitter, SocketTransmitter
from .tls import TlsData

__all__ = ["DataConn", "OpenFile", "send_file", "send_bytes", "receive_file", "WINDOW"]

DataConn = socket.socket | TlsData      # a plain data socket, or a TLS one (PROT P)
Transmitter = SocketTransmitter | CopyTransmitter

WINDOW = 4 << 20


class OpenFile:
    """An open file descriptor that stays open while its regions are on loan."""

    __slots__ = ("fd",)

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def _transmitter_for(conn: DataConn) -> Transmitter:
    if isinstance(conn, TlsData):
        assert conn.transmitter is not None
        return conn.transmitter
    return SocketTransmitter(conn, asyncio.get_running_loop(), gather_max=0)


async def _send_watched(transmitter: Transmitter, message: Message,
                        data_timeout: float) -> None:
    """Send `message`; TimeoutError if the kernel accepts nothing for `data_timeout`."""
    sending = asyncio.ensure_future(transmitter.send(message))
    try:
        seen = transmitter.accepted
        # Bounded: every pass either sees progress (finitely many bytes) or raises.
        while True:
            done, _pending = await asyncio.wait({sending}, timeout=data_timeout)
            if done:
                return sending.result()
            if transmitter.accepted == seen:
                raise TimeoutError(f"data connection accepted nothing for {data_timeout} s")
            seen = transmitter.accepted
    finally:
        if not sending.done():
            sending.cancel()


async def send_file(conn: DataConn, file: OpenFile, offset: int, end: int,
                    data_timeout: float) -> int:
    """sendfile (or, over TLS, copy) `file[offset:end]` to `conn`; return bytes sent.

    TimeoutError when the client stops taking data for `data_timeout`;
    TruncatedFileError when the file shrank under the transfer.
    """
    transmitter = _transmitter_for(conn)
    ledger = METRICS.ledger
    position = offset
    try:
        while position < end:       # bounded: each pass lends >= 1 byte of a finite range
            count = min(WINDOW, end - position)
            await ledger.wait_for_room()
            window = Message(status=0, payload=[FileRegion(file.fd, position, count, file)])
            await _send_watched(transmitter, window, data_timeout)
            position += count
    finally:
        transmitter.close()
    return position - offset


async def send_bytes(conn: DataConn, data: bytes, data_timeout: float) -> int:
    """Send a small built payload (a listing) through the transmitter."""
    if not data:
        return 0
    transmitter = _transmitter_for(conn)
    try:
        await _send_watched(transmitter, Message(status=0, payload=[data]), data_timeout)
    finally:
        transmitter.close()
    return len(data)


async def receive_file(conn: DataConn, dest: Path, *, offset: int, append: bool,
                       data_timeout: float) -> int:
    """Receive until the client closes the data connection; return bytes received."""
    if isinstance(conn, TlsData):
        return await receive_stream_to_file(lambda write: conn.pour(write, data_timeout), dest,
                                            offset=offset, append=append)
    return await receive_to_file(conn, dest, offset=offset, append=append,
                                 stall_timeout=data_timeout)
