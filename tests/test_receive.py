"""The receive path (server/receive.py) over real TCP sockets on 127.0.0.1: byte-exact on
both movers (splice and the reused buffer), the temporary file replacing the
destination only on success, resume and append seeded in the kernel, exact limits,
and every failure leaving the destination as it was.
"""

from __future__ import annotations

import asyncio
import errno
import os
import socket
import stat
import struct

import pytest
from polling import until

from server.core import receive
from server.core.receive import IncompleteReceive, ResumeOffsetError, is_partial_name, receive_to_file

MOVERS = pytest.mark.parametrize("use_splice", [True, False], ids=["splice", "buffer"])


def leftovers(directory) -> list[str]:
    return [p.name for p in directory.iterdir() if is_partial_name(p.name)]


async def tcp_pair() -> tuple[socket.socket, socket.socket]:
    """(receiving side, sending side), both non-blocking, over loopback TCP."""
    loop = asyncio.get_running_loop()
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    listener.setblocking(False)
    sender = socket.socket()
    sender.setblocking(False)
    await loop.sock_connect(sender, listener.getsockname())
    receiver, _ = await loop.sock_accept(listener)
    listener.close()
    receiver.setblocking(False)
    return receiver, sender


async def send_then(sender: socket.socket, data: bytes, *, close: bool = True) -> None:
    loop = asyncio.get_running_loop()
    await loop.sock_sendall(sender, data)
    if close:
        sender.close()


@pytest.mark.asyncio
@MOVERS
async def test_receives_until_eof_byte_exact(tmp_path, use_splice):
    payload = os.urandom(5 << 20 | 777)
    receiver, sender = await tcp_pair()
    dest = tmp_path / "out.bin"
    sending = asyncio.ensure_future(send_then(sender, payload))
    count = await receive_to_file(receiver, dest, use_splice=use_splice, stall_timeout=10)
    await sending
    receiver.close()
    assert count == len(payload)
    assert dest.read_bytes() == payload
    assert stat.S_IMODE(dest.stat().st_mode) == 0o644 & ~_umask()
    assert leftovers(tmp_path) == []


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@pytest.mark.asyncio
@MOVERS
async def test_reset_mid_upload_leaves_existing_file_untouched(tmp_path, use_splice):
    dest = tmp_path / "precious.txt"
    dest.write_bytes(b"the original")
    receiver, sender = await tcp_pair()
    receiving = asyncio.ensure_future(receive_to_file(receiver, dest, use_splice=use_splice, stall_timeout=10))
    await send_then(sender, os.urandom(1 << 20), close=False)
    await until(lambda: leftovers(tmp_path), "the temporary file to hold data")
    sender.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sender.close()                          # RST, as from a crashed client
    with pytest.raises(ConnectionResetError):
        await receiving
    receiver.close()
    assert dest.read_bytes() == b"the original"
    assert leftovers(tmp_path) == []


@pytest.mark.asyncio
async def test_cancellation_deletes_the_temporary(tmp_path):
    dest = tmp_path / "precious.txt"
    dest.write_bytes(b"the original")
    receiver, sender = await tcp_pair()
    receiving = asyncio.ensure_future(receive_to_file(receiver, dest))
    await send_then(sender, b"partial data", close=False)
    await until(lambda: leftovers(tmp_path), "the temporary file to appear")
    receiving.cancel()
    with pytest.raises(asyncio.CancelledError):
        await receiving
    sender.close()
    receiver.close()
    assert dest.read_bytes() == b"the original"
    assert leftovers(tmp_path) == []


@pytest.mark.asyncio
async def test_stall_timeout(tmp_path):
    receiver, sender = await tcp_pair()
    with pytest.raises(TimeoutError):
        await receive_to_file(receiver, tmp_path / "never.bin", stall_timeout=0.2)
    sender.close()
    receiver.close()
    assert not (tmp_path / "never.bin").exists() and leftovers(tmp_path) == []


@pytest.mark.asyncio
@MOVERS
async def test_limit_takes_exactly_that_many_bytes(tmp_path, use_splice):
    body, after = os.urandom(300_000), b"NEXT REQUEST"
    receiver, sender = await tcp_pair()
    await send_then(sender, body + after, close=False)
    count = await receive_to_file(receiver, tmp_path / "body.bin", limit=len(body), use_splice=use_splice)
    assert count == len(body)
    assert (tmp_path / "body.bin").read_bytes() == body
    # The bytes behind the body are still in the socket for the next reader.
    loop = asyncio.get_running_loop()
    assert await asyncio.wait_for(loop.sock_recv(receiver, 100), 5) == after
    sender.close()
    receiver.close()


@pytest.mark.asyncio
async def test_eof_before_limit_is_incomplete(tmp_path):
    dest = tmp_path / "short.bin"
    dest.write_bytes(b"old")
    receiver, sender = await tcp_pair()
    await send_then(sender, b"only ten b")
    with pytest.raises(IncompleteReceive):
        await receive_to_file(receiver, dest, limit=100)
    receiver.close()
    assert dest.read_bytes() == b"old" and leftovers(tmp_path) == []


