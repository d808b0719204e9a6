"""The static lane: repeat requests for a file get the general path's answer, byte for byte.

The lane (server/static/lane.py) answers a lone GET/HEAD of a file the site has served
before without building a Request.  These tests pin, over real sockets, that it gives
exactly what the general path gives (every field but Date, and the body), that it
steps aside for every request whose answer could differ (conditionals, Range,
siblings for Accept-Encoding, HTTP/1.0, Connection: close, a bad head), and that it
is off wherever something besides the file could answer: request hooks, an access
log, and routes installed later.
"""

from __future__ import annotations

import asyncio
import gzip
import logging
import random
import time
from pathlib import Path

import brotli
import pytest
from harness import RawClient, serve_site, start_in_loop, without_date
from harness import browser_headers as browser
from polling import wait_until

from server.core.passwords import hash_password
from server.framework.application import Application
from server.framework.routing import Mount, Route, Router
from server.static.compression import Compressor
from server.static.options import StaticOptions, static_site
from server.static.rules import RuleSpec, make_auth
from server.static.site import StaticSite

SMALL = bytes(range(256)) * 40



@pytest.fixture
def root(tmp_path: Path) -> Path:
    site = tmp_path / "site"
    site.mkdir()
    (site / "small.bin").write_bytes(SMALL)
    (site / "empty.bin").write_bytes(b"")
    (site / "style.css").write_text("p { color: red }\n" * 40)
    (site / "style.css.gz").write_bytes(b"\x1f\x8b pretend gzip")
    return site


def test_repeat_requests_get_the_general_answer_from_the_lane(root):
    with serve_site(root) as running, RawClient(running.port) as c:
        lane = running.site.lane
        first = c.request("GET", "/small.bin?v=1", browser(1))       # the general path
        assert first.status == 200 and first.body == SMALL
        assert lane.hits == 0 and len(lane) == 1
        for n in range(2, 12):
            r = c.request("GET", f"/small.bin?v={n}&utm=x", browser(n, ("X-Request-Id", str(n))))
            assert r.status == 200 and r.body == SMALL
            assert without_date(r) == without_date(first)
        assert lane.hits == 10
        head = c.request("HEAD", "/small.bin?v=99", browser(99))
        assert head.status == 200 and head.body == b""
        assert without_date(head) == without_date(first)
        assert lane.hits == 11
        # An empty file has no payload slice: its head alone, from the lane too.
        assert c.request("GET", "/empty.bin", browser(1)).header("content-length") == "0"
        r = c.request("GET", "/empty.bin?x", browser(2))
        assert (r.status, r.body, r.header("content-length")) == (200, b"", "0")
        assert lane.hits == 12


def test_a_file_too_large_to_gather_goes_from_the_lane_by_sendfile(root):
    big = bytes(range(256)) * 1024                 # 256 KiB: over gather_max
    (root / "big.bin").write_bytes(big)
    with serve_site(root) as running, RawClient(running.port) as c:
        metrics = running.server.ctx.metrics
        assert c.request("GET", "/big.bin?v=1", browser(1)).body == big
        before = metrics.bytes_sendfile
        for n in range(2, 5):
            assert c.request("GET", f"/big.bin?v={n}", browser(n)).body == big
        assert running.site.lane.hits == 3
        # The server thread counts a sendfile after the call returns, which may be
        # after this client has read the last byte: wait for the count.
        wait_until(lambda: metrics.bytes_sendfile - before >= 3 * len(big), "three bodies by sendfile")


def test_what_could_change_the_answer_takes_the_general_path(root):
    with serve_site(root) as running, RawClient(running.port) as c:
        lane = running.site.lane
        etag = c.request("GET", "/small.bin", browser(1)).header("etag")
        r = c.request("GET", "/small.bin", browser(3, ("Range", "bytes=0-9")))
        assert (r.status, r.body) == (206, SMALL[:10])
        r = c.request("GET", "/small.bin", browser(4, ("If-Range", etag), ("Range", "bytes=10-19")))
        assert (r.status, r.body) == (206, SMALL[10:20])
        assert lane.hits == 0
        # A precompressed sibling on disk is a second file to check: the site serves it
        # every time.  What takes none of its codings is the file itself, kept per value.
        for n in range(3):
            gz = c.request("GET", "/style.css", browser(n))
            assert gz.header("content-encoding") == "gzip" and gz.body == b"\x1f\x8b pretend gzip"
            plain = c.request("GET", "/style.css", [("Accept-Encoding", "identity")])
            assert plain.header("content-encoding") is None and plain.body.startswith(b"p { color")
            bare = c.request("GET", "/style.css", [])
            assert bare.header("content-encoding") is None and bare.body == plain.body
            assert without_date(bare) == without_date(plain)
        assert lane.hits == 4 and len(lane) == 2


