"""Site rules (server/static/rules.py) with curl: redirects, rewrites, basic auth, CORS, SPA
fallback, OPTIONS, and the built-in error pages.

Servers run in-process (a loop in a thread) or as `pageloan serve` with the flags;
the htpasswd file is written by Debian's `htpasswd -B` where present, and bcrypt,
argon2 and scrypt lines are also made with the libraries, so all three verify.
"""

from __future__ import annotations

import base64
import shutil
import subprocess
import time
from pathlib import Path

import bcrypt
import pytest
from argon2 import PasswordHasher
from harness import ThreadedServer

from server.core.passwords import hash_password
from server.framework.application import Application
from server.static.options import StaticOptions, static_site
from server.static.rules import (
    AuthRule,
    RuleError,
    RuleSpec,
    load_htpasswd,
    make_auth,
    make_cors,
    parse_redirect,
)

CURL = shutil.which("curl")
HTPASSWD = shutil.which("htpasswd")
needs_curl = pytest.mark.skipif(CURL is None, reason="curl is not installed")


@pytest.fixture
def root(tmp_path: Path) -> Path:
    site = tmp_path / "site"
    (site / "new").mkdir(parents=True)
    (site / "private").mkdir()
    (site / "api").mkdir()
    (site / "index.html").write_text("<!doctype html><title>app</title><p>the app shell</p>")
    (site / "new" / "page.html").write_text("the new page")
    (site / "private" / "secret.txt").write_text("the secret")
    (site / "api" / "data.json").write_text('{"answer": 42}')
    (site / "logo.txt").write_text("a logo")
    return site


@pytest.fixture
def users(tmp_path: Path) -> Path:
    """An htpasswd file: alice by bcrypt, bob by argon2, carol by scrypt."""
    path = tmp_path / "users.htpasswd"
    lines = [
        "# made for the test",
        "alice:" + bcrypt.hashpw(b"wonderland", bcrypt.gensalt(rounds=4)).decode().replace("$2b$", "$2y$"),
        "bob:" + PasswordHasher(time_cost=1, memory_cost=8192).hash("builder"),
        "carol:" + hash_password("singer"),
    ]
    path.write_text("\n".join(lines) + "\n")
    return path


def serve(root: Path, **spec) -> ThreadedServer:
    site = static_site(root, StaticOptions(rules=RuleSpec(**spec), compress=False))
    running = ThreadedServer(Application(site)).start()
    running.site = site  # type: ignore[attr-defined]
    return running


@pytest.fixture
def servers():
    started: list[ThreadedServer] = []

    def start(root: Path, **spec) -> ThreadedServer:
        running = serve(root, **spec)
        started.append(running)
        return running

    yield start
    for running in started:
        running.stop()


def curl(url: str, *args: str) -> tuple[int, dict[str, str], bytes]:
    done = subprocess.run([CURL, "-s", "-S", "-D", "-", "-o", "/dev/stdout", *args, url],
                          capture_output=True, timeout=20, check=True)
    head, _, body = done.stdout.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        key = name.strip().lower()
        headers[key] = headers[key] + ", " + value.strip() if key in headers else value.strip()
    return int(lines[0].split()[1]), headers, body


# -- redirects and rewrites -------------------------------------------------------------------------
@needs_curl
def test_exact_and_prefix_redirects(servers, root):
    running = servers(root, redirects=(
        parse_redirect("/old.html /new/page.html"),
        parse_redirect("/blog/* https://blog.example/$rest 308"),
        parse_redirect("/docs/* /new/$rest?from=$uri 302"),
        parse_redirect("/moved /new/page.html 307"),
    ))
    status, h, _ = curl(running.url + "/old.html?x=1")
    assert (status, h["location"]) == (301, "/new/page.html?x=1")        # the query is kept
    status, h, _ = curl(running.url + "/blog/2024/hello%20world")
    assert (status, h["location"]) == (308, "https://blog.example/2024/hello%20world")
    status, h, _ = curl(running.url + "/blog")
    assert (status, h["location"]) == (308, "https://blog.example/")
    status, h, _ = curl(running.url + "/docs/a/b")
    assert (status, h["location"]) == (302, "/new/a/b?from=/docs/a/b")
    status, h, _ = curl(running.url + "/moved")
    assert status == 307
    # curl follows to the real file.
    followed = subprocess.run([CURL, "-s", "-L", "-w", "%{http_code}", running.url + "/old.html"],
                              capture_output=True, timeout=20, check=True).stdout
    assert followed == b"the new page200"
    # Spellings of the same path meet the same rule.
    status, h, _ = curl(running.url + "/./old%2Ehtml", "--path-as-is")
    assert (status, h["location"]) == (301, "/new/page.html")


