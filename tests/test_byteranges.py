"""Byte ranges: single parts, multipart/byteranges framing byte-exact, 416, the defences."""

from __future__ import annotations

import email.parser
import email.policy
import os
import re
import time

import pytest
from harness import RawClient, serve_site

from server.core.message import FileRegion
from server.static.byteranges import MAX_RANGES, UNSATISFIABLE, coalesce, multipart_slices, parse_range

SMALL = os.urandom(10_000)                 # mapped: parts gathered from mmap windows
LARGE = os.urandom(700_000)                # above gather_max: parts sent by sendfile


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    root = tmp_path_factory.mktemp("ranges")
    (root / "small.bin").write_bytes(SMALL)
    (root / "large.bin").write_bytes(LARGE)
    (root / "t.txt").write_bytes(b"0123456789")
    with serve_site(root) as running:
        yield running


@pytest.fixture
def client(site):
    with RawClient(site.port) as c:
        yield c


def _parts(response) -> list[tuple[str, str, bytes]]:
    """Parse a multipart/byteranges body with the email package: (type, range, bytes)."""
    ctype = response.headers["content-type"]
    head = f"Content-Type: {ctype}\r\n\r\n".encode()
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(head + response.body)
    assert message.is_multipart()
    return [(p["Content-Type"], p["Content-Range"], p.get_payload(decode=True)) for p in message.iter_parts()]


def _parts_by_hand(body: bytes, boundary: bytes) -> list[tuple[bytes, bytes]]:
    """The strict framing: exact delimiters, CRLFs, close delimiter and final CRLF."""
    assert body.startswith(b"--" + boundary + b"\r\n")
    assert body.endswith(b"\r\n--" + boundary + b"--\r\n")
    inner = body[len(boundary) + 4:-(len(boundary) + 8)]
    parts = []
    for chunk in inner.split(b"\r\n--" + boundary + b"\r\n"):
        head, sep, data = chunk.partition(b"\r\n\r\n")
        assert sep
        parts.append((head, data))
    return parts


# -- single ranges ----------------------------------------------------------------------------

@pytest.mark.parametrize("spec, first, last", [
    ("bytes=0-0", 0, 0), ("bytes=100-199", 100, 199), ("bytes=9000-", 9000, 9999),
    ("bytes=-500", 9500, 9999), ("bytes=9990-20000", 9990, 9999), ("bytes=-20000", 0, 9999),
    ("BYTES=5-9", 5, 9), ("bytes= 5-9", 5, 9), ("bytes=5-9,", 5, 9),
])
def test_single_range(client, spec, first, last):
    r = client.request("GET", "/small.bin", {"Range": spec})
    assert r.status == 206
    assert r.headers["content-range"] == f"bytes {first}-{last}/10000"
    assert r.headers["content-length"] == str(last - first + 1)
    assert r.headers["content-type"] == "application/octet-stream"
    assert r.headers["accept-ranges"] == "bytes" and "etag" in r.headers
    assert r.body == SMALL[first:last + 1]


def test_single_range_of_large_file(client):
    r = client.request("GET", "/large.bin", {"Range": "bytes=300000-650000"})
    assert r.status == 206 and r.body == LARGE[300000:650001]
    assert client.request("GET", "/t.txt").body == b"0123456789"


@pytest.mark.parametrize("spec", ["bytes=10000-", "bytes=10000-10005", "bytes=-0", "bytes=20000-, -0"])
def test_unsatisfiable(client, spec):
    r = client.request("GET", "/small.bin", {"Range": spec})
    assert r.status == 416 and r.headers["content-range"] == "bytes */10000"
    assert client.request("GET", "/t.txt").body == b"0123456789"


@pytest.mark.parametrize("spec", [
    "bytes=5-1", "bytes=abc", "bytes=1-2-3", "items=0-5", "bytes 0-5", "bytes=--5", "bytes=+1-5",
    "bytes=0x10-20", "bytes=1_0-20", "bytes=", "=0-5",
])
def test_invalid_range_is_ignored(client, spec):
    r = client.request("GET", "/small.bin", {"Range": spec})
    assert r.status == 200 and r.body == SMALL


def test_head_ignores_range(client):
    # RFC 9110 §14.2: Range is defined for GET only; HEAD describes the 200.
    r = client.request("HEAD", "/small.bin", {"Range": "bytes=0-9"})
    assert r.status == 200 and r.headers["content-length"] == "10000"
    assert client.pending() == b""


# -- several ranges ---------------------------------------------------------------------------------

