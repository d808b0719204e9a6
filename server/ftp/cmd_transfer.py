"""Commands that use the data connection: set it up (PASV, EPSV, PORT, EPRT) and use it
(RETR, STOR, APPE, LIST, NLST, MLSD).

Theory of operation: every transfer command checks everything it can *before* the
150 reply — the path, the permissions, the REST offset, that a data connection was
set up — so a refusal is a clean 4xx/5xx and no data connection is wasted.  Then it
hands the session a `work` coroutine that runs once the data socket is open, and the
session's transfer task takes care of 150/425/226/426.  RETR opens the file here and
passes the open descriptor along, so the file that was checked is the file that is
sent, even if the name is replaced meanwhile.

The REST offset is consumed by the next RETR, STOR or APPE (and kept across the
PASV/TYPE/SIZE commands clients put between REST and the transfer).
"""

from __future__ import annotations

import asyncio
import os
import stat
from collections.abc import Callable
from typing import TYPE_CHECKING

from .dataconn import parse_eprt_arg, parse_port_arg
from .listing import Entry, has_glob, render_list, render_mlsd, render_names, scan
from .replies import FtpError
from .transfer import DataConn, OpenFile, receive_file, send_bytes, send_file
from .vfs import VirtualFS

if TYPE_CHECKING:
    from .session import Session


def _family_number(ip: str) -> str:
    return "2" if ":" in ip else "1"


# -- setting up the data connection ----------------------------------------------------------

async def cmd_pasv(s: Session, arg: str) -> None:
    if s.epsv_all:
        raise FtpError(501, "EPSV ALL in effect: use EPSV.")
    if ":" in s.data.local_ip:
        raise FtpError(425, "PASV cannot express an IPv6 address: use EPSV.")
    port = s.data.listen_passive()
    host = s.data.local_ip.replace(".", ",")
    s.reply(227, f"Entering Passive Mode ({host},{port >> 8},{port & 255}).")


async def cmd_epsv(s: Session, arg: str) -> None:
    if arg.upper() == "ALL":
        s.epsv_all = True
        s.reply(200, "EPSV ALL ok: only EPSV from now on.")
        return
    ours = _family_number(s.data.local_ip)
    if arg and arg != ours:
        raise FtpError(522, f"Network protocol not supported, use ({ours}).")
    port = s.data.listen_passive()
    s.reply(229, f"Entering Extended Passive Mode (|||{port}|).")


async def cmd_port(s: Session, arg: str) -> None:
    if s.epsv_all:
        raise FtpError(501, "EPSV ALL in effect: use EPSV.")
    host, port = parse_port_arg(arg)
    s.data.set_active(host, port)
    s.reply(200, "PORT command successful.")


async def cmd_eprt(s: Session, arg: str) -> None:
    if s.epsv_all:
        raise FtpError(501, "EPSV ALL in effect: use EPSV.")
    proto, host, port = parse_eprt_arg(arg)
    ours = _family_number(s.data.local_ip)
    if str(proto) != ours:
        raise FtpError(522, f"Network protocol not supported, use ({ours}).")
    s.data.set_active(host, port)
    s.reply(200, "EPRT command successful.")


def _require_data_setup(s: Session) -> None:
    if s.config.tls_required and not s.prot_private:
        raise FtpError(521, "Data connections must be encrypted: send PBSZ 0 and PROT P.")
    if not s.data.ready:
        raise FtpError(425, "Use PORT, EPRT, PASV or EPSV first.")


# -- listings ----------------------------------------------------------------------------------

def _without_ls_options(arg: str) -> str:
    """Drop `-la`-style options clients put before the path (`LIST -a`)."""
    words = arg.split(" ")
    while words and len(words[0]) > 1 and words[0].startswith("-"):
        words.pop(0)
    return " ".join(words)


def collect_entries(vfs: VirtualFS, client_path: str, directory_only: bool = False) -> list[Entry]:
    """Entries a listing of `client_path` shows (runs in a worker thread)."""
    parts, real = vfs.resolve(client_path or ".")
    pattern = None
    if parts and has_glob(parts[-1]) and not os.path.lexists(real):
        pattern = parts[-1]
        parts, real = vfs.resolve(VirtualFS.display(parts[:-1]))
    st = os.stat(real)
    if stat.S_ISDIR(st.st_mode):
        return scan(real, vfs.root, vfs.policy, pattern)
    if directory_only:
        raise FtpError(501, "Not a directory.")
    return [(parts[-1], st)]


