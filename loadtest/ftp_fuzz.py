"""FTP control-connection fuzzer: hypothesis-generated and mutated command lines.

    python -m loadtest.ftp_fuzz --commands 1000000        # the long run (minutes)
    python -m loadtest.ftp_fuzz --commands 2000 --seed 7  # a quick look

Theory of operation: the fuzzer starts `python -m server.ftp` (the real service on
uvloop, as a subprocess: it starts the server, it does not import it) over a root
inside a watched directory, then lets hypothesis generate *examples*: one control
connection each, optionally logged in (anonymous, or a read-write account), which
receives a burst of pipelined command lines — known verbs in any case, unknown and
binary verbs, arguments from every byte class (NUL, CR, LF, Telnet IAC, invalid
UTF-8, traversal pieces, globs, huge numbers, malformed PORT/EPRT), odd line ends
(bare CR or LF, none), overlong lines — or a valid client script with byte-level
mutations.  The burst is delivered in one write, in random slices or byte by byte,
and the example ends with a sentinel command, a half-close, a plain close
mid-line or a reset.

For every example the checks are:

* every byte the server sends on the control connection parses as replies: a
  3-digit code, a space or hyphen, text without CR or LF, CRLF; multi-line replies
  close with the same code — or the server closes the connection;
* no example hangs: the sentinel is answered (or the connection closed) within a
  bound;
* the service keeps serving: the process is alive and a fresh control client gets
  220 and NOOP 200 (checked every `HEALTH_EVERY` examples and at the end);
* nothing outside the root is touched: an inotify watch on the directory around the
  root, on a canary file and a canary directory (both reachable through symlinks
  in the root) sees no open, read, write or rename, and the canary's bytes are
  unchanged at the end; no data or reply bytes ever carry the canary's or the root's
  dotfile's secret.

Data connections are served by the fuzzer: on a 227/229 it connects to the passive
port and reads what comes (sending nothing, so a STOR stores an empty file); PORT
and EPRT point at a sink the fuzzer listens on, or at addresses the server must
refuse — never at a random local port, which might belong to someone else.

Bounded: examples, bytes per example and every wait are capped; the long run stops
at `--commands` command lines or `--max-seconds`.
"""

from __future__ import annotations

import argparse
import ctypes
import errno
import hashlib
import os
import random
import re
import selectors
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis import strategies as st

from . import REPO_ROOT

__all__ = ["FuzzTarget", "ReplyChecker", "CanaryWatch", "Stats", "run_fuzz", "main"]

PASSWORD = "fuzz-pass"
CANARY_SECRET = b"CANARY-5f3a9c outside the root"
DOTFILE_SECRET = b"DOTFILE-SECRET-77e1"
READ_TIMEOUT = 20.0           # an example's replies must be complete within this
MAX_REPLY_BYTES = 4 << 20     # per example, control + data (a LIST of a big tree is far less)
HEALTH_EVERY = 25
SENTINEL = b"\r\nHELP XCUP\r\n"          # answered "214 Syntax: XCUP"; never generated
SENTINEL_REPLY = b"214 Syntax: XCUP\r\n"

VERBS = ["USER", "PASS", "ACCT", "QUIT", "NOOP", "SYST", "FEAT", "OPTS", "HELP", "STAT", "ABOR",
         "TYPE", "MODE", "STRU", "REST", "ALLO", "PASV", "EPSV", "PORT", "EPRT", "RETR", "STOR",
         "APPE", "LIST", "NLST", "MLSD", "CWD", "XCWD", "CDUP", "XCUP", "PWD", "XPWD", "MKD", "XMKD",
         "RMD", "XRMD", "DELE", "RNFR", "RNTO", "SIZE", "MDTM", "MLST", "REIN", "SMNT", "STOU",
         "SITE", "AUTH", "PBSZ", "PROT", "CCC", "ADAT", "LPRT", "LPSV", "MFMT", "HOST", "CLNT"]

REPLY_LINE = re.compile(rb"([1-5][0-9]{2})([ -])([^\r\n]*)")


# -- checking what the server says ------------------------------------------------------------

class MalformedReply(AssertionError):
    """The server sent bytes that are not FTP replies."""


