"""HTTP/1.1 fuzzer: hypothesis-generated and mutated raw requests against `pageloan serve`.

    python -m loadtest.fuzz --requests 1000000          # the long run (about 20 minutes)
    python -m loadtest.fuzz --requests 2000 --seed 7    # a quick look
    python -m loadtest.fuzz --url 127.0.0.1:8080 ...    # against a server you started

Theory of operation: the fuzzer starts `python -m server serve` (a subprocess, with
the bundled handlers, short timeouts and a small body limit) over a scratch site,
then lets hypothesis generate *examples*: one connection each, which receives a
burst of pipelined requests — request lines with known, unknown and binary
methods, targets with traversal pieces and every byte class, versions from 0.9 to
2.0, header names and values with every byte class (NUL, CR, LF, obs-text,
colons), bodies framed by Content-Length (right, short, long, twice) or chunked
(odd sizes, extensions, bad hex, missing terminator), bare-LF line ends — or a
valid request with byte-level mutations, optionally truncated.  The burst goes out
in one write or in random slices, then the client half-closes.  The long run adds
`--mutants` havoc mutants of every example (byte flips, inserts, deletions, splices
of framing pieces, copies): cheap to make, they multiply the requests per second.

For every example the checks are:

* everything the server sends parses as HTTP/1.x responses — a status line with a
  3-digit code, header fields that are tokens with values free of CR/LF/NUL, a body
  framed by Content-Length or chunked coding — ending with the close;
* no example hangs: the server closes within a bound after our half-close;
* the server keeps serving: the process is alive and a control client on a fresh
  connection gets `200` for `GET /` (every `HEALTH_EVERY` examples and at the end).

Bounded: examples, bytes per example and every wait are capped; the long run stops
at `--requests` requests or `--max-seconds`.
"""

from __future__ import annotations

import argparse
import os
import random
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis import strategies as st

__all__ = ["Example", "FuzzTarget", "MalformedResponse", "Stats", "check_responses",
           "examples", "health_check", "mutant", "run_example", "run_fuzz"]

REPO = Path(__file__).resolve().parent.parent
HEALTH_EVERY = 50
MUTANTS = 0                     # havoc mutants sent per hypothesis example (the long run: 8)
CLOSE_WITHIN = 8.0              # seconds the server may take to answer and close
MAX_READ = 4 << 20

_STATUS = re.compile(rb"HTTP/1\.[01] ([1-5][0-9][0-9]) [^\r\n]*\r\n")
_FIELD = re.compile(rb"([!#$%&'*+.^_`|~0-9A-Za-z-]+):[ \t]*([^\r\n\x00]*?)[ \t]*\r\n")


class MalformedResponse(AssertionError):
    """The server sent bytes that are not a well-formed HTTP/1.x response."""


@dataclass
class Stats:
    examples: int = 0
    requests: int = 0
    bytes_sent: int = 0
    responses: int = 0
    statuses: dict[int, int] = field(default_factory=dict)


def check_responses(data: bytes, heads: int) -> list[int]:
    """The statuses of the responses in `data`; MalformedResponse if any is not well-formed.

    `heads` is how many of the requests were HEAD: a response to HEAD carries a
    Content-Length but no body, which the parser recognises by the next status line.
    A final response cut short is malformed: the server must finish it, then close.
    """
    statuses = []
    pos = 0
    while pos < len(data):
        m = _STATUS.match(data, pos)
        if m is None:
            raise MalformedResponse(f"no status line at byte {pos}: {data[pos:pos + 60]!r}")
        status = int(m.group(1))
        pos = m.end()
        length = None
        chunked = False
        while not data.startswith(b"\r\n", pos):
            f = _FIELD.match(data, pos)
            if f is None:
                raise MalformedResponse(f"malformed header field at byte {pos}: {data[pos:pos + 60]!r}")
            name = f.group(1).lower()
            if name == b"content-length":
                if length is not None or not f.group(2).isdigit():
                    raise MalformedResponse(f"bad or repeated Content-Length {f.group(2)!r}")
                length = int(f.group(2))
            elif name == b"transfer-encoding":
                chunked = f.group(2).lower() == b"chunked"
            pos = f.end()
        pos += 2
        statuses.append(status)
        if 100 <= status < 200 or status in (204, 304):
            continue
        if chunked:
            pos = _skip_chunks(data, pos)
        elif length is not None:
            if heads and length and (pos == len(data) or data.startswith(b"HTTP/1.", pos)):
                heads -= 1          # a HEAD answer: the next response follows at once
                continue
            if pos + length > len(data):
                raise MalformedResponse(f"body cut short: {len(data) - pos} of {length} bytes")
            pos += length
        else:
            return statuses         # close-delimited body: runs to the end
    return statuses


