"""A real headless Chromium (Debian's `chromium` + `chromium-driver`) driven by Selenium.

`macula.local` is mapped to the daemon's DNS address inside the browser
(`--host-resolver-rules`), so the page is loaded by its name, with the Host
header a user's browser sends, without touching the machine's resolver.
Background networking is off; the performance log records every request the
page makes so a test can prove none leaves the machine.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from tests.conftest import require

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "tests" / "artifacts"
AXE = REPO / "tests" / "vendor" / "axe-core" / "axe.min.js"
AXE_SHA256 = "29348999450cdf2849a8e70b7912fc2da85a849da39c0d0d5394f51d4a9ed95c"
CHROMEDRIVER = "/usr/bin/chromedriver"


def require_browser() -> None:
    chromium = shutil.which("chromium")
    require(chromium is not None and os.access(CHROMEDRIVER, os.X_OK),
            "Debian's chromium and chromium-driver are needed (apt-get install chromium chromium-driver)")
    try:
        import selenium  # noqa: F401
    except ImportError:
        require(False, "selenium is needed (pip install -c requirements.lock -e '.[test]')")


def chrome(profile: Path, *, map_names: dict[str, str]) -> Any:
    """A headless Chromium; `map_names` name → IP replaces DNS for those names in the browser."""
    require_browser()
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    os.environ.setdefault("SE_AVOID_STATS", "true")
    opts = Options()
    opts.binary_location = shutil.which("chromium") or "chromium"
    rules = ", ".join(f"MAP {name} {ip}" for name, ip in map_names.items())
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1400,1000", f"--user-data-dir={profile}", f"--host-resolver-rules={rules}",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--disable-extensions", "--disable-default-apps", "--no-first-run", "--no-default-browser-check",
                "--disable-features=OptimizationHints,MediaRouter,Translate", "--metrics-recording-only",
                "--no-proxy-server", "--force-color-profile=srgb"):
        opts.add_argument(arg)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    return webdriver.Chrome(options=opts, service=Service(executable_path=CHROMEDRIVER))


def console_errors(driver: Any) -> list[dict[str, Any]]:
    return [e for e in driver.get_log("browser") if e.get("level") == "SEVERE"]


def requested_urls(driver: Any) -> list[str]:
    """Every URL the page asked for since the last call (from the performance log)."""
    urls = []
    for entry in driver.get_log("performance"):
        msg = json.loads(entry["message"])["message"]
        if msg.get("method") == "Network.requestWillBeSent":
            urls.append(msg["params"]["request"]["url"])
    return urls


def off_machine(urls: list[str], local_hosts: set[str]) -> list[str]:
    """The network URLs whose host is neither one of `local_hosts` nor a loopback address.

    Only network schemes count: data:, blob: and the browser's own chrome:// pages load nothing."""
    out = []
    for u in urls:
        parts = urlsplit(u)
        if parts.scheme not in ("http", "https", "ws", "wss", "ftp"):
            continue
        host = parts.hostname or ""
        if host in local_hosts or host.startswith("127.") or host == "::1":
            continue
        out.append(u)
    return out


def run_axe(driver: Any) -> list[dict[str, Any]]:
    """axe-core's WCAG 2.1 A/AA and best-practice rules on the current page; the violations."""
    src = AXE.read_bytes()
    assert hashlib.sha256(src).hexdigest() == AXE_SHA256, f"{AXE} is not the pinned axe-core"
    driver.execute_script(src.decode())
    driver.set_script_timeout(60)
    result: list[dict[str, Any]] = driver.execute_async_script(
        "const done = arguments[arguments.length - 1];"
        "axe.run(document, {runOnly: {type: 'tag', values: ['wcag2a', 'wcag2aa', 'wcag21a', 'wcag21aa',"
        " 'best-practice']}, resultTypes: ['violations']})"
        ".then(r => done(r.violations.map(v => ({id: v.id, impact: v.impact, help: v.help,"
        " nodes: v.nodes.map(n => n.target.join(' ') + ': ' + n.failureSummary)}))))"
        ".catch(e => done([{id: 'axe-error', help: String(e), nodes: []}]));"
    )
    return result


def wait_until(cond: Callable[[], Any], timeout: float, what: str, poll: float = 0.01) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = cond()
        except Exception as exc:  # a stale element while the page re-renders
            last = exc
        else:
            if last:
                return last
        time.sleep(poll)
    raise AssertionError(f"timed out after {timeout:g}s waiting for {what} (last: {last!r})")


def screenshot(driver: Any, name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / name
    # the whole page, not just the window
    height = driver.execute_script("return document.documentElement.scrollHeight")
    driver.set_window_size(1400, max(800, min(int(height) + 40, 4000)))
    driver.save_screenshot(str(path))
    return path