class ReplyChecker:
    """Incremental parser of the reply stream; raises MalformedReply on the first bad line."""

    def __init__(self) -> None:
        self._pending = b""
        self._open_code: bytes | None = None     # inside a multi-line reply with this code
        self.codes: list[int] = []
        self.lines: list[bytes] = []

    def feed(self, data: bytes) -> None:
        self._pending += data
        while True:
            cut = self._pending.find(b"\r\n")
            if cut < 0:
                if b"\n" in self._pending or (b"\r" in self._pending[:-1]):
                    raise MalformedReply(f"bare CR or LF in {self._pending[:200]!r}")
                if len(self._pending) > 64 << 10:
                    raise MalformedReply("reply line longer than 64 KiB")
                return
            line, self._pending = self._pending[:cut], self._pending[cut + 2:]
            self._line(line)

    def _line(self, line: bytes) -> None:
        if b"\r" in line or b"\n" in line:
            raise MalformedReply(f"bare CR or LF inside {line[:200]!r}")
        self.lines.append(line)
        match = REPLY_LINE.fullmatch(line)
        if self._open_code is not None:
            if match and match.group(1) == self._open_code and match.group(2) == b" ":
                self._open_code = None
                self.codes.append(int(match.group(1)))
            return                       # a middle line of a multi-line reply: any text
        if match is None:
            raise MalformedReply(f"not a reply line: {line[:200]!r}")
        if match.group(2) == b"-":
            self._open_code = match.group(1)
        else:
            self.codes.append(int(match.group(1)))

    def finish(self, closed: bool) -> None:
        """At the end of the stream: nothing half-sent unless the server closed mid-reply."""
        if self._pending and not closed:
            raise MalformedReply(f"unterminated reply {self._pending[:200]!r}")
        if self._pending and closed:
            raise MalformedReply(f"connection closed inside a reply line {self._pending[:200]!r}")
        if self._open_code is not None:
            raise MalformedReply(f"multi-line reply {self._open_code!r} never closed")

    @property
    def complete(self) -> bool:
        return not self._pending and self._open_code is None


# -- watching what lies outside the root ---------------------------------------------------------

IN_ACCESS, IN_MODIFY, IN_ATTRIB, IN_CLOSE_WRITE = 0x1, 0x2, 0x4, 0x8
IN_OPEN, IN_MOVED_FROM, IN_MOVED_TO, IN_CREATE = 0x20, 0x40, 0x80, 0x100
IN_DELETE, IN_DELETE_SELF, IN_MOVE_SELF = 0x200, 0x400, 0x800
WATCH_MASK = (IN_ACCESS | IN_MODIFY | IN_ATTRIB | IN_CLOSE_WRITE | IN_OPEN | IN_MOVED_FROM
              | IN_MOVED_TO | IN_CREATE | IN_DELETE | IN_DELETE_SELF | IN_MOVE_SELF)
_EVENT = struct.Struct("iIII")


class CanaryWatch:
    """inotify on paths outside the root; `touched()` lists events other than on `ignore`."""

    def __init__(self, paths: list[Path], ignore: set[str]) -> None:
        self._libc = ctypes.CDLL(None, use_errno=True)
        self.fd = self._libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        if self.fd < 0:
            raise OSError(ctypes.get_errno(), "inotify_init1 failed")
        self._names: dict[int, Path] = {}
        for path in paths:
            wd = self._libc.inotify_add_watch(self.fd, os.fsencode(path), WATCH_MASK)
            if wd < 0:
                raise OSError(ctypes.get_errno(), f"inotify_add_watch {path}")
            self._names[wd] = path
        self._ignore = ignore

    def touched(self) -> list[str]:
        seen = []
        while True:
            try:
                data = os.read(self.fd, 64 << 10)
            except BlockingIOError:
                return seen
            offset = 0
            while offset < len(data):
                wd, mask, _cookie, length = _EVENT.unpack_from(data, offset)
                name = data[offset + _EVENT.size:offset + _EVENT.size + length].rstrip(b"\0").decode()
                offset += _EVENT.size + length
                if name in self._ignore:
                    continue
                seen.append(f"{self._names.get(wd)}/{name} mask={mask:#x}")

    def close(self) -> None:
        os.close(self.fd)


# -- the server under test --------------------------------------------------------------------

