"""Bulk mode: an FTP server for stock clients, on the same loan and transmit machinery.

Theory of operation: FTP runs beside HTTP in the same process and event loop, over
one root directory that clients see as "/".  Downloads are FileRegions lent to the
same SocketTransmitter HTTP uses (sendfile, never a Python read); uploads go through
`server.core.receive` (splice into a temporary file, renamed into place when complete).
The package reads top-down as the data flows:

    config      the --ftp-* options → FtpConfig
    service     listening socket, per-address admission, shutdown
    session     one control connection: read, dispatch, reply; the transfer task
    commands    the verb table; cmd_session / cmd_files / cmd_transfer implement it
    accounts    who may log in (accounts file, anonymous) and login throttling
    vfs         the client's virtual "/", confinement and core's NamePolicy (dotfiles)
    dataconn    PASV/EPSV listeners and PORT/EPRT targets, bounce refusal
    transfer    bytes over a data socket: transmitter out, receive_to_file in
    tls         explicit FTPS (AUTH TLS, PROT P): the context, TLS data connections
    listing     LIST (ls -l) and MLSD/MLST facts
    replies     reply formatting and the errno → reply-code map

The CLI calls `add_ftp_arguments(parser)`, then `ftp_config_from_args(args, root)`
(None unless --ftp-port was given) and `await start_ftp(config)`; the returned
FtpService has `.port` and `async close()`.
"""

from .config import FtpConfig, add_ftp_arguments, ftp_config_from_args
from .service import FtpService, start_ftp

__all__ = ["FtpConfig", "FtpService", "add_ftp_arguments", "ftp_config_from_args", "start_ftp"]