@pytest.mark.parametrize("name, data", [("small.bin", SMALL), ("large.bin", LARGE)])
def test_multipart_byteranges(client, name, data):
    size = len(data)
    r = client.request("GET", "/" + name, {"Range": "bytes=0-9, 500-599, -100"})
    assert r.status == 206
    assert "content-range" not in r.headers
    ctype = r.headers["content-type"]
    boundary = re.fullmatch(r"multipart/byteranges; boundary=(\S+)", ctype).group(1).encode()
    assert int(r.headers["content-length"]) == len(r.body)
    expected = [(0, 9), (500, 599), (size - 100, size - 1)]
    parsed = _parts(r)
    assert [(t, cr, body) for t, cr, body in parsed] == [
        ("application/octet-stream", f"bytes {a}-{b}/{size}", data[a:b + 1]) for a, b in expected]
    by_hand = _parts_by_hand(r.body, boundary)
    for (head, body), (a, b) in zip(by_hand, expected, strict=True):
        assert head == (f"Content-Type: application/octet-stream\r\n"
                        f"Content-Range: bytes {a}-{b}/{size}").encode()
        assert body == data[a:b + 1]
    assert client.request("GET", "/t.txt").body == b"0123456789"


def test_multipart_keeps_request_order(client):
    r = client.request("GET", "/t.txt", {"Range": "bytes=8-9,0-1,4-5"})
    assert [cr for _t, cr, _b in _parts(r)] == ["bytes 8-9/10", "bytes 0-1/10", "bytes 4-5/10"]
    assert [b for _t, _cr, b in _parts(r)] == [b"89", b"01", b"45"]


def test_overlapping_and_adjacent_ranges_coalesce(client):
    r = client.request("GET", "/t.txt", {"Range": "bytes=0-2,3-5"})
    assert r.status == 206 and r.headers["content-range"] == "bytes 0-5/10" and r.body == b"012345"
    r = client.request("GET", "/t.txt", {"Range": "bytes=6-8,0-1,7-9"})
    assert [cr for _t, cr, _b in _parts(r)] == ["bytes 6-9/10", "bytes 0-1/10"]


def test_ranges_summing_past_the_size_are_ignored(client):
    # nginx's defence: many overlapping ranges would multiply the output.
    r = client.request("GET", "/small.bin", {"Range": "bytes=0-, 0-"})
    assert r.status == 200 and r.body == SMALL
    spec = "bytes=" + ",".join(["0-6000"] * 2)
    assert client.request("GET", "/small.bin", {"Range": spec}).status == 200


def test_too_many_ranges_are_ignored(client):
    many = "bytes=" + ",".join(f"{i * 10}-{i * 10 + 1}" for i in range(MAX_RANGES + 1))
    r = client.request("GET", "/small.bin", {"Range": many})
    assert r.status == 200 and r.body == SMALL
    allowed = "bytes=" + ",".join(f"{i * 10}-{i * 10 + 1}" for i in range(MAX_RANGES))
    r = client.request("GET", "/small.bin", {"Range": allowed})
    assert r.status == 206 and len(_parts(r)) == MAX_RANGES


# -- the pure functions -----------------------------------------------------------------------------

def test_parse_range_table():
    assert parse_range(b"bytes=0-4", 10) == [(0, 4)]
    assert parse_range(b"bytes=8-", 10) == [(8, 9)]
    assert parse_range(b"bytes=-3", 10) == [(7, 9)]
    assert parse_range(b"bytes=10-", 10) is UNSATISFIABLE
    assert parse_range(b"bytes=0-", 0) is UNSATISFIABLE
    assert parse_range(b"bytes=-1", 0) is None
    assert parse_range(b"bytes=3-1", 10) is None
    assert parse_range(b"bytes=0-1,20-30", 10) == [(0, 1)]


def test_coalesce_is_n_log_n_and_ordered():
    assert coalesce([(5, 9), (0, 4)]) == [(0, 9)]         # adjacent merge
    assert coalesce([(0, 1), (10, 11), (1, 3)]) == [(0, 3), (10, 11)]
    # Many disjoint ranges: fast (an O(n²) merge of 200k would take minutes).
    many = [(i * 3, i * 3 + 1) for i in range(200_000)][::-1]
    start = time.perf_counter()
    merged = coalesce(many)
    assert time.perf_counter() - start < 5
    assert len(merged) == 200_000 and merged[0] == many[0]


def test_multipart_slices_are_regions_not_bytes():
    owner = object()
    slices, length = multipart_slices(7, owner, [(0, 9), (20, 29)], 100, "text/plain", "B")
    regions = [s for s in slices if isinstance(s, FileRegion)]
    assert [(r.fd, r.offset, r.count, r.owner) for r in regions] == [(7, 0, 10, owner), (7, 20, 10, owner)]
    assert length == sum(len(s) for s in slices)