class FuzzTarget:
    """A layout with a canary around the root, and `python -m server.ftp` serving the root."""

    def __init__(self, base: Path, *, data_timeout: float = 2.0, tls: bool = True) -> None:
        self.base = base
        self.outside = base / "outside"           # watched: the root lives inside it
        self.root = self.outside / "root"
        self.work = base / "work"                 # logs, accounts, certificate: not watched
        for d in (self.root / "sub" / "deeper", self.outside / "canary-dir", self.work):
            d.mkdir(parents=True, exist_ok=True)
        self.canary = self.outside / "canary.txt"
        self.canary.write_bytes(CANARY_SECRET)
        (self.outside / "canary-dir" / "secret.txt").write_bytes(CANARY_SECRET)
        (self.root / ".env").write_bytes(DOTFILE_SECRET)
        (self.root / "file.txt").write_bytes(b"hello fuzz\n" * 50)
        (self.root / "sub" / "a.bin").write_bytes(bytes(range(256)) * 8)
        (self.root / "sub" / "deeper" / "b.txt").write_text("b\n")
        for name, target in (("escape", "../canary.txt"), ("escape-dir", "../canary-dir"),
                             ("abs-escape", str(self.canary)), ("env-link", ".env"),
                             ("loop", "loop"), ("dangling", "nowhere")):
            os.symlink(target, self.root / name)
        self.canary_digest = hashlib.sha256(CANARY_SECRET).hexdigest()
        self.users = self.work / "users"
        self.users.write_text(f"alice:{_hash_password(PASSWORD)}:rw\n")
        argv = [sys.executable, "-m", "server.ftp", str(self.root), "--ftp-port", "0",
                "--ftp-users", str(self.users), "--ftp-anonymous", "--log-level", "WARNING",
                "--ftp-data-timeout", str(data_timeout), "--ftp-idle-timeout", "30"]
        self.tls = tls and shutil.which("openssl") is not None
        if self.tls:
            cert, key = self.work / "cert.pem", self.work / "key.pem"
            subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                            "-subj", "/CN=localhost", "-keyout", str(key), "-out", str(cert)],
                           check=True, capture_output=True)
            argv += ["--ftp-tls-cert", str(cert), "--ftp-tls-key", str(key)]
        self.log_path = self.work / "ftp.log"
        self._log = open(self.log_path, "wb")
        env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
        self.proc = subprocess.Popen(argv, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE,
                                     stderr=self._log, start_new_session=True)
        self.port = self._read_port()
        self.watch = CanaryWatch([self.outside, self.canary, self.outside / "canary-dir"], ignore={"root"})
        self.sink = socket.create_server(("127.0.0.1", 0), backlog=64)
        self.sink.setblocking(False)
        self.sink_port = self.sink.getsockname()[1]

    def _read_port(self) -> int:
        deadline = time.monotonic() + 20
        line = b""
        while not line.endswith(b"\n"):
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise RuntimeError(f"FTP server did not start: {self.log()[-2000:]}")
            sel = selectors.DefaultSelector()
            sel.register(self.proc.stdout, selectors.EVENT_READ)
            if sel.select(0.2):
                line += os.read(self.proc.stdout.fileno(), 100)
            sel.close()
        match = re.fullmatch(rb"ftp port (\d+)\n", line)
        if match is None:
            raise RuntimeError(f"unexpected start-up line {line!r}")
        return int(match.group(1))

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def alive(self) -> bool:
        return self.proc.poll() is None

    def check_outside(self) -> None:
        touched = self.watch.touched()
        assert not touched, f"outside the root was touched: {touched[:5]}"

    def final_check(self) -> None:
        self.check_outside()
        assert hashlib.sha256(self.canary.read_bytes()).hexdigest() == self.canary_digest
        assert (self.outside / "canary-dir" / "secret.txt").read_bytes() == CANARY_SECRET
        assert sorted(p.name for p in self.outside.iterdir()) == ["canary-dir", "canary.txt", "root"]
        self.watch.touched()      # forget the events of our own reads just now

    def stop(self) -> None:
        self.watch.close()
        self.sink.close()
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        self.proc.stdout.close()
        self._log.close()


def _hash_password(password: str) -> str:
    # The accounts file wants a hash `pageloan hash-password` makes: ask the CLI for one.
    done = subprocess.run([sys.executable, "-m", "server", "hash-password"], input=password,
                          capture_output=True, text=True, cwd=REPO_ROOT, timeout=60,
                          env=dict(os.environ, PYTHONPATH=str(REPO_ROOT)))
    if done.returncode != 0:
        raise RuntimeError(f"hash-password failed: {done.stderr}")
    return done.stdout.strip().splitlines()[-1]


# -- generating command lines -------------------------------------------------------------------

_PATH_PIECES = ["..", ".", "", "sub", "deeper", "escape", "escape-dir", "abs-escape", ".env", "env-link",
                "file.txt", "a.bin", "loop", "dangling", "*", "?", "[a-z]", "...", "~", "-la", "new",
                "canary.txt", "canary-dir", "secret.txt", "%2e%2e", "\\..\\", "\x00", "ü", "\u202e",
                "x" * 300, "CON", "nul", "a b", '"q"', "\t", "\xff"]
