"""The request page (opened from Orthanc Explorer's Counterfactual button), driven in headless Chromium
against a real Orthanc and node.

Screenshots of the filled form and of the finished request go to test-artifacts/ (git-ignored) for a
person to look at: orthanc-form.png and orthanc-page.png (the latter is docs/images/orthanc-page.png).
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from selenium import webdriver
from selenium.common.exceptions import WebDriverException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support import expected_conditions as ec
from selenium.webdriver.support.ui import WebDriverWait

from tests.support.orthanc_plugin import ARTIFACTS, PluginStack, load_orthanc_json, start_stack, stop
from tests.support.orthanc_server import PASSWORD, USER

pytestmark = pytest.mark.integration

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
HYPOTHESIS = "the left pleural effusion worsens"


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PluginStack]:
    stack = start_stack(tmp_path_factory.mktemp("orthanc-browser"))
    try:
        yield stack
    finally:
        stop(stack.orthanc, stack.node)


@pytest.fixture(scope="module")
def browser() -> Iterator[WebDriver]:
    for path in (CHROMIUM, CHROMEDRIVER):
        if not shutil.which(path):
            pytest.fail(f"{path} is missing: install Debian's chromium and chromium-driver (`make setup`)")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,1300"):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    try:
        driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    except WebDriverException as exc:
        pytest.fail(f"Chromium did not start under chromedriver: {exc.msg}")
    try:
        yield driver
    finally:
        driver.quit()


def _open_page_from_the_explorer(browser: WebDriver, stack: PluginStack, study_id: str) -> None:
    """Log in through a page without scripts (Chromium then sends the cached credentials), open the study in
    Orthanc Explorer (a page loaded from a user:password@ URL makes jQuery Mobile's history calls throw), then
    its Counterfactual button, which opens the request page in a new tab."""
    port = stack.orthanc.http_port
    browser.get(f"http://{USER}:{PASSWORD}@127.0.0.1:{port}/system")
    browser.get(f"http://127.0.0.1:{port}/app/explorer.html#study?uuid={study_id}")
    button = WebDriverWait(browser, 20).until(ec.element_to_be_clickable((By.ID, "progemu-button")))
    assert button.get_attribute("href") == f"http://127.0.0.1:{port}/progemu/app/studies/{study_id}"
    assert button.get_attribute("target") == "_blank"
    explorer = browser.current_window_handle
    button.click()
    WebDriverWait(browser, 10).until(lambda b: len(b.window_handles) == 2)
    browser.switch_to.window(next(handle for handle in browser.window_handles if handle != explorer))
    WebDriverWait(browser, 10).until(lambda b: b.current_url.endswith(f"/progemu/app/studies/{study_id}"))


def _text(browser: WebDriver, element_id: str) -> str:
    return browser.find_element(By.ID, element_id).text.strip()


def _wait_for_text(browser: WebDriver, element_id: str, timeout: float = 15) -> str:
    return WebDriverWait(browser, timeout).until(lambda b: _text(b, element_id))


def test_counterfactual_from_the_request_page(browser: WebDriver, stack: PluginStack, tmp_path: Path) -> None:
    study_id, study_uid = stack.upload_prior(tmp_path)
    _open_page_from_the_explorer(browser, stack, study_id)
    form = WebDriverWait(browser, 10).until(ec.visibility_of_element_located((By.ID, "progemu-form")))
    assert "not for diagnosis" in browser.find_element(By.ID, "progemu-panel").text

    # suggestions come from orthanc.json through /progemu/config; a click fills the hypothesis
    suggestions = WebDriverWait(browser, 10).until(
        lambda b: b.find_elements(By.CSS_SELECTOR, "#progemu-suggestions .progemu-suggestion"))
    assert [s.text for s in suggestions] == load_orthanc_json()["ProgEmu"]["Suggestions"]
    hypothesis = browser.find_element(By.ID, "progemu-hypothesis")
    assert hypothesis.get_attribute("maxlength") == "500"

    # an empty hypothesis is caught in the form; the plugin's 400 sentence is shown as it is
    browser.find_element(By.ID, "progemu-submit").click()
    assert "Type a hypothesis first" in _wait_for_text(browser, "progemu-error")
    suggestions[0].click()
    assert hypothesis.get_attribute("value") == suggestions[0].text == HYPOTHESIS
    browser.find_element(By.ID, "progemu-cfg").send_keys("31")
    browser.find_element(By.ID, "progemu-submit").click()
    WebDriverWait(browser, 15).until(lambda b: "from 0 to 30" in _text(b, "progemu-error"))
    assert not browser.find_element(By.ID, "progemu-state").text

    browser.find_element(By.ID, "progemu-cfg").clear()
    browser.find_element(By.ID, "progemu-cfg").send_keys("2")
    assert not browser.find_element(By.ID, "progemu-error").is_displayed(), "editing clears the error"
    browser.find_element(By.ID, "progemu-seed").send_keys("11")
    ARTIFACTS.mkdir(exist_ok=True)
    browser.save_screenshot(str(ARTIFACTS / "orthanc-form.png"))
    assert form.is_displayed()

    browser.find_element(By.ID, "progemu-submit").click()
    seen: list[str] = []

    def finished(b: WebDriver) -> bool:
        state = _text(b, "progemu-state")
        if state and (not seen or seen[-1] != state):
            seen.append(state)
        return state in {"done", "failed"}

    WebDriverWait(browser, 60, poll_frequency=0.2).until(finished)
    assert seen[-1] == "done", f"{_text(browser, 'progemu-reason')}\n{stack.diagnostics()}"
    assert set(seen) <= {"queued", "receiving", "running", "delivering", "done"}
    assert not browser.find_element(By.ID, "progemu-error").is_displayed()

    # the report page, through Orthanc's rendering of its instance, has loaded
    image = WebDriverWait(browser, 15).until(
        lambda b: b.execute_script("const i = document.getElementById('progemu-report-image');"
                                   "return i && i.complete && i.naturalWidth > 0 ? i : null;"))
    assert "/instances/" in image.get_attribute("src") and image.get_attribute("src").endswith("/preview")
    results = _text(browser, "progemu-results")
    assert f"Hypothesis: {HYPOTHESIS}" in results and "Seed 11, guidance scale 2" in results
    assert "not for diagnosis" in results
    [job] = [item for item in stack.request("GET", f"/progemu/studies/{study_id}/counterfactuals").json()["items"]]
    assert _text(browser, "progemu-interpretation") == job["results"]["interpretation"].strip()
    consistency = job["results"]["checks"]["consistency"]
    assert _text(browser, "progemu-checks").startswith(f"Consistency: {consistency['summary']}")
    flagged = browser.find_elements(By.ID, "progemu-flagged")
    assert bool(flagged) == (job["results"]["checks"]["flagged"] or consistency["consistent"] is False)

    # each configured viewer, pointed at this study
    viewers = {link.text: link.get_attribute("href")
               for link in browser.find_elements(By.CSS_SELECTOR, "#progemu-viewers a.progemu-viewer")}
    assert list(viewers) == [viewer["Name"] for viewer in load_orthanc_json()["ProgEmu"]["Viewers"]]
    root = f"http://127.0.0.1:{stack.orthanc.http_port}/"
    assert viewers["Orthanc Explorer"] == f"{root}app/explorer.html#study?uuid={study_id}"
    assert viewers["Stone Web Viewer"] == f"{root}stone-webviewer/index.html?study={study_uid}"
    assert viewers["OHIF"] == f"{root}ohif/viewer?StudyInstanceUIDs={study_uid}"

    # the new series, by kind (other kinds of output may come along), under the ids the links point at
    links = browser.find_elements(By.CSS_SELECTOR, "#progemu-results a.progemu-series-link")
    linked = {link.get_attribute("data-kind"): link.get_attribute("href").split("#series?uuid=") for link in links}
    assert {"sc", "sr", "report_page"} <= set(linked)
    series = {s["ID"] for s in stack.orthanc.series_of(study_uid)}
    for kind, (prefix, series_id) in linked.items():
        assert prefix == f"{root}app/explorer.html" and series_id in series, kind
    history = WebDriverWait(browser, 10).until(lambda b: _text(b, "progemu-history"))
    assert f"done: {HYPOTHESIS}" in history
    browser.set_window_size(1200, browser.execute_script("return document.documentElement.scrollHeight") + 140)
    browser.save_screenshot(str(ARTIFACTS / "orthanc-page.png"))

    # (the 400 above shows in the log as a network error; a script error would be ours)
    errors = [entry for entry in browser.get_log("browser") if entry["source"] == "javascript"]
    assert not errors, errors
