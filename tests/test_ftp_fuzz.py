"""A short, bounded run of the FTP command-line fuzzer (loadtest/ftp_fuzz.py).

The long run is `python -m loadtest.ftp_fuzz --commands 1000000`.  Here: a fixed
number of hypothesis examples against a real `python -m server.ftp`, plus checks
that the fuzzer's own judges can fail (a malformed reply, a read outside the root,
a dead server), so a green run means something.
"""

from __future__ import annotations

import os
import signal

import pytest

from loadtest.ftp_fuzz import (
    CANARY_SECRET,
    Example,
    FuzzTarget,
    MalformedReply,
    ReplyChecker,
    Stats,
    health_check,
    run_example,
    run_fuzz,
)

SUITE_EXAMPLES = 200


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    target = FuzzTarget(tmp_path_factory.mktemp("fuzz"))
    yield target
    target.stop()


@pytest.fixture
def target(shared):
    shared.watch.touched()       # each test starts with a clean slate of events
    return shared


@pytest.mark.slow
def test_fuzzed_command_lines_get_well_formed_replies_and_touch_nothing_outside(target):
    stats = run_fuzz(target, SUITE_EXAMPLES, seed_value=12)
    assert stats.examples >= SUITE_EXAMPLES
    assert stats.commands > SUITE_EXAMPLES and stats.replies > stats.examples
    assert stats.data_connections > 0          # transfers really ran, not only refusals
    assert target.alive()
    assert "Traceback" not in target.log()     # no handler bug turned into a 451


def test_known_attacks_are_refused_cleanly(target):
    stats = Stats()
    for payload in (b"CWD ../\r\nRETR canary.txt\r\n", b"PASV\r\nRETR escape\r\n",
                    b"PASV\r\nRETR escape-dir/secret.txt\r\n", b"PASV\r\nRETR .env\r\n",
                    b"RNFR ../canary.txt\r\nRNTO stolen\r\n", b"A" * 5000 + b"\r\n",
                    b"AUTH TLS\r\nUSER anonymous\r\n", b"PASV\r\nLIST -la escape-dir\r\n",
                    b"\xff\xf4\xff\xf2ABOR\r\nSTAT\r\n", b"USER anonymous\nPASS x\rNOOP\r\n"):
        run_example(target, Example("alice", payload, "one", [1], "sentinel"), stats)
        target.check_outside()
    health_check(target)
    target.final_check()


@pytest.mark.parametrize("stream", [b"200 ok\n", b"20 short\r\n", b"200 ok\r\nnot a reply\r\n",
                                    b"211-start\r\n middle\r\n", b"200 a\rb\r\n"])
def test_reply_checker_rejects_what_is_not_a_reply(stream):
    checker = ReplyChecker()
    with pytest.raises(MalformedReply):
        checker.feed(stream)
        checker.finish(closed=False)


def test_reply_checker_accepts_multi_line_replies():
    checker = ReplyChecker()
    checker.feed(b"211-Features:\r\n EPSV\r\n211 End.\r\n226 done\r\n")
    checker.finish(closed=True)
    assert checker.codes == [211, 226] and checker.complete


def test_the_canary_watch_sees_a_read_outside_the_root(target):
    target.check_outside()
    assert target.canary.read_bytes() == CANARY_SECRET          # we read it: that must show
    with pytest.raises(AssertionError, match="outside the root was touched"):
        target.check_outside()


def test_the_health_check_notices_a_dead_server(tmp_path):
    target = FuzzTarget(tmp_path, tls=False)
    try:
        _kill_and_check(target)
    finally:
        target.stop()


def _kill_and_check(target: FuzzTarget) -> None:
    health_check(target)
    os.killpg(target.proc.pid, signal.SIGKILL)
    target.proc.wait(10)
    with pytest.raises(AssertionError, match="exited"):
        health_check(target)