_SPECIAL_PATHS = ["/../canary.txt", "../canary.txt", "sub/../../canary.txt", "/./../canary-dir/secret.txt",
                  "escape", "escape-dir/secret.txt", "abs-escape", "/proc/self/environ", "//etc/passwd",
                  ".env", "env-link", "sub/deeper/../../..", "\\..\\canary.txt", "-R /", "*/*/*",
                  "../*", "escape-dir/*", "file.txt/.", "file.txt/..", "/" * 200]


def _text(max_size: int) -> st.SearchStrategy[bytes]:
    # Every byte class: printable, controls (NUL, CR, LF, TAB), IAC 0xFF, invalid UTF-8.
    return st.one_of(
        st.binary(max_size=max_size),
        st.text(max_size=max_size).map(lambda t: t.encode("utf-8", "surrogatepass")),
        st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=max_size)
        .map(str.encode))


def _paths() -> st.SearchStrategy[bytes]:
    joined = st.lists(st.sampled_from(_PATH_PIECES), min_size=1, max_size=8).flatmap(
        lambda parts: st.sampled_from(["", "/"]).map(lambda lead: (lead + "/".join(parts))))
    return st.one_of(st.sampled_from(_SPECIAL_PATHS), joined).map(
        lambda p: p.encode("utf-8", "surrogateescape")) | _text(40)


def _numbers() -> st.SearchStrategy[bytes]:
    return st.one_of(st.integers(-5, 2 ** 70).map(lambda n: str(n).encode()),
                     st.sampled_from([b"", b"0", b"-0", b"1e9", b"0x10", b" 5", b"99999999999999999999999"]))


def _port_args(sink_port: int) -> st.SearchStrategy[bytes]:
    hi, lo = sink_port >> 8, sink_port & 255
    hosts = st.sampled_from(["127,0,0,1", "10,0,0,1", "8,8,8,8", "0,0,0,0", "255,255,255,255", "127,0,0,2"])

    def port_for(host: str) -> st.SearchStrategy[str]:
        if host == "127,0,0,1":       # ours: the sink, or privileged (refused)
            return st.sampled_from([f"{hi},{lo}", "0,21", "0,80", "3,255"])
        return st.tuples(st.integers(0, 255), st.integers(0, 255)).map(lambda t: f"{t[0]},{t[1]}")

    good = hosts.flatmap(lambda h: port_for(h).map(lambda p: f"{h},{p}".encode()))
    bad = st.lists(st.integers(-300, 300), max_size=8).map(lambda ns: ",".join(map(str, ns)).encode())
    eprt = st.sampled_from([f"|1|127.0.0.1|{sink_port}|", "|1|127.0.0.1|21|", "|2|::1|5000|",
                            "|1|10.0.0.1|5000|", "|3|x|1|", "||||", "|1|127.0.0.1|70000|",
                            f"!1!127.0.0.1!{sink_port}!", "|1|127.0.0.1|"]).map(str.encode)
    return st.one_of(good, bad, eprt, _text(30))


def _argument_for(verb: str, sink_port: int) -> st.SearchStrategy[bytes]:
    upper = verb.upper()
    if upper == "USER":
        # Only names that log in without a password check: failed logins are slowed down
        # by design (seconds each), which would slow the fuzzer, not test the parser.
        return st.sampled_from([b"anonymous", b"ftp", b"ANONYMOUS"])
    if upper in ("PORT", "EPRT"):
        return _port_args(sink_port)
    if upper in ("REST", "ALLO", "PBSZ"):
        return _numbers()
    if upper in ("TYPE", "MODE", "STRU", "PROT", "EPSV", "AUTH", "OPTS"):
        return st.one_of(st.sampled_from([b"I", b"A", b"A N", b"L 8", b"E", b"S", b"B", b"F", b"P", b"C",
                                          b"ALL", b"1", b"2", b"TLS", b"SSL", b"UTF8 ON", b"UTF8 OFF",
                                          b"MLST type;size;", b"MLST ;;;", b"x"]), _text(20))
    return st.one_of(_paths(), _text(60), st.just(b""))


_ENDINGS = st.sampled_from([b"\r\n"] * 8 + [b"\n", b"\r", b"", b"\r\r\n", b"\n\r", b"\x00\r\n",
                                            b"\xff\xf4\r\n"])


def _verbs() -> st.SearchStrategy[str]:
    known = st.sampled_from(VERBS)
    cased = st.tuples(known, st.lists(st.booleans(), min_size=4, max_size=4)).map(
        lambda vc: "".join(c.lower() if flip else c for c, flip in zip(vc[0], vc[1] + [False] * 4, strict=False)))
    return st.one_of(known, known, cased, st.text(max_size=6))


