"""The live dashboard in a real browser: Mosquitto, three real agents, the consumer as the
monitor service, and Debian's chromium driven headless by Selenium.

Checks what an operator relies on: every device listed online, counters that move, and a
device turning offline on the page within the documented time, whether its agent stops
cleanly (SIGTERM: the retained status says offline), is killed (SIGKILL: the broker publishes
its will at once) or only falls silent (SIGSTOP: no will, the connection stays up), the last
after --offline-after seconds. The monitor runs the anomaly detectors (--anomalies) and one
agent's slice holds a failed sensor read (temp 0.0, humidity 1.1): the Anomalies panel lists
it under the device's name, the device's row counts it and its charts mark it. A screenshot is
left in .cache/test-artifacts/dashboard.png.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Callable

import pytest
from edge_consumer.dropouts import RESTART_BOUND, WINDOW
from monitor_helpers import MonitorService, start_agent
from support.fleet import ROOT
from support.polling import wait_until

pytestmark = pytest.mark.integration

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
OFFLINE_AFTER = 3.0  # --offline-after for this test (the service's default is 15 s)
PUSH_S = 2.0  # /events pushes every second; the page shows a snapshot within ~2 s
ARTIFACT = ROOT / ".cache" / "test-artifacts" / "dashboard.png"
DEVICES = [(f"0a:ed:9e:00:30:{n:02x}", f"pi-{n:04d}") for n in (1, 2, 3)]
DASH = "\N{EN DASH}"  # the page's "no value"
FAILED_READ_AT = 4  # the slice row of pi-0003's impossible reading: published ~2 s after start


@pytest.fixture
def browser() -> Iterator[Any]:
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service

    for path in (CHROMIUM, CHROMEDRIVER):
        if not os.access(path, os.X_OK):
            pytest.skip(f"{path} not installed (apt-get install chromium chromium-driver)")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1600,900"):  # fmt: skip
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def states(driver: Any) -> dict[str, str]:
    """device ID -> the row's state (online, offline, silent, unknown), as the page shows it."""
    script = (
        "return Array.from(document.querySelectorAll('#rows tr[data-id]'))"
        ".map(tr => [tr.dataset.id, tr.dataset.state]);"
    )
    return dict(driver.execute_script(script))


def number(driver: Any, element_id: str) -> int:
    text = driver.find_element("id", element_id).text
    return int(text.replace(",", "")) if text.replace(",", "").isdigit() else -1


def anomaly_rows(driver: Any) -> list[list[str]]:
    """The Anomalies panel's rows: [time, device, sensor, kind, detail] each."""
    script = (
        "return Array.from(document.querySelectorAll('#anomaly-rows tr'))"
        ".map(tr => Array.from(tr.cells).map(td => td.textContent));"
    )
    return list(driver.execute_script(script))


def anomaly_cell(driver: Any, device_id: str) -> tuple[str, bool]:
    """The device row's Anomalies cell: its text and whether it is highlighted."""
    script = (
        "const i = Array.from(document.querySelectorAll('#head th'))"
        ".findIndex(th => th.dataset.key === 'anomalies');"
        "const tr = document.querySelector(`#rows tr[data-id='${arguments[0]}']`);"
        "if (i < 0 || !tr) return ['', false];"
        "return [tr.cells[i].textContent, tr.cells[i].classList.contains('alert')];"
    )
    text, alert = driver.execute_script(script, device_id)
    return str(text), bool(alert)


def samples(driver: Any) -> int:
    """How many samples the open device's charts hold (the line under them says)."""
    text = driver.find_element("id", "history-span").text
    first = text.split(" ", 1)[0]
    return int(first) if first.isdigit() else 0


def within(seconds: float, predicate: Callable[[], bool], driver: Any = None) -> float:
    """Seconds until predicate held; fails the test past `seconds` (with the page's rows)."""
    started = time.monotonic()
    if not wait_until(predicate, seconds, 0.1):
        page = states(driver) if driver is not None else "?"
        pytest.fail(f"not within {seconds} s; rows on the page: {page}")
    return time.monotonic() - started


