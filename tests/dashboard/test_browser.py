"""The dashboard in a real browser: headless Chromium (Debian's) driven through Selenium.

The dashboard runs under uvicorn on a free 127.0.0.1 port against the test database.
Every page loads; a dead letter is replayed and seen back on its queue; a worker is
suspended and its status changes; a hostile payload is shown as text and runs nothing.

With ``PGQRS_UPDATE_SCREENSHOTS=1`` the tests also refresh the screenshots in
``docs/images/dashboard-*.png`` (otherwise they are taken into a temporary directory, so
the path is exercised without touching the work tree).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import pgqrs.dashboard
from pgqrs import Admin, WorkerStatus

from .conftest import HOSTILE, Scenario, Served

ROOT = Path(__file__).resolve().parents[2]
UPDATE_SCREENSHOTS = os.environ.get("PGQRS_UPDATE_SCREENSHOTS") == "1"


@pytest.fixture
def served(scenario: Scenario) -> Iterator[Served]:
    with Served(pgqrs.dashboard.app(scenario.dsn, actions=True, refresh=0)) as server:
        yield server


@pytest.fixture
def shots(tmp_path: Path) -> Path:
    target = ROOT / "docs" / "images" if UPDATE_SCREENSHOTS else tmp_path
    target.mkdir(parents=True, exist_ok=True)
    return target


def by_css(driver: Any, selector: str) -> Any:
    from selenium.webdriver.common.by import By

    return driver.find_element(By.CSS_SELECTOR, selector)


def all_css(driver: Any, selector: str) -> list[Any]:
    from selenium.webdriver.common.by import By

    return list(driver.find_elements(By.CSS_SELECTOR, selector))


def no_alert(driver: Any) -> bool:
    from selenium.common.exceptions import NoAlertPresentException

    try:
        driver.switch_to.alert  # noqa: B018 - raises if there is none
    except NoAlertPresentException:
        return True
    return False


def screenshot(driver: Any, folder: Path, name: str, height: int = 860) -> None:
    driver.set_window_size(1280, height)
    path = folder / f"dashboard-{name}.png"
    assert driver.save_screenshot(str(path)), path
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def submit_and_accept(driver: Any, button: Any, accept: bool = True) -> str:
    """Click an action button, answer the confirm() dialog, return the dialog's text."""
    from selenium.webdriver.support import expected_conditions
    from selenium.webdriver.support.wait import WebDriverWait

    button.click()
    WebDriverWait(driver, 10).until(expected_conditions.alert_is_present())
    alert = driver.switch_to.alert
    text = str(alert.text)
    if accept:
        alert.accept()
    else:
        alert.dismiss()
    return text


def wait_for(driver: Any, selector: str) -> Any:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions
    from selenium.webdriver.support.wait import WebDriverWait

    return WebDriverWait(driver, 10).until(
        expected_conditions.presence_of_element_located((By.CSS_SELECTOR, selector)))


async def test_every_page_loads(browser: Any, served: Served, scenario: Scenario,
                                shots: Path) -> None:
    browser.get(served.url + "/")
    assert browser.title == "Queues · pgqrs dashboard"
    queues = [a.text for a in all_css(browser, "table tbody tr td:first-child a")]
    assert queues == ["emails", "reports", "billing"]
    assert by_css(browser, "svg.chart rect") is not None
    screenshot(browser, shots, "overview")

    by_css(browser, "table tbody tr td:first-child a").click()
    assert browser.title == "emails · pgqrs dashboard"
    assert len(all_css(browser, "table tbody tr")) == 26  # 18 pending, 3 leased, 5 delayed
    screenshot(browser, shots, "queue", height=1000)
    by_css(browser, ".tabs a:nth-child(3)").click()  # leased
    assert [b.text for b in all_css(browser, "table tbody .badge")] == ["leased"] * 3

    browser.get(served.url + f"/message?id={scenario.hostile_id}")
    assert browser.title == f"Message #{scenario.hostile_id} · pgqrs dashboard"
    screenshot(browser, shots, "message")

    by_css(browser, "header nav a:nth-child(2)").click()
    assert browser.title == "Dead letters · pgqrs dashboard"
    assert len(all_css(browser, "tr[id^=dead-]")) == 12
    screenshot(browser, shots, "dead-letters")
    by_css(browser, "tr[id^=dead-] td a").click()
    assert "dead letter" in by_css(browser, "h1").text

    by_css(browser, "header nav a:nth-child(3)").click()
    assert browser.title == "Workers · pgqrs dashboard"
    assert len(all_css(browser, "tr[id^=worker-]")) == 5
    screenshot(browser, shots, "workers")
    assert no_alert(browser)