def _line(sink_port: int) -> st.SearchStrategy[bytes]:
    def build(verb: str) -> st.SearchStrategy[bytes]:
        sep = st.sampled_from([b" ", b" ", b" ", b"", b"  ", b"\t"])
        return st.tuples(sep, _argument_for(verb, sink_port), _ENDINGS).map(
            lambda t: verb.encode("utf-8", "surrogatepass") + (t[0] + t[1] if t[1] else b"") + t[2])
    special = st.sampled_from([
        b"A" * 5000 + b"\r\n",                                  # past the 4096-byte line limit
        b"NOOP " + b"x" * 4080 + b"\r\n",                       # just under it
        b"\xff\xf4\xff\xf2ABOR\r\n",                            # Telnet IP + DM + ABOR
        b"\xff\xff\xff\r\n", b"\r\n", b"\n", b" \r\n", b"\x00\x00\r\n",
        b"PASV\r\nRETR file.txt\r\n", b"EPSV\r\nLIST -la\r\n", b"PASV\r\nSTOR new.bin\r\n",
        b"PASV\r\nMLSD sub\r\n", b"EPSV\r\nNLST *\r\n", b"EPSV\r\nRETR escape\r\n",
        b"REST 5\r\nEPSV\r\nRETR file.txt\r\n", b"PASV\r\nRETR sub/a.bin\r\nABOR\r\n",
        b"RNFR file.txt\r\nRNTO ../moved.txt\r\n", b"RNFR ../canary.txt\r\nRNTO stolen.txt\r\n",
        b"AUTH TLS\r\nUSER anonymous\r\n",                      # pipelined behind AUTH
    ])
    return st.one_of(_verbs().flatmap(build), special)


# A realistic client script, for the mutation strategy.
_SCRIPT = (b"SYST\r\nFEAT\r\nPWD\r\nTYPE I\r\nEPSV\r\nLIST -la\r\nCWD sub\r\nSIZE a.bin\r\nMDTM a.bin\r\n"
           b"REST 10\r\nPASV\r\nRETR a.bin\r\nCDUP\r\nMLST file.txt\r\nEPSV\r\nMLSD\r\n"
           b"MKD newdir\r\nPASV\r\nSTOR newdir/x.bin\r\nRNFR newdir/x.bin\r\nRNTO newdir/y.bin\r\n"
           b"DELE newdir/y.bin\r\nRMD newdir\r\nSTAT\r\nNOOP\r\n")


def _mutated_script() -> st.SearchStrategy[bytes]:
    ops = st.lists(st.tuples(st.sampled_from(["flip", "insert", "delete", "dup", "cut"]),
                             st.integers(0, len(_SCRIPT) - 1), st.integers(0, 255)), max_size=12)

    def apply(mutations: list[tuple[str, int, int]]) -> bytes:
        data = bytearray(_SCRIPT)
        for op, pos, value in mutations:
            pos %= max(len(data), 1)
            if op == "flip":
                data[pos] ^= value or 1
            elif op == "insert":
                data.insert(pos, value)
            elif op == "delete" and data:
                del data[pos]
            elif op == "dup":
                data[pos:pos] = data[pos:pos + 16]
            elif op == "cut":
                del data[pos:pos + 8]
        return bytes(data)
    return ops.map(apply)


def mutate(payload: bytes, rng: random.Random) -> bytes:
    """A few byte-level mutations of `payload`: the cheap second source of inputs."""
    data = bytearray(payload or b"NOOP\r\n")
    for _ in range(rng.randint(1, 6)):
        pos = rng.randrange(len(data) or 1)
        op = rng.randrange(6)
        if op == 0 and data:
            data[pos] ^= 1 << rng.randrange(8)
        elif op == 1:
            data.insert(pos, rng.choice(b"\x00\r\n\xff /.*%\\\"-|,9"))
        elif op == 2 and data:
            del data[pos]
        elif op == 3:
            data[pos:pos] = data[pos:pos + rng.randint(1, 32)]
        elif op == 4:
            data[pos:pos + rng.randint(1, 8)] = b""
        else:
            data[pos:pos] = rng.choice([b"\r\n", b"..", b"../", b"\xff\xf4", b"PASV\r\n", b" " * 10])
    return bytes(data)