@needs_curl
def test_rewrite_is_internal(servers, root):
    running = servers(root, redirects=(parse_redirect("/app/* /index.html", rewrite=True),
                                       parse_redirect("/latest /new/page.html", rewrite=True)))
    status, h, body = curl(running.url + "/app/settings/profile")
    assert status == 200 and b"the app shell" in body and "location" not in h
    assert h["content-type"] == "text/html; charset=utf-8"
    status, _h, body = curl(running.url + "/latest")
    assert (status, body) == (200, b"the new page")


def test_bad_rules_are_refused():
    for text in ("old /new", "/old", "/a*b /x", "/old /new 200", "/old /new $nope", "/x $rest"):
        with pytest.raises(RuleError):
            parse_redirect(text)
    with pytest.raises(RuleError):
        parse_redirect("/app/* https://elsewhere.example/", rewrite=True)
    with pytest.raises(RuleError):
        make_cors("/api/*", ["*"], credentials=True)
    with pytest.raises(RuleError):
        make_cors("/api/*", ["https://a.example/path"])


# -- SPA fallback ----------------------------------------------------------------------------------
@needs_curl
def test_spa_fallback_serves_the_shell_for_paths_without_an_extension(servers, root):
    running = servers(root, spa_fallback="index.html")
    for path in ("/settings", "/users/42/edit", "/deep/link/"):
        status, h, body = curl(running.url + path)
        assert status == 200 and b"the app shell" in body, path
        assert h["content-type"] == "text/html; charset=utf-8"
    status, _h, _body = curl(running.url + "/missing.js")
    assert status == 404
    status, _h, body = curl(running.url + "/logo.txt")
    assert (status, body) == (200, b"a logo")                # real files still win


def test_spa_fallback_must_exist(root):
    with pytest.raises(RuleError, match="app.html"):
        static_site(root, StaticOptions(rules=RuleSpec(spa_fallback="app.html")))


# -- basic auth --------------------------------------------------------------------------------------
def _basic(user: str, password: str) -> str:
    return "Authorization: Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


@needs_curl
def test_basic_auth_with_bcrypt_argon2_and_scrypt(servers, root, users):
    running = servers(root, auth=(make_auth("/private/*", users, "Staff only"),))
    status, h, body = curl(running.url + "/private/secret.txt")
    assert status == 401
    assert h["www-authenticate"] == 'Basic realm="Staff only", charset="UTF-8"'
    assert b"the secret" not in body and b"401" in body
    for user, password in (("alice", "wonderland"), ("bob", "builder"), ("carol", "singer")):
        status, _h, body = curl(running.url + "/private/secret.txt", "-u", f"{user}:{password}")
        assert (status, body) == (200, b"the secret"), user
        status, _h, _body = curl(running.url + "/private/secret.txt", "-u", f"{user}:wrong")
        assert status == 401, user
    status, _h, _body = curl(running.url + "/private/secret.txt", "-u", "mallory:wonderland")
    assert status == 401
    # Other spellings of the guarded path are guarded too.
    for path in ("/private//secret.txt", "/./private/secret.txt", "/priv%61te/secret.txt", "/private/"):
        status, _h, _body = curl(running.url + path, "--path-as-is")
        assert status == 401, path
    status, _h, body = curl(running.url + "/logo.txt")           # outside the rule: open
    assert (status, body) == (200, b"a logo")


