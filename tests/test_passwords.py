"""Password hashes (server/passwords.py): salted scrypt in a self-describing string,
verification that never raises on a bad hash, a constant-time comparison, and the
`hash-password` entry that reads the password from stdin.
"""

from __future__ import annotations

import base64
import subprocess
import sys
from pathlib import Path

import pytest

from server.core import passwords
from server.core.passwords import hash_password, verify_password

REPO = Path(__file__).resolve().parent.parent


def test_hash_is_self_describing_and_verifies():
    hashed = hash_password("correct horse")
    scheme, n, r, p, salt, digest = hashed.split("$")
    assert (scheme, n, r, p) == ("scrypt", "16384", "8", "1")
    assert len(base64.b64decode(salt)) == 16 and len(base64.b64decode(digest)) == 32
    assert ":" not in hashed                       # safe inside a name:hash:perms line
    assert verify_password("correct horse", hashed)
    assert not verify_password("correct horse ", hashed)
    assert not verify_password("", hashed)


def test_same_password_gets_a_new_salt_each_time():
    assert hash_password("pw") != hash_password("pw")


@pytest.mark.parametrize("hashed", [
    "", "plain", "scrypt$16384$8$1$AAAA", "bcrypt$16384$8$1$AAAAAAAAAAAAAAAAAAAAAA==$AAAA",
    "scrypt$x$8$1$AAAAAAAAAAAAAAAAAAAAAA==$" + "A" * 44,
    "scrypt$16384$8$1$not base64!$" + "A" * 44,
    "scrypt$1000$8$1$AAAAAAAAAAAAAAAAAAAAAA==$" + "A" * 44,          # N not a power of two
    "scrypt$1073741824$8$1$AAAAAAAAAAAAAAAAAAAAAA==$" + "A" * 44,    # would need 1 TiB
    "scrypt$16384$8$1$AAAAAAAAAAAAAAAAAAAAAA==$AAAA",                # digest too short
])
def test_malformed_or_greedy_hashes_are_false_not_errors(hashed, monkeypatch):
    # "Greedy" is decided before any work: scrypt is never asked for more memory than
    # the bound (a 1 TiB request is refused, not attempted) - checked by what it is
    # asked to do, not by how long it takes.
    asked: list[int] = []
    real = passwords.hashlib.scrypt

    def scrypt(password, *, salt, n, r, p, maxmem=0, dklen=64):
        asked.append(128 * r * n * p)
        return real(password, salt=salt, n=n, r=r, p=p, maxmem=maxmem, dklen=dklen)

    monkeypatch.setattr(passwords.hashlib, "scrypt", scrypt)
    assert verify_password("pw", hashed) is False
    assert all(cost <= passwords.MAX_MEMORY for cost in asked), asked


def test_comparison_is_constant_time(monkeypatch):
    calls = []
    real = passwords.hmac.compare_digest

    def spy(a, b):
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(passwords.hmac, "compare_digest", spy)
    hashed = hash_password("pw")
    assert verify_password("pw", hashed) and not verify_password("wrong", hashed)
    assert len(calls) == 2


def _hash_password_cli(stdin: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "server.core.passwords"], input=stdin, cwd=REPO,
                          capture_output=True, text=True, timeout=30)


def test_cli_hashes_the_first_line_of_stdin():
    done = _hash_password_cli("s3cret with spaces \nsecond line\n")
    assert done.returncode == 0, done.stderr
    hashed = done.stdout.strip()
    assert verify_password("s3cret with spaces ", hashed)    # inner/trailing spaces are kept
    assert not verify_password("second line", hashed)


def test_cli_refuses_an_empty_password():
    done = _hash_password_cli("\n")
    assert done.returncode == 2 and done.stdout == ""