def test_a_browser_revalidation_is_answered_as_the_general_path_answers_it(root):
    """If-None-Match and If-Modified-Since, as browsers send them, are decided in the
    lane for the plain cases (our own validator exactly, or one other tag); anything
    else (a weak tag, a list, `*`, another date, If-Match) goes to conditional.py."""
    with serve_site(root) as running, RawClient(running.port) as c:
        lane = running.site.lane
        first = c.request("GET", "/small.bin", browser(1))
        etag, modified = first.header("etag"), first.header("last-modified")
        # conditional.py's own 304, for the weak form of the tag: the reference answer.
        general = c.request("GET", "/small.bin", browser(2, ("If-None-Match", "W/" + etag)))
        assert general.status == 304 and lane.hits == 0
        cases = [
            ([("If-None-Match", etag)], 304),
            ([("If-None-Match", etag), ("If-Modified-Since", modified)], 304),
            ([("If-Modified-Since", modified), ("If-None-Match", etag)], 304),
            ([("If-Modified-Since", modified)], 304),
            # A present If-None-Match that does not match wins over a matching date.
            ([("If-None-Match", '"stale"'), ("If-Modified-Since", modified)], 200),
        ]
        for n, (fields, status) in enumerate(cases):
            hits = lane.hits
            r = c.request("GET", f"/small.bin?v={n}", browser(n, *fields))
            assert r.status == status, fields
            assert lane.hits == hits + 1, fields
            if status == 304:
                assert without_date(r) == without_date(general) and r.body == b""
            else:
                assert r.body == SMALL and without_date(r) == without_date(first)
        head = c.request("HEAD", "/small.bin", browser(9, ("If-None-Match", etag)))
        assert head.status == 304 and without_date(head) == without_date(general)
        hits = lane.hits
        for fields, status in [
            ([("If-None-Match", f'"x", {etag}')], 304),
            ([("If-None-Match", "*")], 304),
            ([("If-Modified-Since", "Sun, 01 Jan 2100 00:00:00 GMT")], 304),
            ([("If-Modified-Since", "Sun, 01 Jan 1995 00:00:00 GMT")], 200),
            ([("If-Match", '"other"')], 412),
            ([("If-None-Match", etag), ("If-None-Match", '"x"')], 304),
        ]:
            assert c.request("GET", "/small.bin", browser(3, *fields)).status == status, fields
        assert lane.hits == hits        # all of those were conditional.py's to decide
        # A replaced file has new validators: the old tag gets the new file.
        (root / "small.bin").write_bytes(SMALL[::-1])
        r = c.request("GET", "/small.bin", browser(4, ("If-None-Match", etag)))
        assert r.status == 200 and r.body == SMALL[::-1]


def test_the_lane_looks_for_new_siblings_as_the_site_does(root, monkeypatch):
    """Once a second (here: every request) the lane has the site look for precompressed
    siblings, whatever the request asks; a sibling that appears is served at once."""
    import server.static.lane as lane_module
    import server.static.site as site_module
    monkeypatch.setattr(lane_module, "RECHECK_SECONDS", 0.0)
    monkeypatch.setattr(site_module, "RECHECK_SECONDS", 0.0)
    (root / "page.css").write_text("a { color: blue }\n" * 30)
    with serve_site(root) as running, RawClient(running.port) as c:
        lane = running.site.lane
        for n in range(3):
            r = c.request("GET", f"/page.css?v={n}", browser(n))
            assert r.header("content-encoding") is None
        assert lane.hits == 2
        (root / "page.css.gz").write_bytes(b"\x1f\x8b pretend")
        r = c.request("GET", "/page.css?v=9", browser(9))
        assert r.header("content-encoding") == "gzip" and r.body == b"\x1f\x8b pretend"
        hits = lane.hits
        for n in range(3):                  # no Accept-Encoding: the plain file, kept
            r = c.request("GET", f"/page.css?v={n}", [("Cookie", f"n={n}")])
            assert r.header("content-encoding") is None and r.body.startswith(b"a { color")
        assert lane.hits == hits + 2


