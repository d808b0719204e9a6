"""Framing, exactly one final answer, and streamed bodies on closing connections.

Regression tests for what an attacker's sweep and stock clients found (issue 12, the
session's part): each request gets exactly one final response however its body
misbehaves after the answer; a streamed answer on a connection that closes is sent
whole before the close; a body generator that fails cuts the connection at once;
Transfer-Encoding is honoured only as HTTP/1.1 chunked; HTTP versions other than
1.0 and 1.1 and bare HTTP/0.9 lines are refused at once.  Real sockets on 127.0.0.1,
real curl where it matters.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import pytest
from harness import RawClient, raw_exchange
from polling import wait_until

from server.framework.application import Application
from server.http.responses import StreamResponse, text_response
from server.static.site import StaticSite


def app_with(root: Path) -> Application:
    """The static site, plus /count/N (a streamed body) and /broken (fails mid-stream)."""
    site = StaticSite(root)

    async def count(n: int):
        for i in range(n):
            yield f"line {i}\n"

    async def broken():
        yield "first chunk\n"
        raise RuntimeError("the generator broke")

    def router(request):
        if request.raw_path.startswith(b"/count/"):
            return StreamResponse(count(int(request.raw_path[7:])))
        if request.raw_path == b"/broken":
            return StreamResponse(broken())
        if request.raw_path == b"/echo-length":
            async def read():
                return text_response(str(len(await request.body())))
            return read()
        return None

    app = Application(site, router=router)
    return app


@pytest.fixture
def root(tmp_path: Path) -> Path:
    (tmp_path / "a.txt").write_bytes(b"hello\n")
    return tmp_path


def responses_in(data: bytes) -> int:
    """How many responses a byte stream holds (every one of ours names the server)."""
    return data.count(b"\r\nServer: pageloan\r\n")


# -- streamed answers on closing connections -------------------------------------------

def test_http10_streamed_answer_is_sent_whole_before_the_close(serve_thread, root):
    running = serve_thread(app_with(root))
    data = raw_exchange(running.port, b"GET /count/5 HTTP/1.0\r\n\r\n")
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 ") and b"chunked" not in head.lower()
    assert body == b"".join(b"line %d\n" % i for i in range(5))


def test_connection_close_streamed_answer_ends_with_its_last_chunk(serve_thread, root):
    running = serve_thread(app_with(root))
    data = raw_exchange(running.port, b"GET /count/3 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert data.endswith(b"0\r\n\r\n")
    assert b"line 2\n" in data


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_curl_http10_gets_the_streamed_body(serve_thread, root):
    running = serve_thread(app_with(root))
    done = subprocess.run(["curl", "-sS", "--http1.0", f"http://127.0.0.1:{running.port}/count/5"],
                          capture_output=True, timeout=30)
    assert done.returncode == 0
    assert done.stdout == b"".join(b"line %d\n" % i for i in range(5))


def test_a_failing_stream_cuts_the_connection_at_once(serve_thread, root):
    running = serve_thread(app_with(root))
    started = time.monotonic()
    data = raw_exchange(running.port, b"GET /broken HTTP/1.1\r\nHost: x\r\n\r\n", timeout=10)
    assert time.monotonic() - started < 5          # closed, not left to the keep-alive timeout
    assert b"first chunk" in data and not data.endswith(b"0\r\n\r\n")   # framing visibly broken
    deadline = time.monotonic() + 5
    while running.server.ctx.connections and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not running.server.ctx.connections      # nothing leaked


# -- exactly one final response --------------------------------------------------------

def test_chunked_post_to_a_static_file_past_the_limit_gets_one_answer(serve_thread, root):
    running = serve_thread(app_with(root), max_body_bytes=1000)
    with RawClient(running.port) as c:
        c.send_raw(b"POST /a.txt HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n10\r\n0123456789abcdef\r\n")
        first = c.read_response()          # the answer comes before the rest of the body
        assert first.status == 405
        try:
            c.send_raw(b"800\r\n" + b"x" * 0x800 + b"\r\n0\r\n\r\n")
        except OSError:
            pass               # the server may already have closed: it owes nothing more
        rest = c.read_until_close()
    assert responses_in(rest) == 0


def test_get_with_a_chunked_body_gets_one_answer(serve_thread, root):
    running = serve_thread(app_with(root), max_body_bytes=100)
    data = raw_exchange(running.port, b"GET /a.txt HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                        b"200\r\n" + b"y" * 0x200 + b"\r\n0\r\n\r\n")
    assert responses_in(data) == 1


def test_a_body_turning_malformed_after_the_answer_gets_no_second_answer(serve_thread, root):
    running = serve_thread(app_with(root))
    with RawClient(running.port) as c:
        c.send_raw(b"POST /a.txt HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n")
        first = c.read_response()
        assert first.status == 405
        try:
            c.send_raw(b"zz-not-a-chunk-size\r\n\r\n")
        except OSError:
            pass
        rest = c.read_until_close()
    assert responses_in(rest) == 0


def test_a_chunk_size_over_the_limit_is_refused_at_once(serve_thread, root):
    running = serve_thread(app_with(root), max_body_bytes=1 << 20, body_timeout=30)
    started = time.monotonic()
    data = raw_exchange(running.port, b"POST /echo-length HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                        b"10000000\r\nabc", timeout=10)
    assert data.startswith(b"HTTP/1.1 413 ") and responses_in(data) == 1
    assert time.monotonic() - started < 5          # not after the body timeout


def test_the_chunk_size_check_also_holds_for_a_later_read(serve_thread, root):
    running = serve_thread(app_with(root), max_body_bytes=1 << 20, body_timeout=30)
    def received() -> int:
        sessions = [conn.session for conn in running.server.ctx.connections]
        current = sessions[0]._current if sessions else None
        return current.body_stream.received if current is not None and current.body_stream else -1

    with RawClient(running.port, timeout=10) as c:
        c.send_raw(b"POST /echo-length HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n")
        wait_until(lambda: received() == 5, "the first chunk to be read")
        c.send_raw(b"4000000\r\nabc")           # a new read that starts with a chunk size
        data = c.read_until_close()
    assert data.startswith(b"HTTP/1.1 413 ") and responses_in(data) == 1


def test_a_body_within_limits_still_works_chunked(serve_thread, root):
    running = serve_thread(app_with(root))
    data = raw_exchange(running.port, b"POST /echo-length HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                        b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n")
    assert data.startswith(b"HTTP/1.1 200 ") and data.endswith(b"\r\n\r\n11")


# -- framing and versions --------------------------------------------------------------

@pytest.mark.parametrize("request_bytes, status", [
    (b"POST /echo-length HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n", 400),
    (b"POST /echo-length HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n", 501),
    (b"GET /a.txt HTTP/2.0\r\nHost: x\r\n\r\n", 505),
    (b"GET /a.txt HTTP/1.1\r\n\r\n", 400),
    (b"GET /a.txt HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400),
], ids=["te-on-http10", "te-not-chunked", "http2-line", "no-host", "two-hosts"])
def test_faulty_framing_gets_its_status_and_a_close(serve_thread, root, request_bytes, status):
    running = serve_thread(app_with(root))
    data = raw_exchange(running.port, request_bytes)
    assert data.startswith(b"HTTP/1.1 %d " % status), data[:80]
    assert responses_in(data) == 1


def test_an_http09_request_line_is_refused_at_once(serve_thread, root):
    running = serve_thread(app_with(root), header_timeout=30)
    started = time.monotonic()
    data = raw_exchange(running.port, b"GET /a.txt\r\n", timeout=10)
    assert data.startswith(b"HTTP/1.1 400 ")
    assert time.monotonic() - started < 5


# -- a blocking handler ---------------------------------------------------------------

def test_a_blocking_def_handler_does_not_delay_another_connections_static_request(serve_thread, root):
    """`def` handlers run in the handler thread pool: one that sleeps holds no loop."""
    import threading

    from server.framework.registry import Registry
    from server.framework.routing import Route

    release = threading.Event()
    entered = threading.Event()

    def blocking(request):
        entered.set()
        release.wait(20)                       # a slow database, say
        return "done"

    registry = Registry()
    registry.routes.append(Route("/slow", blocking))
    app = Application.from_registries([registry], StaticSite(root))
    running = serve_thread(app)
    slow = RawClient(running.port, timeout=30)
    try:
        slow.send_raw(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")
        wait_until(entered.is_set, "the slow handler to start")
        with RawClient(running.port, timeout=5) as fast:
            r = fast.request("GET", "/a.txt")       # answered while /slow still blocks
            assert r.status == 200 and r.body == b"hello\n"
        assert not release.is_set()
        release.set()
        assert slow.read_response().body == b"done"
    finally:
        release.set()
        slow.close()
