"""Site rules in a real browser: an SPA deep link, and a CORS fetch from another origin.

Headless Chromium (Debian `chromium` + `chromium-driver`) through selenium, as in
test_browser.py.  Two pageloan servers on two ports are two origins: the page on
one fetches JSON from the other, which allows exactly that origin.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from harness import BROWSER_MISSING, ThreadedServer, chromium, wait_js

from server.framework.application import Application
from server.static.options import StaticOptions, static_site
from server.static.rules import RuleSpec, make_cors

webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed")

pytestmark = [
    pytest.mark.skipif(BROWSER_MISSING,
                       reason="headless Chromium not available (apt-get install chromium chromium-driver)"),
    pytest.mark.slow,
]

SHELL = """<!doctype html>
<html><head><meta charset="utf-8"><title>shell</title><script src="/app.js"></script></head>
<body><p id="route">loading</p><p id="api">waiting</p></body></html>
"""

APP_JS = """
document.addEventListener("DOMContentLoaded", () => {
  document.getElementById("route").textContent = "route:" + location.pathname;
  const api = document.body.dataset.api || new URLSearchParams(location.search).get("api");
  if (!api) return;
  fetch(api + "/api/data.json").then(r => r.json()).then(
    data => { document.getElementById("api").textContent = "answer:" + data.answer; },
    err => { document.getElementById("api").textContent = "blocked:" + err.name; });
});
"""


@pytest.fixture(scope="module")
def browser():
    with chromium() as driver:
        yield driver


_wait = wait_js


def _site(root: Path, **spec) -> ThreadedServer:
    site = static_site(root, StaticOptions(rules=RuleSpec(**spec)))
    return ThreadedServer(Application(site)).start()


@pytest.fixture
def roots(tmp_path):
    app = tmp_path / "app"
    app.mkdir()
    (app / "index.html").write_text(SHELL)
    (app / "app.js").write_text(APP_JS)
    api = tmp_path / "api"
    (api / "api").mkdir(parents=True)
    (api / "api" / "data.json").write_text('{"answer": 42}')
    return app, api


def test_spa_deep_link_loads_the_shell(browser, roots):
    app, _api = roots
    running = _site(app, spa_fallback="index.html")
    try:
        browser.get(running.url + "/users/42/settings")
        _wait(browser, "return document.getElementById('route').textContent.startsWith('route:')")
        assert browser.execute_script("return document.getElementById('route').textContent") \
            == "route:/users/42/settings"
        assert browser.title == "shell"
    finally:
        running.stop()


def test_cors_fetch_from_another_origin(browser, roots):
    app, api = roots
    page = _site(app)
    # The API allows the page's origin only, and answers a preflighted method too.
    allowed = _site(api, cors=(make_cors("/api/*", [page.url], methods=["GET", "PUT"]),))
    refused = _site(api, cors=(make_cors("/api/*", ["https://somewhere.else"]),))
    try:
        browser.get(f"{page.url}/index.html?api={allowed.url}")
        _wait(browser, "return !document.getElementById('api').textContent.startsWith('waiting')")
        assert browser.execute_script("return document.getElementById('api').textContent") == "answer:42"
        # A preflighted request (PUT with a JSON body type) passes the OPTIONS check; the
        # static site itself then refuses PUT, but with CORS headers the page can read it.
        status = browser.execute_async_script(
            "const done = arguments[0];"
            f"fetch('{allowed.url}/api/data.json', {{method: 'PUT', headers: {{'Content-Type': 'application/json'}},"
            " body: '{}'}).then(r => done(r.status), e => done('blocked:' + e.name));")
        assert status == 405
        browser.get(f"{page.url}/index.html?api={refused.url}")
        _wait(browser, "return !document.getElementById('api').textContent.startsWith('waiting')")
        assert browser.execute_script("return document.getElementById('api').textContent") == "blocked:TypeError"
    finally:
        for running in (page, allowed, refused):
            running.stop()
