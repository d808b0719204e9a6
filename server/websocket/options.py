"""WebSocket settings: limits and keep-alive, one dataclass, and their `serve` flags.

Defaults are what uvicorn users know (16 MiB messages, a ping every 20 s and 20 s to
answer it), except permessage-deflate, which is off unless asked for: a compressed
frame is a fresh copy per socket, so it gives up the one-payload-many-sockets send
path (and costs CPU per message) — turn it on for chatty text over slow links.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

__all__ = ["WebSocketOptions", "add_websocket_arguments", "websocket_options_from_args"]


@dataclass
class WebSocketOptions:
    max_message_size: int = 16 << 20    # a bigger incoming message → close 1009
    max_frame_size: int = 16 << 20      # a frame *declaring* more → close 1009 at its header
    ping_interval: float | None = 20.0  # send a ping after this long (None: never)
    ping_timeout: float | None = 20.0   # no pong within this → close 1011 and drop
    close_timeout: float = 5.0          # our close frame sent: wait this long for the reply
    send_budget: int = 4 << 20          # bytes queued per socket before `send` waits
    receive_buffer: int = 1 << 20       # unread incoming bytes before reading pauses
    per_message_deflate: bool = False   # negotiate RFC 7692 compression when offered


def _size(text: str) -> int:
    """A byte count of at least 1: `512`, `64k`, `16MiB` (powers of 1024)."""
    units = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30}
    spelled = text.strip().lower().removesuffix("b").removesuffix("i")
    try:
        if spelled and spelled[-1] in units:
            value = int(float(spelled[:-1]) * units[spelled[-1]])
        else:
            value = int(spelled)
    except (ValueError, OverflowError):
        raise argparse.ArgumentTypeError(f"{text!r} is not a size (e.g. 1048576, 64k, 16m)") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is too small (at least 1 byte)")
    return value


def _seconds_or_off(text: str) -> float | None:
    """Seconds > 0, or 0 to turn the timer off."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if value != value or value < 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r} is not a valid time (seconds >= 0; 0 turns it off)")
    return value if value > 0 else None


def add_websocket_arguments(parser: argparse.ArgumentParser) -> None:
    """The `serve` flags for WebSockets (native handlers and ASGI alike)."""
    group = parser.add_argument_group("websockets")
    d = WebSocketOptions()
    group.add_argument("--ws-max-size", type=_size, default=d.max_message_size, metavar="BYTES",
                       help="largest incoming message (and frame); bigger closes with 1009 (default 16m)")
    group.add_argument("--ws-ping-interval", type=_seconds_or_off, default=d.ping_interval, metavar="S",
                       help="ping the peer every S seconds; 0 disables (default 20)")
    group.add_argument("--ws-ping-timeout", type=_seconds_or_off, default=d.ping_timeout, metavar="S",
                       help="close a peer that does not answer a ping within S seconds (default 20)")
    group.add_argument("--ws-send-budget", type=_size, default=d.send_budget, metavar="BYTES",
                       help="bytes queued per socket before send() waits for the client (default 4m)")
    group.add_argument("--ws-per-message-deflate", action="store_true",
                       help="negotiate permessage-deflate (off by default: it copies each frame per socket)")


def websocket_options_from_args(args: argparse.Namespace) -> WebSocketOptions:
    d = WebSocketOptions()
    size = getattr(args, "ws_max_size", d.max_message_size)
    return WebSocketOptions(
        max_message_size=size, max_frame_size=size,
        ping_interval=getattr(args, "ws_ping_interval", d.ping_interval),
        ping_timeout=getattr(args, "ws_ping_timeout", d.ping_timeout),
        send_budget=getattr(args, "ws_send_budget", d.send_budget),
        per_message_deflate=getattr(args, "ws_per_message_deflate", False))