@dataclass
class Example:
    login: str                      # "none" | "anonymous" | "alice"
    payload: bytes
    delivery: str                   # "one" | "slices" | "bytes"
    slices: list[int]
    ending: str                     # "sentinel" | "half-close" | "close" | "reset"
    commands: int = 0


def examples(sink_port: int, max_lines: int = 10) -> st.SearchStrategy[Example]:
    lines = st.lists(_line(sink_port), min_size=1, max_size=max_lines).map(b"".join)
    payload = st.one_of(lines, lines, lines, _mutated_script())
    return st.builds(
        Example,
        login=st.sampled_from(["none", "anonymous", "alice", "alice"]),
        payload=payload,
        delivery=st.sampled_from(["one", "one", "slices", "bytes"]),
        slices=st.lists(st.integers(1, 64), min_size=1, max_size=8),
        ending=st.sampled_from(["sentinel"] * 6 + ["half-close", "close", "reset"]),
    )


# -- running one example ---------------------------------------------------------------------------

@dataclass
class Stats:
    examples: int = 0
    commands: int = 0
    replies: int = 0
    closed_by_server: int = 0
    data_connections: int = 0
    bytes_sent: int = 0
    codes: dict[int, int] = field(default_factory=dict)


class _Exchange:
    """One control connection, the data connections it asks for, and the checks."""

    def __init__(self, target: FuzzTarget) -> None:
        self.target = target
        self.sel = selectors.DefaultSelector()
        self.checker = ReplyChecker()
        self.received = bytearray()       # everything from the server: control and data
        self.control_bytes = bytearray()
        self.data_socks: list[socket.socket] = []
        self.control = socket.create_connection(("127.0.0.1", target.port), timeout=10)
        self.control.setblocking(False)
        self.sel.register(self.control, selectors.EVENT_READ, "control")
        self.sel.register(target.sink, selectors.EVENT_READ, "sink")
        self.closed = False
        self._seen_lines = 0

    # reading -------------------------------------------------------------------------------
    def pump(self, until: bytes | None, deadline: float, want_codes: int = 0, *,
             anywhere: bool = False) -> None:
        """Serve sockets until `until` was received (on the control connection, or on
        any if `anywhere`), `want_codes` replies came, or the server closed."""
        while time.monotonic() < deadline:
            if until is not None and until in (self.received if anywhere else self.control_bytes):
                return
            if self.closed:
                return
            if want_codes and len(self.checker.codes) >= want_codes:
                return
            for key, _events in self.sel.select(min(0.2, max(deadline - time.monotonic(), 0))):
                self._ready(key)
        raise AssertionError(f"no answer within {READ_TIMEOUT} s; got {bytes(self.control_bytes[-300:])!r}")

    def _ready(self, key: selectors.SelectorKey) -> None:
        role = key.data
        if role == "sink":
            try:
                conn, _addr = self.target.sink.accept()
            except BlockingIOError:
                return
            self._add_data(conn)
            return
        sock: socket.socket = key.fileobj  # type: ignore[assignment]
        try:
            chunk = sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except ConnectionError:
            chunk = b""
        if role == "control":
            if not chunk:
                self.closed = True
                self.sel.unregister(sock)
                return
            self.control_bytes.extend(chunk)
            self.received.extend(chunk)
            self.checker.feed(chunk)
            self._open_passive()
        else:
            if not chunk:
                self.sel.unregister(sock)
                sock.close()
                return
            self.received.extend(chunk)
        if len(self.received) > MAX_REPLY_BYTES:
            raise AssertionError("more than MAX_REPLY_BYTES from the server in one example")

    def _open_passive(self) -> None:
        for line in self.checker.lines[self._seen_lines:]:
            port = None
            m = re.match(rb"227 .*\((\d+),(\d+),(\d+),(\d+),(\d+),(\d+)\)", line)
            if m:
                assert m.group(1, 2, 3, 4) == (b"127", b"0", b"0", b"1"), line
                port = int(m.group(5)) * 256 + int(m.group(6))
            m = re.match(rb"229 .*\(\|\|\|(\d+)\|\)", line)
            if m:
                port = int(m.group(1))
            if port is not None:
                try:
                    conn = socket.create_connection(("127.0.0.1", port), timeout=5)
                except OSError:
                    continue            # the listener was replaced by a later PASV: fine
                self._add_data(conn)
        self._seen_lines = len(self.checker.lines)

    def _add_data(self, conn: socket.socket) -> None:
        conn.setblocking(False)
        try:
            conn.shutdown(socket.SHUT_WR)     # we send nothing: a STOR stores an empty file
        except OSError:
            pass
        self.data_socks.append(conn)
        self.sel.register(conn, selectors.EVENT_READ, "data")

    # writing -------------------------------------------------------------------------------
    def send(self, data: bytes, deadline: float) -> None:
        view = memoryview(data)
        while view and not self.closed:
            try:
                sent = self.control.send(view)
                view = view[sent:]
            except (BlockingIOError, InterruptedError):
                self._drain_once()          # the server may be waiting for us to read
            except (BrokenPipeError, ConnectionResetError):
                self.closed = True
            if time.monotonic() > deadline:
                raise AssertionError("the server stopped reading its control connection")

    def _drain_once(self, timeout: float = 0.05) -> None:
        for key, _events in self.sel.select(timeout):
            self._ready(key)

    def close(self) -> None:
        for sock in [self.control, *self.data_socks]:
            try:
                sock.close()
            except OSError:
                pass
        self.sel.close()