@needs_curl
def test_a_verified_login_is_not_hashed_again(servers, root, users):
    running = servers(root, auth=(make_auth("/private/*", users),))
    guard = running.site.rules.guards.prefix["/private/"]
    header = _basic("alice", "wonderland")
    assert curl(running.url + "/private/secret.txt", "-H", header)[0] == 200
    assert len(guard._good) == 1
    # Make a rehash impossible: if the answer were computed again, it would now fail.
    guard._users["alice"] = "$2b$04$" + "x" * 53
    for n in range(3):
        # Each request differs in its bytes, so the answer memo cannot be what answers.
        assert curl(running.url + f"/private/secret.txt?n={n}", "-H", header)[0] == 200
    assert b"wonderland" not in b"".join(guard._good)             # only HMACs are kept


@needs_curl
@pytest.mark.skipif(HTPASSWD is None, reason="htpasswd (apache2-utils) is not installed")
def test_real_htpasswd_file_and_reload(servers, root, tmp_path):
    users = tmp_path / "site.htpasswd"
    subprocess.run([HTPASSWD, "-c", "-b", "-B", "-C", "5", str(users), "dave", "pa:ss wörd"], check=True,
                   capture_output=True)
    running = servers(root, auth=(make_auth("/private/secret.txt", users),))
    assert curl(running.url + "/private/secret.txt")[0] == 401
    assert curl(running.url + "/private/secret.txt", "-u", "dave:pa:ss wörd")[0] == 200
    # A new password, by htpasswd, is picked up without a restart.
    time.sleep(0.01)
    subprocess.run([HTPASSWD, "-b", "-B", "-C", "5", str(users), "dave", "new"], check=True, capture_output=True)
    deadline = time.monotonic() + 10
    n = 0
    while curl(running.url + f"/private/secret.txt?n={n}", "-u", "dave:new")[0] != 200:
        assert time.monotonic() < deadline, "the changed htpasswd file was not reloaded"
        n += 1
        time.sleep(0.1)
    assert curl(running.url + "/private/secret.txt?old", "-u", "dave:pa:ss wörd")[0] == 401


@pytest.mark.skipif(HTPASSWD is None, reason="htpasswd (apache2-utils) is not installed")
def test_weak_htpasswd_hashes_are_refused_with_the_line(tmp_path):
    users = tmp_path / "md5.htpasswd"
    subprocess.run([HTPASSWD, "-c", "-b", "-m", str(users), "eve", "apple"], check=True, capture_output=True)
    with pytest.raises(RuleError, match=r"md5\.htpasswd:1: unsupported hash"):
        load_htpasswd(users)


def test_htpasswd_errors_name_file_and_line(tmp_path):
    users = tmp_path / "users"
    users.write_text("# comment\n\nok:" + hash_password("x") + "\nbroken line\n")
    with pytest.raises(RuleError, match=r"users:4: expected 'user:hash'"):
        load_htpasswd(users)
    with pytest.raises(RuleError, match="cannot read"):
        make_auth("/x", tmp_path / "missing", "r")
    assert AuthRule("/x", users).realm == "Restricted"


# -- CORS and OPTIONS ----------------------------------------------------------------------------------
@needs_curl
def test_cors_preflight_and_actual_request(servers, root):
    running = servers(root, cors=(make_cors("/api/*", ["https://app.example"], methods=["GET", "POST"],
                                            max_age=900),))
    status, h, body = curl(running.url + "/api/data.json", "-X", "OPTIONS",
                           "-H", "Origin: https://app.example",
                           "-H", "Access-Control-Request-Method: GET",
                           "-H", "Access-Control-Request-Headers: content-type")
    assert status == 204 and body == b""
    assert h["access-control-allow-origin"] == "https://app.example"
    assert h["access-control-allow-methods"] == "GET, POST"
    assert "Content-Type" in h["access-control-allow-headers"]
    assert h["access-control-max-age"] == "900"
    status, h, body = curl(running.url + "/api/data.json", "-H", "Origin: https://app.example")
    assert (status, body) == (200, b'{"answer": 42}')
    assert h["access-control-allow-origin"] == "https://app.example"
    assert "Origin" in h["vary"]
    # Another origin: no permission, but the answer still says it varies by Origin.
    status, h, _body = curl(running.url + "/api/data.json", "-H", "Origin: https://evil.example")
    assert status == 200 and "access-control-allow-origin" not in h and "Origin" in h["vary"]
    status, h, _body = curl(running.url + "/api/data.json", "-X", "OPTIONS", "-H", "Origin: https://evil.example",
                            "-H", "Access-Control-Request-Method: GET")
    assert status == 204 and "access-control-allow-origin" not in h
    # Outside the rule: nothing added.
    status, h, _body = curl(running.url + "/logo.txt", "-H", "Origin: https://app.example")
    assert "access-control-allow-origin" not in h and "vary" not in h


