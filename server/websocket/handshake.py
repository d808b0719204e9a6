"""The opening handshake (RFC 6455 §4.2): is this a WebSocket request, and the 101 for it.

Theory of operation.  By the time a request reaches here httptools has parsed its
head and the session has stopped reading (an upgrade request); what is left is to
check the fields RFC 6455 requires and to answer:

* not an upgrade to `websocket` at all (a plain GET of a WebSocket route) → 426
  Upgrade Required, naming `websocket` in `Upgrade`, as a browser or curl user
  should be told;
* `Sec-WebSocket-Version` other than 13 → 426 with `Sec-WebSocket-Version: 13`
  (§4.4: the versions we speak);
* not GET, not HTTP/1.1, no `Connection: upgrade`, a missing or malformed
  `Sec-WebSocket-Key` (base64 of 16 bytes) → 400.

A valid request becomes a `Handshake`: the key, the subprotocols and extensions
offered, the Origin (for the application to judge: browsers send it and nothing
else can be trusted to), and `response_headers(...)` builds the 101's header stack
with `Sec-WebSocket-Accept` (wsproto computes the token) and what was agreed.
Extension negotiation is wsproto's (`server_extensions_handshake`); only
permessage-deflate exists, and only when the options ask for it.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Iterable

from wsproto.extensions import Extension, PerMessageDeflate
from wsproto.handshake import server_extensions_handshake
from wsproto.utilities import generate_accept_token

from ..core.message import Message
from ..http.request import Request
from ..http.responses import error_response
from ..http.wire import header_block
from .options import WebSocketOptions

__all__ = ["Handshake", "HandshakeRefused", "check_handshake"]

Header = tuple[str, str]


class HandshakeRefused(Exception):
    """The request is not a valid WebSocket opening handshake; `answer` says why."""

    def __init__(self, answer: Message) -> None:
        super().__init__(answer.status)
        self.answer = answer


def _tokens(values: Iterable[str]) -> list[str]:
    return [t.strip() for v in values for t in v.split(",") if t.strip()]


def _refuse(status: int, detail: str, headers: Iterable[Header] = ()) -> HandshakeRefused:
    return HandshakeRefused(error_response(status, detail, close=True, headers=headers))


class Handshake:
    """A valid opening handshake: what the client offered."""

    __slots__ = ("key", "subprotocols", "extension_offers", "origin")

    def __init__(self, key: str, subprotocols: list[str], extension_offers: list[str],
                 origin: str | None) -> None:
        self.key = key
        self.subprotocols = subprotocols
        self.extension_offers = extension_offers
        self.origin = origin

    def negotiate_extensions(self, options: WebSocketOptions) -> tuple[list[Extension], bytes | None]:
        """The extensions to run and the `Sec-WebSocket-Extensions` value agreeing to them."""
        if not options.per_message_deflate or not self.extension_offers:
            return [], None
        supported: list[Extension] = [PerMessageDeflate()]
        agreed = server_extensions_handshake(self.extension_offers, supported)
        if agreed is None:
            return [], None
        return [e for e in supported if e.enabled()], agreed

    def response_headers(self, subprotocol: str | None, extensions: bytes | None,
                         extra: Iterable[Header] = ()) -> list[bytes]:
        """The 101's header stack (bottom first): accept token, agreements, extra fields."""
        fields: list[Header] = [
            ("Upgrade", "websocket"), ("Connection", "Upgrade"),
            ("Sec-WebSocket-Accept", generate_accept_token(self.key.encode("ascii")).decode("ascii")),
        ]
        if subprotocol is not None:
            fields.append(("Sec-WebSocket-Protocol", subprotocol))
        if extensions is not None:
            fields.append(("Sec-WebSocket-Extensions", extensions.decode("ascii")))
        fields.extend(extra)
        return [header_block(fields)]


def check_handshake(request: Request) -> Handshake:
    """The offer in `request`, or HandshakeRefused with the answer to send instead."""
    headers = request.headers
    upgrade = [t.lower() for t in _tokens(headers.getall("upgrade"))]
    if "websocket" not in upgrade:
        raise _refuse(426, "this resource speaks WebSocket only",
                      [("Upgrade", "websocket"), ("Sec-WebSocket-Version", "13")])
    if request.method != "GET":
        raise _refuse(400, "a WebSocket handshake is a GET request")
    if request.version != "1.1":
        raise _refuse(400, "a WebSocket handshake needs HTTP/1.1")
    if "upgrade" not in (t.lower() for t in _tokens(headers.getall("connection"))):
        raise _refuse(400, "Connection: upgrade missing from the WebSocket handshake")
    version = headers.get("sec-websocket-version")
    if version is None or version.strip() != "13":
        raise _refuse(426, "unsupported Sec-WebSocket-Version (13 is spoken here)",
                      [("Sec-WebSocket-Version", "13")])
    keys = headers.getall("sec-websocket-key")
    if len(keys) != 1:
        raise _refuse(400, "exactly one Sec-WebSocket-Key is required")
    key = keys[0].strip()
    try:
        raw = base64.b64decode(key.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError, ValueError):
        raw = b""
    if len(raw) != 16:
        raise _refuse(400, "Sec-WebSocket-Key is not the base64 of 16 bytes")
    return Handshake(key, _tokens(headers.getall("sec-websocket-protocol")),
                     _tokens(headers.getall("sec-websocket-extensions")), headers.get("origin"))
