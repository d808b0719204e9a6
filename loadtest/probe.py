"""One request before the load, to check that a server answers what was asked.

A server that answers a Range request with the whole file, or a missing handler with a
404, would otherwise post numbers for different work. The probe's verdict goes into the
record and the report flags it; the measurement still runs.
"""

from __future__ import annotations

import http.client
import json
import time
from pathlib import Path

from loadtest.docroot import SITE_PAGES
from loadtest.scenarios import Scenario


def _get(port: int, path: str, headers: dict[str, str]) -> tuple[int, str, bytes | int]:
    """GET path; return (status, content-type, body or body length for big bodies)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        conn.request("GET", path, headers=headers)
        resp = conn.getresponse()
        ctype = resp.getheader("Content-Type", "")
        if path.endswith("256m.bin"):
            size = 0
            for _ in range(100_000):  # 256 reads of 1 MiB; bounded anyway
                chunk = resp.read(1 << 20)
                if not chunk:
                    break
                size += len(chunk)
            return resp.status, ctype, size
        return resp.status, ctype, resp.read()
    finally:
        conn.close()


def _size(body: bytes | int) -> int:
    return body if isinstance(body, int) else len(body)


def probe_http(port: int, scenario: Scenario, docroot: Path) -> dict:
    """Return {"ok": bool, "status": int, "bytes": int, "note": str}."""
    if scenario.expect == "site":
        for page in SITE_PAGES:
            status, _, body = _get(port, "/" + page, {})
            want = (docroot / page).stat().st_size
            if status != 200 or _size(body) != want:
                return _verdict(False, status, body, f"/{page}: expected 200 with {want} bytes")
        return _verdict(True, status, body, "")
    if scenario.expect == "br":
        return _probe_br(port, scenario, docroot)
    if scenario.expect == "revalidate":
        return _probe_revalidation(port, scenario)
    headers = {"Range": scenario.script_args[0]} if scenario.expect == "ranges" else {}
    status, ctype, body = _get(port, scenario.path, headers)
    if scenario.expect == "ranges":
        ok = status == 206 and ctype.startswith("multipart/byteranges")
        return _verdict(ok, status, body, "" if ok else
                        f"expected 206 multipart/byteranges, got {status} {ctype or '-'}")
    if scenario.expect == "json":
        try:
            ok = status == 200 and json.loads(body) == {"message": "Hello, World!"}
        except ValueError:
            ok = False
        return _verdict(ok, status, body, "" if ok else "expected 200 with the JSON message")
    want = (docroot / scenario.path.lstrip("/")).stat().st_size
    ok = status == 200 and _size(body) == want
    return _verdict(ok, status, body, "" if ok else f"expected 200 with {want} bytes")


def validators(port: int, path: str) -> tuple[str, str]:
    """The ETag and Last-Modified a server sends for `path` ("" where it sends none):
    what a browser that has the file cached sends back when it revalidates."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        resp.read()
        return resp.getheader("ETag", ""), resp.getheader("Last-Modified", "")
    finally:
        conn.close()


def _probe_revalidation(port: int, scenario: Scenario) -> dict:
    """The validators the load will send must get a 304 with no body."""
    fields = dict(arg.split("=", 1) for arg in scenario.script_args if "=" in arg)
    etag, modified = fields.get("etag", ""), fields.get("date", "")
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("GET", scenario.path, headers={"If-None-Match": etag, "If-Modified-Since": modified})
        resp = conn.getresponse()
        status, body = resp.status, resp.read()
    finally:
        conn.close()
    ok = status == 304 and not body
    return _verdict(ok, status, body, "" if ok else f"expected 304 for its own validators, got {status}")


def _probe_br(port: int, scenario: Scenario, docroot: Path) -> dict:
    """Ask with Accept-Encoding: br until the answer is brotli (a server that builds the
    variant on first request answers plain meanwhile), at most 5 s; check it decodes."""
    import brotli

    original = (docroot / scenario.path.lstrip("/")).read_bytes()
    deadline = time.monotonic() + 5
    while True:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        try:
            conn.request("GET", scenario.path, headers={"Accept-Encoding": "br"})
            resp = conn.getresponse()
            status, coding, body = resp.status, resp.getheader("Content-Encoding", ""), resp.read()
        finally:
            conn.close()
        if status == 200 and coding == "br":
            ok = brotli.decompress(body) == original
            return _verdict(ok, status, body, "" if ok else "br body does not decode to the file")
        if time.monotonic() > deadline:
            return _verdict(False, status, body, f"no br answer within 5 s (got {status} {coding or 'identity'})")
        time.sleep(0.05)


def _verdict(ok: bool, status: int, body: bytes | int, note: str) -> dict:
    return {"ok": ok, "status": status, "bytes": _size(body), "note": note}