async def test_replay_a_dead_letter_and_see_it_on_its_queue(
        browser: Any, served: Served, scenario: Scenario) -> None:
    dead = scenario.dead_ids[-1]
    browser.get(served.url + "/dead-letters?queue=reports")
    row = by_css(browser, f"#dead-{dead}")
    payload = row.find_element("css selector", "td.payload").text

    # Cancelling the confirmation does nothing.
    question = submit_and_accept(browser, row.find_element("css selector", "button"),
                                 accept=False)
    assert question == f"Replay dead letter #{dead} onto its queue?"
    assert by_css(browser, f"#dead-{dead}")

    submit_and_accept(browser, by_css(browser, f"#dead-{dead} button"))
    notice = wait_for(browser, ".notice").text
    assert notice.startswith(f"Dead letter #{dead} replayed as message #")
    assert not all_css(browser, f"#dead-{dead}")
    assert len(all_css(browser, "tr[id^=dead-]")) == 11
    new_id = int(notice.rsplit("#", 1)[1])

    browser.find_element("link text", "reports").click()
    row = by_css(browser, f"a[href$='/message?id={new_id}']").find_element("xpath", "../..")
    assert "pending" in row.text and payload in row.text
    async with Admin(scenario.dsn) as admin:
        message = await (await admin.get_messages()).get(new_id)
        assert message is not None and message.read_ct == 0


async def test_suspend_a_worker_and_see_its_status_change(
        browser: Any, served: Served, scenario: Scenario) -> None:
    worker = scenario.ready_worker
    browser.get(served.url + "/workers")
    row = by_css(browser, f"#worker-{worker}")
    assert row.find_element("css selector", ".status").text == "ready"
    suspend = [b for b in row.find_elements("css selector", "button") if b.text == "Suspend"]
    question = submit_and_accept(browser, suspend[0])
    assert question.startswith(f"Suspend worker #{worker}")
    assert wait_for(browser, ".notice").text == f"Worker #{worker} suspended"
    assert by_css(browser, f"#worker-{worker} .status").text == "suspended"
    async with Admin(scenario.dsn) as admin:
        assert (await admin.get_worker(worker)).status is WorkerStatus.SUSPENDED

    resume = [b for b in by_css(browser, f"#worker-{worker}").find_elements(
        "css selector", "button") if b.text == "Resume"]
    submit_and_accept(browser, resume[0])
    wait_for(browser, ".notice")
    assert by_css(browser, f"#worker-{worker} .status").text == "ready"


async def test_a_hostile_payload_is_shown_as_text(
        browser: Any, served: Served, scenario: Scenario) -> None:
    for path in (f"/message?id={scenario.hostile_id}", "/queue?name=emails&state=pending"):
        browser.get(served.url + path)
        assert no_alert(browser)
        assert browser.execute_script("return window.__pwned === undefined") is True
        assert not all_css(browser, "#pwned-img")
    assert "<script>window.__pwned = 1; alert('pwned')</script>" in by_css(
        browser, "body").text
    browser.get(served.url + f"/message?id={scenario.hostile_id}")
    shown = by_css(browser, "#payload").text
    assert HOSTILE in shown and '<img src=x id=pwned-img onerror=\\"window.__pwned = 2\\">' in shown
    assert browser.execute_script("return window.__pwned === undefined") is True
