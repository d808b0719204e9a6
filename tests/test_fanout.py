"""Fan-out core: one chunk object reaches every reader; a slow reader is bounded by policy."""

from __future__ import annotations

import asyncio
import mmap
import socket
import sys

import pytest

from server.core.fanout import Channel, SlowReader
from server.core.metrics import Metrics
from server.http.responses import StreamResponse


async def test_every_reader_gets_the_same_object_not_a_copy():
    channel = Channel()
    subs = [channel.subscribe() for _ in range(5)]
    chunk = b"x" * 100_000
    base = sys.getrefcount(chunk)
    assert await channel.publish(chunk) == 5
    assert sys.getrefcount(chunk) == base + 1          # held once, in the log
    got = [await sub.__anext__() for sub in subs]
    assert all(g is chunk for g in got)
    del got
    for sub in subs:
        sub.close()
    channel.close()
    assert sys.getrefcount(chunk) == base              # released when the last reader is done
    assert channel.chunks_held == 0 and channel.bytes_held == 0


async def test_a_batch_is_the_published_objects_cut_at_the_byte_limit():
    channel = Channel()
    sub = channel.subscribe()
    chunks = [bytes([i]) * 1000 for i in range(10)]
    for chunk in chunks:
        await channel.publish(chunk)
    seq, batch = sub.take(max_chunks=64, max_bytes=3500)
    assert seq == 1 and len(batch) == 3 and all(a is b for a, b in zip(batch, chunks[:3], strict=True))
    seq, batch = sub.take(max_chunks=2)
    assert seq == 4 and [b[0] for b in batch] == [3, 4]
    seq, batch = sub.take(max_bytes=10)                 # one chunk, however large
    assert seq == 6 and len(batch) == 1 and batch[0] is chunks[5]


async def test_drop_policy_cuts_off_a_slow_reader_and_others_continue():
    metrics = Metrics()
    channel = Channel("t", max_lag_chunks=4, metrics=metrics)
    fast, slow = channel.subscribe(), channel.subscribe()
    for i in range(10):
        await channel.publish(b"%d" % i)
        assert await fast.__anext__() == b"%d" % i
    assert channel.readers == 1 and channel.dropped == 1 and metrics.fanout_dropped == 1
    with pytest.raises(SlowReader):
        await slow.__anext__()
    assert metrics.fanout()[0] == 1


async def test_drop_policy_bounds_a_slow_reader_by_bytes_too():
    channel = Channel(max_lag_bytes=10_000, replay_chunks=0)
    slow = channel.subscribe()
    for _ in range(20):
        await channel.publish(b"y" * 1000)
    assert channel.readers == 0 and slow.error is not None
    assert channel.bytes_held <= 11_000


async def test_skip_policy_moves_a_slow_reader_to_the_newest_chunk():
    metrics = Metrics()
    channel = Channel(policy="skip", max_lag_chunks=4, metrics=metrics)
    slow = channel.subscribe()
    for i in range(10):
        await channel.publish(b"%d" % i)
    assert channel.readers == 1
    seq, batch = slow.take()
    assert batch[-1] == b"9" and len(batch) <= 4
    assert slow.skipped > 0 and slow.skipped + len(batch) == 10
    assert metrics.fanout_skipped == slow.skipped


async def test_block_policy_makes_the_producer_wait_for_the_slowest_reader():
    channel = Channel(policy="block", max_lag_chunks=3)
    sub = channel.subscribe()
    for i in range(3):
        await channel.publish(b"%d" % i)
    producer = asyncio.ensure_future(channel.publish(b"3"))
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert not producer.done()                          # the reader is 4 behind: wait
    assert sub.take(1)[1] == (b"0",)                    # back within the limit, but only just:
    await asyncio.sleep(0)
    assert not producer.done()                          # the producer waits for some slack
    assert sub.take()[1] == (b"1", b"2", b"3")
    await asyncio.wait_for(producer, 5)
    assert channel.readers == 1 and channel.dropped == 0


async def test_block_policy_producer_resumes_when_the_slow_reader_leaves():
    channel = Channel(policy="block", max_lag_chunks=2)
    sub = channel.subscribe()
    await channel.publish(b"a")
    await channel.publish(b"b")
    producer = asyncio.ensure_future(channel.publish(b"c"))
    await asyncio.sleep(0)
    assert not producer.done()
    sub.close()
    await asyncio.wait_for(producer, 5)


