"""HttpSession driven from raw request bytes, with no socket: the h11 way of testing.

A `FakeDriver` stands where the socket driver is (it only records pause, resume and
close, and reports the close back to the session as the real one does); a
`FakeTransmitter` takes the session's Messages and "sends" each one when flushed,
appending its wire bytes to `wire` and calling its completion callback, so the kernel
is not involved at all.  What the session wrote is then read back by h11's client
state machine, an independent HTTP/1.1 implementation, one response per request sent,
so framing errors (a body after HEAD, a wrong Content-Length, a missing close) fail
the parse rather than pass unnoticed.

These pin the session's protocol behaviour: pipelined answers leave in request order
even when an earlier handler finishes later; keep-alive and close by version and
header; HEAD; the refusals (400, 413, 414, 417, 431) each close the connection after
the answers already owed; an Upgrade is not followed; EOF in the middle of a request.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import h11
import pytest

from server.core.message import Message
from server.http.config import ServerConfig
from server.http.context import ServerContext
from server.http.request import Request
from server.http.responses import text_response
from server.http.session import HttpSession

Done = Callable[[BaseException | None], None]


class FakeDriver:
    """The I/O driver's side of the contract: reading pauses, resumes, and closing."""

    def __init__(self) -> None:
        self.session: HttpSession | None = None
        self.paused = 0
        self.resumed = 0
        self.closed = False
        self.aborted = False

    def pause_reading(self) -> None:
        self.paused += 1

    def resume_reading(self) -> None:
        self.resumed += 1

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            assert self.session is not None
            self.session.connection_lost()     # as the socket driver reports it

    def abort(self) -> None:
        self.aborted = True
        self.close()


class FakeTransmitter:
    """Takes Messages in order; a flush "sends" all of them at once, completely."""

    def __init__(self) -> None:
        self.wire = bytearray()
        self.messages: list[Message] = []
        self._queue: list[tuple[Message, Done | None]] = []
        self.on_idle: Callable[[], None] | None = None
        self.wants_idle = False
        self.closed = False
        self.outstanding = 0
        self.flushes = 0

    @property
    def idle(self) -> bool:
        return not self._queue

    def enqueue(self, message: Message, done: Done | None = None) -> None:
        if self.closed:
            if done is not None:
                done(ConnectionError("transmitter closed"))
            return
        self._queue.append((message, done))
        self.outstanding += len(self._bytes_of(message))

    def transmit(self, message: Message) -> None:
        self.enqueue(message)
        self.flush()

    def when_sent(self, done: Done) -> None:
        """As SocketTransmitter.when_sent: now if nothing is queued, else after it."""
        if self.closed:
            done(ConnectionError("transmitter closed"))
        elif not self._queue:
            done(None)
        else:
            self._queue.append((Message(0, ()), done))

    def flush(self) -> None:
        if self._queue:             # a flush with nothing queued makes no syscall
            self.flushes += 1
        while self._queue:
            message, done = self._queue.pop(0)
            data = self._bytes_of(message)
            self.wire += data
            self.outstanding -= len(data)
            if message.status or data:
                self.messages.append(message)
            if done is not None:
                done(None)
        if self.wants_idle and self.on_idle is not None and not self.closed:
            self.on_idle()

    @staticmethod
    def _bytes_of(message: Message) -> bytes:
        return b"".join(bytes(s) for s in message.wire_slices())

    def close(self, exc: BaseException | None = None) -> None:
        self.closed = True


class Harness:
    """One session on fakes, fed bytes by the test."""

    def __init__(self, app: Callable[[Request], Any], **config: Any) -> None:
        base = ServerConfig(host="127.0.0.1", port=0)
        self.ctx = ServerContext(replace(base, **config), app, asyncio.get_running_loop())
        self.driver = FakeDriver()
        self.transmitter = FakeTransmitter()
        self.session = HttpSession(self.ctx, self.driver, self.transmitter, ("127.0.0.1", 40000))
        self.driver.session = self.session
        self.transmitter.on_idle = self.session.on_transmit_idle

    def feed(self, data: bytes) -> None:
        self.session.data_received(data)

    async def settle(self) -> None:
        """Let answer tasks the session started run to their end (bounded)."""
        for _ in range(100):
            task = getattr(self.session, "_task", None)
            pending = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            if task is None and not pending:
                return
            await asyncio.sleep(0)
        raise AssertionError("the session's answer tasks did not finish")


