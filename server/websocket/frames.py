"""Outgoing data frames as Messages: our own 2–10 byte header, the payload untouched.

Why not let wsproto build them: wsproto (like every sans-I/O framer) returns a whole
frame as one new `bytearray` — header and payload copied together — so a 64 KiB
message sent to a thousand sockets would be a thousand 64 KiB copies.  A server's
frame needs no mask (RFC 6455 §5.1: only clients mask), so its header is a pure
function of the opcode and the payload length (§5.2):

    byte 0   FIN (0x80) | opcode (0x1 text, 0x2 binary)
    byte 1   length < 126, or 126 + 16-bit length, or 127 + 64-bit length

The header is the Message's one header slice and the payload its one immutable slice,
so the transmitter gathers both in a single sendmsg and many sockets can hold the
very same payload object (broadcast).  wsproto still does everything else: parsing
and unmasking what clients send, UTF-8 checks, control frames (ping, pong, close)
and the closing handshake.  With permessage-deflate negotiated a frame's payload is
compressed per connection, so those frames do come from wsproto (connection.py).
"""

from __future__ import annotations

import struct

from ..core.message import Message

__all__ = ["OP_TEXT", "OP_BINARY", "frame_header", "data_frame", "frame_payload"]

OP_TEXT = 0x1
OP_BINARY = 0x2
_FIN = 0x80

_SHORT = {(op, n): bytes((_FIN | op, n)) for op in (OP_TEXT, OP_BINARY) for n in range(126)}
_MEDIUM = struct.Struct("!BBH")
_LONG = struct.Struct("!BBQ")


def frame_header(opcode: int, length: int) -> bytes:
    """The unmasked header of one final data frame carrying `length` payload bytes."""
    if length < 126:
        return _SHORT[opcode, length]
    if length < 65536:
        return _MEDIUM.pack(_FIN | opcode, 126, length)
    return _LONG.pack(_FIN | opcode, 127, length)


def frame_payload(data: str | bytes | bytearray | memoryview) -> tuple[int, bytes | memoryview]:
    """(opcode, immutable payload) for a message: text is encoded, bytes kept as they are.

    A bytearray or a writable memoryview is copied once: a payload must not change
    while it is on loan to the kernel (docs/design.md rule 3), and the caller may reuse it.
    """
    if isinstance(data, bytes):
        return OP_BINARY, data if type(data) is bytes else bytes(data)
    if isinstance(data, str):
        return OP_TEXT, data.encode("utf-8")
    if isinstance(data, memoryview):
        flat = data.readonly and data.ndim == 1 and data.itemsize == 1 and data.c_contiguous
        return OP_BINARY, data if flat else data.tobytes()
    if isinstance(data, bytearray):
        return OP_BINARY, bytes(data)
    raise TypeError(f"a WebSocket message is str or bytes, not {type(data).__name__}")


def data_frame(data: str | bytes | bytearray | memoryview) -> Message:
    """One whole message as one frame: Message(header slice, payload slice)."""
    opcode, payload = frame_payload(data)
    n = len(payload)
    return Message(0, (frame_header(opcode, n),), (payload,) if n else ())
