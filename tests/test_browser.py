"""A real browser loads the bundled site from pageloan: styles apply, images load, JS runs.

Headless Chromium (Debian packages `chromium` and `chromium-driver`) driven by
selenium.  Checks are made on the DOM, not on pixels: getComputedStyle shows the
stylesheet was fetched and applied, `naturalWidth > 0` that each image decoded, a
data attribute and the header list that app.js fills in (from a HEAD request of
the page) that the script ran.  A screenshot is written to a temporary file
(PAGELOAN_SCREENSHOT=path keeps it somewhere chosen) for a person to look at.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest
from harness import BROWSER_MISSING, chromium, serve_site, wait_js

REPO = Path(__file__).resolve().parent.parent
BUNDLED = REPO / "static"

webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install selenium)")

pytestmark = [pytest.mark.tools, pytest.mark.slow, pytest.mark.skipif(
    BROWSER_MISSING,
    reason="headless Chromium not available (apt-get install chromium chromium-driver)",
)]


@pytest.fixture(scope="module")
def site():
    with serve_site(BUNDLED) as running:
        yield running


@pytest.fixture(scope="module")
def browser():
    with chromium("--window-size=1200,1100") as driver:
        yield driver


_wait = wait_js


def _check_page(driver, url: str) -> None:
    driver.get(url)
    _wait(driver, "return document.readyState === 'complete'")
    # The stylesheet applied: the header band has its colour, the body its font size.
    band = driver.execute_script("return getComputedStyle(document.querySelector('.band')).backgroundColor")
    assert band == "rgb(31, 59, 92)"
    assert driver.execute_script("return getComputedStyle(document.body).fontSize") == "17px"
    # Every image decoded.
    widths = driver.execute_script(
        "return Array.from(document.images).map(i => [i.currentSrc, i.complete, i.naturalWidth])")
    assert widths, "the page should have images"
    for src, complete, natural in widths:
        assert complete and natural > 0, f"image {src} did not load"
    # The script ran, and its HEAD request got the page's validators.
    assert _wait(driver, "return document.documentElement.dataset.js === 'ran'")


def test_index_page_renders(site, browser):
    _check_page(browser, site.url + "/")
    assert _wait(browser, "return !document.getElementById('served-headers').hidden")
    shown = browser.execute_script(
        "return Array.from(document.querySelectorAll('#served-headers dt')).map(e => e.textContent)")
    assert "etag" in shown and "cache-control" in shown
    assert "200" in browser.find_element("id", "served-note").text
    shot = os.environ.get("PAGELOAN_SCREENSHOT") or os.path.join(tempfile.gettempdir(), "pageloan-index.png")
    assert browser.save_screenshot(shot)
    assert Path(shot).stat().st_size > 10_000


def test_second_page_and_navigation(site, browser):
    _check_page(browser, site.url + "/about.html")
    browser.find_element("css selector", "a.button").click()
    _wait(browser, "return location.pathname === '/' && document.readyState === 'complete'")
    assert browser.title.startswith("pageloan")


def test_missing_page_shows_site_404(site, browser):
    browser.get(site.url + "/no/such/page")
    _wait(browser, "return document.readyState === 'complete'")
    assert browser.find_element("css selector", "h1").text == "404"
    # The 404 page's stylesheet applies too.
    colour = browser.execute_script("return getComputedStyle(document.querySelector('h1')).color")
    assert colour == "rgb(31, 59, 92)"
