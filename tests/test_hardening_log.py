"""The access log: nginx's escaping in every client field, and $request_time.

A client that puts quotes, backslashes or non-ASCII bytes in its request line or
headers must not be able to end a field early or forge a line: every logged line
still parses as Combined Log Format plus a request time.
"""

from __future__ import annotations

import logging
import re

from harness import raw_exchange

from server.http.context import log_escape

# Combined Log Format + request time: no unescaped quote inside a quoted field.
COMBINED = re.compile(r'^(\S+) - - \[([^\]]+)\] "((?:[^"\\]|\\x[0-9A-F]{2})*)" (\d{3}) (\d+) '
                      r'"((?:[^"\\]|\\x[0-9A-F]{2})*)" "((?:[^"\\]|\\x[0-9A-F]{2})*)" (\d+\.\d{3})$')


def test_log_escape_is_nginx_default_escaping():
    assert log_escape("plain text/1.0") == "plain text/1.0"
    assert log_escape('a"b') == r"a\x22b"
    assert log_escape("a\\b") == r"a\x5Cb"
    assert log_escape("a\tb\x1b[31m\x7f") == r"a\x09b\x1B[31m\x7F"
    assert log_escape("caf\xc3\xa9") == r"caf\xC3\xA9"      # UTF-8 bytes read as latin-1


async def _logged_lines(serve, tmp_path, caplog, requests: list[bytes]) -> list[str]:
    (tmp_path / "a.txt").write_text("a")
    running = await serve(root=tmp_path, access_log="-")
    import asyncio
    with caplog.at_level(logging.INFO, logger="pageloan.access"):
        for data in requests:
            await asyncio.to_thread(raw_exchange, running.port, data)
    return [r.getMessage() for r in caplog.records if r.name == "pageloan.access"]


async def test_a_client_cannot_forge_access_log_lines(serve, tmp_path, caplog):
    forged_agent = b'x" 200 1 "-" "y\\" \xe2\x80\xae'
    requests = [
        b'GET /a.txt?q="quoted"\\back HTTP/1.1\r\nHost: t\r\nUser-Agent: ' + forged_agent
        + b"\r\nReferer: http://r/\\\"\r\nConnection: close\r\n\r\n",
        b"GET /a.txt HTTP/1.1\r\nHost: t\r\nUser-Agent: \xff\xfe\x80\r\nConnection: close\r\n\r\n",
        b"GET /a.txt HTTP/1.1\r\nHost: t\r\nUser-Agent: tab\there\r\nConnection: close\r\n\r\n",
    ]
    lines = await _logged_lines(serve, tmp_path, caplog, requests)
    assert len(lines) == len(requests)
    for line in lines:
        assert "\n" not in line and "\r" not in line
        match = COMBINED.match(line)
        assert match, line
        assert match.group(4) == "200"
    first = COMBINED.match(lines[0])
    assert first.group(3) == r"GET /a.txt?q=\x22quoted\x22\x5Cback HTTP/1.1"
    assert first.group(6) == r"http://r/\x5C\x22"
    assert first.group(7) == r"x\x22 200 1 \x22-\x22 \x22y\x5C\x22 \xE2\x80\xAE"
    assert COMBINED.match(lines[1]).group(7) == r"\xFF\xFE\x80"
    assert COMBINED.match(lines[2]).group(7) == r"tab\x09here"


async def test_access_log_has_a_request_time(serve, tmp_path, caplog):
    lines = await _logged_lines(serve, tmp_path, caplog,
                                [b"GET /a.txt HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
                                 b"GET /nope HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"])
    times = [float(COMBINED.match(line).group(8)) for line in lines]
    assert [COMBINED.match(line).group(4) for line in lines] == ["200", "404"]
    assert all(0.0 <= t < 5.0 for t in times)
