"""pageloan: a minimal-copy HTTP/1.1 file and handler server on uvloop + httptools.

This namespace is the public handler API: a handler module imports what it needs
from here (`from server import route, Request, json_response`) and never from the
layer packages, whose insides may change.  The layers themselves (docs/design.md):

    server.core       Message, loans, transmitter, open-file cache, receive, fan-out
    server.http       HTTP/1.1 sessions, requests, responses, the listening server
    server.static     a directory served the way nginx serves it
    server.framework  routing, hooks, handler results, loader, uploads, SSE
    server.websocket  RFC 6455 on a connection the HTTP session hands over (wsproto)
    server.ftp        bulk mode for stock FTP clients (on server.core only)
    server.cli        the `pageloan` command; server.config puts the options together
"""

from .core.fanout import Channel, SlowReader, Subscription
from .core.message import FileRegion, Message
from .framework.channels import (
    channel,
    channel_events,
    channel_response,
    channels,
    publish_body,
    publish_from,
)
from .framework.hooks import (
    add_header,
    after_request,
    before_request,
    error_handler,
    middleware,
    on_shutdown,
    on_startup,
)
from .framework.routing import Mount, Route, add_converter, mount, route
from .framework.sse import Event, sse_response
from .framework.uploads import save_upload, upload_path
from .http.cookies import cookie_header, delete_cookie, set_cookie
from .http.errors import HTTPError
from .http.forms import FormData, UploadFile
from .http.request import BadRequest, BodyTooLarge, Headers, Request
from .http.responses import (
    StreamResponse,
    bytes_response,
    empty_response,
    error_response,
    json_response,
    message_response,
    redirect_response,
    text_response,
)
from .static.file_response import file_region, file_response, gather_response, open_file
from .websocket.channels import channel_websocket
from .websocket.native import WebSocket, WebSocketDisconnect, broadcast, websocket

__all__ = [
    "BadRequest", "BodyTooLarge", "Channel", "Event", "FileRegion", "FormData", "HTTPError", "Headers", "Message",
    "Mount", "Request", "Route", "SlowReader", "StreamResponse", "Subscription", "UploadFile", "add_converter", "add_header",
    "after_request", "before_request", "bytes_response", "channel", "channel_events",
    "channel_response", "channels", "cookie_header", "delete_cookie", "empty_response", "error_handler",
    "error_response", "file_region", "file_response", "gather_response", "json_response",
    "message_response", "middleware", "mount", "on_shutdown", "on_startup", "open_file",
    "publish_body", "publish_from",
    "redirect_response", "route", "save_upload", "set_cookie", "sse_response", "text_response", "upload_path",
    "WebSocket", "WebSocketDisconnect", "broadcast", "channel_websocket", "websocket",
]
