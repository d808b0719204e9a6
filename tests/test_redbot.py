"""REDbot (the HTTP linter, pip package `redbot`) finds nothing wrong with what we serve.

REDbot fetches a URL, then probes it: a conditional request with the ETag and with
the Last-Modified date, a ranged request, a request with Accept-Encoding: gzip.  It
rates each finding GOOD, INFO, WARN or BAD.  We check the bundled index page, a
second page, a large file and a stylesheet with a precompressed sibling, and
require no BAD note at all and no WARN about validation, ranges, caching or
content negotiation.
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from harness import serve_site

pytest.importorskip("redbot", reason="redbot is not installed (pip install redbot)")

pytestmark = pytest.mark.slow     # one redbot run per page: seconds each

REPO = Path(__file__).resolve().parent.parent
WATCHED = {"VALIDATION", "RANGE", "CACHING", "CONNEG"}


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    root = tmp_path_factory.mktemp("redbot") / "site"
    shutil.copytree(REPO / "static", root)
    (root / "large.bin").write_bytes(os.urandom(3 << 20))
    css = (root / "style.css").read_bytes()
    (root / "style.css.gz").write_bytes(gzip.compress(css, mtime=0))
    with serve_site(root) as running:
        yield running


def _notes(url: str) -> list[dict]:
    proc = subprocess.run([sys.executable, "-m", "redbot.cli", "-o", "har", url],
                          capture_output=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")[-2000:]
    har = json.loads(proc.stdout)
    entries = har["log"]["entries"]
    assert entries, "REDbot fetched nothing"
    assert entries[0]["response"]["status"] == 200
    return [note for entry in entries for note in entry.get("_red_messages", [])]


@pytest.mark.parametrize("path", ["/", "/about.html", "/large.bin", "/style.css", "/diagram.png"])
def test_redbot_finds_no_problems(site, path):
    notes = _notes(site.url + path)
    ids = {note["note_id"] for note in notes}
    bad = [n for n in notes if n["level"] == "BAD"]
    warned = [n for n in notes if n["level"] == "WARN" and n["category"] in WATCHED]
    assert not bad, bad
    assert not warned, warned
    # REDbot saw the validators and ranges work.
    assert {"INM_304", "IMS_304", "RANGE_CORRECT"} <= ids, sorted(ids)
    if path == "/style.css":
        assert "CONNEG_GZIP_GOOD" in ids, sorted(ids)      # the .gz sibling, negotiated