def test_dashboard_shows_the_fleet_live(mosquitto: Any, browser: Any, tmp_path: Path) -> None:
    info = tmp_path / "devices.json"
    info.write_text(json.dumps({d: {"name": n, "arch": "amd64", "host": n} for d, n in DEVICES}))
    agents: list[subprocess.Popen[bytes]] = []
    service = MonitorService(
        mosquitto,
        tmp_path,
        "--device-info", str(info), "--offline-after", str(OFFLINE_AFTER), "--anomalies",
    )  # fmt: skip
    try:
        agents = [
            start_agent(
                mosquitto, tmp_path, d, n, failed_read_at=FAILED_READ_AT if i == 2 else None
            )
            for i, (d, n) in enumerate(DEVICES)
        ]
        browser.get(service.url + "/")
        ids = [d for d, _ in DEVICES]

        # Every device is listed, and online.
        within(30, lambda: [states(browser).get(d) for d in ids] == ["online"] * 3, browser)
        assert number(browser, "total-online") == 3 and number(browser, "total-offline") == 0
        names = browser.execute_script(
            "return Array.from(document.querySelectorAll('#rows tr[data-id] td:nth-child(2)'))"
            ".map(td => td.textContent);"
        )
        assert names == ["pi-0001", "pi-0002", "pi-0003"]  # sorted by name

        # A counter advances on its own (server-sent events, no reload).
        before = number(browser, "total-received")
        within(PUSH_S + 1, lambda: number(browser, "total-received") > before, browser)

        # pi-0003's failed read: listed in the Anomalies panel by name and kind, counted in
        # its row (highlighted), and in the fleet's total.
        def failed_read_listed() -> bool:
            return any(r[1] == "pi-0003" and r[3] == "impossible" for r in anomaly_rows(browser))

        within(FAILED_READ_AT * 0.5 + 10, failed_read_listed, browser)
        [listed] = [r for r in anomaly_rows(browser) if r[3] == "impossible"]
        assert set(listed[2].replace(" ", "").split(",")) == {"temp", "humidity"}, listed
        assert "temp 0" in listed[4] or "humidity 1.1" in listed[4], listed
        assert "anomaly detection off" not in browser.find_element("id", "anomaly-state").text
        within(PUSH_S + 1, lambda: anomaly_cell(browser, ids[2])[0] not in ("", "0", DASH))
        text, highlighted = anomaly_cell(browser, ids[2])
        assert int(text) >= 1 and highlighted
        assert anomaly_cell(browser, ids[0]) == ("0", False)
        assert number(browser, "total-anomalies") >= 1

        # Clicking a device opens its charts (Chart.js served by the app, when installed).
        browser.find_element("css selector", f'tr[data-id="{ids[2]}"]').click()
        within(12, lambda: "samples" in browser.find_element("id", "history-span").text, browser)
        charts_shown = browser.find_element("id", "charts").is_displayed()
        note_shown = browser.find_element("id", "charts-note").is_displayed()
        assert charts_shown != note_shown  # charts, or the note saying why not
        if os.path.exists("/usr/share/javascript/chart.js/chart.min.js"):
            assert charts_shown
        # The device's own findings, from /api/anomalies?device=, listed under its charts
        # and marked on the temperature and humidity charts at the failed read's value.
        within(12, lambda: "impossible" in browser.find_element("id", "device-anomalies").text)
        if charts_shown:
            markers = (
                "return ['chart-temp', 'chart-humidity'].map(id => Chart.getChart(id)"
                ".data.datasets.find(ds => ds.label === 'anomaly').data.map(p => p.y));"
            )
            within(12, lambda: all(browser.execute_script(markers)), browser)
            temp_marks, humidity_marks = browser.execute_script(markers)
            # temp's marker at the failed read's 0.0 (humidity's at 1.1 when the charts kept
            # that reading: they sample at most once a second, the agent sends two).
            assert 0.0 in temp_marks and humidity_marks, (temp_marks, humidity_marks)

        # SIGTERM: a clean stop publishes "offline"; the page follows at the next push.
        agents[0].send_signal(signal.SIGTERM)
        assert agents[0].wait(15) == 0
        took = within(PUSH_S + 1, lambda: states(browser)[ids[0]] == "offline", browser)
        # SIGKILL: the broker sees the socket close and publishes the agent's will.
        agents[1].send_signal(signal.SIGKILL)
        agents[1].wait(15)
        took_kill = within(PUSH_S + 1, lambda: states(browser)[ids[1]] == "offline", browser)
        assert states(browser)[ids[2]] == "online"
        # Both said `offline` at once (a clean stop, a will on a closed socket): they are
        # restarting, not dropouts, until they stay away RESTART_BOUND (dropouts.py).
        stopped = time.monotonic()
        # The screenshot (docs/dashboard.png) once the charts hold ~25 s: pi-0003's slice has
        # come round to its failed read again by then (40 rows at 0.5 s).
        within(40, lambda: samples(browser) >= 25, browser)
        os.makedirs(ARTIFACT.parent, exist_ok=True)
        browser.save_screenshot(str(ARTIFACT))
        print(f"screenshot: {ARTIFACT}")

        dropouts = {r[1] for r in anomaly_rows(browser) if r[3] == "dropout"}
        assert not dropouts & {"pi-0001", "pi-0002"}, dropouts
        assert time.monotonic() - stopped < RESTART_BOUND  # so the check above meant something
        # Silence (SIGSTOP): no will, the TCP connection stays up; offline after the rule.
        agents[2].send_signal(signal.SIGSTOP)
        took_silent = within(
            OFFLINE_AFTER + PUSH_S + 1, lambda: states(browser)[ids[2]] == "silent", browser
        )
        assert number(browser, "total-online") == 0 and number(browser, "total-offline") == 3
        agents[2].send_signal(signal.SIGCONT)
        within(PUSH_S + 3, lambda: states(browser)[ids[2]] == "online", browser)
        # The frozen agent's silence is its own: one dropout, live on the page, after the
        # window in which others could have joined it.
        within(
            WINDOW + PUSH_S + 5,
            lambda: ("pi-0003", "dropout") in {(r[1], r[3]) for r in anomaly_rows(browser)},
            browser,
        )
        print(f"offline on the page after SIGTERM {took:.1f} s, SIGKILL {took_kill:.1f} s,"
              f" SIGSTOP {took_silent:.1f} s (--offline-after {OFFLINE_AFTER:g})")  # fmt: skip
    finally:
        for agent in agents:
            if agent.poll() is None:
                agent.send_signal(signal.SIGCONT)
                agent.kill()
                agent.wait()
        code = service.stop()
    assert code == 0, service.log.read_text()


