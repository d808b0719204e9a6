"""asgi: any ASGI 3 application served on pageloan's HTTP layer.

Owns the adapter that turns an ASGI application into the HTTP session's
application callable (`app(request)`): the `http` scope built from a Request
(scope.py), one request/response exchange with body streaming, back-pressure and
disconnect (http.py), the zero-copy response extensions that hand a file to the
transmitter as a FileRegion (zerocopy.py), the `lifespan` protocol (lifespan.py),
importing `MODULE:ATTR` (loading.py), the `--asgi` flags (options.py), and putting
them together with an optional static site answering first (adapter.py).  The
`websocket` scope lives beside them, built on the same adapter.

May import: `server.core`, `server.http`, `server.static` and `server.framework`.
Never the CLI or `server.config`.
"""
