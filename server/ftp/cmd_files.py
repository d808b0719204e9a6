"""Commands on the namespace, answered on the control connection alone: CWD, CDUP, PWD,
MKD, RMD, DELE, RNFR/RNTO, SIZE, MDTM, MLST.

Theory of operation: every path goes through the session's VirtualFS, which refuses
anything that would leave the root (UnsafePath → 550 in the dispatcher).  The root
itself can be entered and listed but not removed or renamed.  Write commands are
marked in the command table, so a read-only account never reaches these handlers.
The file-system calls here are single metadata operations (stat, mkdir, rename):
cheap enough to run on the event loop.
"""

from __future__ import annotations

import os
import stat
from typing import TYPE_CHECKING

from .listing import mlsx_line, modify_fact
from .replies import FtpError, quote_path
from .vfs import VirtualFS

if TYPE_CHECKING:
    from .session import Session


async def cmd_cwd(s: Session, arg: str) -> None:
    parts, real = s.vfs.resolve(arg)
    if not real.is_dir():
        raise FtpError(550, "No such directory.")
    s.vfs.cwd = parts
    s.reply(250, f"Directory changed to {VirtualFS.display(parts)}.")


async def cmd_cdup(s: Session, arg: str) -> None:
    await cmd_cwd(s, "..")


async def cmd_pwd(s: Session, arg: str) -> None:
    s.reply(257, f"{quote_path(s.vfs.pwd())} is the current directory.")


async def cmd_mkd(s: Session, arg: str) -> None:
    parts, real = s.vfs.resolve(arg, write=True)
    if not parts:
        raise FtpError(553, "Directory name not allowed.")
    os.mkdir(real, 0o755)
    s.reply(257, f"{quote_path(VirtualFS.display(parts))} created.")


async def cmd_rmd(s: Session, arg: str) -> None:
    parts, real = s.vfs.resolve(arg, write=True)
    if not parts:
        raise FtpError(550, "Can't remove the root directory.")
    if real.is_symlink() or not real.is_dir():
        raise FtpError(550, "Not a directory.")
    os.rmdir(real)
    s.reply(250, "Directory removed.")


async def cmd_dele(s: Session, arg: str) -> None:
    parts, real = s.vfs.resolve(arg, write=True)
    if not parts or (real.is_dir() and not real.is_symlink()):
        raise FtpError(550, "Is a directory: use RMD.")
    os.unlink(real)
    s.reply(250, "File removed.")


async def cmd_rnfr(s: Session, arg: str) -> None:
    parts, real = s.vfs.resolve(arg, write=True)
    if not parts:
        raise FtpError(550, "Can't rename the root directory.")
    if not os.path.lexists(real):
        raise FtpError(550, "No such file or directory.")
    s.rename_from = real
    s.reply(350, "Ready for destination name.")


async def cmd_rnto(s: Session, arg: str) -> None:
    source = s.rename_from
    s.rename_from = None
    if source is None:
        raise FtpError(503, "Bad sequence of commands: send RNFR first.")
    parts, real = s.vfs.resolve(arg, write=True)
    if not parts:
        raise FtpError(553, "File name not allowed.")
    os.rename(source, real)
    s.reply(250, "Rename successful.")


def _regular_file_stat(s: Session, arg: str) -> os.stat_result:
    _parts, real = s.vfs.resolve(arg)
    st = os.stat(real)
    if not stat.S_ISREG(st.st_mode):
        raise FtpError(550, "Not a regular file.")
    return st


async def cmd_size(s: Session, arg: str) -> None:
    # Files are sent as-is in both TYPEs, so this size is exact for either.
    s.reply(213, str(_regular_file_stat(s, arg).st_size))


async def cmd_mdtm(s: Session, arg: str) -> None:
    s.reply(213, modify_fact(_regular_file_stat(s, arg)))


async def cmd_mlst(s: Session, arg: str) -> None:
    parts, real = s.vfs.resolve(arg or ".")
    st = os.stat(real)
    shown = VirtualFS.display(parts)
    line = mlsx_line(shown, st, s.account is not None and s.account.writable, s.mlst_facts)
    # The fact line starts with one space inside the multi-line reply (RFC 3659 §7.2).
    s.reply(250, f"Listing {shown}", [line])