async def test_late_joiner_starts_at_the_live_edge_or_from_the_window():
    channel = Channel(replay_chunks=3)
    for i in range(1, 6):
        await channel.publish(b"%d" % i)                # seqs 1..5
    live = channel.subscribe()
    assert live.ready() == 0
    resumed = channel.subscribe(from_seq=4)
    assert resumed.take()[1] == (b"4", b"5")
    old = channel.subscribe(from_seq=1)                 # 1 and 2 have left the window
    assert old.missed == 2 and old.take()[1] == (b"3", b"4", b"5")
    assert channel.subscribe(from_seq=99).ready() == 0


async def test_memory_is_bounded_by_the_window_without_readers():
    channel = Channel(replay_chunks=8, replay_bytes=1 << 20)
    for _ in range(1000):
        await channel.publish(b"z" * 100)
    assert channel.chunks_held == 8 and channel.bytes_held == 800


async def test_mutable_buffers_are_refused():
    channel = Channel()
    data = bytearray(b"abc")
    for chunk in (data, memoryview(data), memoryview(data).toreadonly()):
        with pytest.raises(TypeError):
            await channel.publish(chunk)
    await channel.publish(memoryview(b"immutable"))
    with mmap.mmap(-1, 4096, access=mmap.ACCESS_WRITE) as writable:
        with pytest.raises(TypeError):
            await channel.publish(memoryview(writable).toreadonly())


async def test_close_lets_readers_finish_then_releases_the_log():
    channel = Channel()
    sub = channel.subscribe()
    await channel.publish(b"last words")
    channel.close()
    assert channel.chunks_held == 1                     # still owed to the reader
    assert [c async for c in sub] == [b"last words"]
    assert channel.chunks_held == 0 and channel.readers == 0
    with pytest.raises(RuntimeError):
        await channel.publish(b"more")


async def test_heartbeat_wakes_a_waiting_reader_in_silence():
    channel = Channel(heartbeat=0.05)
    sub = channel.subscribe()
    assert await asyncio.wait_for(sub.wait(), 5) is True
    await channel.publish(b"x")
    assert await sub.wait() is False


async def test_fanout_over_http_to_many_clients(serve):
    channel = Channel()

    def app(request):
        return StreamResponse(channel.subscribe(), content_type="text/plain")

    srv = await serve(app=app)
    clients = []
    for _ in range(8):
        reader, writer = await asyncio.open_connection(srv.host, srv.port)
        writer.write(b"GET /stream HTTP/1.1\r\nHost: x\r\n\r\n")
        await reader.readuntil(b"\r\n\r\n")
        clients.append((reader, writer))
    assert channel.readers == 8
    for i in range(3):
        await channel.publish(b"tick %d\n" % i)
    channel.close()
    for reader, writer in clients:
        body = await asyncio.wait_for(reader.readuntil(b"0\r\n\r\n"), 5)
        assert body == b"7\r\ntick 0\n\r\n7\r\ntick 1\n\r\n7\r\ntick 2\n\r\n0\r\n\r\n"
        writer.close()


async def _stalled_readers(srv, path: str, count: int) -> list[socket.socket]:
    socks = []
    for _ in range(count):
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, (srv.host, srv.port))
        sock.send(b"GET %s HTTP/1.1\r\nHost: x\r\n\r\n" % path.encode())
        socks.append(sock)
    return socks


async def _until(predicate, deadline: float, what) -> None:
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, what()
        await asyncio.sleep(0.01)


async def test_stalled_readers_transmitters_hold_the_published_object_itself(serve):
    """Without a spool, readers that do not read keep the *one* chunk queued in their
    transmitters: its reference count rises by one per reader (a copy would not), and
    falls back when they leave."""
    from server.framework.channels import channel_response

    channel = Channel("held", max_lag_bytes=64 << 20, spool=False)
    srv = await serve(app=lambda request: channel_response(request, channel))
    socks = await _stalled_readers(srv, "/held", 10)
    deadline = asyncio.get_running_loop().time() + 10
    await _until(lambda: channel.readers == 10, deadline, lambda: channel.readers)
    chunk = bytes(16 << 20)         # more than any socket buffer takes from a non-reader
    base = sys.getrefcount(chunk)
    await channel.publish(chunk)
    await _until(lambda: sys.getrefcount(chunk) >= base + 1 + 10, deadline,
                 lambda: sys.getrefcount(chunk) - base)
    channel.close()
    for sock in socks:
        sock.close()
    await _until(lambda: sys.getrefcount(chunk) == base, deadline + 10,
                 lambda: sys.getrefcount(chunk) - base)
    assert channel.readers == 0 and channel.bytes_held == 0


