"""The static site over real sockets: files, types, directories, siblings, caching, safety.

Every test talks to an in-process server on 127.0.0.1 through a raw keep-alive
socket (harness.RawClient) that reads exactly the bytes each response
frames, so a wrong Content-Length or a body after HEAD breaks the next response.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import re
import socket
import time
from pathlib import Path

import pytest
from harness import RawClient, serve_site
from harness import fetch_raw as fetch

from server.static.cache_policy import CacheControlRules

SMALL = os.urandom(64 << 10)
LARGE = os.urandom(600 << 10)          # above the 256 KiB gather limit: sent by sendfile
CSS = b"body { color: #123456; }\n" * 40
CSS_GZ = gzip.compress(CSS, mtime=0)
CSS_BR = b"\x8b\x03\x80fake-brotli-bytes\x03"   # the server never decodes it


def build_site(base: Path) -> Path:
    root = base / "site"
    root.mkdir()
    (root / "index.html").write_text("<!DOCTYPE html><title>home</title><p>home</p>\n")
    (root / "a.txt").write_bytes(b"hello\n")
    (root / "empty.txt").write_bytes(b"")
    (root / "small.bin").write_bytes(SMALL)
    (root / "large.bin").write_bytes(LARGE)
    (root / "style.css").write_bytes(CSS)
    (root / "style.css.gz").write_bytes(CSS_GZ)
    (root / "style.css.br").write_bytes(CSS_BR)
    (root / "plain.js").write_bytes(b"console.log(1);\n")
    for name in ("m.mjs", "f.woff2", "w.wasm", "d.md", "i.svg", "app.webmanifest", "x.json",
                 "p.png", "v.webm", "a.avif", "s.jsonld", "archive.tar.gz"):
        (root / name).write_bytes(b"x")
    (root / "dir").mkdir()
    (root / "dir" / "index.html").write_text("<p>dir index</p>\n")
    (root / "docs").mkdir()
    (root / "docs" / "b.txt").write_text("b")
    (root / "docs" / "A.txt").write_text("A")
    (root / "docs" / "zeta").mkdir()
    (root / "docs" / "alpha").mkdir()
    (root / "docs" / ".hidden").write_text("hidden")
    (root / "docs" / "<b>&amp.txt").write_text("odd")
    (root / "docs" / "sp ace?#.txt").write_text("odd")
    (root / ".env").write_text("SECRET=1\n")
    (root / ".git").mkdir()
    (root / ".git" / "config").write_text("[core]\n")
    (root / "404.html").write_text("<h1>custom not found</h1>\n")
    outside = base / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text("TOPSECRET\n")
    (outside / "evil.js").write_text("TOPSECRET-sibling\n")
    os.symlink(outside / "secret.txt", root / "link_out.txt")
    os.symlink(root / "a.txt", root / "link_in.txt")
    os.symlink(outside, root / "dir_out")
    (root / "evil.js").write_text("innocent\n")
    os.symlink(outside / "evil.js", root / "evil.js.gz")   # sibling escaping the root
    return root


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return build_site(tmp_path_factory.mktemp("static"))


@pytest.fixture(scope="module")
def site(root):
    with serve_site(root) as running:
        yield running


@pytest.fixture
def client(site):
    with RawClient(site.port) as c:
        yield c


# -- plain files ------------------------------------------------------------------------------

def test_get_file_with_validators(client):
    r = client.request("GET", "/a.txt")
    assert r.status == 200 and r.body == b"hello\n"
    h = r.headers
    assert h["content-type"] == "text/plain; charset=utf-8"
    assert h["content-length"] == "6"
    assert h["accept-ranges"] == "bytes"
    assert re.fullmatch(r'"[0-9a-f]+-6-[0-9a-f]+"', h["etag"])
    assert h["last-modified"].endswith(" GMT")
    assert h["cache-control"] == "max-age=3600"
    assert "vary" not in h


@pytest.mark.parametrize("name", ["small.bin", "large.bin"])
def test_bodies_are_exact(client, root, name):
    r = client.request("GET", "/" + name)
    assert r.status == 200
    assert hashlib.sha256(r.body).digest() == hashlib.sha256((root / name).read_bytes()).digest()
    assert client.request("GET", "/a.txt").body == b"hello\n"     # framing intact afterwards


@pytest.mark.parametrize("name", ["a.txt", "large.bin", "empty.txt", "index.html", "style.css"])
def test_head_has_get_headers_and_no_body(client, name):
    got = client.request("GET", "/" + name)
    head = client.request("HEAD", "/" + name)
    assert head.status == got.status == 200
    assert head.body == b""
    strip = {"date"}
    assert [(k, v) for k, v in head.header_list if k.lower() not in strip] == \
        [(k, v) for k, v in got.header_list if k.lower() not in strip]
    # Nothing of a body follows the HEAD answer: the next answer parses cleanly.
    assert client.request("GET", "/a.txt").body == b"hello\n"
    assert client.pending() == b""


def test_pipelined_head_and_get(site):
    with RawClient(site.port) as c:
        for _ in range(3):
            c.send("HEAD", "/small.bin")
            c.send("GET", "/a.txt")
        for _ in range(3):
            assert c.read_response("HEAD").status == 200
            assert c.read_response("GET").body == b"hello\n"
        assert c.pending() == b""


def test_empty_file(client):
    r = client.request("GET", "/empty.txt")
    assert r.status == 200 and r.body == b"" and r.headers["content-length"] == "0"
    r = client.request("GET", "/empty.txt", {"Range": "bytes=0-"})
    assert r.status == 416 and r.headers["content-range"] == "bytes */0"
    # A suffix range could only select zero bytes, which has no Content-Range: the whole (empty) file.
    r = client.request("GET", "/empty.txt", {"Range": "bytes=-10"})
    assert r.status == 200 and r.body == b""
    assert client.request("GET", "/a.txt").body == b"hello\n"


@pytest.mark.parametrize("name, ctype", [
    ("m.mjs", "text/javascript; charset=utf-8"),
    ("plain.js", "text/javascript; charset=utf-8"),
    ("f.woff2", "font/woff2"),
    ("w.wasm", "application/wasm"),
    ("d.md", "text/markdown; charset=utf-8"),
    ("i.svg", "image/svg+xml; charset=utf-8"),
    ("app.webmanifest", "application/manifest+json; charset=utf-8"),
    ("x.json", "application/json; charset=utf-8"),
    ("s.jsonld", "application/ld+json; charset=utf-8"),
    ("p.png", "image/png"),
    ("v.webm", "video/webm"),
    ("a.avif", "image/avif"),
    ("archive.tar.gz", "application/gzip"),
    ("index.html", "text/html; charset=utf-8"),
    ("style.css", "text/css; charset=utf-8"),
])
def test_content_types(client, name, ctype):
    r = client.request("HEAD", "/" + name)
    assert r.status == 200 and r.headers["content-type"] == ctype
    # A plain file named *.gz is just a gzip file: no Content-Encoding is implied.
    assert "content-encoding" not in r.headers


# -- directories --------------------------------------------------------------------------------

def test_directory_index(client):
    r = client.request("GET", "/dir/")
    assert r.status == 200 and r.body == b"<p>dir index</p>\n"
    assert r.headers["cache-control"] == "max-age=0, must-revalidate"
    assert client.request("GET", "/").body.startswith(b"<!DOCTYPE html><title>home")


def test_directory_without_slash_redirects_keeping_query(client):
    r = client.request("GET", "/dir?x=1&y=%20")
    assert r.status == 301 and r.headers["location"] == "/dir/?x=1&y=%20"
    r = client.request("GET", "/dir")
    assert r.status == 301 and r.headers["location"] == "/dir/"


def test_redirect_is_never_protocol_relative(client):
    # "//dir" must not become Location "//dir/" (a redirect to the host "dir").
    r = client.request("GET", "//dir")
    assert r.status == 301 and r.headers["location"] == "/dir/"


def test_file_with_trailing_slash_is_not_found(client):
    assert client.request("GET", "/a.txt/").status == 404


def test_no_listing_by_default(client):
    assert client.request("GET", "/docs/").status == 404


def test_autoindex_listing(root):
    with serve_site(root, autoindex=True) as running:
        r = fetch(running.port, "/docs/")
    assert r.status == 200 and r.headers["content-type"] == "text/html; charset=utf-8"
    page = r.body.decode()
    names = re.findall(r'<a href="([^"]*)">([^<]*)</a>', page)
    assert names[0] == ("../", "../")
    # Directories first, then files, each sorted by name; dotfiles hidden.
    assert [text for _href, text in names[1:]] == [
        "alpha/", "zeta/", "&lt;b&gt;&amp;amp.txt", "A.txt", "b.txt", "sp ace?#.txt"]
    hrefs = dict((text, href) for href, text in names)
    assert hrefs["&lt;b&gt;&amp;amp.txt"] == "%3Cb%3E%26amp.txt"
    assert hrefs["sp ace?#.txt"] == "sp%20ace%3F%23.txt"
    assert ".hidden" not in page
    assert "<b>" not in page                          # the name was escaped, not injected
    with serve_site(root, autoindex=True) as running:
        # The quoted hrefs lead to the files.
        assert fetch(running.port, "/docs/sp%20ace%3F%23.txt").body == b"odd"
        assert fetch(running.port, "/docs/%3Cb%3E%26amp.txt").body == b"odd"
        top = fetch(running.port, "/dir_out/")
        assert top.status == 404                     # a directory link out of the root
        listing = fetch(running.port, "/docs").status
        assert listing == 301


# -- dotfiles and symlinks ----------------------------------------------------------------------

@pytest.mark.parametrize("path", ["/.env", "/.git/config", "/docs/.hidden", "/.git/", "/%2eenv"])
def test_dotfiles_hidden(client, path):
    r = client.request("GET", path)
    assert r.status == 404 and b"SECRET" not in r.body and b"[core]" not in r.body


def test_dotfiles_shown_when_asked(root):
    with serve_site(root, show_dotfiles=True) as running:
        assert fetch(running.port, "/.env").body == b"SECRET=1\n"


def test_symlinks(client, root):
    assert client.request("GET", "/link_in.txt").body == b"hello\n"
    r = client.request("GET", "/link_out.txt")
    assert r.status == 404 and b"TOPSECRET" not in r.body
    r = client.request("GET", "/dir_out/secret.txt")
    assert r.status == 404 and b"TOPSECRET" not in r.body


def test_follow_symlinks_allows_links_out(root):
    with serve_site(root, follow_symlinks=True) as running:
        assert fetch(running.port, "/link_out.txt").body == b"TOPSECRET\n"
        # Still no ".." walking, whatever the option.
        assert fetch(running.port, "/dir/../../outside/secret.txt").status == 400


def test_file_swapped_for_symlink_out_is_refused(tmp_path):
    root = build_site(tmp_path)
    with serve_site(root) as running, RawClient(running.port) as c:
        assert c.request("GET", "/a.txt").body == b"hello\n"      # cached route and open file
        tmp = root / "a.txt.tmp"
        os.symlink(tmp_path / "outside" / "secret.txt", tmp)
        os.rename(tmp, root / "a.txt")
        r = c.request("GET", "/a.txt")
        assert r.status == 404 and b"TOPSECRET" not in r.body


# -- error pages --------------------------------------------------------------------------------

def test_custom_404_page(client):
    r = client.request("GET", "/no/such/file")
    assert r.status == 404 and r.body == b"<h1>custom not found</h1>\n"
    assert r.headers["content-type"] == "text/html; charset=utf-8"
    r = client.request("HEAD", "/nothing-here")
    assert r.status == 404 and r.body == b""
    assert client.request("GET", "/a.txt").body == b"hello\n"


def test_error_page_api(site, root):
    static = site.site
    page = static.error_page(404)
    assert page is not None and page.status == 404
    assert static.error_page(403) is None          # no 403.html in this root
    assert static.error_page(200) is None
    (root / "403.html").write_text("forbidden here")
    try:
        page = static.error_page(403)
        assert page is not None and page.status == 403 and page.payload_length == 14
    finally:
        (root / "403.html").unlink()


def test_plain_404_without_page(tmp_path):
    (tmp_path / "x.txt").write_text("x")
    with serve_site(tmp_path) as running:
        r = fetch(running.port, "/missing")
    assert r.status == 404 and b"404" in r.body


# -- precompressed siblings ---------------------------------------------------------------------

def test_brotli_preferred(client):
    r = client.request("GET", "/style.css", {"Accept-Encoding": "gzip, deflate, br"})
    assert r.status == 200 and r.body == CSS_BR
    h = r.headers
    assert h["content-encoding"] == "br"
    assert h["content-type"] == "text/css; charset=utf-8"
    assert h["vary"] == "Accept-Encoding"
    assert h["content-length"] == str(len(CSS_BR))
    assert h["etag"].endswith('-br"')


def test_gzip_when_brotli_refused(client):
    r = client.request("GET", "/style.css", {"Accept-Encoding": "br;q=0, gzip;q=0.5"})
    assert r.headers["content-encoding"] == "gzip" and r.headers["etag"].endswith('-gz"')
    assert gzip.decompress(r.body) == CSS


@pytest.mark.parametrize("accept, coding", [
    ("gzip", "gzip"), ("x-gzip", "gzip"), ("br", "br"), ("*", "br"), ("*;q=0.1, br;q=0", "gzip"),
    ("gzip;q=1, br;q=0.9", "gzip"), ("identity", None), ("gzip;q=0, br;q=0", None),
    ("*;q=0", None), ("identity;q=1, gzip;q=0.5", None), ("deflate", None), ("gzip;q=0.000", None),
])
def test_accept_encoding_negotiation(client, accept, coding):
    r = client.request("GET", "/style.css", {"Accept-Encoding": accept})
    assert r.status == 200
    assert r.headers.get("content-encoding") == coding
    assert r.headers["vary"] == "Accept-Encoding"
    assert r.body == {"br": CSS_BR, "gzip": CSS_GZ, None: CSS}[coding]


def test_identity_has_vary_when_sibling_exists(client):
    r = client.request("GET", "/style.css")
    assert r.body == CSS and r.headers["vary"] == "Accept-Encoding"
    assert "vary" not in client.request("GET", "/a.txt").headers


def test_distinct_etags_and_conditional_per_encoding(client):
    plain = client.request("HEAD", "/style.css").headers["etag"]
    br = client.request("HEAD", "/style.css", {"Accept-Encoding": "br"}).headers["etag"]
    gz = client.request("HEAD", "/style.css", {"Accept-Encoding": "gzip"}).headers["etag"]
    assert len({plain, br, gz}) == 3
    r = client.request("GET", "/style.css", {"Accept-Encoding": "br", "If-None-Match": br})
    assert r.status == 304 and r.headers["etag"] == br and r.headers["vary"] == "Accept-Encoding"
    # The br tag does not validate the gzip representation.
    r = client.request("GET", "/style.css", {"Accept-Encoding": "gzip", "If-None-Match": br})
    assert r.status == 200 and r.body == CSS_GZ


def test_range_applies_to_selected_encoding(client):
    r = client.request("GET", "/style.css", {"Accept-Encoding": "gzip", "Range": "bytes=0-9"})
    assert r.status == 206 and r.body == CSS_GZ[:10]
    assert r.headers["content-range"] == f"bytes 0-9/{len(CSS_GZ)}"
    assert r.headers["content-encoding"] == "gzip"


def test_sibling_symlink_out_of_root_refused(client):
    r = client.request("GET", "/evil.js", {"Accept-Encoding": "gzip"})
    assert r.status == 200 and r.body == b"innocent\n"
    assert "content-encoding" not in r.headers


def test_precompressed_off(root):
    with serve_site(root, precompressed=False) as running:
        r = fetch(running.port, "/style.css", {"Accept-Encoding": "br, gzip"})
    assert r.body == CSS and "content-encoding" not in r.headers and "vary" not in r.headers


# -- caching headers ----------------------------------------------------------------------------

def test_cache_control_rules(root):
    rules = CacheControlRules([("/dir/*", "no-store"), ("*.css", "public, max-age=31536000, immutable"),
                               ("*.txt", "")])
    with serve_site(root, cache_control=rules) as running:
        assert fetch(running.port, "/dir/").headers["cache-control"] == "no-store"
        assert fetch(running.port, "/style.css").headers["cache-control"] == "public, max-age=31536000, immutable"
        assert "cache-control" not in fetch(running.port, "/a.txt").headers
        assert fetch(running.port, "/").headers["cache-control"] == "max-age=0, must-revalidate"
        assert fetch(running.port, "/small.bin").headers["cache-control"] == "max-age=3600"


def test_single_cache_control_value(root):
    with serve_site(root, cache_control="no-cache") as running:
        assert fetch(running.port, "/").headers["cache-control"] == "no-cache"
        assert fetch(running.port, "/a.txt").headers["cache-control"] == "no-cache"


# -- files that change ----------------------------------------------------------------------------

def test_change_in_place_is_seen_at_once(tmp_path):
    root = build_site(tmp_path)
    with serve_site(root) as running, RawClient(running.port) as c:
        first = c.request("GET", "/a.txt")
        (root / "a.txt").write_bytes(b"changed, longer\n")
        second = c.request("GET", "/a.txt")
        assert second.body == b"changed, longer\n"
        assert second.headers["etag"] != first.headers["etag"]
        # The old ETag no longer validates.
        assert c.request("GET", "/a.txt", {"If-None-Match": first.headers["etag"]}).status == 200


def test_deleted_file_is_gone(tmp_path):
    root = build_site(tmp_path)
    with serve_site(root) as running, RawClient(running.port) as c:
        assert c.request("GET", "/a.txt").status == 200
        (root / "a.txt").unlink()
        assert c.request("GET", "/a.txt").status == 404


@pytest.mark.slow
def test_rename_during_download(tmp_path):
    """A download in progress keeps the old bytes; a new request gets the new file at once."""
    root = tmp_path / "site"
    root.mkdir()
    old = os.urandom(24 << 20)
    new = os.urandom(20 << 20)
    (root / "big.bin").write_bytes(old)
    with serve_site(root) as running:
        slow = socket.create_connection(("127.0.0.1", running.port))
        slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 << 10)
        slow.sendall(b"GET /big.bin HTTP/1.1\r\nHost: x\r\n\r\n")
        received = b""
        while len(received) < (1 << 20):               # well into the body
            received += slow.recv(1 << 16)
        # Replace the file the way deploy tools do: write aside, rename over.
        (root / "big.bin.tmp").write_bytes(new)
        os.rename(root / "big.bin.tmp", root / "big.bin")
        fresh = fetch(running.port, "/big.bin")
        assert hashlib.sha256(fresh.body).digest() == hashlib.sha256(new).digest()
        head, _, body = received.partition(b"\r\n\r\n")
        assert b"Content-Length: %d" % len(old) in head
        deadline = time.monotonic() + 30
        while len(body) < len(old) and time.monotonic() < deadline:
            chunk = slow.recv(1 << 20)
            if not chunk:
                break
            body += chunk
        slow.close()
        assert hashlib.sha256(body).digest() == hashlib.sha256(old).digest()


# -- methods ----------------------------------------------------------------------------------

def test_other_methods_are_not_static(client):
    r = client.request("POST", "/a.txt", {"Content-Length": "0"})
    assert r.status == 405 and "GET" in r.headers.get("allow", "")


# -- serving one chosen file (for handlers) -----------------------------------------------------

def test_serve_file_api(root, tmp_path):
    from harness import ThreadedServer

    from server.core.filecache import OpenFileCache
    from server.framework.application import Application
    from server.http.request import Request
    from server.static.site import StaticSite

    elsewhere = tmp_path / "report.csv"
    elsewhere.write_bytes(b"a,b\n1,2\n")
    site = StaticSite(root, cache=OpenFileCache())
    app = Application(site)

    def handler_like(request: Request):
        if request.raw_path == b"/report":
            return site.serve_file(request, elsewhere, "/report.csv")
        return app(request)

    running = ThreadedServer(handler_like).start()
    try:
        with RawClient(running.port) as c:
            r = c.request("GET", "/report")
            assert r.status == 200 and r.body == b"a,b\n1,2\n"
            assert r.headers["content-type"] == "text/csv; charset=utf-8"
            assert c.request("GET", "/report", {"If-None-Match": r.headers["etag"]}).status == 304
            assert c.request("GET", "/report", {"Range": "bytes=4-"}).body == b"1,2\n"
    finally:
        running.stop()
