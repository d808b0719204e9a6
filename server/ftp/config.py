"""FTP configuration: the command-line options and the frozen settings they produce.

Theory of operation: the CLI owns one argparse parser; this module adds the `--ftp-*`
options to it and turns the parsed namespace into an `FtpConfig`.  Everything a
session needs to know about policy (who may log in, which ports, how long to wait)
is in that one immutable object, so a test can build one directly and a worker
process can be handed the same one.  Bad values are refused here, at start-up, and
not discovered by the first client.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from ..core.safepath import NamePolicy
from .accounts import Account, load_accounts
from .tls import make_tls_context

__all__ = ["FtpConfig", "add_ftp_arguments", "ftp_config_from_args", "parse_port_range"]

DEFAULT_IDLE_TIMEOUT = 300.0
DEFAULT_DATA_TIMEOUT = 60.0
# lftp's `mirror --parallel=20` holds 21 control connections, FileZilla up to 10
# transfers plus browsing; 32 fits every stock client and still bounds one address.
DEFAULT_MAX_PER_IP = 32
DEFAULT_LOGIN_DELAY = 1.0


@dataclass(frozen=True)
class FtpConfig:
    """Everything the FTP service needs; `root` must be an existing directory."""

    root: Path
    host: str = "127.0.0.1"
    port: int = 0
    accounts: Mapping[str, Account] = field(default_factory=dict)
    anonymous: bool = False
    passive_ports: tuple[int, int] | None = None
    idle_timeout: float = DEFAULT_IDLE_TIMEOUT
    data_timeout: float = DEFAULT_DATA_TIMEOUT
    max_per_ip: int = DEFAULT_MAX_PER_IP
    login_delay: float = DEFAULT_LOGIN_DELAY     # first failed login; doubles per failure
    reuse_port: bool = True                      # let worker processes share the port
    # The served root's name rules, the same values HTTP's static site gets.
    show_dotfiles: bool = False                  # --show-dotfiles
    follow_symlinks: bool = False                # --follow-symlinks (reads only)
    # Explicit FTPS (RFC 4217): AUTH TLS is offered when a certificate is set.
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_required: bool = False                   # no login, no clear data, before TLS

    def __post_init__(self) -> None:
        # The virtual file system compares resolved paths: resolve the root once here.
        object.__setattr__(self, "root", Path(self.root).resolve(strict=True))
        if not self.root.is_dir():
            raise ValueError(f"FTP root {self.root} is not a directory")
        if self.max_per_ip < 1 or self.idle_timeout <= 0 or self.data_timeout <= 0:
            raise ValueError("FTP limits and timeouts must be positive")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("--ftp-tls-cert and --ftp-tls-key go together")
        if self.tls_required and self.tls_cert is None:
            raise ValueError("--ftp-tls-required needs a certificate: give --ftp-tls-cert and "
                             "--ftp-tls-key (or --tls-cert and --tls-key)")

    @property
    def names(self) -> NamePolicy:
        """Which names under the root may be served (shared with HTTP's static site)."""
        return NamePolicy(show_dotfiles=self.show_dotfiles, follow_symlinks=self.follow_symlinks)


def parse_port_range(text: str) -> tuple[int, int]:
    """`LO-HI` → (lo, hi), both unprivileged; an argparse `type=`."""
    try:
        lo_text, hi_text = text.split("-", 1)
        lo, hi = int(lo_text), int(hi_text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected LO-HI, got {text!r}") from None
    if not 1024 <= lo <= hi <= 65535:
        raise argparse.ArgumentTypeError("passive ports must satisfy 1024 <= LO <= HI <= 65535")
    return lo, hi


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError("must be > 0")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError("must be >= 1")
    return value


def add_ftp_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the `--ftp-*` options (FTP stays off unless --ftp-port is given)."""
    group = parser.add_argument_group("bulk mode (FTP)")
    group.add_argument("--ftp-port", type=int, default=None, metavar="N",
                       help="serve FTP on this port (0 picks a free one); default: off")
    group.add_argument("--ftp-host", default=None, metavar="HOST",
                       help="address for FTP (default: the --host address)")
    group.add_argument("--ftp-users", type=Path, default=None, metavar="FILE",
                       help="accounts file, one 'name:hash:perms' per line "
                            "(perms r or rw; hash from 'pageloan hash-password')")
    group.add_argument("--ftp-anonymous", action="store_true",
                       help="allow anonymous read-only logins (USER anonymous or ftp)")
    group.add_argument("--ftp-passive-ports", type=parse_port_range, default=None,
                       metavar="LO-HI", help="port range for passive data connections")
    group.add_argument("--ftp-idle-timeout", type=_positive_float, default=DEFAULT_IDLE_TIMEOUT,
                       metavar="SECONDS", help="close an idle control connection (421; "
                                               f"default: {DEFAULT_IDLE_TIMEOUT:g})")
    group.add_argument("--ftp-data-timeout", type=_positive_float, default=DEFAULT_DATA_TIMEOUT,
                       metavar="SECONDS", help="give up on a data connection that does not "
                                               "connect or stalls (425/426; "
                                               f"default: {DEFAULT_DATA_TIMEOUT:g})")
    group.add_argument("--ftp-tls-cert", type=Path, default=None, metavar="FILE",
                       help="PEM certificate for explicit FTPS (AUTH TLS); default: --tls-cert")
    group.add_argument("--ftp-tls-key", type=Path, default=None, metavar="FILE",
                       help="PEM private key for --ftp-tls-cert; default: --tls-key")
    group.add_argument("--ftp-tls-required", action="store_true",
                       help="refuse login before AUTH TLS (530) and clear-text data "
                            "connections (521): PROT P is required")
    group.add_argument("--ftp-max-per-ip", type=_positive_int, default=DEFAULT_MAX_PER_IP,
                       metavar="N", help="control connections allowed per client address "
                                         f"(default: {DEFAULT_MAX_PER_IP})")


def ftp_config_from_args(args: argparse.Namespace, root: Path, *, show_dotfiles: bool = False,
                         follow_symlinks: bool = False, tls_cert: Path | None = None,
                         tls_key: Path | None = None) -> FtpConfig | None:
    """The FtpConfig the options ask for, or None when --ftp-port was not given.

    `show_dotfiles` and `follow_symlinks` are the served root's name rules, owned by
    the static site's options (--show-dotfiles, --follow-symlinks): the caller passes
    the same values so that FTP and HTTP serve the same names.  `tls_cert`/`tls_key`
    (HTTP's --tls-cert/--tls-key) are used when --ftp-tls-cert/--ftp-tls-key are not
    given; the pair that applies is loaded once here so a bad file fails start-up.

    Raises ValueError (with the file and line) for an unreadable or malformed
    accounts file, and OSError/ValueError for a root that is not a directory.
    """
    if getattr(args, "ftp_port", None) is None:
        return None
    host = args.ftp_host or getattr(args, "host", None) or "127.0.0.1"
    accounts = load_accounts(args.ftp_users) if args.ftp_users is not None else {}
    ftp_cert, ftp_key = getattr(args, "ftp_tls_cert", None), getattr(args, "ftp_tls_key", None)
    if ftp_cert is None and ftp_key is None:
        ftp_cert, ftp_key = tls_cert, tls_key
    if ftp_cert is not None and ftp_key is not None:
        make_tls_context(ftp_cert, ftp_key)      # ValueError naming the files
    return FtpConfig(
        root=root,
        host=host,
        port=args.ftp_port,
        accounts=accounts,
        anonymous=args.ftp_anonymous,
        passive_ports=args.ftp_passive_ports,
        idle_timeout=args.ftp_idle_timeout,
        data_timeout=args.ftp_data_timeout,
        max_per_ip=args.ftp_max_per_ip,
        show_dotfiles=show_dotfiles,
        follow_symlinks=follow_symlinks,
        tls_cert=ftp_cert,
        tls_key=ftp_key,
        tls_required=getattr(args, "ftp_tls_required", False),
    )
