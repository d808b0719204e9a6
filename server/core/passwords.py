"""Password hashes for the accounts file: salted scrypt in a self-describing string.

Theory of operation: a stored hash is `scrypt$N$r$p$SALT$HASH` (salt and hash in
standard base64).  Keeping the cost parameters in the string means old hashes keep
verifying after the defaults are raised, and an operator can read what a line costs.
scrypt is memory-hard, so a stolen accounts file is expensive to attack; the price
is ~40 ms of CPU per check, which is why callers on an event loop run
`verify_password` in an executor.  Comparison is constant-time (`hmac.compare_digest`)
so response timing says nothing about how much of a guess was right.

Parameters read from a file are bounded before use: a hand-edited line must not be
able to ask scrypt for gigabytes of memory.

`main()` is `pageloan hash-password`: it reads the password from the first line of
standard input (no echo when that is a terminal) and prints the hash.
"""

from __future__ import annotations

import base64
import binascii
import getpass
import hashlib
import hmac
import os
import sys

__all__ = ["hash_password", "verify_password", "main"]

SCHEME = "scrypt"
DEFAULT_N = 1 << 14      # 16 MiB of memory with r=8 (128 * r * N bytes)
DEFAULT_R = 8
DEFAULT_P = 1
SALT_BYTES = 16
HASH_BYTES = 32
# Upper bounds for parameters read from a file: 128 * r * N * p <= 256 MiB.
MAX_N = 1 << 20
MAX_R = 32
MAX_P = 16
MAX_MEMORY = 256 << 20


def _scrypt(password: str, salt: bytes, n: int, r: int, p: int, length: int) -> bytes:
    # maxmem must cover 128*r*N*p plus scrypt's own bookkeeping, or OpenSSL refuses.
    need = 128 * r * n * p + (1 << 20)
    return hashlib.scrypt(password.encode("utf-8"), salt=salt, n=n, r=r, p=p,
                          maxmem=need, dklen=length)


def hash_password(password: str) -> str:
    """A new salted scrypt hash of `password`, as `scrypt$N$r$p$salt_b64$hash_b64`."""
    salt = os.urandom(SALT_BYTES)
    digest = _scrypt(password, salt, DEFAULT_N, DEFAULT_R, DEFAULT_P, HASH_BYTES)
    return "$".join([
        SCHEME, str(DEFAULT_N), str(DEFAULT_R), str(DEFAULT_P),
        base64.b64encode(salt).decode("ascii"), base64.b64encode(digest).decode("ascii"),
    ])


def verify_password(password: str, hashed: str) -> bool:
    """True if `password` matches `hashed`; False for a mismatch or a malformed hash."""
    fields = hashed.split("$")
    if len(fields) != 6 or fields[0] != SCHEME:
        return False
    try:
        n, r, p = int(fields[1]), int(fields[2]), int(fields[3])
        salt = base64.b64decode(fields[4], validate=True)
        expected = base64.b64decode(fields[5], validate=True)
    except (ValueError, binascii.Error):
        return False
    # N must be a power of two > 1 (scrypt's rule); the rest keeps memory bounded.
    if not (1 < n <= MAX_N and n & (n - 1) == 0 and 1 <= r <= MAX_R and 1 <= p <= MAX_P):
        return False
    if 128 * r * n * p > MAX_MEMORY or not salt or not 16 <= len(expected) <= 64:
        return False
    actual = _scrypt(password, salt, n, r, p, len(expected))
    return hmac.compare_digest(actual, expected)


def _read_password() -> str:
    if sys.stdin.isatty():
        return getpass.getpass("Password: ")
    line = sys.stdin.readline()
    return line.rstrip("\r\n")


def main(argv: list[str] | None = None) -> int:
    """`pageloan hash-password`: hash the first line of stdin and print it."""
    del argv  # no options; the password never goes on the command line (ps would show it)
    password = _read_password()
    if not password:
        print("hash-password: empty password refused", file=sys.stderr)
        return 2
    print(hash_password(password))
    return 0


if __name__ == "__main__":
    sys.exit(main())
