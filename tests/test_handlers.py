"""Drop-in handler modules: discovery, the contract, start-up failures, and --reload.

The contract of issue 4 is tested verbatim, in-process over a real socket.  The
failure and reload behaviour is tested on the real command, `python -m server serve
ROOT --handlers DIR`, in a subprocess: exit status and stderr for a module that
does not import, and for --reload a keep-alive connection that keeps working while
modules are changed, broken and added under it.
"""

from __future__ import annotations

import http.client
import inspect
import json
import logging
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from harness import fetch_on, write_modules
from polling import until, wait_until

from server.framework.build import AppOptions, build_application
from server.framework.loader import PACKAGE_PREFIX, HandlerLoadError

REPO = Path(__file__).resolve().parent.parent

# The bundled handlers/hello.py is the contract as the docs show it: test that very file.
CONTRACT = (REPO / "handlers" / "hello.py").read_text()



async def test_the_contract_verbatim(handler_site):
    site = await handler_site({"hello.py": CONTRACT})
    reply = await site.get("/hello/world")
    assert reply.status == 200
    assert reply.header("Content-Type") == "application/json"
    assert reply.json() == {"hello": "world"}

    posted = {"list": [1, 2, 3], "text": "héllo", "nested": {"ok": True}}
    reply = await site.fetch("POST", "/echo", body=b'{"list":[1,2,3],"text":"h\\u00e9llo","nested":{"ok":true}}',
                             headers={"Content-Type": "application/json"})
    assert (reply.status, reply.json()) == (200, posted)
    assert reply.header("Content-Type") == "application/json"


async def test_route_table_and_decorators_both_register(handler_site):
    module = '''
    from server.framework.routing import Route

    def listing(request):
        return ["a", "b"]

    def create(request):
        return {"made": True}, 201

    def plain(request):
        return "from a tuple entry"

    ROUTES = [
        Route("/things", listing),
        Route("/things", create, methods=["POST"]),
        ("/plain", plain),
        ("/plain", plain, ["PUT"]),
    ]
    '''
    site = await handler_site({"table.py": module})
    assert (await site.get("/things")).json() == ["a", "b"]
    reply = await site.fetch("POST", "/things")
    assert (reply.status, reply.json()) == (201, {"made": True})
    assert (await site.get("/plain")).text == "from a tuple entry"
    assert (await site.fetch("PUT", "/plain")).status == 200


async def test_modules_live_in_a_private_package_and_share_helpers(handler_site):
    # A handler module named like a stdlib module must not shadow it, nor be shadowed.
    modules = {
        "json.py": '''
            import json as stdlib_json
            from server import route
            from ._shared import greeting

            @route("/which-json")
            def which(request):
                return {"stdlib": stdlib_json.__name__, "me": __name__, "greeting": greeting()}
            ''',
        "_shared.py": '''
            def greeting():
                return "shared helper"
            ''',
    }
    site = await handler_site(modules)
    reply = (await site.get("/which-json")).json()
    assert reply["stdlib"] == "json"
    assert reply["me"].startswith(PACKAGE_PREFIX) and reply["me"].endswith(".json")
    assert reply["greeting"] == "shared helper"
    assert sys.modules["json"].__name__ == "json"
    # "_shared.py" is a helper: imported on demand, not discovered as a handler module
    assert [r.name for r in site.app.router.routes] == ["which"]


def test_broken_module_refuses_to_build(tmp_path: Path):
    directory = write_modules(tmp_path / "h", {
        "good.py": "from server import route\n@route('/ok')\ndef ok(request):\n    return 'ok'\n",
        "broken.py": "from server import route\nVALUE = 1 / 0\n",
    })
    with pytest.raises(HandlerLoadError) as caught:
        build_application(AppOptions(handlers=directory))
    message = str(caught.value)
    assert "broken.py" in message and "ZeroDivisionError" in message and "Traceback" in message


def test_routes_clashing_across_modules_refuse_to_build(tmp_path: Path):
    source = "from server import route\n@route('/same')\ndef same(request):\n    return 'x'\n"
    directory = write_modules(tmp_path / "h", {"a.py": source, "b.py": source})
    with pytest.raises(HandlerLoadError, match="already routed"):
        build_application(AppOptions(handlers=directory))


