"""Who the client really is behind a reverse proxy: the forwarding headers, trusted or not.

Theory of operation.  Behind nginx or a load balancer, the TCP peer is the proxy; the
client's address and scheme travel in headers the proxy adds — `X-Forwarded-For` /
`X-Forwarded-Proto` (the de-facto pair uvicorn reads) or RFC 7239's `Forwarded`
(`for=...;proto=...`, one element per hop).  Anyone can send those headers, so they
are believed only when the peer that sent them is a trusted proxy
(`--forwarded-allow-ips`, uvicorn's flag and default: 127.0.0.1 only; `*` trusts
every peer).

Each proxy *appends* the address it received from, so the list reads client first,
nearest proxy last.  We walk it from the right, skipping hops that are themselves
trusted proxies; the first untrusted address is the client.  Everything to its left
could have been written by that client and is ignored — taking the leftmost entry,
as naive code does, lets any client claim any address.  If every hop is trusted, the
leftmost is the client.  The scheme is the one recorded by the hop that received
from the client (the element in the same position), or the only one given.

`Forwarded` wins over the `X-Forwarded-*` pair when both are present: it is the
standard, and a proxy that writes it knows what it means.  Pure functions, no I/O:
the access log, `request.client` and the ASGI scope all ask the same question.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache

__all__ = ["DEFAULT_TRUSTED", "ForwardedPeer", "TrustedProxies", "forwarded_peer"]

DEFAULT_TRUSTED = "127.0.0.1"
_SCHEMES = frozenset({"http", "https", "ws", "wss"})
_Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True)
class TrustedProxies:
    """The peers whose forwarding headers are believed."""

    networks: tuple[_Network, ...] = ()
    everyone: bool = False

    @classmethod
    def parse(cls, spec: str) -> TrustedProxies:
        """`"127.0.0.1, 10.0.0.0/8, ::1"` or `"*"`; ValueError naming the entry at fault."""
        networks: list[_Network] = []
        everyone = False
        for item in spec.split(","):
            item = item.strip()
            if not item:
                continue
            if item == "*":
                everyone = True
                continue
            try:
                networks.append(ipaddress.ip_network(item, strict=False))
            except ValueError:
                raise ValueError(f"--forwarded-allow-ips: {item!r} is not an IP address or network") from None
        return cls(tuple(networks), everyone)

    def trusts(self, host: str | None) -> bool:
        if self.everyone:
            return True
        if not host:
            return False
        return _trusted(self, host)

    def _check(self, host: str) -> bool:
        try:
            address = ipaddress.ip_address(host.split("%", 1)[0])
        except ValueError:
            return False              # "unknown", an obfuscated name: never a trusted hop
        if address.version == 6 and address.ipv4_mapped is not None:
            address = address.ipv4_mapped   # ::ffff:127.0.0.1 on a dual-stack socket
        return any(address in net for net in self.networks)


@lru_cache(maxsize=4096)
def _trusted(proxies: TrustedProxies, host: str) -> bool:
    # Parsing an address costs microseconds; the same few proxies ask on every request.
    return proxies._check(host)


@dataclass(frozen=True)
class ForwardedPeer:
    """The client as the trusted proxy chain describes it."""

    client: tuple[str, int] | None
    scheme: str


def forwarded_peer(peer: tuple[str, int] | None, headers: Iterable[tuple[bytes, bytes]],
                   trusted: TrustedProxies, scheme: str) -> ForwardedPeer:
    """The client address and scheme for a request from `peer` with raw `headers`.

    Unchanged (`peer`, `scheme`) unless `peer` is a trusted proxy that sent
    forwarding headers.  Forwarded ports are kept when given, else 0 (as uvicorn).
    """
    if not trusted.trusts(peer[0] if peer else None):
        return ForwardedPeer(peer, scheme)
    forwarded: list[bytes] = []
    x_for: list[bytes] = []
    x_proto: list[bytes] = []
    for name, value in headers:
        if len(name) == 9 and name.lower() == b"forwarded":
            forwarded.append(value)
        elif len(name) == 15 and name.lower() == b"x-forwarded-for":
            x_for.append(value)
        elif len(name) == 17 and name.lower() == b"x-forwarded-proto":
            x_proto.append(value)
    if forwarded:
        hops = _forwarded_elements(b",".join(forwarded).decode("latin-1"))
        fors = [_split_host_port(e.get("for", "")) for e in hops]
        protos = [e.get("proto", "") for e in hops]
    elif x_for or x_proto:
        fors = [_split_host_port(v.strip()) for v in b",".join(x_for).decode("latin-1").split(",")] if x_for else []
        protos = [p.strip() for p in b",".join(x_proto).decode("latin-1").split(",")] if x_proto else []
    else:
        return ForwardedPeer(peer, scheme)
    client = peer
    chosen = None
    for index in range(len(fors) - 1, -1, -1):
        host, _port = fors[index]
        if not host:
            continue
        chosen = index
        if not trusted.trusts(host):
            break
    if chosen is not None:
        client = fors[chosen]
    proto = ""
    if protos:
        # The hop that saw the client recorded its scheme at the same position; a
        # single value (the usual X-Forwarded-Proto) speaks for the whole chain.
        if chosen is not None and len(protos) == len(fors):
            proto = protos[chosen]
        else:
            proto = protos[-1]
    proto = proto.strip().lower()
    if proto in _SCHEMES:
        if scheme in ("ws", "wss"):
            proto = "wss" if proto in ("https", "wss") else "ws"
        elif proto in ("ws", "wss"):
            proto = "https" if proto == "wss" else "http"
        scheme = proto
    return ForwardedPeer(client, scheme)


def _forwarded_elements(value: str) -> list[dict[str, str]]:
    """RFC 7239 `Forwarded` elements, each a dict of lower-cased names to values."""
    elements: list[dict[str, str]] = []
    for element in _split_outside_quotes(value, ","):
        pairs: dict[str, str] = {}
        for pair in _split_outside_quotes(element, ";"):
            name, sep, val = pair.partition("=")
            if not sep:
                continue
            val = val.strip()
            if len(val) >= 2 and val[0] == '"' and val[-1] == '"':
                val = val[1:-1].replace('\\"', '"').replace("\\\\", "\\")
            pairs[name.strip().lower()] = val
        elements.append(pairs)
    return elements


def _split_outside_quotes(text: str, sep: str) -> list[str]:
    parts: list[str] = []
    current: list[str] = []
    quoted = escaped = False
    for ch in text:
        if escaped:
            escaped = False
        elif ch == "\\" and quoted:
            escaped = True
        elif ch == '"':
            quoted = not quoted
        elif ch == sep and not quoted:
            parts.append("".join(current))
            current = []
            continue
        current.append(ch)
    parts.append("".join(current))
    return [p.strip() for p in parts if p.strip()]


def _split_host_port(node: str) -> tuple[str, int]:
    """`1.2.3.4`, `1.2.3.4:80`, `[::1]:80`, `::1`, `unknown`, `_hidden` → (host, port)."""
    node = node.strip()
    if node.startswith("["):
        end = node.find("]")
        if end < 0:
            return node, 0
        host, rest = node[1:end], node[end + 1:]
        return host, _port(rest[1:]) if rest.startswith(":") else 0
    if node.count(":") == 1:
        host, _, port = node.partition(":")
        return host, _port(port)
    return node, 0


def _port(text: str) -> int:
    return int(text) if text.isdigit() and int(text) < 65536 else 0
