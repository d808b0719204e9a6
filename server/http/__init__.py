"""http: HTTP/1.1 on a connection, from accepted socket to queued Message.

Owns the wire helpers (status lines, header blocks, dates), the Request and its
body stream, ready-made responses and HTTPError, the per-connection session
(httptools callbacks, pipelining order, limits, timeouts), the raw-socket and TLS
drivers, and the listening server with its sweeper and drain.  It answers requests
by calling an *application*: any callable `app(request)` returning a Message, a
StreamResponse or an awaitable of one; it knows nothing of files or routes.

May import: `server.core`.  Never `server.static`, `server.framework` or the CLI.
"""
