"""Who may log in to the FTP service, with what rights, and how guessing is slowed.

Theory of operation: accounts come from a text file, one `name:hash:perms` line each
(`#` comments and blank lines allowed), perms `r` (read-only) or `rw`.  Anonymous
access (USER anonymous or ftp, any password) is a separate switch and always
read-only.  A named account wins over the anonymous names if both exist.

Checking a password costs one scrypt (~40 ms of CPU and 16 MiB of memory), so it
runs in a worker thread, never on the event loop — in a pool of its own with two
threads, so a flood of logins from many addresses queues up instead of asking for
16 MiB per thread of the shared default executor.  An unknown user name costs the
same scrypt against a dummy hash: the reply time does not tell which names exist.

Bulk clients log in once per transfer (curl opens a new session for every file),
so a successful check is remembered for a few minutes (`_VerifiedLogins`): as an
HMAC of name, password and stored hash under a key made at start-up, never the
password itself.  A repeat login with the same password is then one HMAC instead
of 40 ms of scrypt; a wrong password, or an account whose hash changed, still goes
through scrypt.

`LoginThrottle` counts failed logins per client address and hands out a delay that
doubles with each failure (base, 2*base, 4*base ... capped), served before the 530
reply.  It is per address, not per session, so opening a new connection does not
reset it; it forgets an address after a success or once it holds too many.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import secrets
import time
from collections import OrderedDict
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from ..core.passwords import hash_password, verify_password

__all__ = ["Account", "ANONYMOUS_NAMES", "load_accounts", "authenticate", "LoginThrottle"]

ANONYMOUS_NAMES = frozenset({"anonymous", "ftp"})
_PERMS = {"r": False, "rw": True}


@dataclass(frozen=True)
class Account:
    name: str
    writable: bool
    password_hash: str | None = None     # None: the anonymous account
    anonymous: bool = False


ANONYMOUS = Account("anonymous", writable=False, anonymous=True)
_DUMMY_HASH: str | None = None
_PASSWORD_CHECKERS = ThreadPoolExecutor(max_workers=2, thread_name_prefix="pageloan-scrypt")


def load_accounts(path: Path) -> dict[str, Account]:
    """Parse an accounts file; ValueError names the file and line of a bad entry."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ValueError(f"cannot read FTP accounts file {path}: {exc.strerror}") from exc
    accounts: dict[str, Account] = {}
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        fields = line.split(":")
        if len(fields) != 3 or not fields[0] or fields[2] not in _PERMS:
            raise ValueError(f"{path}:{number}: expected 'name:hash:r' or 'name:hash:rw'")
        name, hashed, perms = fields
        if not hashed.startswith("scrypt$"):
            raise ValueError(f"{path}:{number}: hash must come from 'pageloan hash-password'")
        accounts[name] = Account(name, writable=_PERMS[perms], password_hash=hashed)
    return accounts


def _check(account: Account | None, password: str) -> bool:
    global _DUMMY_HASH
    if account is None or account.password_hash is None:
        # Spend the same time on an unknown name as on a wrong password.
        if _DUMMY_HASH is None:
            _DUMMY_HASH = hash_password("pageloan-dummy")
        verify_password(password, _DUMMY_HASH)
        return False
    return verify_password(password, account.password_hash)


class _VerifiedLogins:
    """Recently verified (name, password, hash) triples, as keyed HMACs, for a while."""

    def __init__(self, ttl: float = 300.0, limit: int = 256) -> None:
        self._key = secrets.token_bytes(32)
        self._seen: OrderedDict[bytes, float] = OrderedDict()
        self.ttl = ttl
        self.limit = limit

    def _token(self, account: Account, password: str) -> bytes:
        message = "\0".join((account.name, password, account.password_hash or "")).encode("utf-8")
        return hmac.new(self._key, message, hashlib.sha256).digest()

    def known(self, account: Account, password: str) -> bool:
        token = self._token(account, password)
        expires = self._seen.get(token)
        if expires is None:
            return False
        if expires < time.monotonic():
            del self._seen[token]
            return False
        return True

    def remember(self, account: Account, password: str) -> None:
        self._seen[self._token(account, password)] = time.monotonic() + self.ttl
        while len(self._seen) > self.limit:
            self._seen.popitem(last=False)


_VERIFIED = _VerifiedLogins()


async def authenticate(accounts: Mapping[str, Account], anonymous: bool,
                       name: str, password: str) -> Account | None:
    """The account `name`/`password` logs in as, or None."""
    account = accounts.get(name)
    if account is None and anonymous and name.lower() in ANONYMOUS_NAMES:
        return ANONYMOUS
    if account is not None and _VERIFIED.known(account, password):
        return account
    ok = await asyncio.get_running_loop().run_in_executor(_PASSWORD_CHECKERS, _check, account, password)
    if ok and account is not None:
        _VERIFIED.remember(account, password)
    return account if ok else None


class LoginThrottle:
    """Per-address failed-login counter that prices each new failure in seconds."""

    MAX_ADDRESSES = 4096
    MAX_DELAY = 16.0

    def __init__(self, base_delay: float) -> None:
        self.base_delay = base_delay
        self._failures: OrderedDict[str, int] = OrderedDict()

    def failed(self, address: str) -> float:
        """Record a failure; return how long to wait before answering it."""
        count = self._failures.pop(address, 0) + 1
        self._failures[address] = count
        while len(self._failures) > self.MAX_ADDRESSES:
            self._failures.popitem(last=False)
        return float(min(self.base_delay * (2 ** min(count - 1, 10)), self.MAX_DELAY))

    def succeeded(self, address: str) -> None:
        self._failures.pop(address, None)
