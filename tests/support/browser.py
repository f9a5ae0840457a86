"""Headless Chromium from Debian (`chromium` + `chromium-driver`), driven through selenium, for the
web console's tests: what the page logged to its console, which requests failed, and full-page
screenshots. Everything stays on loopback; the browser process is stopped on exit."""

from __future__ import annotations

import base64
import json
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"


def unavailable() -> str | None:
    """Why the browser tests cannot run here, or None."""
    for path, package in ((CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver")):
        if shutil.which(path) is None:
            return f"{path} is missing: apt-get install {package} (make deps)"
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is missing: pip install -e '.[dev]' (make deps)"
    return None


@dataclass
class Browser:
    driver: Any
    # Everything seen so far (Browser.check drains the logs into these).
    console: list[dict[str, Any]] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)

    def check(self) -> None:
        """Read the browser's console log (SEVERE entries: errors, CSP violations, failed loads)
        and its network log (a request that failed, or answered 4xx/5xx) since the last check."""
        self.console += [e for e in self.driver.get_log("browser") if e.get("level") == "SEVERE"]
        for entry in self.driver.get_log("performance"):
            msg = json.loads(entry["message"])["message"]
            params = msg.get("params", {})
            if msg.get("method") == "Network.loadingFailed" and not params.get("canceled"):
                self.failed.append(f"{params.get('type')} {params.get('errorText')} ({params.get('requestId')})")
            elif msg.get("method") == "Network.responseReceived":
                response = params.get("response", {})
                if int(response.get("status", 0)) >= 400:
                    self.failed.append(f"{response.get('status')} {response.get('url')}")

    def screenshot(self, path: Path) -> Path:
        """The whole page (beyond the window) as PNG."""
        shot = self.driver.execute_cdp_cmd("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True})
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(shot["data"]))
        return path


@contextmanager
def chromium(width: int = 1280, height: int = 900) -> Iterator[Browser]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--no-first-run", "--disable-extensions", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--hide-scrollbars",
                f"--window-size={width},{height}"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    try:
        yield Browser(driver)
    finally:
        driver.quit()
