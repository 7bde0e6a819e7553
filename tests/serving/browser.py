"""The dashboard's figures recomputed from /metrics, and a headless Chromium (Debian's, through
selenium) that clicks and waits like a user: shared by the dashboard tests and the served-app
test (a helper module: test modules import it, never each other)."""

import shutil

from prometheus_client.parser import text_string_to_metric_families


def metric_values(text: str) -> dict[tuple[str, tuple], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def expected_from_metrics(text: str, tiers: list[str]) -> dict[str, float]:
    """The dashboard's figures recomputed here from the /metrics text alone."""
    m = metric_values(text)
    status = {dict(k[1])["status"]: v for k, v in m.items() if k[0] == "ladder_requests_total"}
    answered = {dict(k[1])["tier"]: v for k, v in m.items() if k[0] == "ladder_answered_total"}
    cost, largest = m[("ladder_cost_usd_total", ())], m[("ladder_cost_largest_usd_total", ())]
    ok = status["200"]
    out = {
        "requests": sum(status.values()),
        "answered": ok,
        "refused": sum(v for s, v in status.items() if s.startswith("4")),
        "escalations": m[("ladder_escalations_total", ())],
        "cost_per_1k": 1000 * cost / ok,
        "largest_per_1k": 1000 * largest / ok,
        "saved": 1 - cost / largest,
    }
    for t in tiers:
        out[f"answered:{t}"] = answered.get(t, 0.0)
    return out


def chrome():  # noqa: ANN201 (selenium WebDriver)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--window-size=1300,1100",
    ):
        opts.add_argument(arg)
    opts.binary_location = shutil.which("chromium") or "/usr/bin/chromium"
    return webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=opts)


def submit(browser, by: str, value: str) -> None:  # noqa: ANN001
    """Click a form's button (found by ``by``/``value``) and wait for the page it leads to (not
    the one still showing). Chromedriver can lose a node between finding and clicking it ("Node
    with given id does not belong to the document", a CI run under load): while the page has not
    moved on, the button is found and clicked again."""
    from selenium.common.exceptions import WebDriverException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions
    from selenium.webdriver.support.ui import WebDriverWait

    page = browser.find_element(By.TAG_NAME, "html")
    for attempt in range(3):
        try:
            browser.find_element(by, value).click()
            break
        except WebDriverException:
            if expected_conditions.staleness_of(page)(browser):
                break  # the click went through: the page moved on
            if attempt == 2:
                raise
    WebDriverWait(browser, 10).until(expected_conditions.staleness_of(page))
