"""Replayed static answers (answer_memo.py): same bytes out, and never stale or unsafe.

A byte-identical repeat of a static request is answered from the memo.  These tests
check, over real sockets, that a replay is the answer the full path would give, that
a file changed in place, replaced by rename or deleted is seen by the very next
request, and that nothing whose answer may depend on more than the request's bytes
(handlers, hooks, an access log) is ever replayed.
"""

from __future__ import annotations

import asyncio
import http.client
import logging
import os
import socket
from pathlib import Path

import pytest
from harness import RawClient, ThreadedServer, fetch_on, serve_site
from polling import until, wait_until

from server.core.filecache import OpenFileCache
from server.core.loans import LoanLedger
from server.core.message import Message
from server.core.metrics import Metrics
from server.core.transmitter import SocketTransmitter
from server.framework.application import Application
from server.framework.routing import Route, Router
from server.static.site import StaticSite

SMALL = bytes(range(256)) * 40          # 10 KiB: mapped, gathered with its head



class FakeClock:
    """The wall clock the Date header and the memo read, moved by the test alone."""

    def __init__(self, now: float) -> None:
        self.now = now

    def time(self) -> float:
        return self.now


@pytest.fixture(autouse=True)
def clock(monkeypatch):
    """Replace the wall clock of the Date line (wire.py) and of the memo's staleness
    check (answer_memo.py) with one the test sets: no waiting for a real second, and
    no test that counts replays can see a second boundary pass in the middle of it
    (an entry is dropped when its Date second ends)."""
    import server.http.wire as wire
    import server.static.answer_memo as answer_memo

    fake = FakeClock(1_700_000_000.25)
    monkeypatch.setattr(wire, "time", fake)
    monkeypatch.setattr(answer_memo, "time", fake.time)
    monkeypatch.setattr(wire.DATE, "until", 0.0)    # forget the line of the real second
    return fake



@pytest.fixture
def root(tmp_path: Path) -> Path:
    site = tmp_path / "site"
    site.mkdir()
    (site / "a.txt").write_bytes(b"hello\n")
    (site / "small.bin").write_bytes(SMALL)
    (site / "index.html").write_text("<p>home</p>\n")
    (site / "style.css").write_text("p { color: red }\n" * 40)
    (site / "style.css.gz").write_bytes(b"\x1f\x8b pretend gzip")
    return site


def memo_of(running) -> object:
    return running.app.answer_memo


def without_date(r) -> list[tuple[str, str]]:
    return [(k, v) for k, v in r.header_list if k.lower() != "date"]


def test_repeat_is_replayed_and_identical(root):
    with serve_site(root) as running, RawClient(running.port) as c:
        memo = memo_of(running)
        first = c.request("GET", "/small.bin")
        assert memo.replays == 0 and len(memo) == 0     # asked once: nothing kept yet
        again = [c.request("GET", "/small.bin")]
        # Kept once the answer has gone out: the server thread stores it just after
        # its send, which may be after this thread has read the bytes.
        wait_until(lambda: len(memo) == 1, "the second answer to be remembered")
        assert memo.replays == 0
        again += [c.request("GET", "/small.bin") for _ in range(4)]
        assert memo.replays == 4
        for r in again:
            assert (r.status, without_date(r), r.body) == (first.status, without_date(first), first.body)
        assert first.body == SMALL
        assert c.pending() == b""           # nothing beyond what the framing promised


def test_replay_sees_a_rename_an_edit_and_a_delete_at_once(root):
    with serve_site(root) as running, RawClient(running.port) as c:
        memo = memo_of(running)
        for _ in range(3):
            assert c.request("GET", "/a.txt").body == b"hello\n"
        assert memo.replays == 1
        # Deploy-style replacement: write aside, rename over.
        (root / "a.txt.tmp").write_bytes(b"fresh!\n")
        os.rename(root / "a.txt.tmp", root / "a.txt")
        r = c.request("GET", "/a.txt")
        assert r.body == b"fresh!\n" and r.header("content-length") == "7"
        assert c.request("GET", "/a.txt").body == b"fresh!\n"
        # An edit in place that keeps the size: only the mtime tells.
        path = root / "a.txt"
        before = path.stat().st_mtime_ns
        path.write_bytes(b"FRESH!\n")
        os.utime(path, ns=(before + 5_000_000, before + 5_000_000))
        assert c.request("GET", "/a.txt").body == b"FRESH!\n"
        path.unlink()
        assert c.request("GET", "/a.txt").status == 404