def test_without_anomaly_detection_the_page_says_it_is_off(
    mosquitto: Any, browser: Any, tmp_path: Path
) -> None:
    device_id, name = DEVICES[0]
    service = MonitorService(mosquitto, tmp_path)
    agent = start_agent(mosquitto, tmp_path, device_id, name, failed_read_at=1)
    try:
        browser.get(service.url + "/")
        within(30, lambda: states(browser).get(device_id) == "online", browser)
        state = browser.find_element("id", "anomaly-state")
        within(PUSH_S + 1, lambda: "anomaly detection off" in state.text, browser)
        assert not browser.find_element("id", "anomaly-wrap").is_displayed()
        assert anomaly_cell(browser, device_id) == (DASH, False)
        assert browser.find_element("id", "total-anomalies").text == "off"
        browser.find_element("css selector", f'tr[data-id="{device_id}"]').click()
        note = browser.find_element("id", "device-anomaly-note")
        within(12, lambda: "anomaly detection off" in note.text, browser)
    finally:
        agent.kill()
        agent.wait()
        assert service.stop() == 0, service.log.read_text()


def test_without_chartjs_the_page_works_and_says_why(
    mosquitto: Any, browser: Any, tmp_path: Path
) -> None:
    device_id, name = DEVICES[0]
    service = MonitorService(mosquitto, tmp_path, "--chartjs", str(tmp_path / "no-chart.js"))
    agent = start_agent(mosquitto, tmp_path, device_id, name)
    try:
        browser.get(service.url + "/")
        within(30, lambda: states(browser).get(device_id) == "online", browser)
        browser.find_element("css selector", f'tr[data-id="{device_id}"]').click()
        # The panel fetches history at once, then every 5 s: allow a second try.
        within(12, lambda: "samples" in browser.find_element("id", "history-span").text, browser)
        note = browser.find_element("id", "charts-note")
        assert note.is_displayed() and "no-chart.js" in note.text
        assert not browser.find_element("id", "charts").is_displayed()
        assert number(browser, "total-received") > 0  # everything else still works
    finally:
        agent.kill()
        agent.wait()
        assert service.stop() == 0, service.log.read_text()
