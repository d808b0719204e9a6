"""`pageloan serve --config FILE` and `pageloan check-config FILE` (server/config_file.py).

Every `serve` flag is a key of `[server]`; the command line overrides the file; a
bad file is refused at start with every problem naming file, line and key.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from harness import free_port, wait_for_port

from server.cli import build_parser
from server.config import ConfigFileError, apply_config_file, load_config_file

REPO = Path(__file__).resolve().parent.parent


def write(path: Path, text: str) -> Path:
    path.write_text(textwrap.dedent(text).lstrip())
    return path


def run(*args: str, timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "server", *args], cwd=REPO, capture_output=True, text=True,
                          env=dict(os.environ, PYTHONPATH=str(REPO)), timeout=timeout)


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "index.html").write_text(f"site {name}\n")
    return tmp_path


def test_server_keys_are_the_serve_flags(tree):
    config = write(tree / "site.toml", """
        [server]
        host = "127.0.0.2"
        port = 9001
        workers = 3
        max-body-size = "16M"
        keepalive_timeout = 5.5
        metrics = true
        root = "a"
        autoindex = true
        cache-control = { "*.css" = "max-age=60" }
        redirect = ["/old /new 302"]
        log-level = "warning"
    """)
    args, sites = apply_config_file(config, build_parser, ["serve", "--config", str(config)])
    assert sites == []
    assert (args.host, args.port, args.workers) == ("127.0.0.2", 9001, 3)
    assert args.max_body_size == 16 << 20 and args.keepalive_timeout == 5.5
    assert args.metrics is True and args.autoindex is True
    assert args.root == tree / "a"                 # relative to the file, not the working directory
    assert args.cache_control == [("*.css", "max-age=60")]
    assert args.redirect[0].status == 302 and args.log_level == "warning"


def test_flags_override_the_file(tree):
    config = write(tree / "site.toml", """
        [server]
        port = 9001
        workers = 3
        autoindex = true
    """)
    argv = ["serve", "--config", str(config), "--port", "9100", "--metrics"]
    args, _sites = apply_config_file(config, build_parser, argv)
    assert (args.port, args.workers, args.metrics, args.autoindex) == (9100, 3, True, True)


def test_problems_name_file_line_and_key(tree):
    config = write(tree / "bad.toml", """
        # a comment first, so that lines are not trivially counted
        [server]
        port = "eighty"
        workers = 2
        no-such-flag = 1
        log-level = "loud"

        [[site]]
        hosts = ["a.example"]
        root = "a"
        autoindex = "yes"

        [[site]]
        hosts = ["b.example"]
        root = "missing"
        redirects = [ { from = "old", to = "/new" } ]
        colour = "blue"

        [[site.auth]]
        path = "/private/*"
        htpasswd = "nope.htpasswd"
    """)
    with pytest.raises(ConfigFileError) as caught:
        apply_config_file(config, build_parser, ["serve", "--config", str(config)])
    problems = caught.value.problems
    text = "\n".join(problems)
    assert f"{config}:3: server.port: 'eighty' is not a whole number" in text
    assert f"{config}:5: server.no-such-flag: unknown option" in text
    assert f"{config}:6: server.log-level: 'loud' is not one of debug, info, warning, error" in problems
    assert f"{config}:11: site[0].autoindex: expected true or false, got 'yes'" in problems
    assert f"{config}:15: site[1].root: {tree / 'missing'} is not a directory" in problems
    assert f"{config}:16: site[1].redirects[0]: path 'old' must start with '/'" in problems
    assert f"{config}:17: site[1].colour: unknown site option" in text
    assert f"{config}:21: site[1].auth[0].htpasswd: {tree / 'nope.htpasswd'}: cannot read" in text


def test_syntax_errors_name_the_line(tree):
    config = write(tree / "syntax.toml", """
        [server]
        port = 8080
        workers = = 2
    """)
    with pytest.raises(ConfigFileError, match=r"syntax\.toml:3: "):
        load_config_file(config)


def test_check_config_exit_status(tree):
    good = write(tree / "good.toml", """
        [[site]]
        hosts = ["a.example"]
        root = "a"

        [[site]]
        hosts = ["b.example"]
        root = "b"
        default = true
        spa-fallback = "index.html"
        rewrites = [ { from = "/app/*", to = "/index.html" } ]
        [[site.cors]]
        path = "/api/*"
        origins = ["https://a.example"]
        max-age = 60
    """)
    done = run("check-config", str(good))
    assert done.returncode == 0, done.stderr
    assert "OK (2 sites: b.example, a.example)" in done.stdout      # the default first
    bad = write(tree / "bad.toml", """
        [[site]]
        root = "a"
        [[site]]
        root = "b"
        default = true
        hosts = ["x.example"]
        [[site]]
        root = "b"
        default = true
        hosts = ["X.example"]
    """)
    done = run("check-config", str(bad))
    assert done.returncode == 2
    assert "more than one site says default = true" in done.stderr
    assert f"{bad}:10: site[2].hosts: 'X.example' is already a host of site[1]" in done.stderr
    assert run("check-config", str(tree / "absent.toml")).returncode == 2


def test_serve_refuses_a_bad_config_at_start(tree):
    bad = write(tree / "bad.toml", """
        [server]
        autoindex = 1
    """)
    done = run("serve", "--config", str(bad), "--port", "0")
    assert done.returncode == 2
    assert f"{bad}:2: server.autoindex: expected true or false, got 1" in done.stderr


def test_serve_with_a_config_file_serves_its_site(tree):
    port = free_port()
    config = write(tree / "site.toml", f"""
        [server]
        port = {port}
        host = "127.0.0.1"
        root = "a"
    """)
    proc = subprocess.Popen([sys.executable, "-m", "server", "serve", "--config", str(config)], cwd=REPO,
                            env=dict(os.environ, PYTHONPATH=str(REPO)), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        wait_for_port(port, proc=proc)
        out = subprocess.run(["curl", "-s", f"http://127.0.0.1:{port}/"], capture_output=True, timeout=10).stdout
        assert out == b"site a\n"
    finally:
        proc.terminate()
        proc.wait(10)


# -- python -m http.server habits ------------------------------------------------------------------
def test_a_lone_number_is_the_port(server_process, tmp_path, monkeypatch):
    from server.config import config_from_args

    args = build_parser().parse_args(["serve", "8123"])
    config = config_from_args(args)
    assert config.server.port == 8123
    assert config.app.root.name == "static"                    # the bundled site, as with no ROOT
    args = build_parser().parse_args(["serve", str(tmp_path), "8124"])
    config = config_from_args(args)
    assert (config.server.port, config.app.root) == (8124, tmp_path.resolve())
    # A directory named like a number wins: it is the root.
    (tmp_path / "8000").mkdir()
    monkeypatch.chdir(tmp_path)
    config = config_from_args(build_parser().parse_args(["serve", "8000"]))
    assert config.app.root == (tmp_path / "8000").resolve() and config.server.port == 8080
    with pytest.raises(SystemExit, match="port given twice"):
        config_from_args(build_parser().parse_args(["serve", "8125", "--port", "9000"]))


def test_version():
    done = run("--version")
    assert done.returncode == 0 and done.stdout.startswith("pageloan ")


def test_serve_dot_lists_only_with_autoindex_and_an_index_wins(server_process, tmp_path):
    """`pageloan serve .` (the working directory): no listing by default; with
    --autoindex a directory without an index is listed, one with an index is served by it."""
    import subprocess as sp

    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "guide.txt").write_text("guide\n")
    (tmp_path / "app").mkdir()
    (tmp_path / "app" / "index.html").write_text("the app\n")

    def get(url: str) -> tuple[str, bytes]:
        done = sp.run(["curl", "-s", "-w", "\n%{http_code}", url], capture_output=True, timeout=10, check=True)
        body, _, code = done.stdout.rpartition(b"\n")
        return code.decode(), body

    plain = server_process([str(tmp_path)])
    assert get(plain.url + "/docs/")[0] == "404"
    listed = server_process([str(tmp_path), "--autoindex"])
    code, body = get(listed.url + "/docs/")
    assert code == "200" and b"guide.txt" in body
    assert get(listed.url + "/app/") == ("200", b"the app\n")