def _skip_chunks(data: bytes, pos: int) -> int:
    while True:
        end = data.find(b"\r\n", pos)
        if end < 0:
            raise MalformedResponse("chunk size line cut short")
        size_text = data[pos:end].split(b";", 1)[0]
        try:
            size = int(size_text, 16)
        except ValueError:
            raise MalformedResponse(f"bad chunk size {size_text!r}") from None
        pos = end + 2
        if size == 0:
            trailer_end = data.find(b"\r\n\r\n", pos - 2)
            if trailer_end < 0:
                raise MalformedResponse("chunked body without its end")
            return trailer_end + 4
        if data[pos + size:pos + size + 2] != b"\r\n":
            raise MalformedResponse("chunk not followed by CRLF")
        pos += size + 2


# -- the server ------------------------------------------------------------------------------

class FuzzTarget:
    """`python -m server serve` over a scratch site, or a server already running (url)."""

    def __init__(self, base: Path, url: str | None = None) -> None:
        self.proc: subprocess.Popen | None = None
        self.log_path = base / "server.log"
        if url is not None:
            host, _, port = url.rpartition(":")
            self.host, self.port = host or "127.0.0.1", int(port)
            return
        site = base / "site"
        site.mkdir()
        (site / "index.html").write_text("<h1>fuzz</h1>\n")
        (site / "big.bin").write_bytes(os.urandom(256 << 10))
        (site / ".env").write_text("SECRET=1\n")
        self.host = "127.0.0.1"
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        env = dict(os.environ, PYTHONPATH=str(REPO), PAGELOAN_UPLOAD_DIR=str(base))
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "server", "serve", str(site), "--handlers", str(REPO / "handlers"),
             "--host", "127.0.0.1", "--port", str(self.port), "--header-timeout", "2",
             "--body-timeout", "2", "--keepalive-timeout", "2", "--max-body-size", "1m",
             "--log-level", "warning"],
            cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=self.log_path.open("wb"),
            start_new_session=True)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                socket.create_connection((self.host, self.port), timeout=0.5).close()
                return
            except OSError:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"server exited: {self.log()}") from None
                time.sleep(0.05)
        raise RuntimeError("server did not start")

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def alive(self) -> bool:
        return self.proc is None or self.proc.poll() is None

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


# -- what hypothesis generates --------------------------------------------------------------

@dataclass
class Example:
    data: bytes
    requests: int
    heads: int
    slices: list[int]


_ANY = st.binary(max_size=40)
# Mostly plausible pieces (so requests get past the parser and reach the site and the
# handlers), with every byte class mixed in.
_METHODS = st.sampled_from([b"GET"] * 6 + [b"HEAD"] * 2 + [b"POST", b"PUT", b"DELETE", b"OPTIONS",
                            b"PATCH", b"TRACE", b"CONNECT", b"BREW", b"get", b"", b"G\x00T"])
_METHODS = _METHODS | _METHODS | _METHODS | _ANY
_TARGETS = st.sampled_from([b"/", b"/", b"/index.html", b"/index.html", b"/big.bin", b"/hello/x", b"/echo", b"/count/3", b"/upload",
                            b"/upload/fz.bin", b"/.env", b"/%2e%2e/%2e%2e/etc/passwd", b"/a?b=c&d",
                            b"*", b"http://x/index.html", b"//evil", b"/\xff\xfe", b"/%00",
                            b"/" + b"a" * 9000])