def test_heads_the_general_path_refuses_are_refused(root):
    with serve_site(root) as running:
        with RawClient(running.port) as c:
            assert c.request("GET", "/small.bin", browser(1)).status == 200
        cases = [
            (b"GET /small.bin HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", b"HTTP/1.1 400"),
            (b"GET /small.bin HTTP/1.1\r\nCookie: x\r\n\r\n", b"HTTP/1.1 400"),
            (b"GET /small.bin HTTP/1.1\r\nHost: a\r\nExpect: teapot\r\n\r\n", b"HTTP/1.1 417"),
        ]
        for data, answer in cases:
            with RawClient(running.port) as c:
                c.send_raw(data)
                assert c.read_until_close().startswith(answer), data
        # HTTP/1.0 and Connection: close get their own Connection handling.
        with RawClient(running.port) as c:
            c.send_raw(b"GET /small.bin HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
            r = c.read_response()
            assert r.header("connection") == "keep-alive" and r.body == SMALL
        with RawClient(running.port) as c:
            c.send_raw(b"GET /small.bin HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
            raw = c.read_until_close()
            assert b"\r\nConnection: close\r\n" in raw and raw.endswith(SMALL)
        assert running.site.lane.hits == 0


async def test_request_hooks_see_every_static_request(handler_site, root):
    hook = (
        "from server.framework.hooks import before_request\n"
        "SEEN = []\n"
        "@before_request\n"
        "def seen(request):\n"
        "    SEEN.append(request.target)\n"
    )
    site = await handler_site({"seen.py": hook}, root=root)
    seen = site.app.hooks.before_request[0].__globals__["SEEN"]
    for n in range(6):
        reply = await site.get(f"/small.bin?v={n}")
        assert reply.status == 200
    assert len(seen) == 6
    assert site.app.static.lane.hits == 0 and len(site.app.static.lane) == 0


async def test_routes_installed_later_are_not_hidden_by_the_lane(root):
    static = StaticSite(root)
    app = Application(static)
    running = await start_in_loop(app=app, root=root)
    try:
        def get(n: int):
            with RawClient(running.port) as c:
                return c.request("GET", f"/small.bin?v={n}", browser(n))
        for n in range(3):
            assert (await asyncio.to_thread(get, n)).body == SMALL
        assert static.lane.hits == 2
        app.install(Router([Route("/small.bin", lambda request: "from a handler")]))
        reply = await asyncio.to_thread(get, 9)
        assert (reply.status, reply.body) == (200, b"from a handler")
        assert static.lane.hits == 2
    finally:
        await running.server.close()


async def test_an_access_log_sees_every_static_request(serve, root, caplog):
    running = await serve(root=root, access_log="-")

    def fetch() -> list[int]:
        with RawClient(running.port) as c:
            return [c.request("GET", f"/small.bin?v={n}", browser(n)).status for n in range(5)]

    with caplog.at_level(logging.INFO, logger="pageloan.access"):
        assert await asyncio.to_thread(fetch) == [200] * 5
    lines = [r.getMessage() for r in caplog.records if r.name == "pageloan.access"]
    assert len(lines) == 5 and all('"GET /small.bin?v=' in line for line in lines)


def _text() -> bytes:
    rng = random.Random(7)
    words = [b"lane", b"variant", b"browser", b"kernel", b"window", b"answer", b"path"]
    return b" ".join(rng.choice(words) for _ in range(20000))


def test_a_variant_is_answered_per_accept_encoding_value(tmp_path):
    """Compressed variants come from the lane too, keyed by the Accept-Encoding value a
    browser sends; another value, or none, still gets its own answer."""
    text = _text()
    (tmp_path / "book.txt").write_bytes(text)
    compressor = Compressor()
    try:
        with serve_site(tmp_path, compression=compressor) as running, RawClient(running.port) as c:
            lane = running.site.lane
            chrome = {"Accept-Encoding": "gzip, deflate, br, zstd"}
            deadline = time.monotonic() + 10
            while c.request("GET", "/book.txt", chrome).header("content-encoding") != "br":
                assert time.monotonic() < deadline, "the br variant was never built"
                time.sleep(0.02)
            first = c.request("GET", "/book.txt?v=0", {**chrome, "Cookie": "n=0"})
            hits = lane.hits
            for n in range(1, 20):
                r = c.request("GET", f"/book.txt?v={n}", {**chrome, "Cookie": f"n={n}"})
                assert without_date(r) == without_date(first) and r.body == first.body
            assert lane.hits == hits + 19
            assert brotli.decompress(first.body) == text
            assert first.header("vary") == "Accept-Encoding"
            # Other values are other answers: the site decides them (and may keep them).
            r = c.request("GET", "/book.txt", {"Accept-Encoding": "gzip"})
            deadline = time.monotonic() + 10
            while r.header("content-encoding") != "gzip":
                assert time.monotonic() < deadline, "the gzip variant was never built"
                time.sleep(0.02)
                r = c.request("GET", "/book.txt", {"Accept-Encoding": "gzip"})
            assert gzip.decompress(r.body) == text
            plain = c.request("GET", "/book.txt", {"Accept-Encoding": "identity"})
            assert plain.header("content-encoding") is None and plain.body == text
            plain = c.request("GET", "/book.txt", {})
            assert plain.header("content-encoding") is None and plain.body == text
            # Two Accept-Encoding fields are combined by the site, never keyed by one.
            hits = lane.hits
            two = c.request("GET", "/book.txt", [("Accept-Encoding", "identity"),
                                                 ("Accept-Encoding", "gzip, deflate, br, zstd")])
            assert two.header("content-encoding") == "br" and lane.hits == hits
            # A changed file drops the entry and its variants: the next answer is plain.
            (tmp_path / "book.txt").write_bytes(text[:5000])
            r = c.request("GET", "/book.txt?v=99", {**chrome, "Cookie": "n=99"})
            body = brotli.decompress(r.body) if r.header("content-encoding") == "br" else r.body
            assert body == text[:5000]
    finally:
        compressor.close()


def _basic(user: str, password: str) -> tuple[str, str]:
    import base64
    return ("Authorization", "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode())


def test_a_path_under_a_rule_is_never_answered_from_the_lane(root, tmp_path):
    """Auth is asked of every request for a guarded path: a login, or an OPTIONS probe
    (which looks the file up without the rules), must not open it to the next client."""
    (root / "private").mkdir()
    (root / "private" / "secret.txt").write_bytes(b"the secret")
    users = tmp_path / "users.htpasswd"
    users.write_text("carol:" + hash_password("singer") + "\n")
    site = static_site(root, StaticOptions(rules=RuleSpec(auth=(make_auth("/private/*", users, "Staff"),)),
                                           compress=False))
    from harness import ThreadedServer
    running = ThreadedServer(Application(site)).start()
    try:
        with RawClient(running.port) as c:
            for n in range(3):
                r = c.request("GET", f"/private/secret.txt?v={n}", browser(n, _basic("carol", "singer")))
                assert (r.status, r.body) == (200, b"the secret")
            assert c.request("OPTIONS", "/private/secret.txt", browser(9)).status in (204, 401)
            for n in range(3):
                r = c.request("GET", f"/private/secret.txt?v={n}", browser(n))
                assert r.status == 401 and b"the secret" not in r.body
            # A path no rule concerns still takes the lane.
            for n in range(4):
                assert c.request("GET", f"/small.bin?v={n}", browser(n)).body == SMALL
        assert site.lane.hits == 3 and list(site.lane.entries) == [b"/small.bin"]
    finally:
        running.stop()


async def test_a_mount_of_the_site_does_not_fill_its_lane(root):
    """A mount re-aims requests at the site with its prefix removed: what it serves
    under /files/x says nothing of what the application answers for /x."""
    static = StaticSite(root)
    router = Router([Route("/small.bin", lambda request: "from a handler"),
                     *Mount("/files", static).routes()])
    app = Application(static, router=router)
    running = await start_in_loop(app=app, root=root)
    try:
        def get(target: str, n: int):
            with RawClient(running.port) as c:
                return c.request("GET", target, browser(n))
        for n in range(3):
            assert (await asyncio.to_thread(get, f"/files/small.bin?v={n}", n)).body == SMALL
        reply = await asyncio.to_thread(get, "/small.bin", 9)
        assert reply.body == b"from a handler"
        assert len(static.lane) == 0
    finally:
        await running.server.close()


async def test_a_root_beside_an_asgi_app_takes_the_lane_and_the_app_the_rest(root):
    from server.asgi.adapter import AsgiAdapter

    seen: list[str] = []

    async def app(scope, receive, send):
        seen.append(scope["path"])
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"text/plain")]})
        await send({"type": "http.response.body", "body": b"from the app"})

    static = StaticSite(root)
    running = await start_in_loop(app=AsgiAdapter(app, static=static, lifespan="off"), root=root)
    try:
        def get(target: str, n: int):
            with RawClient(running.port) as c:
                return c.request("GET", target, browser(n))
        for n in range(4):
            assert (await asyncio.to_thread(get, f"/small.bin?v={n}", n)).body == SMALL
        assert (await asyncio.to_thread(get, "/api/thing", 9)).body == b"from the app"
        assert static.lane.hits == 3 and seen == ["/api/thing"]
    finally:
        await running.server.close()
