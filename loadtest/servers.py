"""The servers under test and how each one is started for one scenario.

Every server gets one worker, a fresh run directory, and the same document root. A
ServerSpec says which protocols a server speaks, what it needs (a tool, the peers'
venv) and how to build its command line; the harness adds CPU pinning around it.
pageloan is started from this repository with the interpreter running the harness.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from loadtest import PACKAGE_DIR, REPO_ROOT, nginx_conf
from loadtest.process import free_port
from loadtest.scenarios import Scenario

FTP_USER = ("bench", "bench-password")
PEERS_DIR = PACKAGE_DIR / "peers"
BENCH_HANDLER = '''from server import route

@route("/json")
async def json_hello(request):
    return {"message": "Hello, World!"}
'''


@dataclass
class Context:
    """What a launch needs to know about this run."""
    docroot: Path
    ftproot: Path
    rundir: Path
    tools: dict[str, str] = field(default_factory=dict)
    peer_python: Path | None = None


@dataclass
class Launch:
    """A command line ready to start, and the port that says it is up."""
    argv: list[str]
    env: dict[str, str]
    port: int


@dataclass(frozen=True)
class ServerSpec:
    name: str
    summary: str
    protocols: frozenset[str]
    build: Callable[[Context, Scenario], Launch]
    tools: tuple[str, ...] = ()
    venv: bool = False
    on_request: bool = False      # only run when named in --servers (or a flag)


def _clean_env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    return env


def pageloan_env() -> dict[str, str]:
    """The environment pageloan runs in: this repository first on PYTHONPATH."""
    env = _clean_env()
    env["PYTHONPATH"] = str(REPO_ROOT)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def users_file(rundir: Path) -> Path:
    """Write a pageloan FTP users file with FTP_USER, hashed by `server hash-password`."""
    name, password = FTP_USER
    done = subprocess.run(
        [sys.executable, "-m", "server", "hash-password"], input=password + "\n",
        capture_output=True, text=True, timeout=60, env=pageloan_env(), cwd=rundir,
    )
    lines = [ln.strip() for ln in done.stdout.splitlines() if ln.strip()]
    if done.returncode != 0 or not lines:
        raise RuntimeError(f"server hash-password failed: {done.stderr.strip()[-400:]}")
    line = lines[-1]
    parts = line.split(":")
    hashed = parts[1] if len(parts) == 3 else line  # accept a full "name:hash:perms" line too
    path = rundir / "ftp-users"
    path.write_text(f"{name}:{hashed}:rw\n")
    return path


ASGI_APP = "asgi_bench_app"       # peers/asgi_bench_app.py: the app every ASGI server runs


def _pageloan(ctx: Context, scenario: Scenario) -> Launch:
    if scenario.protocol == "asgi":
        port = free_port()
        env = pageloan_env()
        env["ASGI_BENCH_ROOT"] = str(ctx.docroot)
        # No ROOT: the application answers everything, its files by pathsend; with
        # asgi_root the docroot is served first, as `pageloan serve ROOT --asgi` does.
        root = [str(ctx.docroot)] if scenario.asgi_root else []
        argv = [sys.executable, "-m", "server", "serve", *root, "--asgi", f"{ASGI_APP}:app",
                "--app-dir", str(PEERS_DIR), "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
        return Launch(argv, env, port)
    http_port = free_port()
    root = ctx.ftproot if scenario.protocol == "ftp" else ctx.docroot
    argv = [sys.executable, "-m", "server", "serve", str(root), "--host", "127.0.0.1",
            "--port", str(http_port), "--workers", "1"]
    if scenario.expect == "json":
        handlers = ctx.rundir / "handlers"
        handlers.mkdir()
        (handlers / "bench.py").write_text(BENCH_HANDLER)
        argv += ["--handlers", str(handlers)]
    if scenario.protocol == "ftp":
        ftp_port = free_port()
        argv += ["--ftp-port", str(ftp_port), "--ftp-users", str(users_file(ctx.rundir)),
                 "--ftp-anonymous"]
        return Launch(argv, pageloan_env(), ftp_port)
    return Launch(argv, pageloan_env(), http_port)


def _nginx(open_file_cache: bool) -> Callable[[Context, Scenario], Launch]:
    def build(ctx: Context, scenario: Scenario) -> Launch:
        port = free_port()
        conf = nginx_conf.write_config(port, ctx.docroot, ctx.rundir, open_file_cache)
        return Launch(nginx_conf.argv(ctx.tools["nginx"], conf, ctx.rundir), _clean_env(), port)
    return build


def _asgi_peer(server: str) -> Callable[[Context, Scenario], Launch]:
    """The ASGI bench app (peers/asgi_bench_app.py) on `server` (uvicorn or granian)."""
    def build(ctx: Context, scenario: Scenario) -> Launch:
        port = free_port()
        argv = [str(ctx.peer_python), str(PEERS_DIR / f"{ASGI_APP}.py"), str(ctx.docroot), str(port), server]
        return Launch(argv, _clean_env(), port)
    return build


def _python_peer(script: str, asgi_server: str | None = None) -> Callable[[Context, Scenario], Launch]:
    def build(ctx: Context, scenario: Scenario) -> Launch:
        if scenario.protocol == "asgi" and asgi_server is not None:
            return _asgi_peer(asgi_server)(ctx, scenario)
        port = free_port()
        argv = [str(ctx.peer_python), str(PEERS_DIR / script)]
        if scenario.protocol == "ftp":
            argv += [str(ctx.ftproot), str(port), *FTP_USER]
        else:
            argv += [str(ctx.docroot), str(port)]
        return Launch(argv, _clean_env(), port)
    return build


HTTP, FTP, ASGI = frozenset({"http"}), frozenset({"ftp"}), frozenset({"asgi"})
SERVERS: tuple[ServerSpec, ...] = (
    ServerSpec("pageloan", "this repository, `python -m server serve` (ASGI: `--asgi`), 1 worker",
               HTTP | FTP | ASGI, _pageloan),
    ServerSpec("nginx", "nginx, 1 worker, sendfile + tcp_nopush", HTTP, _nginx(False),
               tools=("nginx",)),
    ServerSpec("nginx+ofc", "nginx as above plus open_file_cache", HTTP, _nginx(True),
               tools=("nginx",), on_request=True),
    ServerSpec("aiohttp", "aiohttp web.static + handler, uvloop", HTTP,
               _python_peer("aiohttp_app.py"), venv=True),
    ServerSpec("sanic", "Sanic single process, app.static + handler", HTTP,
               _python_peer("sanic_app.py"), venv=True),
    ServerSpec("uvicorn", "uvicorn (httptools, uvloop) + Starlette StaticFiles", HTTP | ASGI,
               _python_peer("starlette_app.py", asgi_server="uvicorn"), venv=True),
    ServerSpec("granian", "granian (ASGI, 1 worker, 1 runtime thread, uvloop) + the same Starlette app",
               HTTP | ASGI, _python_peer("granian_app.py", asgi_server="granian"), venv=True),
    ServerSpec("pyftpdlib", "pyftpdlib FTPServer (sendfile on)", FTP,
               _python_peer("ftp_app.py"), venv=True),
)
BY_NAME: dict[str, ServerSpec] = {s.name: s for s in SERVERS}
