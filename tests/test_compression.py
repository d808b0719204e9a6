"""Compression once (server/static/compression.py), driven by curl against `pageloan serve`.

A text file without siblings is compressed once per coding off the event loop: the
first request gets the plain bytes, later ones the variant from memory.  The
variant decompresses to the original, has its own ETag and ranges, is built once
(the /metrics counter), and is dropped when the file changes.  `pageloan precompress`
writes siblings ahead of time, which are then served instead of building anything.
"""

from __future__ import annotations

import gzip
import os
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

import brotli
import pytest
import zstandard

from server.static.compression import Compressor, compress, compressible, precompress

CURL = shutil.which("curl")
needs_curl = pytest.mark.skipif(CURL is None, reason="curl is not installed")
REPO = Path(__file__).resolve().parent.parent

DECODERS = {
    "br": brotli.decompress,
    "gzip": gzip.decompress,
    "zstd": lambda data: zstandard.ZstdDecompressor().decompress(data),
}


def _text(seed: int, words: int = 20000) -> bytes:
    rng = random.Random(seed)
    vocabulary = ["page", "loan", "kernel", "sendfile", "gather", "mmap", "slice", "region"]
    return " ".join(rng.choice(vocabulary) for _ in range(words)).encode()


@pytest.fixture
def root(tmp_path: Path) -> Path:
    site = tmp_path / "site"
    site.mkdir()
    (site / "book.txt").write_bytes(_text(1))
    (site / "app.js").write_bytes(b"function double(x) { return x * 2 }\n" * 400)
    (site / "tiny.txt").write_bytes(b"too small to be worth it\n")
    (site / "photo.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 40)
    return site


def curl(url: str, *args: str) -> tuple[dict[str, str], bytes, int]:
    """(headers of the last response, body, status) as curl saw them."""
    done = subprocess.run([CURL, "-s", "-S", "-D", "-", "-o", "/dev/stdout", *args, url],
                          capture_output=True, timeout=20, check=True)
    raw = done.stdout
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return headers, body, status


def metric(url: str, name: str) -> int:
    _headers, body, _status = curl(url + "/metrics")
    for line in body.decode().splitlines():
        if line.startswith(name + " "):
            return int(line.split()[1])
    raise AssertionError(f"{name} not in /metrics")


def wait_for_coding(url: str, coding: str, *extra: str, timeout: float = 10.0) -> tuple[dict, bytes]:
    """Ask until the answer comes in `coding` (the first ones are plain: it is being built)."""
    deadline = time.monotonic() + timeout
    while True:
        headers, body, status = curl(url, "-H", f"Accept-Encoding: {coding}", *extra)
        assert status in (200, 206)
        assert headers.get("vary") == "Accept-Encoding"
        if headers.get("content-encoding") == coding:
            return headers, body
        assert "content-encoding" not in headers
        if time.monotonic() > deadline:
            raise AssertionError(f"no {coding} variant of {url} within {timeout} s")
        time.sleep(0.02)


@pytest.fixture
def server(server_process, root):
    return server_process([str(root), "--metrics"])


@needs_curl
@pytest.mark.parametrize("coding", ["br", "zstd", "gzip"])
def test_each_coding_decompresses_to_the_original(server, root, coding):
    original = (root / "book.txt").read_bytes()
    headers, body = wait_for_coding(server.url + "/book.txt", coding)
    assert len(body) < len(original) // 3
    assert int(headers["content-length"]) == len(body)
    assert headers["content-type"] == "text/plain; charset=utf-8"
    assert headers["etag"].endswith('-' + {"gzip": "gz"}.get(coding, coding) + '"')
    assert DECODERS[coding](body) == original


@needs_curl
def test_curl_compressed_gets_a_variant_and_decodes_it(server, root):
    original = (root / "app.js").read_bytes()
    wait_for_coding(server.url + "/app.js", "br")
    done = subprocess.run([CURL, "-s", "--compressed", "-D", "-", "-o", "/dev/null", server.url + "/app.js"],
                          capture_output=True, timeout=20, check=True)
    assert b"Content-Encoding: br" in done.stdout      # curl offers br, zstd, gzip: br wins the tie
    plain = subprocess.run([CURL, "-s", "--compressed", server.url + "/app.js"],
                           capture_output=True, timeout=20, check=True).stdout
    assert plain == original


@needs_curl
def test_variants_are_built_once_per_coding(server):
    for coding in ("br", "zstd", "gzip"):
        wait_for_coding(server.url + "/book.txt", coding)
    built = metric(server.url, "pageloan_compressed_variants_built_total")
    assert built == 3
    held = metric(server.url, "pageloan_compressed_variant_bytes")
    for _ in range(5):
        for coding in ("br", "zstd", "gzip"):
            headers, _body, _status = curl(server.url + "/book.txt", "-H", f"Accept-Encoding: {coding}")
            assert headers["content-encoding"] == coding
    assert metric(server.url, "pageloan_compressed_variants_built_total") == built
    assert metric(server.url, "pageloan_compressed_variant_bytes") == held > 0


@needs_curl
def test_a_changed_file_drops_its_variants(server, root):
    path = root / "book.txt"
    first, _ = wait_for_coding(server.url + "/book.txt", "br")
    new = _text(2, words=15000)
    tmp = root / ".book.txt.new"
    tmp.write_bytes(new)
    os.replace(tmp, path)                       # a deploy: atomic rename
    deadline = time.monotonic() + 10
    while True:
        headers, body = wait_for_coding(server.url + "/book.txt", "br")
        if headers["etag"] != first["etag"]:
            break
        assert time.monotonic() < deadline, "the old variant is still served"
        time.sleep(0.02)
    assert brotli.decompress(body) == new
    assert metric(server.url, "pageloan_compressed_variants_dropped_total") == 1
    assert metric(server.url, "pageloan_compressed_variants_built_total") == 2


@needs_curl
def test_ranges_apply_to_the_variant(server):
    headers, whole = wait_for_coding(server.url + "/book.txt", "br")
    size = len(whole)
    part_headers, part, status = curl(server.url + "/book.txt", "-H", "Accept-Encoding: br", "-r", "100-199")
    assert status == 206
    assert part_headers["content-encoding"] == "br"
    assert part_headers["content-range"] == f"bytes 100-199/{size}"
    assert part == whole[100:200]
    # If-Range with the variant's own ETag holds; the plain file's ETag does not.
    _h, _b, status = curl(server.url + "/book.txt", "-H", "Accept-Encoding: br", "-r", "0-9",
                          "-H", f"If-Range: {headers['etag']}")
    assert status == 206
    multi_headers, multi, status = curl(server.url + "/book.txt", "-H", "Accept-Encoding: br",
                                        "-r", "0-9,500-509")
    assert status == 206 and multi_headers["content-type"].startswith("multipart/byteranges")
    assert whole[0:10] in multi and whole[500:510] in multi


@needs_curl
def test_conditional_get_of_a_variant(server):
    headers, _ = wait_for_coding(server.url + "/book.txt", "gzip")
    _h, body, status = curl(server.url + "/book.txt", "-H", "Accept-Encoding: gzip",
                            "-H", f"If-None-Match: {headers['etag']}")
    assert status == 304 and body == b""


@needs_curl
def test_q_values_and_identity_refusal(server, root):
    wait_for_coding(server.url + "/book.txt", "br")
    wait_for_coding(server.url + "/book.txt", "gzip")
    cases = {
        "gzip;q=1, br;q=0.5": "gzip",
        "br;q=0, gzip": "gzip",
        "identity;q=0, br": "br",
        "*": "br",
        "*;q=0.1, identity": None,            # the client prefers the plain bytes
        "br;q=0, zstd;q=0, gzip;q=0": None,
    }
    for accept, expected in cases.items():
        headers, _body, _status = curl(server.url + "/book.txt", "-H", f"Accept-Encoding: {accept}")
        assert headers.get("content-encoding") == expected, accept
        assert headers["vary"] == "Accept-Encoding"


@needs_curl
def test_small_and_incompressible_files_are_left_alone(server):
    for name in ("tiny.txt", "photo.png"):
        for _ in range(3):
            headers, _body, _status = curl(server.url + "/" + name, "-H", "Accept-Encoding: br, gzip")
            assert "content-encoding" not in headers and "vary" not in headers
    assert metric(server.url, "pageloan_compressed_variants_built_total") == 0


@needs_curl
def test_no_compress_flag(server_process, root):
    running = server_process([str(root), "--no-compress", "--metrics"])
    for _ in range(3):
        headers, _body, _status = curl(running.url + "/book.txt", "-H", "Accept-Encoding: br")
        assert "content-encoding" not in headers
    assert metric(running.url, "pageloan_compressed_variants_built_total") == 0


def test_compressible_types():
    for ctype in ("text/html; charset=utf-8", "application/json", "text/javascript", "image/svg+xml",
                  "application/wasm", "application/manifest+json", "application/rss+xml"):
        assert compressible(ctype), ctype
    for ctype in ("image/png", "image/jpeg", "font/woff2", "application/zip", "video/mp4",
                  "application/octet-stream"):
        assert not compressible(ctype), ctype


def test_the_cache_stays_within_its_budget(tmp_path):
    """Many files through a small budget: bytes held never exceed it; evicted ones rebuild."""
    from server.core.filecache import OpenFileCache

    cache = OpenFileCache()
    compressor = Compressor(budget=20_000, workers=1)
    files = []
    for i in range(12):
        path = tmp_path / f"f{i}.txt"
        path.write_bytes(_text(i, words=3000))
        files.append(cache.open(str(path)))
    try:
        for f in files:
            assert compressor.variant(f, "br") is None          # being built
        deadline = time.monotonic() + 20
        while compressor._pending:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        assert 0 < compressor.bytes_held <= 20_000
        assert compressor.built == 12
        # One look per file: asking for an evicted variant starts its rebuild, which may
        # evict another meanwhile, so a second look could find a live one gone (a
        # variant let go stays readable for whoever holds it, as a response would).
        live = [(f, v) for f in files if (v := compressor.variant(f, "br")) is not None]
        assert 0 < len(live) < 12
        for f, v in live:
            assert brotli.decompress(bytes(v.handle.window(0, v.size))) == Path(f.path).read_bytes()
    finally:
        compressor.close()


def test_compress_levels_round_trip():
    data = _text(3, words=500)
    for coding, decode in DECODERS.items():
        assert decode(compress(data, coding)) == data
        assert decode(compress(data, coding, {"br": 11, "zstd": 19, "gzip": 9}[coding])) == data
    assert compress(data, "gzip") == compress(data, "gzip")      # stable bytes for a stable ETag


# -- pageloan precompress ------------------------------------------------------------------------
def _precompress(root: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "server", "precompress", str(root), *args],
                          cwd=REPO, env=dict(os.environ, PYTHONPATH=str(REPO)),
                          capture_output=True, text=True, timeout=60)