def _login_script(login: str) -> tuple[bytes, int]:
    if login == "anonymous":
        return b"USER anonymous\r\nPASS fuzz@\r\n", 2
    if login == "alice":
        return f"USER alice\r\nPASS {PASSWORD}\r\n".encode(), 2
    return b"", 0


def run_example(target: FuzzTarget, example: Example, stats: Stats) -> None:
    """Play one example against the target; AssertionError on any violated rule."""
    deadline = time.monotonic() + READ_TIMEOUT
    ex = _connect(target, deadline)
    try:
        ex.pump(None, deadline, want_codes=1)                   # the greeting
        if ex.checker.codes[:1] != [220]:
            assert ex.checker.codes[:1] == [421], ex.checker.codes   # busy is an answer too
            return
        script, count = _login_script(example.login)
        if script:
            ex.send(script, deadline)
            ex.pump(None, deadline, want_codes=1 + count)
        payload = example.payload
        stats.commands += max(payload.count(b"\n"), 1)
        stats.bytes_sent += len(payload)
        if example.delivery == "one":
            ex.send(payload, deadline)
        else:
            sizes = example.slices if example.delivery == "slices" else [1]
            pos, i = 0, 0
            limit = payload[:512] if example.delivery == "bytes" else payload
            while pos < len(limit) and not ex.closed:
                size = sizes[i % len(sizes)]
                ex.send(limit[pos:pos + size], deadline)
                ex._drain_once(0)
                pos += size
                i += 1
            if example.delivery == "bytes":
                ex.send(payload[512:], deadline)
        if example.ending == "sentinel":
            ex.send(SENTINEL, deadline)
            ex.pump(SENTINEL_REPLY, deadline)
        elif example.ending == "half-close":
            try:
                ex.control.shutdown(socket.SHUT_WR)
            except OSError:
                pass
            ex.pump(None, deadline + READ_TIMEOUT)    # until the server closes: it must
            assert ex.closed, "half-closed control connection was never closed by the server"
        elif example.ending == "reset":
            ex.control.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        if ex.closed:
            stats.closed_by_server += 1
        ex.checker.finish(closed=ex.closed)
        blob = bytes(ex.received)
        assert CANARY_SECRET not in blob, "canary bytes reached the client"
        assert DOTFILE_SECRET not in blob, "a dotfile's bytes reached the client"
        stats.replies += len(ex.checker.codes)
        stats.data_connections += len(ex.data_socks)
        for code in ex.checker.codes:
            stats.codes[code] = stats.codes.get(code, 0) + 1
    finally:
        ex.close()
        stats.examples += 1


def _connect(target: FuzzTarget, deadline: float) -> _Exchange:
    # The previous example's session may still be ending: the per-address limit (421)
    # or a full backlog are answers, so retry within the deadline rather than fail.
    while True:
        try:
            return _Exchange(target)
        except OSError as exc:
            if exc.errno not in (errno.ECONNREFUSED, errno.ETIMEDOUT) or time.monotonic() > deadline:
                raise
            assert target.alive(), "the FTP server exited"
            time.sleep(0.05)