async def test_stalled_readers_hold_regions_of_the_one_spool_file_not_copies(serve):
    """With the spool (core/spool.py) the chunk is framed and written once; readers
    that do not read each keep a region of that one memory file queued (its reference
    count rises by one per reader), nobody holds a copy, and the file's descriptor is
    closed once the readers are gone and the stream is over."""
    import os

    from server.framework.channels import channel_response

    channel = Channel("spooled", max_lag_bytes=64 << 20)
    srv = await serve(app=lambda request: channel_response(request, channel))
    socks = await _stalled_readers(srv, "/spooled", 10)
    deadline = asyncio.get_running_loop().time() + 10
    await _until(lambda: channel.readers == 10, deadline, lambda: channel.readers)
    chunk = bytes(16 << 20)
    base = sys.getrefcount(chunk)
    await channel.publish(chunk)
    spool = [channel._spools[next(iter(channel._spools))].files[0]]
    assert channel.spool_bytes == spool[0].size == len(b"1000000\r\n") + len(chunk) + 2
    queued = [c.transmitter for c in srv.server.ctx.connections]

    def regions() -> int:     # FileRegions of that one file queued for the kernel
        return sum(getattr(s, "owner", None) is spool[0] for t in queued for s in t._slices)

    await _until(lambda: regions() == 10, deadline, regions)
    assert sys.getrefcount(chunk) == base + 1     # the log's; no reader holds the chunk
    fd = spool[0].fd
    os.fstat(fd)
    spool.clear()
    channel.close()
    for sock in socks:
        sock.close()
    await _until(lambda: channel.readers == 0, deadline + 10, lambda: channel.readers)

    def closed() -> bool:
        try:
            os.fstat(fd)
        except OSError:
            return True
        return False

    await _until(closed, deadline + 10, lambda: "the spool file is still open")
    assert channel.bytes_held == 0 and channel.spool_bytes == 0


@pytest.mark.parametrize("policy", ["drop", "skip", "block"])
async def test_random_interleavings_keep_every_reader_consistent(policy):
    """Publishes and reads in a seeded random order: each reader sees chunks in seq
    order, each the object published under that seq; contiguous unless skipped; the
    log never holds more than the window or the lag limit (plus slack) asks."""
    import random

    rng = random.Random(1234)
    channel = Channel(policy=policy, max_lag_chunks=20, max_lag_bytes=3000, replay_chunks=5,
                      replay_bytes=10_000, heartbeat=None)
    published: dict[int, bytes] = {}
    subs = [channel.subscribe() for _ in range(6)]
    seen: dict[int, list[int]] = {i: [] for i in range(len(subs))}
    for step in range(5000):
        if rng.random() < 0.5:
            if policy == "block" and channel._behind:
                continue                                  # a held producer does not publish
            payload = b"%d:" % channel.next_seq + b"x" * rng.randrange(1, 400)
            published[channel.next_seq] = payload
            channel.publish_nowait(payload)
        else:
            i = rng.randrange(len(subs))
            sub = subs[i]
            if sub.error is not None:
                continue
            first, batch = sub.take(rng.randrange(1, 8), rng.randrange(1, 2000))
            for offset, chunk in enumerate(batch):
                assert chunk is published[first + offset]
                seen[i].append(first + offset)
        if step % 500 == 250:
            subs.append(channel.subscribe(from_seq=max(1, channel.next_seq - 10)))
            seen[len(subs) - 1] = []
        held = channel.chunks_held
        assert held <= max(channel.replay_chunks, channel.max_lag_chunks + 16) + 1, held
    for i, seqs in seen.items():
        assert seqs == sorted(set(seqs)), f"reader {i} went backwards or repeated"
        if policy == "block" or (policy == "drop" and subs[i].error is None):
            assert seqs == list(range(seqs[0], seqs[0] + len(seqs))) if seqs else True
    if policy == "block":
        assert channel.dropped == 0 and channel.skipped == 0
    else:       # the random readers did fall behind: the policy was exercised
        assert (channel.dropped if policy == "drop" else channel.skipped) > 0
    for sub in subs:
        sub.close()