@pytest.mark.slow
def test_precompress_writes_siblings_and_skips_up_to_date_ones(root):
    done = _precompress(root, "--quiet")
    assert done.returncode == 0, done.stderr
    assert "6 written" in done.stdout                  # book.txt and app.js, three codings each
    original = (root / "book.txt").read_bytes()
    for coding, suffix in (("br", ".br"), ("zstd", ".zst"), ("gzip", ".gz")):
        sibling = root / ("book.txt" + suffix)
        assert DECODERS[coding](sibling.read_bytes()) == original
        assert sibling.stat().st_mtime_ns == (root / "book.txt").stat().st_mtime_ns
    assert not (root / "tiny.txt.br").exists() and not (root / "photo.png.br").exists()
    assert not [p for p in root.iterdir() if p.name.startswith(".")]      # no temporary left
    again = _precompress(root, "--quiet")
    assert "0 written, 6 up to date" in again.stdout
    # An edited original makes its siblings stale: only they are rewritten.
    time.sleep(0.01)
    (root / "app.js").write_bytes(b"const answer = 42;\n" * 300)
    third = _precompress(root, "--quiet")
    assert "3 written, 3 up to date" in third.stdout
    assert brotli.decompress((root / "app.js.br").read_bytes()) == b"const answer = 42;\n" * 300