_TARGETS = _TARGETS | _TARGETS | _TARGETS | st.binary(max_size=60).map(lambda b: b"/" + b)
_VERSIONS = st.sampled_from([b"HTTP/1.1"] * 8 + [b"HTTP/1.0"] * 2
                            + [b"HTTP/0.9", b"HTTP/2.0", b"HTTP/1.10", b"http/1.1", b"", b"HTTP/1.1 extra"])
_NAMES = st.sampled_from([b"Host", b"Content-Length", b"Transfer-Encoding", b"Connection",
                          b"Expect", b"Range", b"If-None-Match", b"Accept-Encoding", b"Upgrade",
                          b"Cookie", b"X-Forwarded-For", b"Content-Type", b"User-Agent"])
_NAMES = _NAMES | _NAMES | _NAMES | _ANY
_VALUES = st.sampled_from([b"t", b"0", b"-1", b"99999999999999999999", b"chunked", b"gzip, chunked",
                           b"close", b"keep-alive", b"100-continue", b"bytes=0-1,5-", b"bytes=-0",
                           b"*", b"br", b"websocket"])
_VALUES = _VALUES | _VALUES | st.text(max_size=30).map(lambda t: t.encode("utf-8")) | st.binary(max_size=60)


@st.composite
def _chunked(draw: st.DrawFn) -> bytes:
    parts = []
    for _ in range(draw(st.integers(0, 4))):
        body = draw(st.binary(max_size=40))
        size = draw(st.sampled_from([b"%x" % len(body), b"%X" % len(body), b"0x%x" % len(body),
                                     b"%x;ext=1" % len(body), b"%x ;a=\"b\"" % len(body),
                                     b"fffffffffffffffff", b"-1", b"zz", b"%x" % (len(body) + 3)]))
        parts.append(size + b"\r\n" + body + b"\r\n")
    parts.append(draw(st.sampled_from([b"0\r\n\r\n", b"0\r\nTrailer: x\r\n\r\n", b"0\r\n", b""])))
    return b"".join(parts)


@st.composite
def _request(draw: st.DrawFn) -> tuple[bytes, bool]:
    eol = draw(st.sampled_from([b"\r\n"] * 6 + [b"\n", b"\r"]))
    method = draw(_METHODS)
    line = method + b" " + draw(_TARGETS) + b" " + draw(_VERSIONS) + eol
    headers = [(b"Host", b"fuzz")] if draw(st.integers(0, 9)) else []
    headers += draw(st.lists(st.tuples(_NAMES, _VALUES), max_size=4))
    framing = draw(st.sampled_from(["none"] * 4 + ["length", "short", "long", "chunked", "chunked", "both"]))
    body = b""
    if framing in ("length", "short", "long", "both"):
        body = draw(st.binary(max_size=64))
        declared = len(body) + {"length": 0, "both": 0, "short": -1, "long": 5}[framing]
        headers.append((b"Content-Length", b"%d" % max(declared, 0)))
    if framing in ("chunked", "both"):
        headers.append((b"Transfer-Encoding", b"chunked"))
        body = draw(_chunked())
    head = line + b"".join(name + b": " + value + eol for name, value in headers) + eol
    return head + body, method == b"HEAD"


@st.composite
def _plain(draw: st.DrawFn) -> tuple[bytes, bool]:
    """A well-formed request (so that pipelines reach the site and the handlers)."""
    method = draw(st.sampled_from([b"GET", b"GET", b"HEAD", b"POST", b"OPTIONS"]))
    target = draw(st.sampled_from([b"/", b"/index.html", b"/big.bin", b"/echo", b"/hello/x",
                                   b"/upload", b"/nope", b"/.env"]))
    extra = draw(st.sampled_from([b"", b"Range: bytes=0-9\r\n", b"Accept-Encoding: gzip, br\r\n",
                                  b'If-None-Match: "x"\r\n', b"Range: bytes=1-2,4-5\r\n"]))
    body = b"Content-Length: 3\r\n\r\nabc" if method == b"POST" else b"\r\n"
    return method + b" " + target + b" HTTP/1.1\r\nHost: fuzz\r\n" + extra + body, method == b"HEAD"


