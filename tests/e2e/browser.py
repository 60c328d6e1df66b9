"""Headless Chromium driven by selenium (Debian's `chromium` and `chromium-driver`), for the
dashboard's tests and its README screenshot."""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from typing import Any

from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.chromium.remote_connection import ChromiumRemoteConnection
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.wait import WebDriverWait

from quorum.ports import free_port


@contextlib.contextmanager
def chromium(
    work: pathlib.Path, life_s: float = 240, size: str = "1400,1000"
) -> Iterator[WebDriver]:
    """chromedriver, and the Chromium it starts, in a process group of their own under
    `timeout`: the group is killed on the way out, and by `timeout` after `life_s` whatever
    becomes of the test process."""
    driver_path, browser = shutil.which("chromedriver"), shutil.which("chromium")
    assert driver_path and browser, "needs Debian's chromium and chromium-driver (see .ci/run)"
    work.mkdir(parents=True, exist_ok=True)
    port = free_port()
    with open(work / "chromedriver.log", "wb") as log:
        process = subprocess.Popen(
            ["timeout", "-k", "5", str(life_s), driver_path, f"--port={port}"],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        _await_port(port, process, 30)
        options = webdriver.ChromeOptions()
        options.binary_location = browser
        for arg in (
            "--headless=new",
            "--no-sandbox",  # as root (CI containers) Chromium refuses to start sandboxed
            "--disable-dev-shm-usage",
            "--disable-gpu",
            f"--window-size={size}",
            f"--user-data-dir={work / 'profile'}",
        ):
            options.add_argument(arg)
        options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
        # Chromium's connection knows chromedriver's own routes (DevTools commands, logs).
        connection = ChromiumRemoteConnection(
            f"http://127.0.0.1:{port}", "goog", "chrome", ignore_proxy=True
        )
        driver = webdriver.Remote(connection, options=options)
        try:
            yield driver
        finally:
            driver.quit()
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def _await_port(port: int, process: subprocess.Popen[bytes], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
            return
        assert process.poll() is None, "chromedriver exited at start"
        assert time.monotonic() < deadline, f"chromedriver did not listen within {timeout} s"
        time.sleep(0.1)


class Dashboard:
    """The dashboard page in a browser, read through the ids and data attributes it exposes."""

    def __init__(self, driver: WebDriver, admin_url: str, timeout: float = 60) -> None:
        self.driver = driver
        self.admin_url = admin_url
        self.timeout = timeout

    def until(self, condition: Callable[[], Any], what: str) -> Any:
        try:
            wait = WebDriverWait(
                self.driver, self.timeout, 0.1, ignored_exceptions=[StaleElementReferenceException]
            )
            return wait.until(lambda _: condition())
        except Exception as exc:
            # chromedriver keeps the console (goog:loggingPrefs) behind WebDriver's legacy route
            entries = self.driver.execute("getLog", {"type": "browser"})["value"]
            logs = "\n".join(e["message"] for e in entries)
            problem = self.by_id("problem").text
            raise AssertionError(
                f"timed out waiting for {what}; page says {problem!r}; browser log:\n{logs}"
            ) from exc

    def by_id(self, element_id: str) -> Any:
        return self.driver.find_element(By.ID, element_id)

    def before_each_page(self, script: str) -> None:
        """Runs `script` in every page this browser opens, before the page's own scripts."""
        self.driver.execute(
            "executeCdpCommand",
            {"cmd": "Page.addScriptToEvaluateOnNewDocument", "params": {"source": script}},
        )

    def sign_in(self, token: str) -> str:
        """Opens the page (signed out) and signs in; returns the role it shows."""
        self.driver.get(f"{self.admin_url}/dashboard")
        self.until(lambda: self.by_id("token").is_displayed(), "the sign-in form")
        self.by_id("token").send_keys(token)
        self.driver.find_element(By.CSS_SELECTOR, "#sign-in-form button").click()
        self.until(lambda: self.by_id("role").is_displayed(), "the signed-in role")
        role: str = self.by_id("role").text
        return role

    def sign_out(self) -> None:
        self.by_id("sign-out").click()
        self.until(lambda: self.by_id("token").is_displayed(), "the sign-in form")

    # The page redraws its tables, lists and grid whole: each read below is one script, so that
    # it never holds an element the page has just replaced.

    def texts(self, selector: str) -> list[str]:
        """The text of every element `selector` matches."""
        texts: list[str] = self.driver.execute_script(
            "return [...document.querySelectorAll(arguments[0])].map(e => e.textContent)",
            selector,
        )
        return texts

    def rows(self, table_id: str) -> list[list[str]]:
        """The text of each cell of each row of a table's body."""
        rows: list[list[str]] = self.driver.execute_script(
            "return [...document.querySelectorAll(arguments[0])]"
            ".map(r => [...r.cells].map(c => c.textContent))",
            f"#{table_id} tbody tr",
        )
        return rows

    def participation(self, round_no: int) -> dict[str, str]:
        """Each site's status in round `round_no` of the participation grid."""
        cells: dict[str, str] = self.driver.execute_script(
            "return Object.fromEntries([...document.querySelectorAll('#participation rect')]"
            ".filter(r => r.dataset.round === arguments[0])"
            ".map(r => [r.dataset.site, r.dataset.status]))",
            str(round_no),
        )
        return cells

    def run_ids(self) -> list[str]:
        ids: list[str] = self.driver.execute_script(
            "return [...document.querySelectorAll('#runs tbody tr')].map(r => r.dataset.runId)"
        )
        return ids

    def select_run(self, run_id: str) -> None:
        self.until(lambda: run_id in self.run_ids(), f"run {run_id} in the list")
        self.driver.find_element(By.CSS_SELECTOR, f'#runs tr[data-run-id="{run_id}"]').click()
        self.until(lambda: self.by_id("run-detail").is_displayed(), "the run's page")

    def chart(self, chart: str) -> tuple[list[int], list[str]]:
        """The rounds and series labels the chart draws."""
        el = self.by_id(f"chart-{chart}")
        return (
            json.loads(el.get_attribute("data-x") or "[]"),
            json.loads(el.get_attribute("data-series") or "[]"),
        )

    def run_status(self) -> str:
        status: str = self.by_id("run-status").get_attribute("data-status") or ""
        return status
