"""The general static path: what a browser sends decides the answer, and files are never stale.

Every request here carries a browser's header set, and a Cookie and query string that
change from one request to the next, as real traffic does: nothing can be answered
from a memory of identical requests.  These tests pin, over real sockets, that
headers which cannot change a static answer do not change it; that the ones which
can (Accept-Encoding, Range, conditionals) still do; that a file replaced by
rename, edited in place, truncated, deleted or made unreadable is seen by the very
next request; and that the bare parse (a read of whole heads, no header callbacks)
keeps HTTP's rules: order, HEAD, Connection: close, exactly one Host.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest
from harness import RawClient, raw_exchange, serve_site, without_date
from harness import browser_headers as browser

SMALL = bytes(range(256)) * 40          # 10 KiB: mapped, gathered with its head


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



def test_cookie_user_agent_and_query_do_not_change_the_answer(root):
    with serve_site(root) as running, RawClient(running.port) as c:
        first = c.request("GET", "/small.bin?v=1", browser(1))
        assert first.status == 200 and first.body == SMALL
        for n in range(2, 30):
            r = c.request("GET", f"/small.bin?v={n}&utm_source=x", browser(n, ("X-Request-Id", str(n))))
            assert r.body == SMALL
            assert without_date(r) == without_date(first)
        plain = c.request("GET", "/small.bin")          # no browser headers at all
        assert plain.body == SMALL and plain.header("etag") == first.header("etag")


def test_selecting_headers_still_change_the_answer(root):
    with serve_site(root) as running, RawClient(running.port) as c:
        whole = c.request("GET", "/small.bin?v=1", browser(1))
        etag, modified = whole.header("etag"), whole.header("last-modified")
        r = c.request("GET", "/small.bin?v=2", browser(2, ("Range", "bytes=10-19")))
        assert r.status == 206 and r.body == SMALL[10:20]
        assert r.header("content-range") == f"bytes 10-19/{len(SMALL)}"
        r = c.request("GET", "/small.bin?v=3", browser(3, ("If-None-Match", etag)))
        assert r.status == 304 and r.body == b""
        r = c.request("GET", "/small.bin?v=4", browser(4, ("If-Modified-Since", modified)))
        assert r.status == 304
        r = c.request("GET", "/small.bin?v=5", browser(5, ("If-Range", '"other"'), ("Range", "bytes=0-0")))
        assert r.status == 200 and r.body == SMALL          # If-Range fails: the whole file
        r = c.request("GET", "/small.bin?v=6", browser(6, ("If-Match", '"nope"')))
        assert r.status == 412
        # Accept-Encoding picks the sibling; without it, the original.
        gz = c.request("GET", "/style.css?v=7", browser(7))
        assert gz.header("content-encoding") == "gzip" and gz.body == b"\x1f\x8b pretend gzip"
        assert "accept-encoding" in gz.header("vary").lower()
        plain = c.request("GET", "/style.css?v=8", [("Cookie", "a=b")])
        assert plain.header("content-encoding") is None
        assert plain.body == (root / "style.css").read_bytes()
        # Lower-case and odd spacing are the same fields.
        r = c.request("GET", "/small.bin?v=9", [("range", "bytes=0-3"), ("cookie", "x=1")])
        assert r.status == 206 and r.body == SMALL[:4]


def test_a_rename_an_edit_a_truncation_and_a_delete_are_seen_at_once(root):
    with serve_site(root) as running, RawClient(running.port) as c:
        for n in range(3):
            assert c.request("GET", f"/a.txt?v={n}", browser(n)).body == b"hello\n"
        # Deploy-style replacement: write aside, rename over.
        (root / "a.txt.tmp").write_bytes(b"fresh!\n")
        os.rename(root / "a.txt.tmp", root / "a.txt")
        r = c.request("GET", "/a.txt?v=10", browser(10))
        assert r.body == b"fresh!\n" and r.header("content-length") == "7"
        # An edit in place that keeps the size: only the mtime tells.
        path = root / "a.txt"
        before = path.stat().st_mtime_ns
        path.write_bytes(b"FRESH!\n")
        os.utime(path, ns=(before + 5_000_000, before + 5_000_000))
        assert c.request("GET", "/a.txt?v=11", browser(11)).body == b"FRESH!\n"
        # Truncated in place.
        with open(path, "r+b") as f:
            f.truncate(3)
        r = c.request("GET", "/a.txt?v=12", browser(12))
        assert r.body == b"FRE" and r.header("content-length") == "3"
        path.unlink()
        assert c.request("GET", "/a.txt?v=13", browser(13)).status == 404


def test_a_chmod_is_seen_by_the_next_request(root):
    """chmod changes neither size nor mtime: the identity check must see it (ctime).

    Run as root, the reopen succeeds (root reads anything), so what is checked is
    that the cached descriptor was given up; run as anybody else, the file is refused.
    """
    secret = root / "a.txt"
    with serve_site(root) as running, RawClient(running.port) as c:
        assert c.request("GET", "/a.txt?v=1", browser(1)).body == b"hello\n"
        cache = running.site.cache
        misses = cache.misses
        os.chmod(secret, 0o000)
        r = c.request("GET", "/a.txt?v=2", browser(2))
        assert cache.misses == misses + 1          # not served from the old descriptor
        if os.geteuid() != 0:
            assert r.status == 403
        os.chmod(secret, 0o644)
        assert c.request("GET", "/a.txt?v=3", browser(3)).body == b"hello\n"


def test_pipelined_browser_requests_are_answered_in_order(root):
    with serve_site(root) as running, RawClient(running.port) as c:
        heads = b"".join(
            b"GET /%s?v=%d HTTP/1.1\r\nHost: x\r\nCookie: n=%d\r\n\r\n" % (name, n, n)
            for n, name in enumerate([b"a.txt", b"small.bin", b"a.txt", b"index.html"] * 5))
        heads += b"HEAD /small.bin HTTP/1.1\r\nHost: x\r\n\r\n\r\nGET /a.txt HTTP/1.1\r\nHost: x\r\n\r\n"
        c.sock.sendall(heads)
        for _ in range(5):
            assert c.read_response().body == b"hello\n"
            assert c.read_response().body == SMALL
            assert c.read_response().body == b"hello\n"
            assert c.read_response().body == b"<p>home</p>\n"
        head = c.read_response("HEAD")
        assert head.header("content-length") == str(len(SMALL)) and head.body == b""
        assert c.read_response().body == b"hello\n"


def test_connection_close_in_a_whole_head_read_closes_after_the_answer(root):
    with serve_site(root) as running, RawClient(running.port) as c:
        c.sock.sendall(b"GET /a.txt HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
                       b"GET /small.bin HTTP/1.1\r\nHost: x\r\n\r\n")
        r = c.read_response()
        assert r.body == b"hello\n" and r.header("connection") == "close"
        c.sock.settimeout(5)
        assert c.sock.recv(10) == b""        # the second request is not answered


@pytest.mark.parametrize("head", [
    b"GET /a.txt HTTP/1.1\r\nUser-Agent: x\r\n\r\n",                           # no Host
    b"GET /a.txt HTTP/1.1\r\nHost: a\r\nhost: b\r\n\r\n",                      # two Hosts
    b"GET /a.txt HTTP/1.1\r\nHost: a\r\nX: 1\r\nHOST: a\r\n\r\n",
], ids=["missing", "twice", "twice-any-case"])
@pytest.mark.parametrize("split", [False, True], ids=["whole-read", "split-read"])
def test_http11_needs_exactly_one_host(root, head, split):
    with serve_site(root) as running, RawClient(running.port, timeout=5) as c:
        if split:        # across two sends: the full parser's callbacks may see it
            c.send_raw(head[:20])
            c.send_raw(head[20:])
        else:
            c.send_raw(head)
        answer = c.read_until_close()
    assert answer.startswith(b"HTTP/1.1 400 ")
    assert answer.count(b"\r\nServer: pageloan\r\n") == 1      # one answer, then the close


def test_http10_without_host_is_served(root):
    with serve_site(root) as running:
        answer = raw_exchange(running.port, b"GET /a.txt HTTP/1.0\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 200 ") and answer.endswith(b"hello\n")


def test_rename_under_load_is_seen_by_the_next_request(root):
    """Other connections keep asking for the file while it is replaced, again and again:
    a request sent after each rename returns must get the new file."""
    stop = threading.Event()
    errors: list[str] = []

    def hammer(k: int) -> None:
        with RawClient(running.port) as c:
            n = 0
            while not stop.is_set():
                n += 1
                body = c.request("GET", f"/a.txt?k={k}&n={n}", browser(n)).body
                if not body.startswith(b"version "):
                    errors.append(repr(body))

    (root / "a.txt").write_bytes(b"version 0\n")
    with serve_site(root) as running:
        threads = [threading.Thread(target=hammer, args=(k,)) for k in range(6)]
        for t in threads:
            t.start()
        try:
            with RawClient(running.port) as c:
                for n in range(1, 41):
                    tmp = root / "a.txt.tmp"
                    tmp.write_bytes(b"version %d\n" % n)
                    os.rename(tmp, root / "a.txt")
                    assert c.request("GET", f"/a.txt?v={n}", browser(n)).body == b"version %d\n" % n
        finally:
            stop.set()
            for t in threads:
                t.join(10)
        assert errors == []