def health_check(target: FuzzTarget) -> None:
    """The process lives and a fresh client is served: 220, NOOP 200, a real download."""
    assert target.alive(), f"the FTP server exited: {target.log()[-2000:]}"
    deadline = time.monotonic() + READ_TIMEOUT
    for _attempt in range(100):        # a 421 while old sessions wind down: poll
        ex = _connect(target, deadline)
        try:
            ex.pump(None, deadline, want_codes=1)
            if ex.checker.codes[0] == 421 and time.monotonic() < deadline:
                continue
            assert ex.checker.codes[0] == 220, ex.checker.codes
            # The fuzzed sessions may delete or rename anything in the root: download a
            # file written just now, inside the root, rather than a fixture.
            health = target.root / "health.txt"
            if health.is_dir() and not health.is_symlink():
                shutil.rmtree(health)
            elif health.exists() or health.is_symlink():
                health.unlink()
            body = f"healthy {time.monotonic_ns()}\n".encode()
            health.write_bytes(body)
            ex.send(b"NOOP\r\nUSER anonymous\r\nPASS x@\r\nTYPE I\r\nCWD /\r\nPASV\r\nRETR health.txt\r\n",
                    deadline)
            ex.pump(None, deadline, want_codes=9)
            assert ex.checker.codes[1:9] == [200, 331, 230, 200, 250, 227, 150, 226], ex.checker.codes
            ex.pump(body, deadline, anywhere=True)
            assert body in ex.received, "the download's bytes never arrived"
            return
        finally:
            ex.close()
    raise AssertionError("no healthy control connection within the deadline")


# -- driving hypothesis ------------------------------------------------------------------------

def run_fuzz(target: FuzzTarget, max_examples: int, *, seed_value: int | None = None,
             stats: Stats | None = None, max_lines: int = 10, mutants: int = 0) -> Stats:
    """Run up to `max_examples` hypothesis examples; AssertionError (shrunk) on a failure.

    `mutants`: after each example, replay that many byte-mutated copies of its payload
    (deterministic per payload, so a failing mutant fails its example again while
    hypothesis shrinks it).
    """
    stats = stats or Stats()
    config = settings(max_examples=max_examples, deadline=None, database=None, derandomize=seed_value is None,
                      suppress_health_check=list(HealthCheck), phases=[Phase.generate, Phase.shrink],
                      print_blob=False)

    @config
    @given(examples(target.sink_port, max_lines))
    def one(example: Example) -> None:
        run_example(target, example, stats)
        rng = random.Random(hashlib.sha256(example.payload).digest())
        for _ in range(mutants):
            run_example(target, Example(example.login, mutate(example.payload, rng), example.delivery,
                                        example.slices, example.ending), stats)
        target.check_outside()
        if stats.examples % HEALTH_EVERY == 0:
            health_check(target)

    if seed_value is not None:
        one = seed(seed_value)(one)
    one()
    health_check(target)
    target.final_check()
    return stats


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtest.ftp_fuzz", description=__doc__.split("\n\n")[0])
    parser.add_argument("--commands", type=int, default=1_000_000, help="command lines to send in all")
    parser.add_argument("--batch", type=int, default=2000, help="hypothesis examples per batch")
    parser.add_argument("--lines", type=int, default=20, help="most command lines in one example")
    parser.add_argument("--mutants", type=int, default=4, help="byte-mutated replays of each example")
    parser.add_argument("--seed", type=int, default=1, help="seed of the first batch (then +1 per batch)")
    parser.add_argument("--max-seconds", type=float, default=6 * 3600, help="stop after this long")
    parser.add_argument("--no-tls", action="store_true", help="do not offer AUTH TLS")
    args = parser.parse_args(argv)
    started = time.monotonic()
    stats = Stats()
    with tempfile.TemporaryDirectory(prefix="ftp-fuzz-") as tmp:
        target = FuzzTarget(Path(tmp), tls=not args.no_tls)
        try:
            batch = 0
            while stats.commands < args.commands and time.monotonic() - started < args.max_seconds:
                run_fuzz(target, args.batch, seed_value=args.seed + batch, stats=stats, max_lines=args.lines,
                         mutants=args.mutants)
                batch += 1
                rate = stats.commands / max(time.monotonic() - started, 1e-9)
                print(f"batch {batch}: {stats.examples} examples, {stats.commands} commands, "
                      f"{stats.replies} replies, {stats.closed_by_server} closed by the server, "
                      f"{stats.data_connections} data connections, {rate:.0f} commands/s", flush=True)
        except AssertionError as exc:
            print(f"FAILED after {stats.examples} examples / {stats.commands} commands: {exc}", file=sys.stderr)
            return 1
        finally:
            target.stop()
    elapsed = time.monotonic() - started
    top = ", ".join(f"{code}: {n}" for code, n in sorted(stats.codes.items(), key=lambda kv: -kv[1])[:12])
    print(f"done: {stats.examples} examples, {stats.commands} commands, {stats.bytes_sent} bytes sent, "
          f"{stats.replies} replies, {stats.closed_by_server} closes, 0 failures, "
          f"server alive, nothing outside the root touched, {elapsed:.0f} s\nreply codes: {top}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
