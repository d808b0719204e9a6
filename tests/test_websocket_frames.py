"""server/websocket/frames.py: the plain client frames read without wsproto.

What is pinned: `plain_frame` finds exactly the frames wsproto would take as one
whole final text or binary message (masked, no RSV bit, a 7-bit or minimal 16-bit
length, all in the buffer, within the limit) and nothing else, and `unmask` gives
what wsproto's own unmasking gives, at every length around the lane boundaries.
"""

from __future__ import annotations

import os

import pytest
from wsproto.frame_protocol import XorMaskerSimple

from server.websocket.frames import plain_frame, unmask


def client_frame(first: int, payload: bytes, *, key: bytes | None = None, width: int | None = None) -> bytes:
    key = os.urandom(4) if key is None else key
    n = len(payload)
    if width is None:
        width = 7 if n < 126 else 16 if n < 65536 else 64
    if width == 7:
        head = bytes((first, 0x80 | n))
    elif width == 16:
        head = bytes((first, 0x80 | 126)) + n.to_bytes(2, "big")
    else:
        head = bytes((first, 0x80 | 127)) + n.to_bytes(8, "big")
    return head + key + bytes(XorMaskerSimple(key).process(bytearray(payload)))


@pytest.mark.parametrize("n", [0, 1, 2, 3, 4, 5, 7, 8, 125, 126, 127, 1024, 65535])
def test_plain_frames_are_found_and_unmasked_as_wsproto_does(n):
    payload = os.urandom(n)
    for first in (0x81, 0x82):
        data = b"junk" + client_frame(first, payload) + b"next"
        found = plain_frame(data, 4, 1 << 20)
        assert found is not None
        opcode, start, count = found
        assert (opcode, count) == (first & 0x0F, n)
        assert unmask(data, start, count) == payload
        assert data[start + count:] == b"next"


def test_anything_else_is_left_to_wsproto():
    payload = b"hello"
    assert plain_frame(client_frame(0x01, payload), 0, 100) is None          # not final
    assert plain_frame(client_frame(0x80, payload), 0, 100) is None          # continuation
    assert plain_frame(client_frame(0x89, payload), 0, 100) is None          # ping
    assert plain_frame(client_frame(0x88, payload), 0, 100) is None          # close
    assert plain_frame(client_frame(0xC1, payload), 0, 100) is None          # RSV1 (deflate)
    assert plain_frame(client_frame(0x83, payload), 0, 100) is None          # reserved opcode
    assert plain_frame(b"\x81\x05hello", 0, 100) is None                     # unmasked
    assert plain_frame(client_frame(0x81, payload, width=16), 0, 100) is None  # 16 bits for 5 bytes
    assert plain_frame(client_frame(0x82, b"x" * 70000), 0, 1 << 20) is None  # 64-bit length
    assert plain_frame(client_frame(0x82, b"x" * 200), 0, 199) is None       # over the limit
    whole = client_frame(0x82, b"x" * 200)
    assert plain_frame(whole, 0, 200) is not None
    for cut in range(len(whole)):
        assert plain_frame(whole[:cut], 0, 200) is None                      # cut by the read