async def test_chunks_that_follow_closely_are_gathered_into_one_batch():
    channel = Channel(coalesce=60.0, max_lag_bytes=4000)     # gather up to 1000 bytes
    sub = channel.subscribe()
    waiter = asyncio.ensure_future(sub.wait())
    await asyncio.sleep(0)
    await channel.publish(b"a")                 # the first after a pause wakes at once
    await asyncio.wait_for(waiter, 5)
    assert sub.take()[1] == (b"a",)
    waiter = asyncio.ensure_future(sub.wait())
    await asyncio.sleep(0)
    await channel.publish(b"b")
    await channel.publish(b"c")
    for _ in range(3):
        await asyncio.sleep(0)
    assert not waiter.done()                    # woken a moment ago: these gather
    big = b"x" * 1000
    await channel.publish(big)                  # ... until a quarter of the lag limit
    await asyncio.wait_for(waiter, 5)
    assert sub.take()[1] == (b"b", b"c", big)   # one batch: one send for the three
    channel.close()


async def test_an_armed_reader_is_called_back_instead_of_awaiting():
    """`arm` is `wait` without a task: one plain call when there is something to take,
    when the reader is dropped or the stream ends — once per arming."""
    channel = Channel("armed", max_lag_chunks=2, heartbeat=None)
    calls: list[bool] = []
    sub = channel.subscribe()
    assert sub.arm(calls.append) is True
    await channel.publish(b"one")
    assert calls == [False]
    await channel.publish(b"two")
    assert calls == [False]                      # not armed again: not called again
    assert sub.arm(calls.append) is False        # ready now: take instead
    assert sub.take()[1] == (b"one", b"two")
    assert sub.arm(calls.append) is True
    sub.close()                                  # the reader leaving is not called back
    await channel.publish(b"three")
    assert calls == [False]
    slow = channel.subscribe()
    assert slow.arm(calls.append) is True
    for i in range(4):                           # past the lag limit: dropped, and told
        channel.publish_nowait(b"x%d" % i)
    assert calls == [False, False] and slow.error is not None
    last = channel.subscribe()
    assert last.arm(calls.append) is True
    channel.close()
    assert calls == [False, False, False] and last.ended


async def test_an_armed_reader_hears_the_heartbeat_and_a_failing_callback_is_contained(caplog):
    channel = Channel(heartbeat=0.05)
    beats: list[bool] = []
    sub = channel.subscribe()
    other = channel.subscribe()

    def broken(beat: bool) -> None:
        raise RuntimeError("reader callback failed")

    assert other.arm(broken) and sub.arm(beats.append)
    deadline = asyncio.get_running_loop().time() + 5
    while not beats and asyncio.get_running_loop().time() < deadline:
        await asyncio.sleep(0.01)
    assert beats == [True] and sub.beat_passed() is True and sub.beat_passed() is False
    assert "reader callback failed" in caplog.text
    channel.close()


async def test_a_long_round_of_wake_ups_is_done_in_slices_so_the_producer_keeps_feeding():
    """Many armed readers are woken WAKE_SLICE at a time, one slice per turn of the
    loop: between slices the producer publishes on, and readers woken later take the
    newer chunks in the same batch.  Each reader is called once per arming."""
    from server.core.fanout import WAKE_SLICE

    channel = Channel("wide", heartbeat=None)
    readers = 3 * WAKE_SLICE + 5
    taken: dict[int, list[bytes]] = {}
    subs = [channel.subscribe() for _ in range(readers)]

    def reader(i: int):
        def woken(beat: bool) -> None:
            taken.setdefault(i, []).extend(subs[i].take()[1])
        return woken

    for i, sub in enumerate(subs):
        assert sub.arm(reader(i))
    await channel.publish(b"first")
    assert len(taken) == WAKE_SLICE                   # the first slice, at once
    await asyncio.sleep(0)
    await channel.publish(b"second")                  # published during the round
    for _ in range(10):
        await asyncio.sleep(0)
    assert len(taken) == readers
    assert taken[0] == [b"first"] and taken[readers - 1] == [b"first", b"second"]
    assert all(len(set(map(id, got))) == len(got) for got in taken.values())   # none twice
    channel.close()
