"""One FTP control connection: read a command, dispatch it, reply; run its transfers.

Theory of operation: the control connection is a line protocol (RFC 959): the client
sends `VERB [argument]` CRLF, the server answers each with a reply.  A session reads
one line at a time (bounded length, idle timeout), looks the verb up in the command
table (commands.py) and lets the dispatcher apply the table's rules — login needed?
write access needed? argument required or forbidden? — before the handler runs.
Whatever a handler raises becomes a reply here: FtpError its own code, a refused path
550, an OSError the code for its errno, anything else 451 and a log line.  The
session survives all of them.

Transfers run as a separate task so the control connection stays readable while
bytes move: ABOR must reach a transfer in progress, and STAT may ask about it.  Any
other command that arrives during a transfer waits until the transfer has ended, so
replies stay in order.  The idle timeout does not run while a transfer is under way
(the data timeout watches that).  When the control connection ends, for whatever
reason, its transfer is cancelled — an upload's temporary file is deleted — and its
data sockets are closed.

TLS (RFC 4217, tls.py): `AUTH TLS` is answered 234 and the control connection is
upgraded in place; anything the client pipelined behind AUTH in clear text is
refused first (a man in the middle could otherwise inject commands that would run
as if they came over TLS: the STARTTLS injection of CVE-2011-0411).  With PROT P a
transfer's data socket gets its TLS handshake right after it connects, before the
transfer body runs.

Telnet: clients send ABOR as urgent data, sometimes wrapped in Telnet IP/DM
sequences.  The listening socket sets SO_OOBINLINE so urgent bytes stay in the
stream, and IAC sequences (0xFF + one byte, never valid inside UTF-8) are stripped
before a line is decoded.
"""

from __future__ import annotations

import asyncio
import logging
import re
import ssl
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Protocol

from ..core.receive import ResumeOffsetError
from ..core.safepath import HiddenName, UnsafePath
from .accounts import Account, LoginThrottle
from .config import FtpConfig
from .dataconn import DataChannel
from .listing import DEFAULT_FACTS
from .replies import FtpError, format_reply, reply_for_oserror
from .tls import TlsData, open_tls_data
from .transfer import DataConn
from .vfs import VirtualFS

__all__ = ["Session", "SessionHost", "CommandRule", "MAX_LINE"]

log = logging.getLogger("pageloan.ftp")

MAX_LINE = 4096
_TELNET_IAC = re.compile(rb"\xff[\x00-\xff]")

Work = Callable[[DataConn], Awaitable[str]]   # a transfer body: data connection → 226 text


class CommandRule(Protocol):
    """One verb of the command table (commands.py): the handler and what the
    dispatcher checks before calling it."""

    @property
    def handler(self) -> Callable[[Session, str], Awaitable[None]]: ...
    @property
    def arg(self) -> str: ...                 # "required" | "none" | "optional"
    @property
    def login(self) -> bool: ...
    @property
    def write(self) -> bool: ...
    @property
    def during_transfer(self) -> bool: ...   # may run while a transfer is under way (ABOR, STAT)


class SessionHost(Protocol):
    """What a session needs of the service that accepted it (service.py).

    Handed in rather than imported: the command modules name `Session` in their
    signatures and the service builds sessions, so the session sits below both and
    imports neither (no import cycle, docs/design.md "The packages").
    """

    @property
    def config(self) -> FtpConfig: ...
    @property
    def tls_context(self) -> ssl.SSLContext | None: ...
    @property
    def throttle(self) -> LoginThrottle: ...
    @property
    def commands(self) -> Mapping[str, CommandRule]: ...