def test_precompress_refuses_bad_usage(tmp_path):
    assert _precompress(tmp_path / "missing").returncode == 2
    assert _precompress(tmp_path, "--codings", "lzma").returncode == 2


@needs_curl
def test_precompressed_siblings_are_served_instead_of_building(server_process, root):
    precompress(root)
    running = server_process([str(root), "--metrics"])
    for coding, suffix in (("br", ".br"), ("zstd", ".zst"), ("gzip", ".gz")):
        headers, body, _status = curl(running.url + "/book.txt", "-H", f"Accept-Encoding: {coding}")
        assert headers["content-encoding"] == coding
        assert body == (root / ("book.txt" + suffix)).read_bytes()
    assert metric(running.url, "pageloan_compressed_variants_built_total") == 0


def test_precompress_in_process_counts(root):
    counts = precompress(root, codings=("gzip",))
    assert counts == {"written": 2, "up_to_date": 0, "not_smaller": 0, "failed": 0}


def test_a_variant_serves_browser_requests_that_never_repeat(tmp_path):
    """A variant depends only on its file's identity: requests that differ in Cookie and
    query string all get the one variant, built once."""
    from harness import RawClient, serve_site

    (tmp_path / "book.txt").write_bytes(_text(4))
    compressor = Compressor()
    try:
        with serve_site(tmp_path, compression=compressor) as running, RawClient(running.port) as c:
            deadline = time.monotonic() + 10
            while c.request("GET", "/book.txt", {"Accept-Encoding": "br"}).header("Content-Encoding") != "br":
                assert time.monotonic() < deadline
                time.sleep(0.02)
            built = compressor.built
            replies = [c.request("GET", f"/book.txt?v={n}", {"Accept-Encoding": "gzip, deflate, br",
                                                              "Cookie": f"session={n}"})
                       for n in range(30)]
            assert all(r.header("Content-Encoding") == "br" for r in replies)
            assert len({r.body for r in replies}) == 1
            assert brotli.decompress(replies[0].body) == (tmp_path / "book.txt").read_bytes()
            assert compressor.built == built          # nothing recompressed per request
    finally:
        compressor.close()