def test_head_range_conditional_and_precompressed_replays(root):
    with serve_site(root) as running, RawClient(running.port) as c:
        memo = memo_of(running)
        for _ in range(3):
            r = c.request("HEAD", "/small.bin")
            assert r.status == 200 and r.body == b"" and r.header("content-length") == str(len(SMALL))
        for _ in range(3):
            r = c.request("GET", "/small.bin", {"Range": "bytes=10-19"})
            assert r.status == 206 and r.body == SMALL[10:20]
        multi = [c.request("GET", "/small.bin", {"Range": "bytes=0-1,100-101"}) for _ in range(3)]
        assert {m.body for m in multi} == {multi[0].body} and multi[0].status == 206
        assert SMALL[100:102] in multi[0].body
        etag = c.request("GET", "/small.bin").header("etag")
        for _ in range(3):
            r = c.request("GET", "/small.bin", {"If-None-Match": etag})
            assert r.status == 304 and r.body == b""
        for _ in range(3):
            r = c.request("GET", "/style.css", {"Accept-Encoding": "gzip"})
            assert r.header("content-encoding") == "gzip" and r.body == b"\x1f\x8b pretend gzip"
        assert memo.replays == 5          # the third of each three
        # The sibling is replaced: the replay of its answer must not survive that.
        (root / "style.css.gz").write_bytes(b"\x1f\x8b new gzip, longer")
        r = c.request("GET", "/style.css", {"Accept-Encoding": "gzip"})
        assert r.body == b"\x1f\x8b new gzip, longer"
        assert c.pending() == b""


def test_requests_that_never_repeat_are_not_kept(root):
    with serve_site(root) as running, RawClient(running.port) as c:
        memo = memo_of(running)
        for n in range(20):
            assert c.request("GET", f"/a.txt?n={n}").body == b"hello\n"
        assert len(memo) == 0 and memo.replays == 0


def test_replayed_date_is_current(root, clock):
    with serve_site(root) as running, RawClient(running.port) as c:
        memo = memo_of(running)
        answers = [c.request("GET", "/a.txt") for _ in range(3)]
        assert memo.replays == 1                      # the third was a replay
        assert {r.header("date") for r in answers} == {"Tue, 14 Nov 2023 22:13:20 GMT"}
        clock.now += 0.5                              # the same second: still replayed
        assert c.request("GET", "/a.txt").header("date") == "Tue, 14 Nov 2023 22:13:20 GMT"
        assert memo.replays == 2
        clock.now += 0.5                              # the next second: never the old line
        again = c.request("GET", "/a.txt")
        assert again.header("date") == "Tue, 14 Nov 2023 22:13:21 GMT"
        assert memo.replays == 2
        assert again.body == b"hello\n"


