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
very same payload object (broadcast).  wsproto does nearly everything else: parsing
and unmasking what clients send, UTF-8 checks, control frames (ping, pong, close)
and the closing handshake.  The one exception is the frame a browser sends for a
message — whole, final, masked, text or binary, a 7- or 16-bit length — which
connection.py reads itself when a read holds it entire (`plain_frame`, `unmask`):
wsproto's general parser, written for fragments and extensions, costs more than the
rest of an echo.  With permessage-deflate negotiated a frame's payload is
compressed per connection, so those frames do come from wsproto (connection.py).
"""

from __future__ import annotations

import struct

from ..core.message import Message

__all__ = ["OP_TEXT", "OP_BINARY", "frame_header", "data_frame", "frame_payload", "plain_frame",
           "unmask"]

OP_TEXT = 0x1
OP_BINARY = 0x2
_FIN = 0x80

_SHORT = {(op, n): bytes((_FIN | op, n)) for op in (OP_TEXT, OP_BINARY) for n in range(126)}
_MEDIUM = struct.Struct("!BBH")
_LONG = struct.Struct("!BBQ")
# XOR with one key byte, as a translate table: _XOR[k][b] == b ^ k.
_XOR = tuple(bytes(b ^ k for b in range(256)) for k in range(256))
_MASKED = 0x80


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


def plain_frame(data: bytes, at: int, limit: int) -> tuple[int, int, int] | None:
    """(opcode, payload start, payload length) of the client frame at `data[at:]`
    when it is a whole final text or binary frame, masked, with no RSV bit, a
    7-bit or minimal 16-bit length and at most `limit` payload bytes; else None.

    Anything else (a control frame, a fragment, a 64-bit length, a frame the read
    cut short, a frame wsproto would refuse) is None: the caller leaves it to wsproto.
    """
    end = len(data)
    if end - at < 6:
        return None
    first = data[at]
    if first != 0x82 and first != 0x81:        # FIN | binary, FIN | text
        return None
    n = data[at + 1] ^ _MASKED
    if n > 127:
        return None                            # unmasked: wsproto refuses it (1002)
    start = at + 6
    if n >= 126:
        if n == 127:
            return None
        n = (data[at + 2] << 8) | data[at + 3]
        if n < 126:
            return None                        # a 16-bit length where 7 bits do: 1002
        start = at + 8
    if n > limit or start + n > end:
        return None
    return first & 0x0F, start, n


def unmask(data: bytes, start: int, count: int) -> bytes:
    """The `count` payload bytes at `data[start:]` unmasked with the 4-byte key before them.

    Each of the four byte lanes is XORed with its key byte through a translate table:
    four C-level passes instead of a Python loop over the bytes.
    """
    out = bytearray(count)
    end = start + count
    a, b, c, d = data[start - 4:start]
    out[0::4] = data[start:end:4].translate(_XOR[a])
    out[1::4] = data[start + 1:end:4].translate(_XOR[b])
    out[2::4] = data[start + 2:end:4].translate(_XOR[c])
    out[3::4] = data[start + 3:end:4].translate(_XOR[d])
    return bytes(out)