def responses(wire: bytes, requests: list[tuple[str, str]]) -> list[tuple[h11.Response, bytes]]:
    """Parse `wire` as the answers to `requests` ([(method, target)]) with h11's client.

    Each request is replayed into a fresh cycle of the client so h11 knows, e.g., that
    the answer to a HEAD has no body; the bytes left over after each answer carry on
    into the next.  Fails if the bytes do not frame exactly those answers.
    """
    out: list[tuple[h11.Response, bytes]] = []
    conn = h11.Connection(h11.CLIENT)
    conn.receive_data(bytes(wire))
    for i, (method, target) in enumerate(requests):
        if i:
            conn.start_next_cycle()
        conn.send(h11.Request(method=method, target=target, headers=[("Host", "t")]))
        conn.send(h11.EndOfMessage())
        head: h11.Response | None = None
        body = bytearray()
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                raise AssertionError(f"answer {i + 1} ({method} {target}) is incomplete: {bytes(wire)!r}")
            if isinstance(event, h11.InformationalResponse):
                continue
            if isinstance(event, h11.Response):
                head = event
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                break
            elif isinstance(event, h11.ConnectionClosed):
                raise AssertionError(f"connection closed before answer {i + 1}")
        assert head is not None
        out.append((head, bytes(body)))
    assert conn.trailing_data[0] == b"", f"bytes after the last answer: {conn.trailing_data[0]!r}"
    return out


def header(response: h11.Response, name: bytes) -> bytes | None:
    values = [v for k, v in response.headers if k == name.lower()]
    return b", ".join(values) if values else None


def echo(request: Request) -> Message:
    return text_response(f"{request.method} {request.path}")


# -- order and persistence -----------------------------------------------------------------------

async def test_pipelined_answers_leave_in_request_order_when_the_first_finishes_last():
    release = asyncio.Event()

    async def slow_first(request: Request) -> Message:
        if request.path == "/first":
            await release.wait()
        return text_response(request.path)

    h = Harness(slow_first)
    h.feed(b"GET /first HTTP/1.1\r\nHost: t\r\n\r\n"
           b"GET /second HTTP/1.1\r\nHost: t\r\n\r\n"
           b"GET /third HTTP/1.1\r\nHost: t\r\n\r\n")
    await asyncio.sleep(0)
    assert h.transmitter.wire == b""            # /second is ready sooner, but must wait
    release.set()
    await h.settle()
    answers = responses(h.transmitter.wire, [("GET", "/first"), ("GET", "/second"), ("GET", "/third")])
    assert [body for _, body in answers] == [b"/first", b"/second", b"/third"]
    assert not h.driver.closed


async def test_pipelined_synchronous_answers_go_out_in_one_flush():
    h = Harness(echo)
    h.feed(b"".join(b"GET /%d HTTP/1.1\r\nHost: t\r\n\r\n" % i for i in range(5)))
    assert h.transmitter.flushes == 1
    answers = responses(h.transmitter.wire, [("GET", f"/{i}") for i in range(5)])
    assert [body for _, body in answers] == [b"GET /%d" % i for i in range(5)]


async def test_a_request_split_across_reads_is_answered_once_whole():
    h = Harness(echo)
    request = b"GET /split HTTP/1.1\r\nHost: t\r\nX-Long: " + b"v" * 100 + b"\r\n\r\n"
    for i in range(0, len(request), 7):
        assert h.transmitter.wire == b""
        h.feed(request[i:i + 7])
    assert [b for _, b in responses(h.transmitter.wire, [("GET", "/split")])] == [b"GET /split"]