class Session:
    """State of one logged-in (or logging-in) client and its control-connection loop."""

    def __init__(self, service: SessionHost, reader: asyncio.StreamReader,
                 writer: asyncio.StreamWriter, client_ip: str, local_ip: str) -> None:
        self.service = service
        self.config = service.config
        self.reader = reader
        self.writer = writer
        self.client_ip = client_ip
        self.local_ip = local_ip
        self.vfs = VirtualFS(self.config.root, self.config.names)
        self.data = DataChannel(asyncio.get_running_loop(), client_ip, local_ip,
                                self.config.passive_ports)
        # Login state.
        self.account: Account | None = None
        self.pending_user: str | None = None
        self.failed_logins = 0
        # Transfer parameters, set by commands and consumed by transfers.
        self.type = "I"
        self.rest_offset = 0
        self.rename_from: Path | None = None
        self.epsv_all = False
        self.mlst_facts: tuple[str, ...] = DEFAULT_FACTS
        # RFC 4217 state: control connection under TLS, PBSZ seen, data protection.
        self.tls = False
        self.pbsz = False
        self.prot_private = False
        self.transfer: asyncio.Task | None = None
        self.transfer_label = ""
        self.closing = False

    # -- replies ---------------------------------------------------------------------------
    def reply(self, code: int, text: str, lines: list[str] | None = None) -> None:
        if not self.writer.is_closing():
            self.writer.write(format_reply(code, text, lines))

    @property
    def transferring(self) -> bool:
        return self.transfer is not None and not self.transfer.done()

    # -- the control loop --------------------------------------------------------------------
    async def run(self) -> None:
        self.reply(220, "pageloan FTP ready.")
        try:
            while not self.closing:          # ends on QUIT, EOF, idle timeout or error
                line = await self._read_line()
                if line is None:
                    break
                verb, arg = self._parse(line)
                if not verb:
                    continue
                if self.transferring:
                    command = self.service.commands.get(verb)
                    transfer = self.transfer
                    if (command is None or not command.during_transfer) and transfer is not None:
                        await asyncio.wait({transfer})
                await self.dispatch(verb, arg)
                await self.writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            await self.end()

    async def _read_line(self) -> bytes | None:
        # Bounded: each pass returns a line, ends the session, or repeats only while a
        # transfer (itself bounded by the data timeout) is under way.
        while True:
            try:
                return await asyncio.wait_for(self.reader.readuntil(b"\n"),
                                              self.config.idle_timeout)
            except TimeoutError:
                if self.transferring:
                    continue
                log.info("idle timeout, closing control connection from %s", self.client_ip)
                self.reply(421, "Idle timeout, closing control connection.")
                return None
            except asyncio.LimitOverrunError:
                self.reply(500, "Command line too long.")
                return None
            except asyncio.IncompleteReadError:
                return None

    @staticmethod
    def _parse(line: bytes) -> tuple[str, str]:
        line = _TELNET_IAC.sub(b"", line).rstrip(b"\r\n")
        text = line.decode("utf-8", "surrogateescape")
        verb, _, arg = text.partition(" ")
        return verb.upper(), arg

    async def dispatch(self, verb: str, arg: str) -> None:
        log.debug("%s: %s %s", self.client_ip, verb, "****" if verb == "PASS" else arg)
        command = self.service.commands.get(verb)
        if verb not in ("RNFR", "RNTO"):
            self.rename_from = None         # RNTO must follow RNFR immediately
        if command is None:
            self.reply(500, f"Unknown command {verb[:16]!r}.")
            return
        if command.arg == "required" and not arg:
            self.reply(501, f"Syntax error: {verb} needs an argument.")
            return
        if command.arg == "none" and arg:
            self.reply(501, f"Syntax error: {verb} takes no argument.")
            return
        if command.login and self.account is None:
            self.reply(530, "Please log in with USER and PASS.")
            return
        if command.write and not (self.account is not None and self.account.writable):
            self.reply(550, "Permission denied: read-only account.")
            return
        try:
            await command.handler(self, arg)
        except FtpError as exc:
            self.reply(exc.code, exc.text)
        except HiddenName:
            log.info("refused hidden name %r from %s", arg, self.client_ip)
            self.reply(550, "Permission denied: names starting with '.' are not served.")
        except UnsafePath as exc:
            log.warning("refused path %r from %s: %s", arg, self.client_ip, exc)
            self.reply(550, "Permission denied: path is outside the root.")
        except OSError as exc:
            self.reply(*reply_for_oserror(exc))
        except Exception:   # noqa: BLE001 - a handler bug must cost one reply, not the session
            log.exception("FTP command %s failed", verb)
            self.reply(451, "Requested action aborted: local error in processing.")

    # -- transfers ---------------------------------------------------------------------------
    def take_rest(self) -> int:
        offset, self.rest_offset = self.rest_offset, 0
        return offset

    def start_transfer(self, label: str, opening: str, work: Work,
                       cleanup: Callable[[], None] | None = None, *, upload: bool = False) -> None:
        """Reply 150, open the data connection, run `work(sock)`, reply 226 + its text."""
        self.transfer_label = label
        self.transfer = asyncio.get_running_loop().create_task(
            self._run_transfer(opening, work, cleanup, upload))

    async def _run_transfer(self, opening: str, work: Work,
                            cleanup: Callable[[], None] | None, upload: bool = False) -> None:
        try:
            self.reply(150, opening)
            try:
                sock = await self.data.open(self.config.data_timeout)
            except (TimeoutError, OSError) as exc:
                log.info("no data connection from %s: %r", self.client_ip, exc)
                self.reply(425, "Can't open data connection.")
                return
            conn: DataConn = sock
            try:
                if self.prot_private:
                    try:
                        context = self.service.tls_context
                        if context is None:          # PROT P is refused without a certificate
                            raise ssl.SSLError("no TLS certificate configured")
                        conn = await open_tls_data(sock, context, self.config.data_timeout, upload=upload)
                    except (TimeoutError, OSError, ssl.SSLError) as exc:
                        log.info("TLS handshake failed on a data connection from %s: %r", self.client_ip, exc)
                        self.reply(425, "Can't open data connection: TLS negotiation failed.")
                        return
                    log.debug("TLS data connection from %s (%s, session reused: %s)", self.client_ip,
                              conn.transport.get_extra_info("cipher") if conn.transport else None,
                              conn.session_reused)
                done_text = await work(conn)
                if isinstance(conn, TlsData):
                    conn.close()             # close_notify; the shutdown ends in the background
            except BaseException:
                if isinstance(conn, TlsData):
                    conn.abort()
                raise
            finally:
                if not isinstance(conn, TlsData):
                    sock.close()             # a TLS transport owns (and closes) its socket
            self.reply(226, done_text)
            log.info("%s %s: %s", self.client_ip, self.transfer_label, done_text)
        except asyncio.CancelledError:
            raise                               # ABOR or session end: they reply / clean up
        except TimeoutError:
            self.reply(426, "Data connection stalled; transfer aborted.")
        except ConnectionError as exc:
            log.info("data connection from %s lost: %r", self.client_ip, exc)
            self.reply(426, "Data connection closed; transfer aborted.")
        except FtpError as exc:
            self.reply(exc.code, exc.text)
        except ResumeOffsetError:
            self.reply(554, "Invalid REST parameter: beyond the end of the file.")
        except OSError as exc:
            log.warning("transfer failed for %s: %r", self.client_ip, exc)
            self.reply(*reply_for_oserror(exc))
        except Exception:   # noqa: BLE001 - same rule as dispatch
            log.exception("FTP transfer failed")
            self.reply(451, "Requested action aborted: local error in processing.")
        finally:
            if cleanup is not None:
                cleanup()

    async def abort_transfer(self) -> bool:
        """Cancel the transfer in progress; True if there was one."""
        task = self.transfer
        self.data.close()
        if task is None or task.done():
            return False
        task.cancel()
        await asyncio.wait({task})
        return True

    # -- TLS on the control connection ------------------------------------------------------
    def pipelined(self) -> bool:
        """Whether the client has sent bytes beyond the command being answered."""
        # StreamReader has no public view of its buffer; its `_buffer` is a bytearray.
        return bool(getattr(self.reader, "_buffer", b""))

    async def start_tls(self) -> None:
        """Upgrade the control connection (after the 234 reply); close it on failure."""
        context = self.service.tls_context
        if context is None:                  # AUTH TLS is refused without a certificate
            self.writer.close()
            return
        try:
            # Awaited directly, not through wait_for's task: the transport must switch
            # to TLS before the loop turns again, or a ClientHello arriving meanwhile
            # would be read as clear text and the handshake would never finish.
            await self.writer.start_tls(context, ssl_handshake_timeout=self.config.data_timeout)
        except (TimeoutError, OSError, ssl.SSLError) as exc:
            log.info("TLS handshake failed on the control connection from %s: %r", self.client_ip, exc)
            self.closing = True
            self.writer.transport.abort()
            return
        self.tls = True
        ssl_object = self.writer.get_extra_info("ssl_object")
        log.info("FTP control connection from %s now TLS (%s)", self.client_ip,
                 ssl_object.version() if ssl_object else "?")

    # -- the end ---------------------------------------------------------------------------
    async def end(self) -> None:
        await self.abort_transfer()
        self.data.close()
        if not self.writer.is_closing():
            try:
                await asyncio.wait_for(self.writer.drain(), 1.0)
            except (TimeoutError, ConnectionError):
                pass
            self.writer.close()
