"""The HTTP server's settings: one dataclass, filled by the CLI or by tests.

Defaults are what a production user would expect with no flags: limits modelled on
nginx's (header block 32 KiB, body 64 MiB — larger than nginx's 1 MiB because
pageloan is also an upload target), timeouts short enough to shed slowloris
clients, loan budgets that keep pinned memory bounded.  What the static site, the
handler framework and FTP need lives in their own option types; `server.config`
puts them together.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

__all__ = ["ServerConfig"]


@dataclass
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 8080
    workers: int = 1
    # limits
    max_header_bytes: int = 32 << 10   # request line + header block → 431 / 414
    max_body_bytes: int = 64 << 20     # → 413
    max_connections: int = 4096        # beyond → 503 and close
    header_timeout: float = 10.0       # first byte of a request → end of its head (slowloris)
    body_timeout: float = 60.0         # silence while a request body is still owed
    keepalive_timeout: float = 30.0    # idle between requests
    send_timeout: float = 60.0         # no progress while the client does not read
    drain_timeout: float = 30.0        # SIGTERM: how long in-flight responses may take
    # loans (docs/design.md, "The loan model")
    connection_loan_budget: int = 4 << 20
    global_loan_budget: int = 64 << 20
    # send path tuning (chosen by measurement, see loadtest/)
    sendfile_step: int = 2 << 20
    gather_max: int = 64 << 10        # regions up to this size leave as mmap windows in a writev
    # MSG_ZEROCOPY (docs/zerocopy.md): gather calls of at least zerocopy_min bytes lend
    # their pages until the kernel's notice; a connection falls back to ordinary sends
    # after zerocopy_copied_limit copied-anyway sends in a row (0: never)
    zerocopy: bool = False
    zerocopy_min: int = 10 << 10
    zerocopy_copied_limit: int = 8
    # behind a load balancer (docs/deployment.md)
    proxy_protocol: bool = False       # every connection starts with a PROXY v1/v2 header
    ready_path: str | None = None      # GET → 200 "ready", 503 once draining starts
    drain_delay: float = 0.0           # SIGTERM: answer unready this long before closing the listener
    forwarded_allow_ips: str | None = None   # believe X-Forwarded-For/Forwarded from these peers
    # features
    access_log: str | None = None      # "-" for stdout, or a file path
    debug: bool = False                # tracebacks to the client on 500
    tls_cert: Path | None = None
    tls_key: Path | None = None
    # Virtual hosts with their own certificate, chosen by SNI: ((names, cert, key), ...).
    tls_sni: tuple[tuple[tuple[str, ...], Path, Path], ...] = ()
