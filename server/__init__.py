"""pageloan: a minimal-copy HTTP/1.1 file and handler server on uvloop + httptools.

The public API handlers use is re-exported here (`from server import route`).
"""

from .message import FileRegion, Message
from .request import Request
from .responses import (
    StreamResponse,
    bytes_response,
    error_response,
    json_response,
    redirect_response,
    text_response,
)

__all__ = [
    "FileRegion", "Message", "Request", "StreamResponse", "bytes_response",
    "error_response", "json_response", "redirect_response", "text_response",
]

try:  # the handler framework (routing) is optional at this layer
    from .routing import route  # noqa: F401
    __all__.append("route")
except ImportError:
    pass