@st.composite
def _mutated(draw: st.DrawFn) -> tuple[bytes, bool]:
    data, head = draw(_request())
    buf = bytearray(data)
    for _ in range(draw(st.integers(1, 6))):
        if not buf:
            break
        where = draw(st.integers(0, len(buf) - 1))
        kind = draw(st.sampled_from(["flip", "insert", "delete"]))
        if kind == "flip":
            buf[where] = draw(st.integers(0, 255))
        elif kind == "insert":
            buf[where:where] = draw(st.binary(min_size=1, max_size=8))
        else:
            del buf[where:where + draw(st.integers(1, 8))]
    return bytes(buf), head


@st.composite
def examples(draw: st.DrawFn) -> Example:
    parts = draw(st.lists(st.one_of(_plain(), _request(), _request(), _mutated()), min_size=1, max_size=4))
    data = b"".join(p[0] for p in parts)
    if draw(st.integers(0, 5)) == 0:                      # truncated
        data = data[:draw(st.integers(0, max(0, len(data) - 1)))]
    slices = draw(st.lists(st.integers(1, 64), max_size=4))
    return Example(data, len(parts), sum(p[1] for p in parts), slices)


# Byte strings a havoc step splices in: the pieces whose placement decides framing.
_SPLICE = [b"\r\n", b"\r\n\r\n", b"\n", b"\r", b"\x00", b":", b" ", b";", b"\xff", b"0\r\n\r\n",
           b"Transfer-Encoding: chunked\r\n", b"Content-Length: 7\r\n", b"Content-Length: -1\r\n",
           b"Host: h\r\n", b"Expect: 100-continue\r\n", b"Connection: close\r\n", b"HTTP/1.1",
           b"GET / HTTP/1.1\r\nHost: p\r\n\r\n", b"ffffffff\r\n", b"%00", b"/../"]


def mutant(example: Example, rng: random.Random) -> Example:
    """A havoc mutant of a hypothesis example: flips, inserts, deletions, splices, copies.

    Hypothesis gives the structure (requests that get past the parser and reach the
    site and the handlers); a few cheap byte-level steps per mutant then move the
    framing around it, far faster than hypothesis draws an example.  A mutant's HEAD
    count is the number of "HEAD" in its bytes, an upper bound, which only lets the
    judge accept a bodiless answer where a HEAD may have been made.
    """
    buf = bytearray(example.data)
    for _ in range(rng.choice((1, 1, 2, 3, 6))):
        where = rng.randint(0, len(buf))
        step = rng.randrange(5)
        if step == 0 and buf:
            buf[min(where, len(buf) - 1)] = rng.randrange(256)
        elif step == 1:
            buf[where:where] = rng.randbytes(rng.randint(1, 8))
        elif step == 2:
            del buf[where:where + rng.randint(1, 16)]
        elif step == 3:
            buf[where:where] = rng.choice(_SPLICE)
        elif buf:
            start = rng.randrange(len(buf))
            buf[where:where] = buf[start:start + rng.randint(1, 64)]
    data = bytes(buf)
    slices = [rng.randint(1, 64) for _ in range(rng.randrange(3))]
    return Example(data, example.requests, data.count(b"HEAD"), slices)


# -- running an example --------------------------------------------------------------------

def run_example(target: FuzzTarget, example: Example, stats: Stats) -> None:
    with socket.create_connection((target.host, target.port), timeout=CLOSE_WITHIN) as sock:
        data = example.data
        try:
            for size in example.slices:
                if not data:
                    break
                sock.sendall(data[:size])
                data = data[size:]
            if data:
                sock.sendall(data)
            sock.shutdown(socket.SHUT_WR)
        except (BrokenPipeError, ConnectionResetError):
            pass                           # the server closed early: its answer is still read
        received = bytearray()
        deadline = time.monotonic() + CLOSE_WITHIN
        while True:
            sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                chunk = sock.recv(65536)
            except ConnectionResetError:
                break                      # a reset is a close (after an early answer)
            except TimeoutError:
                raise AssertionError(f"server did not close within {CLOSE_WITHIN} s "
                                     f"for {example.data[:200]!r}") from None
            if not chunk:
                break
            received += chunk
            if len(received) > MAX_READ:
                break
    try:
        statuses = check_responses(bytes(received), example.heads)
    except MalformedResponse as exc:
        raise MalformedResponse(f"{exc}\nrequest: {example.data[:300]!r}\n"
                                f"response: {bytes(received[:300])!r}") from None
    stats.examples += 1
    stats.requests += example.requests
    stats.bytes_sent += len(example.data)
    stats.responses += len(statuses)
    for status in statuses:
        stats.statuses[status] = stats.statuses.get(status, 0) + 1