async def test_http11_keeps_the_connection_open_by_default():
    h = Harness(echo)
    h.feed(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
    (head, _), = responses(h.transmitter.wire, [("GET", "/")])
    assert head.status_code == 200 and header(head, b"connection") is None
    assert not h.driver.closed


async def test_connection_close_is_honoured_after_the_answer():
    h = Harness(echo)
    h.feed(b"GET /a HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
           b"GET /ignored HTTP/1.1\r\nHost: t\r\n\r\n")
    (head, body), = responses(h.transmitter.wire, [("GET", "/a")])
    assert body == b"GET /a" and header(head, b"connection") == b"close"
    assert h.driver.closed                      # and the request after it was not answered


async def test_http10_closes_unless_it_asks_for_keep_alive():
    h = Harness(echo)
    h.feed(b"GET /old HTTP/1.0\r\n\r\n")
    assert b"Connection: close\r\n" in h.transmitter.wire and h.driver.closed

    h = Harness(echo)
    h.feed(b"GET /old HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
    assert h.transmitter.wire.startswith(b"HTTP/1.1 200 ")
    assert b"Connection: keep-alive\r\n" in h.transmitter.wire and not h.driver.closed


async def test_head_sends_the_get_headers_and_no_body():
    h = Harness(lambda r: text_response("twelve bytes"))
    h.feed(b"HEAD /x HTTP/1.1\r\nHost: t\r\n\r\nGET /x HTTP/1.1\r\nHost: t\r\n\r\n")
    (head, head_body), (get, get_body) = responses(h.transmitter.wire, [("HEAD", "/x"), ("GET", "/x")])
    assert head.status_code == get.status_code == 200
    assert header(head, b"content-length") == header(get, b"content-length") == b"12"
    assert head_body == b"" and get_body == b"twelve bytes"


async def test_a_body_is_read_by_the_handler():
    async def upload(request: Request) -> Message:
        return text_response(f"{len(await request.body())} bytes")

    h = Harness(upload)
    h.feed(b"POST /u HTTP/1.1\r\nHost: t\r\nContent-Length: 10\r\n\r\n01234")
    h.feed(b"56789GET /next HTTP/1.1\r\nHost: t\r\n\r\n")
    await h.settle()
    answers = responses(h.transmitter.wire, [("POST", "/u"), ("GET", "/next")])
    assert [b for _, b in answers] == [b"10 bytes", b"0 bytes"]


# -- refusals --------------------------------------------------------------------------------------

def _only_answer(h: Harness) -> tuple[h11.Response, bytes]:
    (answer,) = responses(h.transmitter.wire, [("GET", "/")])
    return answer


@pytest.mark.parametrize("garbage", [
    b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(32) + b"\r\n\r\n",   # a TLS hello
    b"GET / HTTP/1.1\r\nHost t\r\n\r\n",                                        # no colon
    b"GET / HTTP/9.9\r\nHost: t\r\n\r\n",                                       # version
    b"GET / HTTP/1.1\r\nHost: t\r\nContent-Length: x\r\n\r\n",                  # bad length
])
async def test_garbage_gets_400_and_the_connection_closes(garbage):
    calls: list[Request] = []
    h = Harness(lambda r: calls.append(r) or echo(r))
    h.feed(garbage)
    head, _ = _only_answer(h)
    assert head.status_code == 400
    assert header(head, b"connection") == b"close" and h.driver.closed
    assert calls == []


async def test_garbage_after_a_good_request_is_refused_after_its_answer():
    h = Harness(echo)
    h.feed(b"GET /good HTTP/1.1\r\nHost: t\r\n\r\n\x00\x01\x02garbage\r\n\r\n")
    (ok, body), (bad, _) = responses(h.transmitter.wire, [("GET", "/good"), ("GET", "/")])
    assert (ok.status_code, body) == (200, b"GET /good")
    assert bad.status_code == 400 and h.driver.closed


async def test_declared_body_over_the_limit_gets_413_before_the_handler_runs():
    calls: list[Request] = []
    h = Harness(lambda r: calls.append(r) or echo(r), max_body_bytes=1000)
    h.feed(b"POST /u HTTP/1.1\r\nHost: t\r\nContent-Length: 1001\r\n\r\n")
    head, _ = _only_answer(h)
    assert head.status_code == 413 and h.driver.closed and calls == []


async def test_chunked_body_over_the_limit_gets_413():
    async def upload(request: Request) -> Message:
        return text_response(f"{len(await request.body())}")

    h = Harness(upload, max_body_bytes=100)
    h.feed(b"POST /u HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n")
    h.feed(b"64\r\n" + b"a" * 100 + b"\r\n" + b"1\r\nb\r\n0\r\n\r\n")
    await h.settle()
    head, _ = _only_answer(h)
    assert head.status_code == 413 and h.driver.closed


async def test_header_block_over_the_limit_gets_431():
    h = Harness(echo, max_header_bytes=1024)
    h.feed(b"GET / HTTP/1.1\r\nHost: t\r\n" + b"X-Big: " + b"b" * 2000 + b"\r\n\r\n")
    head, _ = _only_answer(h)
    assert head.status_code == 431 and h.driver.closed


async def test_request_target_over_the_limit_gets_414():
    h = Harness(echo, max_header_bytes=1024)
    h.feed(b"GET /" + b"u" * 2000 + b" HTTP/1.1\r\nHost: t\r\n\r\n")
    head, _ = _only_answer(h)
    assert head.status_code == 414 and h.driver.closed


async def test_an_unknown_expectation_gets_417():
    calls: list[Request] = []
    h = Harness(lambda r: calls.append(r) or echo(r))
    h.feed(b"PUT /u HTTP/1.1\r\nHost: t\r\nExpect: the-unexpected\r\nContent-Length: 3\r\n\r\nabc")
    head, _ = _only_answer(h)
    assert head.status_code == 417 and h.driver.closed and calls == []


async def test_100_continue_is_sent_only_when_the_handler_reads_the_body():
    async def upload(request: Request) -> Message:
        return text_response((await request.body()).decode())

    h = Harness(upload)
    h.feed(b"PUT /u HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\n")
    await asyncio.sleep(0)
    assert h.transmitter.wire == b"HTTP/1.1 100 Continue\r\n\r\n"
    h.feed(b"abc")
    await h.settle()
    (head, body), = responses(h.transmitter.wire, [("PUT", "/u")])
    assert (head.status_code, body) == (200, b"abc")


async def test_an_upgrade_is_not_followed_the_request_is_answered_then_closed():
    h = Harness(echo)
    h.feed(b"GET /chat HTTP/1.1\r\nHost: t\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n"
           b"HTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n" + b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
    (head, body), = responses(h.transmitter.wire, [("GET", "/chat")])
    assert head.status_code == 200 and body == b"GET /chat"   # never 101
    assert h.driver.closed


# -- the client going away -------------------------------------------------------------------------

async def test_eof_in_the_middle_of_a_head_closes_without_an_answer():
    calls: list[Request] = []
    h = Harness(lambda r: calls.append(r) or echo(r))
    h.feed(b"GET /half HTTP/1.1\r\nHost: t\r\nX-Partial: ye")
    h.session.eof_received()
    await h.settle()
    assert h.transmitter.wire == b"" and h.driver.closed and calls == []


async def test_eof_after_pipelined_requests_answers_them_all_then_closes():
    h = Harness(echo)
    h.feed(b"GET /1 HTTP/1.1\r\nHost: t\r\n\r\nGET /2 HTTP/1.1\r\nHost: t\r\n\r\n")
    h.session.eof_received()
    await h.settle()
    answers = responses(h.transmitter.wire, [("GET", "/1"), ("GET", "/2")])
    assert [b for _, b in answers] == [b"GET /1", b"GET /2"]
    assert h.driver.closed


async def test_eof_in_the_middle_of_a_body_fails_the_reader_and_sends_at_most_one_answer():
    seen: list[BaseException] = []

    async def upload(request: Request) -> Message:
        try:
            await request.body()
        except Exception as exc:  # noqa: BLE001 - recording what the handler saw
            seen.append(exc)
            raise
        return text_response("complete?")

    h = Harness(upload)
    h.feed(b"POST /u HTTP/1.1\r\nHost: t\r\nContent-Length: 100\r\n\r\nonly-part")
    await asyncio.sleep(0)
    h.session.eof_received()
    await h.settle()
    assert len(seen) == 1 and isinstance(seen[0], ConnectionError)
    assert h.transmitter.wire.count(b"HTTP/1.1 ") <= 1
    assert b"complete?" not in h.transmitter.wire
    assert h.driver.closed


async def test_connection_lost_while_a_handler_runs_cancels_it_and_sends_nothing():
    started = asyncio.Event()
    cancelled = asyncio.Event()

    async def forever(request: Request) -> Message:
        started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise
        raise AssertionError("unreachable")

    h = Harness(forever)
    h.feed(b"GET /wait HTTP/1.1\r\nHost: t\r\n\r\n")
    await asyncio.wait_for(started.wait(), 5)
    h.driver.close()
    await asyncio.wait_for(cancelled.wait(), 5)
    await h.settle()
    assert h.transmitter.wire == b""
