"""Commands about the session itself: login (USER, PASS, ACCT), transfer parameters
(TYPE, MODE, STRU, REST, ALLO), what the server offers (SYST, FEAT, OPTS, STAT) and
ending things (ABOR, QUIT, NOOP).

Theory of operation: login is two steps (USER then PASS).  USER always answers 331,
whether or not the name exists, and a failed PASS is answered only after the
LoginThrottle's delay — one second, doubling per failure from the same address — so
guessing is slow and tells nothing about which names exist.  After several failures
in one session the connection is closed.

TLS (RFC 4217): AUTH TLS upgrades the control connection (234, then the
handshake); PBSZ 0 and PROT P/C choose whether data connections are TLS; CCC (back
to clear text) is refused by policy.  With `tls_required` USER and PASS are refused
(530) until the control connection is TLS, and transfers (521) until PROT P.

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

def _require_tls_if_configured(s: Session) -> None:
    if s.config.tls_required and not s.tls:
        raise FtpError(530, "TLS required: send AUTH TLS before logging in.")


async def cmd_user(s: Session, arg: str) -> None:
    _require_tls_if_configured(s)
    # A new USER logs the session out first (RFC 959 allows changing user).
    s.account = None
    s.vfs.cwd = []
    s.pending_user = arg
    s.reply(331, "Password required (send your e-mail address for anonymous).")


async def cmd_pass(s: Session, arg: str) -> None:
    _require_tls_if_configured(s)
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


# -- TLS (RFC 4217) --------------------------------------------------------------------------

async def cmd_auth(s: Session, arg: str) -> None:
    if s.service.tls_context is None:
        raise FtpError(502, "AUTH not available: no TLS certificate configured.")
    if arg.upper() not in ("TLS", "TLS-C", "SSL"):
        raise FtpError(504, "Only AUTH TLS is supported.")
    if s.tls:
        raise FtpError(503, "Already using TLS.")
    if s.pipelined():
        # Bytes behind AUTH were sent in clear text; run after the upgrade they would
        # pass for protected commands (CVE-2011-0411).  Refuse to upgrade instead.
        log.warning("refused AUTH TLS from %s: commands pipelined behind it", s.client_ip)
        raise FtpError(503, "Commands sent after AUTH TLS before the handshake: AUTH refused.")
    # A new security exchange logs the session out (RFC 4217 §4: AUTH resets the state).
    s.account = None
    s.pending_user = None
    s.vfs.cwd = []
    s.reply(234, "AUTH TLS successful; proceed with the TLS handshake.")
    await s.start_tls()


async def cmd_pbsz(s: Session, arg: str) -> None:
    if not s.tls:
        raise FtpError(503, "PBSZ needs AUTH TLS first.")
    if not arg.isdigit():
        raise FtpError(501, "PBSZ needs a number (0 for TLS).")
    s.pbsz = True
    s.reply(200, "PBSZ=0")           # TLS does its own framing: the buffer size is always 0


async def cmd_prot(s: Session, arg: str) -> None:
    level = arg.upper()
    if not s.tls:
        raise FtpError(503, "PROT needs AUTH TLS first.")
    if not s.pbsz:
        raise FtpError(503, "PROT needs PBSZ first.")
    if level == "P":
        s.prot_private = True
        s.reply(200, "Protection level set to P: data connections use TLS.")
    elif level == "C":
        if s.config.tls_required:
            raise FtpError(534, "Clear data connections are refused by policy: use PROT P.")
        s.prot_private = False
        s.reply(200, "Protection level set to C: data connections in clear text.")
    elif level in ("S", "E"):
        raise FtpError(536, f"PROT {level} is not supported with TLS; use P or C.")
    else:
        raise FtpError(504, "PROT takes C or P.")


async def cmd_ccc(s: Session, arg: str) -> None:
    if not s.tls:
        raise FtpError(533, "The control connection is not protected.")
    raise FtpError(534, "CCC refused by policy: the control connection stays encrypted.")


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
    if s.service.tls_context is not None:
        features = ["AUTH TLS", "PBSZ", "PROT", *features]
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
        security = ("TLS, data " + ("TLS" if s.prot_private else "clear")) if s.tls else "clear text"
        lines = [f"Connected from {s.client_ip}", f"Logged in as {who}", f"Control connection: {security}",
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
