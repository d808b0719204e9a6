"""Soak and many-connections runs in the suite: short, bounded versions of loadtest/soak.py
and loadtest/conns.py against a real `pageloan serve` subprocess.

The long versions are `python -m loadtest.soak --minutes 10` and
`python -m loadtest.conns --connections 10000`.
"""

from __future__ import annotations

import asyncio

import pytest

from loadtest.conns import ServerUnderTest, raise_own_limit, run_conns
from loadtest.soak import run_soak, soak_server


@pytest.mark.slow
def test_one_minute_soak_leaves_no_growth_and_returns_to_baseline(tmp_path):
    server = soak_server(tmp_path)
    try:
        report = asyncio.run(run_soak(server, 60.0, clients=6, ftp_clients=2))
    finally:
        server.stop()
    assert report.ok, report.problems
    assert report.requests > 200 and report.resets > 0
    assert {200, 201, 206, 304, 404} <= set(report.statuses)
    assert report.fds_after <= report.fds_baseline + 2
    assert report.ftp_sessions > 5 and report.ftp_transfers > 10 and report.ftp_errors == 0
    assert "Traceback" not in server.log()


@pytest.mark.slow
def test_a_thousand_connections_are_held_and_the_limit_is_answered_cleanly(tmp_path):
    raise_own_limit(4096)
    held, slow, active = 1000, 4, 4
    server = ServerUnderTest(tmp_path, ["--max-connections", str(held + slow + active),
                                        "--keepalive-timeout", "60"])
    try:
        report = asyncio.run(run_conns(server, held, seconds=2.0, slow_readers=slow, active=active, over=30))
        assert server.alive()
    finally:
        server.stop()
    assert report.held == held
    assert report.active_errors == 0 and report.active_requests > 0
    assert report.slow_readers_done == slow
    assert report.over_limit_503 + report.over_limit_closed == report.over_limit
    assert report.over_limit_503 > 0
    assert report.held_still_served == len(range(0, held, max(1, held // 50)))
    # Memory per idle connection is small (a socket, a session, a transmitter).
    assert report.rss_per_connection < 64 << 10, report.rss_per_connection
