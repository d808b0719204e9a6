"""Commands about the session itself: login (USER, PASS, ACCT), transfer parameters
(TYPE, MODE, STRU, REST, ALLO), what the server offers (SYST, FEAT, OPTS, STAT) and
ending things (ABOR, QUIT, NOOP).

Theory of operation: login is two steps (USER then PASS).  USER always answers 331,
whether or not the name exists, and a failed PASS is answered only after the
LoginThrottle's delay — one second, doubling per failure from the same address — so
guessing is slow and tells nothing about which names exist.  After several failures
in one session the connection is closed.

Parameters are answered honestly: TYPE A is accepted because stock clients send it
for listings, but files are never converted, and the reply says so.  Only stream
mode and file structure exist here; the other values RFC 959 defines get 504.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING

from .accounts import authenticate
from .cmd_transfer import collect_entries
from .listing import ALL_FACTS, ls_line
from .replies import FtpError

if TYPE_CHECKING:
    from .session import Session

log = logging.getLogger("pageloan.ftp")

MAX_FAILED_LOGINS = 5


# -- login -------------------------------------------------------------------------------

async def cmd_user(s: Session, arg: str) -> None:
    # A new USER logs the session out first (RFC 959 allows changing user).
    s.account = None
    s.vfs.cwd = []
    s.pending_user = arg
    s.reply(331, "Password required (send your e-mail address for anonymous).")


async def cmd_pass(s: Session, arg: str) -> None:
    if s.account is not None:
        raise FtpError(503, "Already logged in.")
    name, s.pending_user = s.pending_user, None
    if name is None:
        raise FtpError(503, "Bad sequence of commands: send USER first.")
    cfg = s.config
    account = await authenticate(cfg.accounts, cfg.anonymous, name, arg)
    if account is None:
        s.failed_logins += 1
        delay = s.service.throttle.failed(s.client_ip)
        log.warning("failed FTP login for %r from %s (waiting %.1f s)", name, s.client_ip, delay)
        await asyncio.sleep(delay)
        s.reply(530, "Login incorrect.")
        if s.failed_logins >= MAX_FAILED_LOGINS:
            s.closing = True
        return
    s.service.throttle.succeeded(s.client_ip)
    s.account = account
    s.vfs.cwd = []
    access = "read-write" if account.writable else "read-only"
    log.info("FTP login %s (%s) from %s", account.name, access, s.client_ip)
    s.reply(230, f"Login successful, {access} access.")


async def cmd_acct(s: Session, arg: str) -> None:
    raise FtpError(502, "ACCT not implemented: no accounts beyond USER.")


# -- transfer parameters -----------------------------------------------------------------

async def cmd_type(s: Session, arg: str) -> None:
    words = arg.upper().split()
    if words in (["I"], ["L", "8"]):
        s.type = "I"
        s.reply(200, "Type set to I.")
    elif words and words[0] == "A" and words[1:] in ([], ["N"]):
        s.type = "A"
        s.reply(200, "Type set to A; files are sent as-is, without line-ending conversion.")
    elif words and words[0] in ("A", "E", "L"):
        raise FtpError(504, "Type not implemented for that parameter.")
    else:
        raise FtpError(501, "Syntax error in TYPE argument.")


async def cmd_mode(s: Session, arg: str) -> None:
    mode = arg.upper()
    if mode == "S":
        s.reply(200, "Mode set to S.")
    elif mode in ("B", "C"):
        raise FtpError(504, "Only stream mode (S) is supported.")
    else:
        raise FtpError(501, "Syntax error in MODE argument.")


async def cmd_stru(s: Session, arg: str) -> None:
    structure = arg.upper()
    if structure == "F":
        s.reply(200, "Structure set to F.")
    elif structure in ("R", "P"):
        raise FtpError(504, "Only file structure (F) is supported.")
    else:
        raise FtpError(501, "Syntax error in STRU argument.")


async def cmd_rest(s: Session, arg: str) -> None:
    if not arg.isdigit():
        raise FtpError(501, "REST needs a byte offset >= 0.")
    s.rest_offset = int(arg)
    s.reply(350, f"Restarting at {s.rest_offset}. Send RETR or STOR to start the transfer.")


async def cmd_allo(s: Session, arg: str) -> None:
    s.reply(202, "No storage allocation necessary.")


# -- what is offered ---------------------------------------------------------------------

async def cmd_syst(s: Session, arg: str) -> None:
    s.reply(215, "UNIX Type: L8")


async def cmd_feat(s: Session, arg: str) -> None:
    facts = "".join(f"{f}{'*' if f in s.mlst_facts else ''};" for f in ALL_FACTS)
    features = ["EPRT", "EPSV", "MDTM", f"MLST {facts}", "REST STREAM", "SIZE", "TVFS", "UTF8"]
    s.reply(211, "Features:", features)


async def cmd_opts(s: Session, arg: str) -> None:
    option, _, value = arg.partition(" ")
    option = option.upper()
    if option == "UTF8":
        if value.upper() in ("", "ON"):
            s.reply(200, "Always in UTF8 mode.")
        else:
            raise FtpError(504, "UTF8 cannot be switched off.")
    elif option == "MLST":
        wanted = [f.lower() for f in value.split(";") if f]
        chosen = tuple(f for f in ALL_FACTS if f in wanted)
        s.mlst_facts = chosen
        s.reply(200, "MLST OPTS " + "".join(f"{f};" for f in chosen))
    else:
        raise FtpError(501, f"Option {option[:16]!r} not understood.")


async def cmd_stat(s: Session, arg: str) -> None:
    if not arg:
        who = s.account.name if s.account else "nobody (not logged in)"
        lines = [f"Connected from {s.client_ip}", f"Logged in as {who}",
                 f"TYPE: {s.type}, STRUcture: File, MODE: Stream"]
        lines.append(f"Transfer in progress: {s.transfer_label}" if s.transferring
                     else "No data connection")
        s.reply(211, "pageloan FTP server status:", lines)
        return
    if s.account is None:
        raise FtpError(530, "Please log in with USER and PASS.")
    # STAT path: a LIST over the control connection (RFC 959), same rules as LIST.
    entries = await asyncio.get_running_loop().run_in_executor(None, collect_entries, s.vfs, arg)
    now = time.time()
    s.reply(213, f"Status of {arg}:", [ls_line(name, st, now) for name, st in entries])


# -- ending things -----------------------------------------------------------------------

async def cmd_abor(s: Session, arg: str) -> None:
    if await s.abort_transfer():
        s.reply(426, "Transfer aborted; data connection closed.")
        s.reply(226, "ABOR command successful.")
    else:
        s.reply(225, "No transfer to abort.")


async def cmd_noop(s: Session, arg: str) -> None:
    s.reply(200, "NOOP ok.")


async def cmd_quit(s: Session, arg: str) -> None:
    s.closing = True
    s.reply(221, "Goodbye.")


async def not_implemented(s: Session, arg: str) -> None:
    raise FtpError(502, "Command not implemented.")