def _serve_command(root: Path, handlers: Path, port: int, *extra: str) -> list[str]:
    return [sys.executable, "-m", "server", "serve", str(root), "--handlers", str(handlers),
            "--host", "127.0.0.1", "--port", str(port), *extra]


def test_import_failure_exits_nonzero_with_traceback_on_stderr(tmp_path: Path):
    handlers = write_modules(tmp_path / "handlers", {
        "fine.py": "from server import route\n",
        "oops.py": textwrap.dedent('''
            from server import route

            def helper():
                raise RuntimeError("database is not configured")

            helper()
            '''),
    })
    root = tmp_path / "root"
    root.mkdir()
    env = dict(os.environ, PYTHONPATH=str(REPO))
    done = subprocess.run(_serve_command(root, handlers, 0), cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 2
    assert "cannot start" in done.stderr
    assert "oops.py" in done.stderr
    assert "Traceback (most recent call last)" in done.stderr
    assert "RuntimeError: database is not configured" in done.stderr
    assert "helper()" in done.stderr      # the traceback shows the handler's own lines


VERSIONED = '''
from server import route

@route("/version")
def version(request):
    return {{"version": {version}}}
'''


def _rewrite(path: Path, text: str) -> None:
    """Replace a file's content and make sure its mtime moves (coarse clocks)."""
    before = path.stat().st_mtime_ns if path.exists() else 0
    path.write_text(textwrap.dedent(text))
    after = path.stat().st_mtime_ns
    if after <= before:
        os.utime(path, ns=(before + 1_000_000, before + 1_000_000))


def _poll(conn: http.client.HTTPConnection, path: str, want: object, timeout: float = 10.0) -> object:
    """GET `path` on `conn` until it answers `want` (JSON, or the status if not 200)."""
    seen: list[object] = []

    def answers() -> bool:
        reply = fetch_on(conn, "GET", path)
        seen.append(reply.json() if reply.status == 200 else reply.status)
        return seen[-1] == want

    wait_until(answers, f"GET {path} to answer {want!r}", timeout=timeout, interval=0.1)
    return seen[-1]


@pytest.mark.slow
def test_reload_picks_up_changes_without_dropping_the_socket(tmp_path: Path, server_process):
    handlers = tmp_path / "handlers"
    handlers.mkdir()
    module = handlers / "versioned.py"
    _rewrite(module, VERSIONED.format(version=1))
    root = tmp_path / "root"
    root.mkdir()
    log_path = tmp_path / "stderr.log"
    with open(log_path, "wb") as log_file:
        running = server_process([str(root), "--handlers", str(handlers), "--reload"], stderr=log_file)

    conn = http.client.HTTPConnection("127.0.0.1", running.port, timeout=10)
    assert fetch_on(conn, "GET", "/version").json() == {"version": 1}
    local = conn.sock.getsockname()

    _rewrite(module, VERSIONED.format(version=2))
    assert _poll(conn, "/version", {"version": 2}) == {"version": 2}

    # A broken edit keeps the last good version in service, on the same connection.
    _rewrite(module, "from server import route\n\n@route('/version')\ndef version(request:\n")
    # The reloader has seen the broken file once it logs that it kept the old one.
    wait_until(lambda: "keeping the last good version" in log_path.read_text(), "the failed reload's log line")
    assert fetch_on(conn, "GET", "/version").json() == {"version": 2}

    # A new module is discovered; the fixed module comes back.
    _rewrite(handlers / "added.py", "from server import route\n@route('/added')\ndef added(request):\n"
                                    "    return ['new']\n")
    _rewrite(module, VERSIONED.format(version=3))
    assert _poll(conn, "/added", ["new"]) == ["new"]
    assert _poll(conn, "/version", {"version": 3}) == {"version": 3}

    # Removing a module removes its routes.
    (handlers / "added.py").unlink()
    assert _poll(conn, "/added", 404) == 404

    assert conn.sock is not None and conn.sock.getsockname() == local   # never reconnected
    conn.close()
    fresh = http.client.HTTPConnection("127.0.0.1", running.port, timeout=10)
    assert fetch_on(fresh, "GET", "/version").json() == {"version": 3}  # still listening
    fresh.close()

    assert running.stop() == 0
    stderr = log_path.read_text()
    assert "keeping the last good version" in stderr
    assert "SyntaxError" in stderr


async def test_bundled_examples_load(handler_site):
    site = await handler_site(directory=REPO / "handlers", root=REPO / "static")
    assert (await site.get("/hello/world")).json() == {"hello": "world"}
    assert (await site.fetch("POST", "/echo", body=b"[1, 2]")).json() == [1, 2]
    assert (await site.get("/")).status == 200        # the static site beside them
    css = (REPO / "static" / "style.css").read_bytes()
    index = (REPO / "static" / "index.html").read_bytes()
    reply = await site.get("/gather")
    assert reply.body == (f"----- style.css ({len(css)} bytes) -----\n".encode() + css + b"\n"
                          + f"----- index.html ({len(index)} bytes) -----\n".encode() + index + b"\n")
    reply = await site.get("/gather?bytes=10")
    assert css[:10] in reply.body and css[:11] not in reply.body
    assert (await site.get("/count/3")).text == "1\n2\n3\n"


def _build_reloadable(tmp_path: Path, modules: dict[str, str]):
    directory = write_modules(tmp_path / "live", modules)
    app = build_application(AppOptions(handlers=directory, reload=True))
    return directory, app


async def _get_json(app, path: str):
    from server.http.request import Request
    answer = app(Request("GET", path.encode(), "1.1", [], True, None, None))
    if inspect.isawaitable(answer):
        answer = await answer
    return answer.status, (json.loads(answer.payload[0]) if answer.payload else None)


LIVE = '''
from server import route
from server.framework.hooks import on_shutdown, on_startup
from ._helper import VALUE

@on_startup
def started(app):
    app.state.setdefault("events", []).append(("start", VALUE))

@on_shutdown
def stopped(app):
    app.state.setdefault("events", []).append(("stop", VALUE))

@route("/value")
def value(request):
    return {"value": VALUE}
'''


async def test_helper_change_reloads_dependents_and_cycles_lifecycle_hooks(tmp_path: Path):
    directory, app = _build_reloadable(tmp_path, {"live.py": LIVE, "_helper.py": "VALUE = 1\n"})
    await app.startup()
    try:
        assert await _get_json(app, "/value") == (200, {"value": 1})
        _rewrite(directory / "_helper.py", "VALUE = 2\n")
        assert app.reloader.check() is True
        assert await _get_json(app, "/value") == (200, {"value": 2})
        await until(lambda: len(app.state.events) == 3, "the reload's lifecycle hooks")  # they run in a task
        assert app.state.events == [("start", 1), ("stop", 1), ("start", 2)]
        assert app.reloader.check() is False                  # nothing changed since
    finally:
        await app.shutdown()


async def test_reload_that_would_clash_keeps_the_last_good_set(tmp_path: Path, caplog):
    one = "from server import route\n@route('/one')\ndef one(request):\n    return 'one'\n"
    directory, app = _build_reloadable(tmp_path, {"a.py": one})
    await app.startup()
    try:
        _rewrite(directory / "b.py", one)                     # same route in a second module
        with caplog.at_level(logging.ERROR, logger="pageloan.handlers"):
            assert app.reloader.check() is False
        assert "already routed" in caplog.text
        assert [r.origin for r in app.router.routes] == ["a.py"]
        # Fixing the other module brings the clashing one in, though it did not change.
        _rewrite(directory / "a.py", one.replace("'/one'", "'/two'"))
        assert app.reloader.check() is True
        assert sorted(r.pattern for r in app.router.routes) == ["/one", "/two"]
        _rewrite(directory / "c.py", "from server import route\n@route('/c')\ndef c(request):\n"
                                     "    return ['c']\n")
        assert app.reloader.check() is True
        assert await _get_json(app, "/c") == (200, ["c"])
    finally:
        await app.shutdown()