@pytest.mark.asyncio
@MOVERS
async def test_initial_bytes_come_first_and_count_toward_the_limit(tmp_path, use_splice):
    receiver, sender = await tcp_pair()
    await send_then(sender, b"-world", close=False)
    count = await receive_to_file(receiver, tmp_path / "hello.txt", initial=b"hello",
                                  limit=11, use_splice=use_splice)
    assert count == 11 and (tmp_path / "hello.txt").read_bytes() == b"hello-world"
    sender.close()
    receiver.close()
    receiver, sender = await tcp_pair()                      # initial alone fills the limit
    assert await receive_to_file(receiver, tmp_path / "all.txt", initial=b"12345", limit=5) == 5
    assert (tmp_path / "all.txt").read_bytes() == b"12345"
    sender.close()
    receiver.close()


@pytest.mark.asyncio
@MOVERS
async def test_resume_keeps_the_head_and_copies_it_in_the_kernel(tmp_path, monkeypatch, use_splice):
    original = os.urandom(3 << 20)
    dest = tmp_path / "resume.bin"
    dest.write_bytes(original[:2_000_000] + b"garbage past the resume point")
    dest.chmod(0o600)

    def no_reads(*args, **kwargs):
        raise AssertionError("the resume prefix must not be read into Python")

    monkeypatch.setattr(os, "read", no_reads)
    monkeypatch.setattr(os, "pread", no_reads)
    receiver, sender = await tcp_pair()
    sending = asyncio.ensure_future(send_then(sender, original[2_000_000:]))
    count = await receive_to_file(receiver, dest, offset=2_000_000, use_splice=use_splice)
    await sending
    receiver.close()
    monkeypatch.undo()
    assert count == len(original) - 2_000_000
    assert dest.read_bytes() == original
    assert stat.S_IMODE(dest.stat().st_mode) == 0o600        # the replacement keeps the mode


@pytest.mark.asyncio
async def test_resume_falls_back_to_sendfile(tmp_path, monkeypatch):
    def unsupported(*args):
        raise OSError(errno.EXDEV, "pretend cross-device")

    monkeypatch.setattr(os, "copy_file_range", unsupported)
    dest = tmp_path / "resume.bin"
    dest.write_bytes(b"A" * 100_000 + b"B" * 10)
    receiver, sender = await tcp_pair()
    await send_then(sender, b"C" * 50)
    await receive_to_file(receiver, dest, offset=100_000)
    receiver.close()
    assert dest.read_bytes() == b"A" * 100_000 + b"C" * 50


@pytest.mark.asyncio
async def test_append_keeps_the_whole_file(tmp_path):
    dest = tmp_path / "log.txt"
    dest.write_bytes(b"line one\n")
    receiver, sender = await tcp_pair()
    await send_then(sender, b"line two\n")
    assert await receive_to_file(receiver, dest, append=True) == 9
    receiver.close()
    assert dest.read_bytes() == b"line one\nline two\n"


@pytest.mark.asyncio
async def test_resume_beyond_the_end_is_refused(tmp_path):
    dest = tmp_path / "small.bin"
    dest.write_bytes(b"12345")
    for target, offset in ((dest, 6), (tmp_path / "missing.bin", 1)):
        receiver, sender = await tcp_pair()
        with pytest.raises(ResumeOffsetError):
            await receive_to_file(receiver, target, offset=offset)
        sender.close()
        receiver.close()
    assert dest.read_bytes() == b"12345" and leftovers(tmp_path) == []
    assert not (tmp_path / "missing.bin").exists()


@pytest.mark.asyncio
async def test_file_system_refusing_splice_falls_back_without_losing_bytes(tmp_path, monkeypatch):
    real_splice = os.splice
    refused = []

    def splice_refusing_files(src, dst, count, offset_src=None, offset_dst=None, flags=0):
        if offset_dst is not None:           # pipe → file: pretend the file system cannot
            refused.append(count)
            raise OSError(errno.EINVAL, "no splice_write")
        return real_splice(src, dst, count, offset_src, offset_dst, flags)

    monkeypatch.setattr(os, "splice", splice_refusing_files)
    payload = os.urandom(2 << 20)
    receiver, sender = await tcp_pair()
    sending = asyncio.ensure_future(send_then(sender, payload))
    await receive_to_file(receiver, tmp_path / "out.bin", use_splice=True)
    await sending
    receiver.close()
    assert refused == refused[:1] and refused     # tried once, then the buffer path
    assert (tmp_path / "out.bin").read_bytes() == payload


@pytest.mark.asyncio
async def test_fsync_and_blocking_socket_rules(tmp_path):
    receiver, sender = await tcp_pair()
    await send_then(sender, b"durable")
    assert await receive_to_file(receiver, tmp_path / "d.txt", fsync=True) == 7
    assert (tmp_path / "d.txt").read_bytes() == b"durable"
    receiver.setblocking(True)
    with pytest.raises(ValueError):
        await receive_to_file(receiver, tmp_path / "x.txt")
    with pytest.raises(ValueError):
        await receive_to_file(receiver, tmp_path / "x.txt", offset=1, append=True)
    receiver.close()


def test_partial_names():
    assert is_partial_name(".a.bin.pageloan-0123abcd.part")
    assert not is_partial_name("a.bin.pageloan-0123abcd.part")
    assert not is_partial_name(".pageloan-notes")
    assert receive.splice_available() == hasattr(os, "splice")
