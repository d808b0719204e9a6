"""A precompressed sibling that is a symlink is held to the rule its target's URL would be:
a link to a dotfile, into a dot-directory or out of the root is not served for the
base name; a link to an ordinary file inside the root still is.
"""

from __future__ import annotations

import gzip
import os

import pytest
from static_fixtures import RawClient, serve_site

from server.static.precompressed import target_rule

SECRET = b"DB_PASSWORD=hunter2\n"


def test_target_rule():
    allowed = target_rule("/srv/site", show_dotfiles=False)
    assert allowed("/srv/site/a.txt") and allowed("/srv/site/dir/b.gz")
    assert not allowed("/srv/site/.env")
    assert not allowed("/srv/site/.git/config")
    assert not allowed("/srv/site/dir/.hidden/x")
    assert not allowed("/srv/site2/a.txt") and not allowed("/etc/passwd")
    assert target_rule("/srv/site", show_dotfiles=True)("/srv/site/.env")


@pytest.mark.parametrize("target", [".env", ".git/config", "sub/.secret.gz", "OUTSIDE"])
def test_symlinked_sibling_to_a_hidden_or_outside_file_is_not_served(tmp_path, target):
    root = tmp_path / "site"
    (root / ".git").mkdir(parents=True)
    (root / "sub").mkdir()
    for name in (".env", ".git/config", "sub/.secret.gz"):
        (root / name).write_bytes(SECRET)
    outside = tmp_path / "outside.gz"
    outside.write_bytes(SECRET)
    (root / "app.js").write_bytes(b"console.log('plain');\n")
    link_to = outside if target == "OUTSIDE" else root / target
    os.symlink(os.path.relpath(link_to, root), root / "app.js.gz")
    with serve_site(root) as running, RawClient(running.port) as client:
        reply = client.request("GET", "/app.js", {"Accept-Encoding": "gzip"})
        assert reply.status == 200
        assert reply.body == b"console.log('plain');\n"
        assert reply.header("content-encoding") is None
        assert SECRET not in reply.body
        # and the link itself is not a way in either
        assert client.request("GET", "/app.js.gz").status == 404


def test_symlinked_sibling_inside_the_root_is_still_served(tmp_path):
    root = tmp_path / "site"
    (root / "build").mkdir(parents=True)
    packed = gzip.compress(b"console.log('plain');\n")
    (root / "build" / "app.js.gz").write_bytes(packed)
    (root / "app.js").write_bytes(b"console.log('plain');\n")
    os.symlink("build/app.js.gz", root / "app.js.gz")
    with serve_site(root) as running, RawClient(running.port) as client:
        reply = client.request("GET", "/app.js", {"Accept-Encoding": "gzip"})
        assert reply.header("content-encoding") == "gzip"
        assert reply.body == packed


def test_dotfile_sibling_target_is_served_when_dotfiles_are(tmp_path):
    root = tmp_path / "site"
    root.mkdir()
    packed = gzip.compress(b"x = 1\n")
    (root / ".build.gz").write_bytes(packed)
    (root / "app.js").write_bytes(b"x = 1\n")
    os.symlink(".build.gz", root / "app.js.gz")
    with serve_site(root, show_dotfiles=True) as running, RawClient(running.port) as client:
        reply = client.request("GET", "/app.js", {"Accept-Encoding": "gzip"})
        assert reply.header("content-encoding") == "gzip" and reply.body == packed
