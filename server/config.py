"""Server configuration: one dataclass, filled by the CLI or by tests.

Defaults are what a production user would expect with no flags: limits modelled on
nginx's (header block 32 KiB, body 64 MiB — larger than nginx's 1 MiB because
pageloan is also an upload target), timeouts short enough to shed slowloris
clients, loan budgets that keep pinned memory bounded.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["ServerConfig"]


@dataclass
class ServerConfig:
    root: Path | None = None           # static root; None → bundled static/
    host: str = "127.0.0.1"
    port: int = 8080
    workers: int = 1
    handlers: Path | None = None       # drop-in handler directory
    # limits
    max_header_bytes: int = 32 << 10   # request line + header block → 431 / 414
    max_body_bytes: int = 64 << 20     # → 413
    max_connections: int = 4096        # beyond → 503 and close
    header_timeout: float = 10.0       # first byte of a request → end of its head (slowloris)
    body_timeout: float = 60.0         # silence while a request body is still owed
    keepalive_timeout: float = 30.0    # idle between requests
    send_timeout: float = 60.0         # no progress while the client does not read
    drain_timeout: float = 30.0        # SIGTERM: how long in-flight responses may take
    # loans (DESIGN.md rule 4)
    connection_loan_budget: int = 4 << 20
    global_loan_budget: int = 64 << 20
    # send path tuning (chosen by measurement, see loadtest/)
    sendfile_step: int = 2 << 20
    gather_max: int = 64 << 10        # regions up to this size leave as mmap windows in a writev
    map_max: int = 16 << 20           # files up to this size are mapped (so small ranges gather)
    answer_memo: bool = True          # replay static answers to byte-identical requests
    # features
    access_log: str | None = None      # "-" for stdout, or a file path
    metrics: bool = False              # GET /metrics
    debug: bool = False                # tracebacks to the client on 500
    tls_cert: Path | None = None
    tls_key: Path | None = None
    reload: bool = False
    extra: dict[str, Any] = field(default_factory=dict)   # options owned by other modules
