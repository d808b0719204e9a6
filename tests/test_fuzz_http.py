"""A short, bounded run of the HTTP fuzzer (loadtest/fuzz.py), and checks that its judge can fail.

The long run is `python -m loadtest.fuzz --requests 1000000`.  Here: a fixed number
of hypothesis examples against a real `pageloan serve` subprocess; a green run means
every answer was a well-formed response (or a close), nothing hung, and a control
client was served throughout.
"""

from __future__ import annotations

import pytest

from loadtest.fuzz import Example, FuzzTarget, MalformedResponse, Stats, check_responses, run_example, run_fuzz

SUITE_EXAMPLES = 150


@pytest.fixture(scope="module")
def target(tmp_path_factory):
    running = FuzzTarget(tmp_path_factory.mktemp("http-fuzz"))
    yield running
    running.stop()


@pytest.mark.slow
def test_fuzzed_requests_get_well_formed_answers_and_the_server_keeps_serving(target):
    stats = run_fuzz(target, SUITE_EXAMPLES, seed_value=12, mutants=2)
    assert stats.examples >= SUITE_EXAMPLES
    assert stats.requests > stats.examples and stats.responses > SUITE_EXAMPLES // 2
    # Both sides were exercised: some request was served (any 2xx/304; which ones
    # depends on the timing of pipelines under load) and some was refused with 400.
    assert any(200 <= s < 300 or s == 304 for s in stats.statuses) and 400 in stats.statuses
    assert target.alive()
    assert "Traceback" not in target.log()


def test_known_nasty_requests_are_answered_cleanly(target):
    stats = Stats()
    for data in (b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
                 b"POST /upload/x HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\nfffffffffffffffff\r\n",
                 b"GET / HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
                 b"GET /\x00 HTTP/1.1\r\nHost: t\r\n\r\n", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",
                 b"GET / HTTP/1.1\r\nHost: t\r\n" + b"X: " + b"a" * 40000 + b"\r\n\r\n",
                 b"GET / HTTP/1.1\r\nHost: t\r\n\r\n" * 50, b"HEAD /index.html HTTP/1.1\r\nHost: t\r\n\r\n" * 3):
        run_example(target, Example(data, 1, data.count(b"HEAD "), []), stats)
    assert stats.responses >= 8


@pytest.mark.parametrize("data", [
    b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nabc",                 # body cut short
    b"HTTP/1.1 200 OK\r\nX-Bad\x00: 1\r\nContent-Length: 0\r\n\r\n",     # NUL in a name
    b"HTTP/1.1 200 OK\r\nX: a\x00b\r\nContent-Length: 0\r\n\r\n",         # NUL in a value
    b"HTTP/1.1 2000 OK\r\nContent-Length: 0\r\n\r\n",                     # not a status
    b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\nGARBAGE",              # bytes after a response
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab",      # chunk cut short
    b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\nx",
])
def test_the_judge_refuses_malformed_responses(data):
    with pytest.raises(MalformedResponse):
        check_responses(data, 0)


def test_the_judge_accepts_what_is_well_formed():
    assert check_responses(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
                           b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2;x=y\r\nab\r\n0\r\n\r\n"
                           b"HTTP/1.1 304 Not Modified\r\nETag: x\r\n\r\n", 0) == [100, 200, 200, 304]
    assert check_responses(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nHTTP/1.1 404 Not Found\r\n"
                           b"Content-Length: 0\r\n\r\n", 1) == [200, 404]       # a HEAD answer first