@needs_curl
def test_options_star_and_path_are_answered_with_allow(servers, root):
    running = servers(root)          # no rules at all
    out = subprocess.run([CURL, "-s", "-i", "-X", "OPTIONS", "--request-target", "*", running.url],
                         capture_output=True, timeout=20, check=True).stdout
    assert out.startswith(b"HTTP/1.1 204") and b"Allow: GET, HEAD, OPTIONS\r\n" in out
    status, h, _ = curl(running.url + "/logo.txt", "-X", "OPTIONS")
    assert (status, h["allow"]) == (204, "GET, HEAD, OPTIONS")
    status, _h, _ = curl(running.url + "/nothing-here", "-X", "OPTIONS")
    assert status == 404
    status, h, _ = curl(running.url + "/logo.txt", "-X", "DELETE")
    assert (status, h["allow"]) == (405, "GET, HEAD, OPTIONS")


# -- error pages ---------------------------------------------------------------------------------------
@needs_curl
def test_default_error_page_is_html_in_the_server_style(servers, root):
    running = servers(root)
    status, h, body = curl(running.url + "/no/such/file")
    assert status == 404 and h["content-type"] == "text/html; charset=utf-8"
    assert b"<h1>404</h1>" in body and b"Not Found" in body and b"#1f3b5c" in body
    assert b"/no/such/file" not in body                       # nothing of the request echoed
    (root / "404.html").write_text("<p>our own 404</p>")
    status, _h, body = curl(running.url + "/no/such/file")
    assert (status, body) == (404, b"<p>our own 404</p>")     # the root's page overrides


def test_rule_spec_is_falsy_when_empty():
    assert not RuleSpec()
    assert RuleSpec(spa_fallback="index.html")


# -- in front of an ASGI app -------------------------------------------------------------------------
ASGI_APP = '''
async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    body = f"app {scope['method']} {scope['path']}".encode()
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"text/plain"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
'''


@needs_curl
def test_rules_apply_under_asgi_and_misses_reach_the_app(server_process, root, users, tmp_path):
    (tmp_path / "asgi_probe_app.py").write_text(ASGI_APP)
    running = server_process([str(root), "--asgi", "asgi_probe_app:app", "--app-dir", str(tmp_path),
                              "--spa-fallback", "index.html", "--redirect", "/old /new/page.html",
                              "--basic-auth", f"/private/* {users}", "--cors", "/api/* https://app.example"])
    assert curl(running.url + "/old")[:2][0] == 301                            # rules run first
    assert curl(running.url + "/private/secret.txt")[0] == 401
    assert curl(running.url + "/private/secret.txt", "-u", "carol:singer")[2] == b"the secret"
    # A path the root lacks is the app's: no 404, no SPA shell for an API call...
    assert curl(running.url + "/api/users")[2] == b"app GET /api/users"
    assert curl(running.url + "/api/users", "-X", "POST")[2] == b"app POST /api/users"
    assert curl(running.url + "/things", "-X", "OPTIONS")[2] == b"app OPTIONS /things"
    # ... but a browser navigating to a deep link gets the shell.
    status, _h, body = curl(running.url + "/users/42", "-H", "Accept: text/html,application/xhtml+xml")
    assert status == 200 and b"the app shell" in body
    # The CORS preflight for a covered path is the rule's.
    status, h, _ = curl(running.url + "/api/users", "-X", "OPTIONS", "-H", "Origin: https://app.example",
                        "-H", "Access-Control-Request-Method: GET")
    assert status == 204 and h["access-control-allow-origin"] == "https://app.example"
