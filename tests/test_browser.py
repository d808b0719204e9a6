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
import shutil
import tempfile
from pathlib import Path

import pytest
from harness import serve_site

REPO = Path(__file__).resolve().parent.parent
BUNDLED = REPO / "static"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"

webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install selenium)")

pytestmark = [pytest.mark.tools, pytest.mark.slow, pytest.mark.skipif(
    not (os.access(CHROMIUM, os.X_OK) and os.access(CHROMEDRIVER, os.X_OK)),
    reason="headless Chromium not available (apt-get install chromium chromium-driver)",
)]


@pytest.fixture(scope="module")
def site():
    with serve_site(BUNDLED) as running:
        yield running


@pytest.fixture(scope="module")
def browser():
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="pageloan-chromium-")
    options = Options()
    options.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--no-first-run", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", f"--user-data-dir={profile}", "--window-size=1200,1100"):
        options.add_argument(flag)
    try:
        driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    except Exception as exc:  # noqa: BLE001 - any start-up failure means no browser here
        shutil.rmtree(profile, ignore_errors=True)
        pytest.skip(f"Chromium did not start: {exc}")
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()
    shutil.rmtree(profile, ignore_errors=True)


def _wait(driver, condition: str, timeout: float = 10.0):
    from selenium.webdriver.support.ui import WebDriverWait
    return WebDriverWait(driver, timeout).until(lambda d: d.execute_script(condition))


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
