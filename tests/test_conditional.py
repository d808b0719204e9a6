"""Conditional requests: RFC 9110 §13 preconditions, their order, and If-Range."""

from __future__ import annotations

from email.utils import formatdate

import pytest
from harness import RawClient, serve_site

from server.static.conditional import entity_tags, evaluate, if_range_holds, parse_http_date

BODY = bytes(range(256)) * 40


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    root = tmp_path_factory.mktemp("conditional")
    (root / "f.bin").write_bytes(BODY)
    (root / "page.html").write_text("<p>page</p>")
    with serve_site(root) as running:
        yield running


@pytest.fixture
def client(site):
    with RawClient(site.port) as c:
        yield c


@pytest.fixture
def validators(client):
    h = client.request("HEAD", "/f.bin").headers
    return h["etag"], h["last-modified"]


def _date(offset: int, last_modified: str) -> str:
    return formatdate(parse_http_date(last_modified.encode()) + offset, usegmt=True)


# -- If-None-Match / If-Modified-Since --------------------------------------------------------------

def test_if_none_match_gives_bare_304(client, validators):
    etag, lm = validators
    r = client.request("GET", "/f.bin", {"If-None-Match": etag})
    assert r.status == 304 and r.body == b""
    h = r.headers
    assert h["etag"] == etag and h["last-modified"] == lm
    assert h["cache-control"] == "max-age=3600"
    assert "content-length" not in h and "content-type" not in h
    assert client.pending() == b""
    assert client.request("GET", "/f.bin").body == BODY       # framing intact


@pytest.mark.parametrize("spelling", [
    "{etag}", "W/{etag}", '"nope", {etag}', '"a,b", {etag}, "c"', "*", '  {etag}  ', '"x",W/{etag}',
])
def test_if_none_match_weak_comparison_and_lists(client, validators, spelling):
    etag, _lm = validators
    r = client.request("GET", "/f.bin", {"If-None-Match": spelling.format(etag=etag)})
    assert r.status == 304


@pytest.mark.parametrize("spelling", ['"nope"', 'W/"nope"', "garbage", '""', "{bare}"])
def test_if_none_match_mismatch(client, validators, spelling):
    etag, _lm = validators
    r = client.request("GET", "/f.bin", {"If-None-Match": spelling.format(bare=etag.strip('"'))})
    assert r.status == 200 and r.body == BODY


def test_if_none_match_split_over_two_fields(client, validators):
    etag, _lm = validators
    r = client.request("GET", "/f.bin", [("If-None-Match", '"other"'), ("If-None-Match", etag)])
    assert r.status == 304


def test_if_modified_since(client, validators):
    _etag, lm = validators
    assert client.request("GET", "/f.bin", {"If-Modified-Since": lm}).status == 304
    assert client.request("GET", "/f.bin", {"If-Modified-Since": _date(10, lm)}).status == 304
    r = client.request("GET", "/f.bin", {"If-Modified-Since": _date(-1, lm)})
    assert r.status == 200 and r.body == BODY
    assert client.request("GET", "/f.bin", {"If-Modified-Since": "yesterday"}).status == 200


def test_if_modified_since_obsolete_date_formats(client, validators):
    _etag, lm = validators
    seconds = parse_http_date(lm.encode()) + 5
    import time
    t = time.gmtime(seconds)
    rfc850 = time.strftime("%A, %d-%b-%y %H:%M:%S GMT", t)
    asctime = time.strftime("%a %b ", t) + f"{t.tm_mday:2d}" + time.strftime(" %H:%M:%S %Y", t)
    assert client.request("GET", "/f.bin", {"If-Modified-Since": rfc850}).status == 304
    assert client.request("GET", "/f.bin", {"If-Modified-Since": asctime}).status == 304


def test_if_none_match_mismatch_beats_if_modified_since(client, validators):
    # RFC 9110 §13.1.3: IMS is ignored when INM is present (Starlette #3052).
    _etag, lm = validators
    r = client.request("GET", "/f.bin", {"If-None-Match": '"stale"', "If-Modified-Since": _date(3600, lm)})
    assert r.status == 200 and r.body == BODY


def test_if_none_match_match_beats_old_if_modified_since(client, validators):
    etag, lm = validators
    r = client.request("GET", "/f.bin", {"If-None-Match": etag, "If-Modified-Since": _date(-3600, lm)})
    assert r.status == 304


def test_head_conditional(client, validators):
    etag, _lm = validators
    r = client.request("HEAD", "/f.bin", {"If-None-Match": etag})
    assert r.status == 304 and client.pending() == b""


# -- If-Match / If-Unmodified-Since ------------------------------------------------------------------

def test_if_match(client, validators):
    etag, _lm = validators
    assert client.request("GET", "/f.bin", {"If-Match": etag}).status == 200
    assert client.request("GET", "/f.bin", {"If-Match": f'"x", {etag}'}).status == 200
    assert client.request("GET", "/f.bin", {"If-Match": "*"}).status == 200
    assert client.request("GET", "/f.bin", {"If-Match": '"other"'}).status == 412
    # Strong comparison: a weak tag never matches.
    assert client.request("GET", "/f.bin", {"If-Match": "W/" + etag}).status == 412
    assert client.request("GET", "/f.bin").status == 200


