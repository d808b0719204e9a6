"""server/http/forwarded.py: forwarding headers are believed only from trusted proxies."""

from __future__ import annotations

import pytest

from server.http.forwarded import DEFAULT_TRUSTED, TrustedProxies, forwarded_peer

LOCAL = TrustedProxies.parse(DEFAULT_TRUSTED)
PEER = ("127.0.0.1", 50000)


def _peer(headers: list[tuple[bytes, bytes]], peer=PEER, trusted=LOCAL, scheme="http"):
    found = forwarded_peer(peer, headers, trusted, scheme)
    return found.client, found.scheme


def test_untrusted_peer_headers_are_ignored() -> None:
    headers = [(b"X-Forwarded-For", b"1.2.3.4"), (b"X-Forwarded-Proto", b"https")]
    assert _peer(headers, peer=("10.9.9.9", 4000)) == (("10.9.9.9", 4000), "http")


def test_trusted_peer_gives_client_and_scheme() -> None:
    headers = [(b"x-forwarded-for", b"203.0.113.7"), (b"x-forwarded-proto", b"https")]
    assert _peer(headers) == (("203.0.113.7", 0), "https")


def test_no_headers_keeps_the_peer() -> None:
    assert _peer([(b"host", b"x")]) == (PEER, "http")


def test_client_cannot_spoof_by_prepending() -> None:
    # The client wrote "6.6.6.6"; our trusted proxy appended what it saw: 203.0.113.7.
    headers = [(b"X-Forwarded-For", b"6.6.6.6, 203.0.113.7")]
    assert _peer(headers)[0] == ("203.0.113.7", 0)


def test_trusted_hops_are_skipped_from_the_right() -> None:
    trusted = TrustedProxies.parse("127.0.0.1, 10.0.0.0/8")
    headers = [(b"X-Forwarded-For", b"6.6.6.6, 198.51.100.1, 10.1.2.3")]
    assert _peer(headers, trusted=trusted)[0] == ("198.51.100.1", 0)


def test_all_hops_trusted_gives_the_leftmost() -> None:
    trusted = TrustedProxies.parse("*")
    headers = [(b"X-Forwarded-For", b"192.0.2.1, 192.0.2.2")]
    assert _peer(headers, peer=("192.0.2.99", 1), trusted=trusted)[0] == ("192.0.2.1", 0)


def test_multiple_header_lines_are_one_list() -> None:
    headers = [(b"X-Forwarded-For", b"6.6.6.6"), (b"X-Forwarded-For", b"203.0.113.9")]
    assert _peer(headers)[0] == ("203.0.113.9", 0)


def test_rfc7239_forwarded_with_quoted_ipv6_and_port() -> None:
    headers = [(b"Forwarded", b'for="[2001:db8:cafe::17]:4711";proto=https;by=203.0.113.43')]
    assert _peer(headers) == (("2001:db8:cafe::17", 4711), "https")


def test_forwarded_takes_the_proto_of_the_chosen_hop() -> None:
    trusted = TrustedProxies.parse("127.0.0.1, 10.0.0.0/8")
    headers = [(b"Forwarded", b"for=192.0.2.60;proto=https, for=10.0.0.5;proto=http")]
    assert _peer(headers, trusted=trusted) == (("192.0.2.60", 0), "https")


def test_forwarded_wins_over_x_forwarded() -> None:
    headers = [(b"X-Forwarded-For", b"1.1.1.1"), (b"Forwarded", b"for=192.0.2.60")]
    assert _peer(headers)[0] == ("192.0.2.60", 0)


def test_unknown_scheme_is_ignored() -> None:
    headers = [(b"X-Forwarded-Proto", b"gopher")]
    assert _peer(headers) == (PEER, "http")


def test_websocket_scheme_follows_the_proxy() -> None:
    headers = [(b"X-Forwarded-Proto", b"https")]
    assert _peer(headers, scheme="ws")[1] == "wss"


def test_ipv4_mapped_peer_is_trusted() -> None:
    headers = [(b"X-Forwarded-For", b"203.0.113.7")]
    assert _peer(headers, peer=("::ffff:127.0.0.1", 1))[0] == ("203.0.113.7", 0)


def test_unix_socket_peer_trusted_only_with_star() -> None:
    headers = [(b"X-Forwarded-For", b"203.0.113.7")]
    assert _peer(headers, peer=None) == (None, "http")
    assert _peer(headers, peer=None, trusted=TrustedProxies.parse("*"))[0] == ("203.0.113.7", 0)


@pytest.mark.parametrize("spec", ["nonsense", "10.0.0.0/33", "1.2.3"])
def test_bad_trust_spec_names_the_entry(spec: str) -> None:
    with pytest.raises(ValueError, match="forwarded-allow-ips"):
        TrustedProxies.parse(f"127.0.0.1,{spec}")
