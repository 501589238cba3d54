"""The web view at /ui, driven in a real headless Chromium against a real 3-node cluster.

Needs Debian's ``chromium`` and ``chromium-driver`` (``apt-get install -y chromium chromium-driver``);
without them the browser test is skipped, saying so. ``SLIMSCHED_UI_SCREENSHOTS=DIR`` saves the
screenshots of the main views there (the ones under docs/ were made so).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from typing import Any

import pytest

from tests.conftest import ApiHarness
from tests.helpers import KubeCluster, request, wait_until

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
SCREENSHOTS = os.environ.get("SLIMSCHED_UI_SCREENSHOTS")


async def test_every_file_of_the_page_is_served_with_its_type(api: ApiHarness) -> None:
    for path, kind, marker in [
        ("/ui", "text/html", b'<script src="/ui/app.js">'),
        ("/ui/app.js", "text/javascript", b"async function refresh()"),
        ("/ui/style.css", "text/css", b"pre#log-text"),
    ]:
        async with api.session.get(api.url + path) as resp:
            assert (resp.status, resp.content_type) == (200, kind), path
            assert marker in await resp.read()
    async with api.session.get(api.url + "/ui/../openapi.json") as resp:
        assert resp.status in (200, 404)  # normalised to /openapi.json or refused: never a file read


@pytest.fixture
def browser() -> Iterator[Any]:
    if CHROMIUM is None or CHROMEDRIVER is None:
        pytest.skip("Chromium is not installed: apt-get install -y chromium chromium-driver")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1360,1000"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def _shot(driver: Any, name: str, element_id: str | None = None) -> None:
    """Save a screenshot of the window, or of one section, when SLIMSCHED_UI_SCREENSHOTS is set."""
    if not SCREENSHOTS:
        return
    from selenium.webdriver.common.by import By

    os.makedirs(SCREENSHOTS, exist_ok=True)
    path = os.path.join(SCREENSHOTS, name)
    if element_id is None:
        driver.save_screenshot(path)
    else:
        driver.find_element(By.ID, element_id).screenshot(path)


def test_the_web_view_in_a_real_browser(kc: KubeCluster, browser: Any) -> None:
    from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    def wait_css(css: str, timeout: float = 20) -> Any:
        return WebDriverWait(browser, timeout).until(ec.presence_of_element_located((By.CSS_SELECTOR, css)))

    # The page redraws its tables every 2 s: an element found may be replaced before it is read
    # or clicked (stale), so reads and clicks look it up again until they succeed.
    def text_of(css: str) -> str:
        try:
            found = browser.find_elements(By.CSS_SELECTOR, css)
            return str(found[0].text) if found else ""
        except StaleElementReferenceException:
            return ""

    def click(css: str) -> None:
        def clicked() -> bool:
            try:
                browser.find_element(By.CSS_SELECTOR, css).click()
                return True
            except (StaleElementReferenceException, NoSuchElementException):
                return False

        wait_until(clicked, 20, f"a click on {css}")

    status, body = request(
        f"{kc.node_url(0)}/job-schedules/fibonacci",
        "POST",
        {"Schedule": "0 3 * * *", "TimeZone": "Europe/Paris"},
    )
    assert status == 201, body
    sid = body["Id"]
    status, body = request(f"{kc.node_url(0)}/job-schedules/fibonacci", "POST", {"Schedule": "*/5 * * * *"})
    assert status == 201, body
    other = body["Id"]
    listed = {s["Id"]: s for s in request(f"{kc.node_url(0)}/job-schedules/fibonacci")[1]}
    next_fire = listed[sid]["NextFireTime"].replace("T", " ")

    browser.get(f"{kc.node_url(1)}/ui")  # another node than the one that took the write
    row = f'tr[data-schedule="{sid}"]'
    wait_css(row)
    assert text_of(f'{row} [data-field="next"]') == next_fire
    # The next fire times after the first, from GET .../next: five and ten minutes later.
    then = f'tr[data-schedule="{other}"] [data-field="then"]'
    wait_until(lambda: text_of(then).count(",") == 1, 20, "the following fire times")
    assert "fibonacci" in text_of('#jobs tr[data-job="fibonacci"]')
    wait_until(lambda: "term" in text_of("#summary"), 20, "the cluster summary")

    # Pause: the API says so, and so does the page.
    click(f'{row} button[data-action="pause"]')
    wait_until(lambda: request(f"{kc.node_url(2)}/job-schedules/fibonacci")[1][0]["Paused"], 20, "paused")
    wait_until(lambda: text_of(f'{row} [data-field="state"]') == "paused", 20, "the page to show it paused")
    assert text_of(f'{row} [data-field="next"]') == "-"

    # Trigger the job; its run reaches Succeeded on the page, and its log shows.
    click('#jobs tr[data-job="fibonacci"] button[data-action="trigger-job"]')
    wait_until(lambda: len(kc.runs("fibonacci")) == 1, 20, "the triggered run")
    run_id = kc.runs("fibonacci")[0]["Id"]
    run_row = f'#runs tr[data-run="{run_id}"]'
    wait_until(
        lambda: text_of(f'{run_row} [data-field="status"]') == "Succeeded",
        40,
        "the run to succeed on the page",
    )
    _shot(browser, "ui-overview.png")
    click(f'{run_row} a[data-action="logs"]')
    wait_until(lambda: "exited with code 0" in text_of("#log-text"), 20, "the run's log")
    assert "started, image axaguildev" in text_of("#log-text") or "started, image" in text_of("#log-text")

    # Trigger the (paused) schedule now: the ledger records a manual run.
    click(f'{row} button[data-action="trigger-schedule"]')
    click(f'{row} button[data-action="ticks"]')
    wait_until(lambda: "fired (manual)" in text_of("#ticks-body"), 20, "the manual tick in the ledger")
    _shot(browser, "ui-schedule-ticks.png", "ticks")
    _shot(browser, "ui-run-log.png", "log")