def health_check(target: FuzzTarget) -> None:
    """The process is alive and a fresh client gets 200 for GET /."""
    assert target.alive(), f"server died:\n{target.log()[-3000:]}"
    with socket.create_connection((target.host, target.port), timeout=10) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: control\r\nConnection: close\r\n\r\n")
        reply = b""
        while chunk := sock.recv(65536):
            reply += chunk
    assert reply.startswith(b"HTTP/1.1 200 "), f"control client got {reply[:100]!r}"


def run_fuzz(target: FuzzTarget, max_examples: int, *, seed_value: int | None = None,
             stats: Stats | None = None, mutants: int = MUTANTS) -> Stats:
    """Run up to `max_examples` hypothesis examples; AssertionError (shrunk) on a failure.

    Then `mutants` havoc mutants of every example, outside hypothesis (a failing
    mutant is reported as it is: its derivation is not something hypothesis can shrink).
    """
    stats = stats or Stats()
    generated: list[Example] = []
    config = settings(max_examples=max_examples, deadline=None, database=None,
                      derandomize=seed_value is None, suppress_health_check=list(HealthCheck),
                      phases=[Phase.generate, Phase.shrink], print_blob=False)

    @config
    @given(examples())
    def one(example: Example) -> None:
        run_example(target, example, stats)
        generated.append(example)
        if stats.examples % HEALTH_EVERY == 0:
            health_check(target)

    if seed_value is not None:
        one = seed(seed_value)(one)
    one()
    rng = random.Random(seed_value)
    for example in generated if mutants else ():
        for _ in range(mutants):
            run_example(target, mutant(example, rng), stats)
            if stats.examples % HEALTH_EVERY == 0:
                health_check(target)
    health_check(target)
    return stats


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtest.fuzz", description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=1_000_000, help="requests to send in all")
    parser.add_argument("--batch", type=int, default=2000, help="hypothesis examples per batch")
    parser.add_argument("--seed", type=int, default=1, help="seed of the first batch (then +1 per batch)")
    parser.add_argument("--mutants", type=int, default=8,
                        help="havoc mutants sent per hypothesis example (0: hypothesis only)")
    parser.add_argument("--max-seconds", type=float, default=6 * 3600, help="stop after this long")
    parser.add_argument("--url", default=None, metavar="HOST:PORT",
                        help="fuzz a server already running there instead of starting one")
    args = parser.parse_args(argv)
    started = time.monotonic()
    stats = Stats()
    with tempfile.TemporaryDirectory(prefix="http-fuzz-") as tmp:
        target = FuzzTarget(Path(tmp), args.url)
        try:
            batch = 0
            while stats.requests < args.requests and time.monotonic() - started < args.max_seconds:
                run_fuzz(target, args.batch, seed_value=args.seed + batch, stats=stats,
                         mutants=args.mutants)
                batch += 1
                rate = stats.requests / max(time.monotonic() - started, 1e-9)
                print(f"batch {batch}: {stats.examples} examples, {stats.requests} requests, "
                      f"{stats.responses} responses, {rate:.0f} requests/s", flush=True)
        except AssertionError as exc:
            print(f"FAILED after {stats.examples} examples / {stats.requests} requests: {exc}",
                  file=sys.stderr)
            return 1
        finally:
            target.stop()
    elapsed = time.monotonic() - started
    top = ", ".join(f"{code}: {n}" for code, n in sorted(stats.statuses.items(), key=lambda kv: -kv[1])[:12])
    print(f"done: {stats.examples} examples, {stats.requests} requests, {stats.bytes_sent} bytes sent, "
          f"{stats.responses} responses, 0 failures, server alive, {elapsed:.0f} s\nstatuses: {top}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
