"""Uploads saved to disk: streamed, complete or not at all, and confined to their directory.

The bundled `handlers/upload.py` is served in-process with PAGELOAN_UPLOAD_DIR set to
a temporary directory; bodies are sent over real sockets (http.client, or a raw
socket that hangs up halfway).
"""

from __future__ import annotations

import asyncio
import hashlib
import os
from pathlib import Path

import pytest
from harness import raw_request
from polling import until

from server.core.receive import is_partial_name
from server.framework.uploads import upload_path
from server.http.errors import HTTPError

REPO = Path(__file__).resolve().parent.parent



@pytest.fixture
async def uploads(handler_site, tmp_path: Path, monkeypatch):
    target = tmp_path / "uploads"
    target.mkdir()
    monkeypatch.setenv("PAGELOAN_UPLOAD_DIR", str(target))
    site = await handler_site(directory=REPO / "handlers", max_body_bytes=8 << 20)
    return site, target


def _leftovers(directory: Path) -> list[str]:
    return [name for name in os.listdir(directory) if is_partial_name(name)]


def _open_in(directory: Path) -> list[str]:
    """Files under `directory` this process (the server) still holds open, unlinked ones too."""
    held = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith(str(directory) + os.sep):
            held.append(target)
    return held


async def test_upload_is_saved_byte_for_byte(uploads):
    site, target = uploads
    body = os.urandom(3 << 20) + b"tail"
    reply = await site.fetch("POST", "/upload/data.bin", body=body)
    assert reply.status == 201
    assert reply.json() == {"saved": "data.bin", "bytes": len(body)}
    saved = (target / "data.bin").read_bytes()
    assert hashlib.sha256(saved).hexdigest() == hashlib.sha256(body).hexdigest()
    assert _leftovers(target) == [] and _open_in(target) == []
    # and it comes back through file_response (sendfile, validators)
    reply = await site.get("/upload/data.bin")
    assert hashlib.sha256(reply.body).hexdigest() == hashlib.sha256(body).hexdigest()
    assert reply.header("ETag")
    assert (await site.get("/upload")).json() == ["data.bin"]


async def _wait_for(predicate, timeout: float = 5.0) -> bool:
    await until(predicate, "the upload's files to reach the expected state", timeout=timeout)
    return True


async def test_interrupted_upload_leaves_the_old_file_and_no_temporary(uploads):
    site, target = uploads
    (target / "keep.txt").write_bytes(b"the old, complete version\n")
    reader, writer = await asyncio.open_connection("127.0.0.1", site.port)
    writer.write(b"PUT /upload/keep.txt HTTP/1.1\r\nHost: t\r\nContent-Length: 2000000\r\n\r\n")
    writer.write(os.urandom(700_000))
    await writer.drain()
    assert await _wait_for(lambda: _leftovers(target) != [])     # the upload is under way
    writer.transport.abort()                                       # the client vanishes
    assert await _wait_for(lambda: _leftovers(target) == [])
    # ... and its descriptor is closed once no write holds it: nothing leaks.
    assert await _wait_for(lambda: _open_in(target) == [])
    assert (target / "keep.txt").read_bytes() == b"the old, complete version\n"
    # the server is fine
    assert (await site.get("/upload/keep.txt")).body == b"the old, complete version\n"


async def test_upload_over_the_body_limit_mid_stream_leaves_nothing(uploads):
    site, target = uploads
    (target / "big.bin").write_bytes(b"old")
    chunk = b"z" * 0x10000
    raw = (b"POST /upload/big.bin HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
           + b"".join(b"10000\r\n" + chunk + b"\r\n" for _ in range(9 * 16)) + b"0\r\n\r\n")
    answer = await raw_request(site.port, raw)
    assert answer.startswith(b"HTTP/1.1 413")
    assert await _wait_for(lambda: _leftovers(target) == [] and _open_in(target) == [])
    assert (target / "big.bin").read_bytes() == b"old"


@pytest.mark.parametrize("path", ["/upload/..%2F..%2Fescape.txt", "/upload/.hidden", "/upload/..",
                                  "/upload/a%5Cb", "/upload/%2Fetc%2Fpasswd"])
async def test_traversal_and_hidden_names_are_refused(uploads, path):
    site, target = uploads
    reply = await site.fetch("POST", path, body=b"x")
    assert reply.status in (400, 404)
    assert sorted(os.listdir(target)) == []
    assert not (target.parent / "escape.txt").exists()


def test_upload_path_confines(tmp_path: Path):
    assert upload_path(tmp_path, "a.txt") == tmp_path.resolve() / "a.txt"
    (tmp_path / "link").symlink_to("/")
    for name in ("../x", "", ".", "link", "link/etc/passwd", "a\x00b", "a/b"):
        with pytest.raises(HTTPError):
            upload_path(tmp_path, name)


LIMITED = '''
from server import route
from server.framework.uploads import save_upload

@route("/small/{name}", methods=["POST"])
async def small(request, name):
    return {"bytes": await save_upload(request, request.app.state.dest / name, max_bytes=100)}
'''


async def test_per_upload_limit(handler_site, tmp_path: Path):
    site = await handler_site({"limited.py": LIMITED})
    site.app.state.dest = tmp_path
    assert (await site.fetch("POST", "/small/ok.bin", body=b"a" * 100)).json() == {"bytes": 100}
    assert (await site.fetch("POST", "/small/no.bin", body=b"a" * 101)).status == 413
    assert not (tmp_path / "no.bin").exists()
    assert _leftovers(tmp_path) == []


async def test_browser_form_upload_saves_the_file_not_its_envelope(uploads):
    site, target = uploads
    envelope = (b"--XyZ\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.txt\"\r\n\r\n"
                b"hello\r\n--XyZ--\r\n")
    reply = await site.fetch("POST", "/upload/a.txt", body=envelope,
                             headers={"Content-Type": "multipart/form-data; boundary=XyZ"})
    assert reply.status == 201 and reply.json() == {"saved": "a.txt", "bytes": 5}
    assert os.listdir(target) == ["a.txt"]          # no temporary left beside it
    assert (target / "a.txt").read_bytes() == b"hello"
