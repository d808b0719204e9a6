"""The PROXY protocol (HAProxy's, versions 1 and 2): who the client is, before HTTP starts.

Theory of operation.  A TCP load balancer (HAProxy `send-proxy`/`send-proxy-v2`,
AWS NLB, nginx `proxy_protocol on` in a stream block) opens a connection to us and
writes one header before the client's bytes: version 1 is a text line
(`PROXY TCP4 203.0.113.7 192.0.2.1 56324 443\r\n`, at most 107 bytes), version 2 a
binary block (a 12-byte signature, version/command, family, a 16-bit length, the
addresses, optional TLVs).  With `--proxy-protocol` every connection on the
listener must start with one, and the addresses it carries replace the socket's
peer for logs and `request.client`.

Parsing is strict, as the specification asks: a connection whose first bytes are
not a well-formed header is closed (with a log line), never served with the proxy's
address — otherwise a client reaching the port directly could be mistaken for the
balancer's health check, or send a forged header of its own.  `LOCAL` (v2) and
`UNKNOWN` (v1) mean "the balancer itself, not relaying a client": the socket's own
peer stands.

`parse_header(data)` is pure: it returns None while more bytes are needed, or a
`ProxyHeader` with the number of bytes the header took, or raises
`ProxyProtocolError`.  It never asks for more than the header needs, so the
connection driver can read exactly the header and leave the client's first bytes
(HTTP, or a TLS ClientHello) in the socket.

Specification: https://www.haproxy.org/download/2.9/doc/proxy-protocol.txt
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass

__all__ = ["MAX_HEADER", "ProxyHeader", "ProxyProtocolError", "V1_MAX", "V2_SIGNATURE", "parse_header"]

V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
V1_PREFIX = b"PROXY "
V1_MAX = 107                 # the longest v1 line, CRLF included
V2_FIXED = 16                # signature + ver/cmd + family + length
V2_MAX_BODY = 2048           # addresses + TLVs we accept (the spec allows 65535; nobody sends that)
MAX_HEADER = V2_FIXED + V2_MAX_BODY     # a read of this many bytes always decides


class ProxyProtocolError(ValueError):
    """The connection did not start with a valid PROXY protocol header."""


@dataclass(frozen=True)
class ProxyHeader:
    """A parsed header: the client and the address it connected to (None for LOCAL/UNKNOWN)."""

    length: int                                  # bytes the header took on the wire
    version: int
    client: tuple[str, int] | None
    destination: tuple[str, int] | None = None


def parse_header(data: bytes) -> ProxyHeader | None:
    """The header at the start of `data`, None if incomplete; ProxyProtocolError if invalid."""
    if not data:
        return None
    if data[0] == 0x0D:                                     # "\r": version 2
        return _parse_v2(data)
    if data[0] == 0x50:                                     # "P": version 1
        return _parse_v1(data)
    raise ProxyProtocolError("no PROXY protocol header (the connection did not start with one)")


def _parse_v1(data: bytes) -> ProxyHeader | None:
    if not V1_PREFIX.startswith(data[:6]):
        raise ProxyProtocolError("no PROXY protocol header")
    end = data.find(b"\r\n", 0, V1_MAX)
    if end < 0:
        if len(data) >= V1_MAX or b"\n" in data[:V1_MAX]:
            raise ProxyProtocolError("PROXY v1 line too long or not ended by CRLF")
        return None
    line = data[:end]
    try:
        text = line.decode("ascii")
    except UnicodeDecodeError:
        raise ProxyProtocolError("PROXY v1 line is not ASCII") from None
    parts = text.split(" ")
    if len(parts) < 2 or parts[0] != "PROXY":
        raise ProxyProtocolError("malformed PROXY v1 line")
    if parts[1] == "UNKNOWN":
        return ProxyHeader(end + 2, 1, None)
    if parts[1] not in ("TCP4", "TCP6") or len(parts) != 6:
        raise ProxyProtocolError(f"malformed PROXY v1 line {text[:60]!r}")
    family = 4 if parts[1] == "TCP4" else 6
    source = _address(parts[2], family)
    dest = _address(parts[3], family)
    sport, dport = _port(parts[4]), _port(parts[5])
    return ProxyHeader(end + 2, 1, (source, sport), (dest, dport))


def _address(text: str, family: int) -> str:
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        raise ProxyProtocolError(f"bad address {text[:40]!r} in PROXY header") from None
    if address.version != family:
        raise ProxyProtocolError(f"address {text!r} is not IPv{family}")
    return str(address)


def _port(text: str) -> int:
    # Decimal, no sign, no leading zero (the spec's wording), 0..65535.
    if not text.isdigit() or not text.isascii() or (len(text) > 1 and text[0] == "0") \
            or int(text) > 65535:
        raise ProxyProtocolError(f"bad port {text[:10]!r} in PROXY header")
    return int(text)


def _parse_v2(data: bytes) -> ProxyHeader | None:
    prefix = data[:12]
    if not V2_SIGNATURE.startswith(prefix):
        raise ProxyProtocolError("no PROXY protocol header")
    if len(data) < V2_FIXED:
        return None
    version_command, family_protocol, body = struct.unpack_from("!BBH", data, 12)
    if version_command >> 4 != 2:
        raise ProxyProtocolError(f"PROXY v2 header with version {version_command >> 4}")
    command = version_command & 0x0F
    if command not in (0, 1):
        raise ProxyProtocolError(f"PROXY v2 header with unknown command {command}")
    if body > V2_MAX_BODY:
        raise ProxyProtocolError(f"PROXY v2 header of {body} bytes is too long")
    total = V2_FIXED + body
    if len(data) < total:
        return None
    if command == 0:                                        # LOCAL: the balancer's own check
        return ProxyHeader(total, 2, None)
    family, protocol = family_protocol >> 4, family_protocol & 0x0F
    block = data[V2_FIXED:total]
    if protocol not in (1, 2) and family != 0:
        raise ProxyProtocolError(f"PROXY v2 header with unknown transport {protocol}")
    if family == 1:                                         # AF_INET: 4 + 4 + 2 + 2
        if body < 12:
            raise ProxyProtocolError("PROXY v2 IPv4 address block too short")
        src, dst, sport, dport = struct.unpack_from("!4s4sHH", block)
        return ProxyHeader(total, 2, (str(ipaddress.IPv4Address(src)), sport),
                           (str(ipaddress.IPv4Address(dst)), dport))
    if family == 2:                                         # AF_INET6: 16 + 16 + 2 + 2
        if body < 36:
            raise ProxyProtocolError("PROXY v2 IPv6 address block too short")
        src, dst, sport, dport = struct.unpack_from("!16s16sHH", block)
        return ProxyHeader(total, 2, (str(ipaddress.IPv6Address(src)), sport),
                           (str(ipaddress.IPv6Address(dst)), dport))
    if family == 0:                                         # AF_UNSPEC: no address
        return ProxyHeader(total, 2, None)
    if family == 3:                                         # AF_UNIX: no IP to report
        return ProxyHeader(total, 2, None)
    raise ProxyProtocolError(f"PROXY v2 header with unknown address family {family}")