def test_if_unmodified_since(client, validators):
    etag, lm = validators
    assert client.request("GET", "/f.bin", {"If-Unmodified-Since": lm}).status == 200
    assert client.request("GET", "/f.bin", {"If-Unmodified-Since": _date(-60, lm)}).status == 412
    assert client.request("GET", "/f.bin", {"If-Unmodified-Since": "not a date"}).status == 200
    # If-Match present: If-Unmodified-Since is not consulted.
    r = client.request("GET", "/f.bin", {"If-Match": etag, "If-Unmodified-Since": _date(-60, lm)})
    assert r.status == 200


def test_412_before_304(client, validators):
    etag, _lm = validators
    r = client.request("GET", "/f.bin", {"If-Match": '"other"', "If-None-Match": etag})
    assert r.status == 412


# -- If-Range ---------------------------------------------------------------------------------

def test_if_range_matching_etag_gives_206(client, validators):
    etag, _lm = validators
    r = client.request("GET", "/f.bin", {"Range": "bytes=10-19", "If-Range": etag})
    assert r.status == 206 and r.body == BODY[10:20]


def test_if_range_changed_etag_gives_full_200(client):
    r = client.request("GET", "/f.bin", {"Range": "bytes=10-19", "If-Range": '"1-2-3"'})
    assert r.status == 200 and r.body == BODY


def test_if_range_weak_etag_gives_full_200(client, validators):
    etag, _lm = validators
    r = client.request("GET", "/f.bin", {"Range": "bytes=10-19", "If-Range": "W/" + etag})
    assert r.status == 200 and r.body == BODY


def test_if_range_dates(client, validators):
    _etag, lm = validators
    assert client.request("GET", "/f.bin", {"Range": "bytes=0-0", "If-Range": lm}).status == 206
    r = client.request("GET", "/f.bin", {"Range": "bytes=0-0", "If-Range": _date(1, lm)})
    assert r.status == 200 and r.body == BODY
    assert client.request("GET", "/f.bin", {"Range": "bytes=0-0", "If-Range": "garbage"}).status == 200


def test_resumed_download_after_change(tmp_path):
    """aiohttp #13480: a resume with a stale ETag must get the whole new file."""
    (tmp_path / "f.bin").write_bytes(b"A" * 1000)
    with serve_site(tmp_path) as running, RawClient(running.port) as c:
        first = c.request("GET", "/f.bin", {"Range": "bytes=0-499"})
        assert first.status == 206
        (tmp_path / "f.bin").write_bytes(b"B" * 1200)
        rest = c.request("GET", "/f.bin", {"Range": "bytes=500-", "If-Range": first.headers["etag"]})
        assert rest.status == 200 and rest.body == b"B" * 1200


# -- the pure functions -------------------------------------------------------------------------

def test_entity_tags_parsing():
    assert entity_tags(b"*") is None
    assert entity_tags(b'"a", W/"b" ,"c,d"') == [(False, b'"a"'), (True, b'"b"'), (False, b'"c,d"')]
    assert entity_tags(b'junk, "ok"') == [(False, b'"ok"')]
    assert entity_tags(b"") == []


def test_evaluate_order():
    tag, lm = b'"t"', 1000
    old, new = b"Thu, 01 Jan 1970 00:10:00 GMT", b"Thu, 01 Jan 1970 01:00:00 GMT"
    assert evaluate(None, None, None, None, tag, lm) is None
    assert evaluate(b'"x"', None, tag, None, tag, lm) == 412
    assert evaluate(None, old, None, None, tag, lm) == 412
    assert evaluate(None, new, None, None, tag, lm) is None
    assert evaluate(None, None, b'"x"', new, tag, lm) is None
    assert evaluate(None, None, None, new, tag, lm) == 304
    assert evaluate(None, None, None, old, tag, lm) is None


def test_if_range_holds():
    lm_text = b"Sun, 06 Nov 1994 08:49:37 GMT"
    assert if_range_holds(b'"t"', b'"t"', lm_text)
    assert not if_range_holds(b'"u"', b'"t"', lm_text)
    assert not if_range_holds(b'W/"t"', b'"t"', lm_text)
    assert if_range_holds(lm_text, b'"t"', lm_text)
    assert not if_range_holds(b"Sun, 06 Nov 1994 08:49:38 GMT", b'"t"', lm_text)


def test_parse_http_date_formats():
    expected = 784111777
    assert parse_http_date(b"Sun, 06 Nov 1994 08:49:37 GMT") == expected
    assert parse_http_date(b"Sunday, 06-Nov-94 08:49:37 GMT") == expected
    assert parse_http_date(b"Sun Nov  6 08:49:37 1994") == expected
    assert parse_http_date(b"") is None
    assert parse_http_date(b"\xff\xfe") is None
