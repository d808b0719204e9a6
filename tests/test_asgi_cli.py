"""`pageloan serve --asgi`: start-up errors named, lifespan failures fatal, what is served."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent


def _run(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    """A `serve` expected to exit by itself (it cannot start)."""
    cmd = [sys.executable, "-m", "server", "serve", *args, "--app-dir", str(TESTS),
           "--host", "127.0.0.1", "--port", "0"]
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize(("spec", "named"), [
    ("no_such_module_here:app", "'no_such_module_here'"),
    ("asgi_broken_apps:missing", "'missing'"),
    ("asgi_broken_apps", "MODULE:ATTRIBUTE"),
    ("asgi_broken_apps:not_an_app", "not an ASGI application"),
])
def test_import_errors_name_the_culprit_and_exit_2(spec: str, named: str) -> None:
    done = _run("--asgi", spec)
    assert done.returncode == 2
    assert named in done.stderr


def test_startup_failure_exits_nonzero_with_the_apps_message() -> None:
    done = _run("--asgi", "asgi_broken_apps:failing_startup")
    assert done.returncode != 0
    assert "database unreachable at startup" in done.stderr


def test_raw_startup_failed_message_is_printed() -> None:
    done = _run("--asgi", "asgi_broken_apps:raw_startup_failed")
    assert done.returncode != 0
    assert "config file missing: /etc/app.toml" in done.stderr


@pytest.mark.parametrize(("flags", "named"), [
    (["--handlers", "."], "--handlers"),
    (["--forwarded-allow-ips", "not-an-ip"], "--forwarded-allow-ips"),
    (["--asgi-root-path", "api"], "--asgi-root-path"),
])
def test_bad_flags_are_named(flags: list[str], named: str) -> None:
    done = _run("--asgi", "asgi_broken_apps:make_app", "--factory", *flags)
    assert done.returncode != 0
    assert named in done.stderr


def test_factory_app_alone_serves_everything(server_process: Any) -> None:
    proc = server_process(["--asgi", "asgi_broken_apps:make_app", "--factory", "--app-dir", str(TESTS)])
    # No bundled site, no bundled handlers: "/" and "/index.html" are the app's.
    for path in ("/", "/index.html", "/hello"):
        r = httpx.get(proc.url + path)
        assert r.text == f"made by factory {path}"


def test_root_beside_the_app_answers_first(server_process: Any, tmp_path: Path) -> None:
    (tmp_path / "present.txt").write_text("from the static site\n")
    proc = server_process([str(tmp_path), "--asgi", "asgi_broken_apps:make_app", "--factory",
                           "--app-dir", str(TESTS)])
    assert httpx.get(proc.url + "/present.txt").text == "from the static site\n"
    assert httpx.get(proc.url + "/absent.txt").text == "made by factory /absent.txt"
    assert httpx.post(proc.url + "/present.txt").text == "made by factory /present.txt"


def test_metrics_flag_serves_prometheus_text_before_the_app(server_process: Any) -> None:
    proc = server_process(["--asgi", "asgi_broken_apps:make_app", "--factory", "--app-dir", str(TESTS),
                           "--metrics"])
    assert httpx.get(proc.url + "/x").text == "made by factory /x"
    text = httpx.get(proc.url + "/metrics").text
    assert "pageloan_responses_total" in text