async def _send_listing(s: Session, client_path: str, render: Callable[[list[Entry]], bytes],
                        directory_only: bool = False) -> None:
    _require_data_setup(s)
    vfs = s.vfs

    def build() -> bytes:   # a big directory costs stat() calls and formatting: off the loop
        return render(collect_entries(vfs, client_path, directory_only))

    listing = await asyncio.get_running_loop().run_in_executor(None, build)
    timeout = s.config.data_timeout

    async def work(conn: DataConn) -> str:
        await send_bytes(conn, listing, timeout)
        return "Directory send OK."

    s.start_transfer(f"listing of {client_path or '.'}", "Here comes the directory listing.", work)


async def cmd_list(s: Session, arg: str) -> None:
    await _send_listing(s, _without_ls_options(arg), render_list)


async def cmd_nlst(s: Session, arg: str) -> None:
    await _send_listing(s, _without_ls_options(arg), render_names)


async def cmd_mlsd(s: Session, arg: str) -> None:
    writable = s.account is not None and s.account.writable
    facts = s.mlst_facts
    await _send_listing(s, arg, lambda entries: render_mlsd(entries, writable, facts),
                        directory_only=True)


# -- files -------------------------------------------------------------------------------------

async def cmd_retr(s: Session, arg: str) -> None:
    offset = s.take_rest()
    _require_data_setup(s)
    parts, real = s.vfs.resolve(arg)
    # O_NONBLOCK: opening a FIFO someone planted in the root must not hang the loop.
    file = OpenFile(os.open(real, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK))
    try:
        # The kernel's name for what was opened: a link swapped in after the check
        # above still cannot lead out of the root or onto a dotfile.
        s.vfs.policy.check_open(s.vfs.root, file.fd, real)
        st = os.fstat(file.fd)
        if not stat.S_ISREG(st.st_mode):
            raise FtpError(550, "Not a regular file.")
        if offset > st.st_size:
            raise FtpError(554, "Invalid REST parameter: beyond the end of the file.")
    except BaseException:
        file.close()
        raise
    end = st.st_size
    timeout = s.config.data_timeout

    async def work(conn: DataConn) -> str:
        sent = await send_file(conn, file, offset, end, timeout)
        return f"Transfer complete, {sent} bytes sent."

    mode = "BINARY" if s.type == "I" else "ASCII (bytes sent as-is)"
    s.start_transfer(f"RETR {VirtualFS.display(parts)}",
                     f"Opening {mode} mode data connection for {parts[-1]} ({end - offset} bytes).",
                     work, file.close)


async def _store(s: Session, arg: str, append: bool) -> None:
    offset = s.take_rest()
    if append and offset:
        raise FtpError(503, "REST cannot be combined with APPE.")
    _require_data_setup(s)
    parts, real = s.vfs.resolve(arg, write=True)
    if not parts:
        raise FtpError(553, "File name not allowed.")
    if real.is_dir():
        raise FtpError(550, "Is a directory.")
    if not real.parent.is_dir():
        raise FtpError(553, "No such directory.")
    if offset:
        try:
            size = real.stat().st_size
        except FileNotFoundError:
            size = 0
        if offset > size:
            raise FtpError(554, "Invalid REST parameter: beyond the end of the file.")
    timeout = s.config.data_timeout

    async def work(conn: DataConn) -> str:
        received = await receive_file(conn, real, offset=offset, append=append,
                                      data_timeout=timeout)
        return f"Transfer complete, {received} bytes received."

    verb = "APPE" if append else "STOR"
    s.start_transfer(f"{verb} {VirtualFS.display(parts)}", "Ok to send data.", work, upload=True)


async def cmd_stor(s: Session, arg: str) -> None:
    await _store(s, arg, append=False)


async def cmd_appe(s: Session, arg: str) -> None:
    await _store(s, arg, append=True)
