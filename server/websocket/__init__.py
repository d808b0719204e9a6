"""websocket: RFC 6455 WebSockets on a connection the HTTP layer hands over.

Owns the opening handshake (validation, subprotocol and extension negotiation, the
101 headers), the per-connection protocol that takes the socket over from the HTTP
session (server/http/upgrade.py) — frames in through wsproto, frames out as
Messages on the same transmitter —, its limits (message and frame size, ping
timeout, send budget), the handler-facing `WebSocket` with the `@websocket(...)`
route decorator, and `broadcast`, which lends one payload to many sockets.

May import: `server.core`, `server.http`, `server.static` and `server.framework`
(rank 4).  Never the CLI, never `server.asgi` (the ASGI adapter builds on this
package, not the other way round).  Handler modules import from `server`.
"""
