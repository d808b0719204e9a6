"""The command table: every verb the server knows, and the rules checked before it runs.

Theory of operation: dispatch is data.  Each verb maps to a `Command` naming its
handler and the conditions the session's dispatcher enforces first, in this order:
unknown verb → 500; argument missing or unexpected → 501; not logged in → 530;
write command from a read-only account → 550.  Handlers therefore only deal with
their own meaning.  Verbs RFC 959 defines that this server deliberately does not do
(REIN, SMNT, STOU, SITE, ADAT) are in the table as 502 "not implemented", which
tells a client to fall back, unlike a 500; so is AUTH when no certificate is set.

The X-prefixed aliases (XPWD, XCWD, ...) are the RFC 775 names some old clients
still send.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from . import cmd_files as f
from . import cmd_session as c
from . import cmd_transfer as t
from .replies import FtpError

if TYPE_CHECKING:
    from .session import Session

__all__ = ["Command", "COMMANDS", "TRANSFER_TIME_COMMANDS"]

Handler = Callable[["Session", str], Awaitable[None]]


@dataclass(frozen=True)
class Command:
    handler: Handler
    arg: str = "optional"        # "required" | "none" | "optional"
    login: bool = True
    write: bool = False
    syntax: str = ""
    during_transfer: bool = False    # answered while a transfer runs, not queued behind it


async def cmd_help(s: Session, arg: str) -> None:
    if arg:
        command = COMMANDS.get(arg.upper())
        if command is None:
            raise FtpError(501, f"Unknown command {arg[:16]!r}.")
        s.reply(214, f"Syntax: {arg.upper()} {command.syntax}".rstrip())
        return
    verbs = sorted(COMMANDS)
    rows = [" ".join(f"{v:<5}" for v in verbs[i:i + 10]) for i in range(0, len(verbs), 10)]
    s.reply(214, "The following commands are recognized:", rows)


_REQ, _NONE, _OPT = "required", "none", "optional"

COMMANDS: dict[str, Command] = {
    # login and session
    "USER": Command(c.cmd_user, _REQ, login=False, syntax="<name>"),
    "PASS": Command(c.cmd_pass, _OPT, login=False, syntax="<password>"),
    "ACCT": Command(c.cmd_acct, _OPT, login=False, syntax="<account>"),
    "QUIT": Command(c.cmd_quit, _NONE, login=False),
    "NOOP": Command(c.cmd_noop, _NONE, login=False),
    "SYST": Command(c.cmd_syst, _NONE, login=False),
    "FEAT": Command(c.cmd_feat, _NONE, login=False),
    "OPTS": Command(c.cmd_opts, _REQ, login=False, syntax="UTF8 ON | MLST <facts>"),
    "HELP": Command(cmd_help, _OPT, login=False, syntax="[<command>]"),
    "STAT": Command(c.cmd_stat, _OPT, login=False, syntax="[<path>]", during_transfer=True),
    "ABOR": Command(c.cmd_abor, _NONE, during_transfer=True),
    "TYPE": Command(c.cmd_type, _REQ, syntax="I | A | L 8"),
    "MODE": Command(c.cmd_mode, _REQ, syntax="S"),
    "STRU": Command(c.cmd_stru, _REQ, syntax="F"),
    "REST": Command(c.cmd_rest, _REQ, syntax="<offset>"),
    "ALLO": Command(c.cmd_allo, _OPT, syntax="<size>"),
    # TLS (RFC 4217)
    "AUTH": Command(c.cmd_auth, _REQ, login=False, syntax="TLS"),
    "PBSZ": Command(c.cmd_pbsz, _REQ, login=False, syntax="0"),
    "PROT": Command(c.cmd_prot, _REQ, login=False, syntax="C | P"),
    "CCC": Command(c.cmd_ccc, _NONE, login=False),
    # data connection set-up
    "PASV": Command(t.cmd_pasv, _NONE),
    "EPSV": Command(t.cmd_epsv, _OPT, syntax="[1 | 2 | ALL]"),
    "PORT": Command(t.cmd_port, _REQ, syntax="h1,h2,h3,h4,p1,p2"),
    "EPRT": Command(t.cmd_eprt, _REQ, syntax="|proto|address|port|"),
    # transfers
    "RETR": Command(t.cmd_retr, _REQ, syntax="<file>"),
    "STOR": Command(t.cmd_stor, _REQ, write=True, syntax="<file>"),
    "APPE": Command(t.cmd_appe, _REQ, write=True, syntax="<file>"),
    "LIST": Command(t.cmd_list, _OPT, syntax="[<path>]"),
    "NLST": Command(t.cmd_nlst, _OPT, syntax="[<path>]"),
    "MLSD": Command(t.cmd_mlsd, _OPT, syntax="[<directory>]"),
    # the namespace
    "CWD": Command(f.cmd_cwd, _REQ, syntax="<directory>"),
    "XCWD": Command(f.cmd_cwd, _REQ, syntax="<directory>"),
    "CDUP": Command(f.cmd_cdup, _NONE),
    "XCUP": Command(f.cmd_cdup, _NONE),
    "PWD": Command(f.cmd_pwd, _NONE),
    "XPWD": Command(f.cmd_pwd, _NONE),
    "MKD": Command(f.cmd_mkd, _REQ, write=True, syntax="<directory>"),
    "XMKD": Command(f.cmd_mkd, _REQ, write=True, syntax="<directory>"),
    "RMD": Command(f.cmd_rmd, _REQ, write=True, syntax="<directory>"),
    "XRMD": Command(f.cmd_rmd, _REQ, write=True, syntax="<directory>"),
    "DELE": Command(f.cmd_dele, _REQ, write=True, syntax="<file>"),
    "RNFR": Command(f.cmd_rnfr, _REQ, write=True, syntax="<path>"),
    "RNTO": Command(f.cmd_rnto, _REQ, write=True, syntax="<path>"),
    "SIZE": Command(f.cmd_size, _REQ, syntax="<file>"),
    "MDTM": Command(f.cmd_mdtm, _REQ, syntax="<file>"),
    "MLST": Command(f.cmd_mlst, _OPT, syntax="[<path>]"),
    # known, deliberately not done
    "REIN": Command(c.not_implemented, _OPT, login=False),
    "SMNT": Command(c.not_implemented, _OPT),
    "STOU": Command(c.not_implemented, _OPT),
    "SITE": Command(c.not_implemented, _OPT),
    "ADAT": Command(c.not_implemented, _OPT, login=False),
}

# Commands answered at once even while a transfer runs; all others wait for it to end.
TRANSFER_TIME_COMMANDS = frozenset(verb for verb, command in COMMANDS.items() if command.during_transfer)