def test_pipelined_repeats_are_answered_in_order(root):
    with serve_site(root) as running, RawClient(running.port) as c:
        c.request("GET", "/a.txt")
        request = b"GET /a.txt HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
        c.sock.sendall(request * 3 + b"GET /small.bin HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        bodies = [c.read_response().body for _ in range(4)]
        assert bodies == [b"hello\n"] * 3 + [SMALL]
        assert c.request("GET", "/a.txt").body == b"hello\n"
        assert c.pending() == b""


def test_connection_close_is_honoured_on_a_repeat(root):
    with serve_site(root) as running, RawClient(running.port) as c:
        c.request("GET", "/a.txt")
        c.request("GET", "/a.txt")
        r = c.request("GET", "/a.txt", {"Connection": "close"})
        assert r.body == b"hello\n" and r.header("connection") == "close"
        assert c.sock.recv(10) == b""


def test_no_replay_when_an_access_log_is_written(root, caplog):
    site = StaticSite(root, cache=OpenFileCache())
    app = Application(site)
    running = ThreadedServer(app, access_log="-").start()
    try:
        with caplog.at_level(logging.INFO, logger="pageloan.access"), RawClient(running.port) as c:
            for _ in range(4):
                assert c.request("GET", "/a.txt").body == b"hello\n"
        lines = [r for r in caplog.records if r.name == "pageloan.access"]
        assert len(lines) == 4 and app.answer_memo.replays == 0
    finally:
        running.stop()


HOOKED = '''
from server.framework.hooks import before_request

SEEN = []

@before_request
def count(request):
    SEEN.append(request.path)
'''

HANDLERS = '''
import os
from server import route
from server.static.file_response import file_response

CALLS = []

@route("/via-handler")
def via_handler(request):
    CALLS.append(1)
    return file_response(request, os.path.join(request.app.static.root, "a.txt"))

@route("/respond/{name}")
def respond(request, name):
    CALLS.append(2)
    return request.app.static.respond(request)
'''


def _keep_alive_gets(port: int, paths: list[str]) -> list[bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        return [fetch_on(conn, "GET", path).body for path in paths]
    finally:
        conn.close()


async def test_no_replay_behind_request_hooks(handler_site, root):
    site = await handler_site({"hooked.py": HOOKED}, root=root)
    bodies = await asyncio.to_thread(_keep_alive_gets, site.port, ["/a.txt"] * 4)
    assert bodies == [b"hello\n"] * 4
    module = next(m for name, m in __import__("sys").modules.items() if name.endswith("hooked"))
    assert module.SEEN == ["/a.txt"] * 4
    assert site.app.answer_memo.replays == 0


async def test_handler_answers_are_never_replayed(handler_site, root):
    site = await handler_site({"files_handlers.py": HANDLERS}, root=root)
    bodies = await asyncio.to_thread(_keep_alive_gets, site.port,
                                     ["/via-handler"] * 3 + ["/respond/a.txt"] * 3)
    assert bodies[:3] == [b"hello\n"] * 3
    module = next(m for name, m in __import__("sys").modules.items() if name.endswith("files_handlers"))
    assert module.CALLS == [1, 1, 1, 2, 2, 2]
    assert site.app.answer_memo.replays == 0


def test_new_routes_forget_replayed_answers(root):
    site = StaticSite(root, cache=OpenFileCache())
    app = Application(site)
    running = ThreadedServer(app).start()
    try:
        with RawClient(running.port) as c:
            for _ in range(3):
                c.request("GET", "/a.txt")
            assert app.answer_memo.replays == 1
            router = Router()
            router.add(Route("/a.txt", lambda request: "from a handler", "GET"))
            running.call(app.install, router)
            assert c.request("GET", "/a.txt").body == b"from a handler"
            assert c.request("GET", "/a.txt").body == b"from a handler"
    finally:
        running.stop()


async def test_replay_larger_than_the_socket_buffer_waits_and_keeps_order(tmp_path):
    a, b = socket.socketpair()
    a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 16 << 10)
    a.setblocking(False)
    b.setblocking(False)
    metrics = Metrics(LoanLedger(64 << 20))
    tx = SocketTransmitter(a, asyncio.get_running_loop(), metrics=metrics)
    body = os.urandom(1 << 20)
    layout = tx.lay_out(Message(200, [b"HEAD\r\n\r\n"], [body]))
    tx.replay(layout)
    tx.replay(layout)
    assert not tx.idle and tx.outstanding > 0       # the kernel could not take it all
    got = bytearray()
    want = (b"HEAD\r\n\r\n" + body) * 2
    loop = asyncio.get_running_loop()
    while len(got) < len(want):
        got += await loop.sock_recv(b, 1 << 20)
    assert bytes(got) == want
    await until(lambda: tx.idle, "the transmitter to see the last bytes taken")
    assert tx.idle and tx.outstanding == 0 and metrics.ledger.outstanding == 0
    assert loop.is_running()
    a.close()
    b.close()


def test_rename_under_load_is_seen_by_the_next_request(root):
    """Other connections keep replaying the file while it is replaced, again and again:
    a request sent after each rename returns must get the new file (the stat that
    replays of one loop turn share is never older than the turn's requests)."""
    import threading

    stop = threading.Event()
    errors: list[str] = []

    def hammer() -> None:
        with RawClient(running.port) as c:
            while not stop.is_set():
                body = c.request("GET", "/a.txt").body
                if not body.startswith(b"version "):
                    errors.append(repr(body))

    (root / "a.txt").write_bytes(b"version 0\n")
    with serve_site(root) as running:
        threads = [threading.Thread(target=hammer) for _ in range(6)]
        for t in threads:
            t.start()
        try:
            with RawClient(running.port) as c:
                for n in range(1, 41):
                    tmp = root / "a.txt.tmp"
                    tmp.write_bytes(b"version %d\n" % n)
                    os.rename(tmp, root / "a.txt")
                    assert c.request("GET", "/a.txt").body == b"version %d\n" % n
        finally:
            stop.set()
            for t in threads:
                t.join(10)
        assert errors == []
        assert memo_of(running).replays > 0


def test_no_answer_memo_option_answers_every_request_in_full(root):
    from server.cli import build_parser
    from server.config import config_from_args

    parser = build_parser()
    assert config_from_args(parser.parse_args(["serve", str(root)])).app.static.answer_memo is True
    config = config_from_args(parser.parse_args(["serve", str(root), "--no-answer-memo"]))
    assert config.app.static.answer_memo is False
    site = StaticSite(root, cache=OpenFileCache())
    app = Application(site, answer_memo=False)
    running = ThreadedServer(app).start()
    try:
        with RawClient(running.port) as c:
            for _ in range(4):
                assert c.request("GET", "/a.txt").body == b"hello\n"
        assert app.answer_memo is None
    finally:
        running.stop()
