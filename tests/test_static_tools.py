"""Everyday clients against the bundled site: curl and wget fetch it byte for byte.

curl and wget are what people point at a server first; they also exercise what
browsers do less often: resuming with Range (`curl -C -`, `wget -c`), HEAD
(`curl -I`), gzip negotiation (`curl --compressed`) and recursive mirroring that
follows the links in the HTML (`wget -r`).
"""

from __future__ import annotations

import gzip
import shutil
import subprocess
from pathlib import Path

import pytest
from harness import needs_tools, serve_site

REPO = Path(__file__).resolve().parent.parent
BUNDLED = REPO / "static"
CURL = shutil.which("curl")
WGET = shutil.which("wget")
SITE_FILES = sorted(p.name for p in BUNDLED.iterdir() if p.is_file())

needs_curl = needs_tools("curl")
needs_wget = needs_tools("wget")


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("tools") / "site"
    shutil.copytree(BUNDLED, root)
    (root / "big.bin").write_bytes(bytes(range(256)) * 8000)       # 2 MB
    css = (root / "style.css").read_bytes()
    (root / "style.css.gz").write_bytes(gzip.compress(css, mtime=0))
    return root


@pytest.fixture(scope="module")
def site(root):
    with serve_site(root) as running:
        yield running


def _run(*cmd: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=cwd, capture_output=True, timeout=60, check=False)


@needs_curl
@pytest.mark.parametrize("name", SITE_FILES)
def test_curl_fetches_each_file(site, tmp_path, name):
    out = tmp_path / "out"
    proc = _run(CURL, "-sS", "--fail", "-o", str(out), f"{site.url}/{name}")
    assert proc.returncode == 0, proc.stderr
    assert out.read_bytes() == (BUNDLED / name).read_bytes()


@needs_curl
def test_curl_index_and_head(site):
    proc = _run(CURL, "-sS", "--fail", f"{site.url}/")
    assert proc.stdout == (BUNDLED / "index.html").read_bytes()
    head = _run(CURL, "-sS", "-I", f"{site.url}/style.css").stdout.decode()
    assert head.startswith("HTTP/1.1 200")
    assert "Content-Type: text/css; charset=utf-8" in head and "ETag: " in head


@needs_curl
def test_curl_resume(site, root, tmp_path):
    whole = (root / "big.bin").read_bytes()
    out = tmp_path / "big.bin"
    out.write_bytes(whole[:700_001])
    proc = _run(CURL, "-sS", "--fail", "-C", "-", "-o", str(out), f"{site.url}/big.bin")
    assert proc.returncode == 0, proc.stderr
    assert out.read_bytes() == whole


@needs_curl
def test_curl_compressed(site, root):
    proc = _run(CURL, "-sS", "--fail", "--compressed", "-D", "-", f"{site.url}/style.css")
    head, _, body = proc.stdout.partition(b"\r\n\r\n")
    assert b"Content-Encoding: gzip" in head and b"Vary: Accept-Encoding" in head
    assert body == (root / "style.css").read_bytes()


@needs_curl
def test_curl_path_as_is_traversal(site):
    proc = _run(CURL, "-sS", "--path-as-is", "-o", "/dev/null", "-w", "%{http_code}",
                f"{site.url}/../../../../etc/passwd")
    assert proc.stdout in (b"400", b"404")


@needs_wget
def test_wget_mirrors_the_site(site, tmp_path):
    proc = _run(WGET, "-q", "-r", "-np", "-nH", "-e", "robots=off", "-P", str(tmp_path), f"{site.url}/",
                cwd=tmp_path)
    # The index links to http://127.0.0.1:8080/ (the Quickstart address), where nothing
    # listens during tests: wget then exits 4.  What matters is that every file it
    # fetched from us arrived intact.
    assert proc.returncode in (0, 4), proc.stderr
    fetched = {p.name for p in tmp_path.rglob("*") if p.is_file()}
    for name in ("index.html", "about.html", "style.css", "app.js", "favicon.svg", "diagram.png"):
        assert name in fetched, sorted(fetched)
        assert (tmp_path / name).read_bytes() == (BUNDLED / name).read_bytes()


@needs_wget
def test_wget_continue(site, root, tmp_path):
    whole = (root / "big.bin").read_bytes()
    out = tmp_path / "big.bin"
    out.write_bytes(whole[:123_457])
    proc = _run(WGET, "-q", "-c", "-O", str(out), f"{site.url}/big.bin", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert out.read_bytes() == whole
