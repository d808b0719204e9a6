"""Login checks: scrypt once, then a keyed memo; a wrong password never rides on it."""

from __future__ import annotations

from server.core.passwords import hash_password
from server.ftp import accounts
from server.ftp.accounts import Account, authenticate


async def test_repeat_login_skips_scrypt_but_wrong_password_does_not(monkeypatch):
    account = Account("bulk", writable=True, password_hash=hash_password("s3cret"))
    table = {"bulk": account}
    calls = []
    real_check = accounts._check
    monkeypatch.setattr(accounts, "_check", lambda a, p: calls.append(p) or real_check(a, p))

    assert await authenticate(table, False, "bulk", "s3cret") is account
    assert await authenticate(table, False, "bulk", "s3cret") is account
    assert calls == ["s3cret"]                     # the second login was a memo hit
    assert await authenticate(table, False, "bulk", "wrong") is None
    assert calls == ["s3cret", "wrong"]            # a different password pays scrypt again


async def test_memo_is_tied_to_the_stored_hash():
    old = Account("rot", writable=False, password_hash=hash_password("one"))
    assert await authenticate({"rot": old}, False, "rot", "one") is old
    # the account's password changed: the old password must not be accepted from memory
    new = Account("rot", writable=False, password_hash=hash_password("two"))
    assert await authenticate({"rot": new}, False, "rot", "one") is None
    assert await authenticate({"rot": new}, False, "rot", "two") is new
