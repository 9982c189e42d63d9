"""The status page in a real headless Chromium against the real daemon (`maculad run`).

The browser reaches the page by its name (`http://macula.local:<port>/`, the
name mapped to the daemon's DNS address inside the browser). Each test checks
what a person would see: every name with its state, live updates without a
reload (a config reload, a labelled container, a stopped service keeping its name), no console
error, no request leaving the machine, keyboard use and contrast (axe-core),
and a reconnect after the daemon restarts. Screenshots and the measured
update latencies go to tests/artifacts/.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.support.browser import (
    ARTIFACTS,
    chrome,
    console_errors,
    off_machine,
    requested_urls,
    require_browser,
    run_axe,
    screenshot,
    wait_until,
)
from tests.support.daemon import Maculad, base_config, free_port
from tests.support.docker import DockerScope, published

DNS_IP = "127.0.0.153"
VENV_BIN = Path(sys.executable).parent


@dataclass
class Site:
    tmp: Path
    config: Path
    ports: dict[str, Any]
    daemon: Maculad
    driver: Any
    text: str
    refused_port: int
    latencies: dict[str, float] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://macula.local:{self.ports['http']}/"

    def row(self, name: str) -> Any:
        from selenium.webdriver.common.by import By

        rows = self.driver.find_elements(By.CSS_SELECTOR, f'tr[data-name="{name}"]')
        return rows[0] if rows else None

    def row_text(self, name: str) -> str:
        r = self.row(name)
        return str(r.text) if r is not None else ""

    def service_text(self, service: str) -> str:
        from selenium.webdriver.common.by import By

        rows = self.driver.find_elements(By.CSS_SELECTOR, f'tr[data-service="{service}"]')
        return str(rows[0].text) if rows else ""

    def section_of(self, name: str) -> str:
        return str(self.driver.execute_script(
            "const r = document.querySelector(arguments[0]); return r ? r.closest('section').id || "
            "r.closest('section').getAttribute('aria-labelledby') : null;", f'tr[data-name="{name}"]'))

    def ctl(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(VENV_BIN / "maculactl"), "--socket", str(self.tmp / "maculad.sock"), *args],
                              capture_output=True, text=True, timeout=60)

    def wait_row(self, name: str, contains: str = "", timeout: float = 10.0) -> float:
        """Seconds until the row for `name` shows `contains` (polling the live DOM)."""
        t0 = time.monotonic()
        try:
            wait_until(lambda: self.row(name) is not None and contains in self.row_text(name), timeout,
                       f"{name} showing {contains!r}")
        except AssertionError as exc:
            raise AssertionError(f"{exc}; the row reads {self.row_text(name)!r}") from None
        return time.monotonic() - t0


def _config(tmp: Path, *, extra: str, refused_port: int) -> tuple[str, dict[str, Any]]:
    text, ports = base_config(tmp, dns_ip=DNS_IP, pool="127.0.31.0/24", extra=extra)
    text += f"""
[[route]]
name = "grafana"
http = "127.0.0.1:{ports['metrics']}"

[[route]]
name = "console"
https = "127.0.0.1:{refused_port}"

[[route]]
name = "plain"
http = "127.0.0.1:{ports['metrics']}"
tls = "off"
"""
    return text, ports


def _start(tmp: Path, extra: str = "") -> Site:
    require_browser()
    refused = free_port("127.0.0.1", udp_too=False)
    text, ports = _config(tmp, extra=extra, refused_port=refused)
    cfg = tmp / "maculad.toml"
    cfg.write_text(text)
    daemon = Maculad(cfg, log=tmp / "maculad.log").start()
    daemon.wait_ready(ports["metrics"])
    driver = chrome(tmp / "chrome-profile", map_names={"macula.local": DNS_IP})
    return Site(tmp=tmp, config=cfg, ports=ports, daemon=daemon, driver=driver, text=text, refused_port=refused)


@pytest.fixture
def site(tmp_path: Path) -> Iterator[Site]:
    s = _start(tmp_path)
    try:
        yield s
    finally:
        s.driver.quit()
        s.daemon.stop()


def _open(site: Site) -> None:
    site.driver.get(site.url)
    wait_until(lambda: site.driver.execute_script("return document.body.dataset.live") == "live", 15,
               "the live stream to connect")
    wait_until(lambda: site.row("grafana.macula.local") is not None, 10, "the first render")
    site.driver.execute_script("window.__notReloaded = true;")


def _assert_clean(site: Site) -> None:
    assert site.driver.execute_script("return window.__notReloaded === true"), "the page was reloaded"
    errors = console_errors(site.driver)
    assert not errors, f"console errors: {errors}"
    leaving = off_machine(requested_urls(site.driver), {"macula.local"})
    assert not leaving, f"requests leaving the machine: {leaving}"


def _record(name: str, values: dict[str, float]) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / "web-latency.json"
    data = json.loads(path.read_text()) if path.exists() else {}
    data[name] = {k: round(v, 3) for k, v in values.items()}
    path.write_text(json.dumps(data, indent=2) + "\n")
    print(f"page-side update latency ({name}):", data[name])


def test_page_lists_every_route_with_its_state(site: Site) -> None:
    from selenium.webdriver.common.by import By

    _open(site)
    http, https = site.ports["http"], site.ports["https"]
    plain = site.row("plain.macula.local").find_element(By.TAG_NAME, "a")
    assert plain.get_attribute("href") == f"http://plain.macula.local:{http}/"  # tls = "off": plain http
    site.wait_row("grafana.macula.local", "accepts")
    site.wait_row("console.macula.local", "refuses")
    grafana = site.row("grafana.macula.local")
    link = grafana.find_element(By.TAG_NAME, "a")
    # an http-only backend: maculad terminates TLS for it, so the link is https
    assert link.get_attribute("href") == f"https://grafana.macula.local:{https}/"
    assert "TLS terminated by maculad" in site.row_text("grafana.macula.local")
    console_link = site.row("console.macula.local").find_element(By.TAG_NAME, "a")
    assert console_link.get_attribute("href") == f"https://console.macula.local:{https}/"
    text = site.row_text("grafana.macula.local")
    assert "127.0.31." in text and "config" in text and f"127.0.0.1:{site.ports['metrics']}" in text
    assert "Connection refused" in site.row_text("console.macula.local")
    assert site.section_of("grafana.macula.local") == "h-other"
    body = site.driver.find_element(By.TAG_NAME, "body").text
    assert "No conflicts." in body and "not managed" in body
    assert site.driver.find_element(By.ID, "f-routes").text == "3"
    # searchable
    box = site.driver.find_element(By.ID, "filter")
    box.send_keys("graf")
    wait_until(lambda: not site.row("console.macula.local").is_displayed(), 5, "console to be filtered out")
    assert site.row("grafana.macula.local").is_displayed()
    assert "1 of 3 shown" in site.driver.find_element(By.ID, "shown").text
    box.clear()
    box.send_keys(" ")
    shot = screenshot(site.driver, "web-status.png")
    assert shot.stat().st_size > 10_000
    _assert_clean(site)


def test_reload_route_appears_live(site: Site) -> None:
    _open(site)
    site.config.write_text(site.text + f"""
[[route]]
name = "added"
http = "127.0.0.1:{site.ports['metrics']}"
""")
    t0 = time.monotonic()
    site.daemon.signal(__import__("signal").SIGHUP)
    site.wait_row("added.macula.local")
    seen = time.monotonic() - t0
    site.wait_row("added.macula.local", "accepts")
    _record("reload", {"route_visible_s": seen})
    _assert_clean(site)


@pytest.fixture
def docker_site(tmp_path: Path, docker_scope: DockerScope) -> Iterator[tuple[Site, DockerScope]]:
    extra = f"""
[docker]
enabled = true
labels = ["{docker_scope.label}"]
compose_project = "mtest-{docker_scope.uid}"
[docker.backoff]
initial = 0.2
cap = 1.0
"""
    s = _start(tmp_path, extra)
    try:
        yield s, docker_scope
    finally:
        s.driver.quit()
        s.daemon.stop()


def test_container_appears_live_and_a_stopped_service_shows_stopped(docker_site: tuple[Site, DockerScope]) -> None:
    site, scope = docker_site
    _open(site)
    name = f"{scope.name('web')}.macula.local"
    t0 = time.monotonic()
    scope.run("web", "-p", "127.0.0.1::8080", labels={"macula.host": scope.name("web"), "macula.http": "8080"},
              cmd=("httpd", "-f", "-p", "8080"))
    t_running = time.monotonic()  # `docker run -d` returns once the container runs
    site.wait_row(name, timeout=20)
    appeared, after_running = time.monotonic() - t0, time.monotonic() - t_running
    site.wait_row(name, "running", timeout=20)
    host, port = published(scope.name("web"), "8080")
    site.wait_row(name, f"{host}:{port}")
    site.wait_row(name, "accepts", timeout=20)
    assert site.section_of(name) == "h-infra"
    shot = screenshot(site.driver, "web-status-docker.png")
    assert shot.stat().st_size > 10_000

    services = json.loads(site.ctl("services", "--json").stdout)["services"]
    svc = next(s["service"] for s in services if s["container"] == scope.name("web"))
    t1 = time.monotonic()
    r = site.ctl("stop", svc)
    assert r.returncode == 0, r.stderr
    t_stopped = time.monotonic()  # maculactl stop returns once the container is stopped
    # a supervised service keeps its name while stopped (held: its HTTP port answers 503 naming it);
    # the name's row shows the service stopped, and it is not among the services serving no name
    site.wait_row(name, "stopped", timeout=30)
    stopped, after_stopped = time.monotonic() - t1, time.monotonic() - t_stopped
    assert site.service_text(svc) == ""
    _record("docker", {"docker_run_to_row_s": appeared, "container_running_to_row_s": after_running,
                       "maculactl_stop_to_stopped_s": stopped, "container_stopped_to_stopped_s": after_stopped})
    _assert_clean(site)


def test_keyboard_navigation_and_contrast_with_axe(site: Site) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    _open(site)
    site.wait_row("console.macula.local", "refuses")
    violations = run_axe(site.driver)
    assert violations == [], json.dumps(violations, indent=2)

    body = site.driver.find_element(By.TAG_NAME, "body")
    body.send_keys("/")
    assert site.driver.switch_to.active_element.get_attribute("id") == "filter"
    site.driver.switch_to.active_element.send_keys("console")
    wait_until(lambda: not site.row("grafana.macula.local").is_displayed(), 5, "the filter to apply")
    site.driver.switch_to.active_element.send_keys(Keys.ESCAPE)
    wait_until(lambda: site.row("grafana.macula.local").is_displayed(), 5, "Escape to clear the filter")
    # Tab walks from the search box through every name's link, in the page's order
    reached = []
    for _ in range(6):
        site.driver.switch_to.active_element.send_keys(Keys.TAB)
        el = site.driver.switch_to.active_element
        if el.tag_name == "a":
            reached.append(el.text)
    assert reached[:2] == ["console.macula.local", "grafana.macula.local"], reached
    # a focused link keeps its focus across a live re-render
    site.driver.execute_script("document.querySelector('tr[data-name=\"grafana.macula.local\"] a').focus()")
    before = site.driver.execute_script("return document.body.dataset.updated")
    site.daemon.signal(__import__("signal").SIGHUP)
    wait_until(lambda: site.driver.execute_script("return document.body.dataset.updated") != before, 10,
               "a re-render")
    assert site.driver.switch_to.active_element.text == "grafana.macula.local"
    _assert_clean(site)


def test_page_reconnects_after_a_daemon_restart(site: Site) -> None:
    from selenium.webdriver.common.by import By

    _open(site)
    first = site.driver.find_element(By.ID, "footer").text
    assert site.daemon.stop() == 0
    wait_until(lambda: site.driver.execute_script("return document.body.dataset.live") == "reconnecting", 10,
               "the page to notice the daemon is gone")
    site.daemon = Maculad(site.config, log=site.tmp / "maculad-2.log").start()
    t0 = time.monotonic()
    site.daemon.wait_ready(site.ports["metrics"])
    wait_until(lambda: site.driver.execute_script("return document.body.dataset.live") == "live", 15,
               "the page to reconnect")
    back = time.monotonic() - t0
    wait_until(lambda: site.driver.find_element(By.ID, "footer").text.split(" · ")[1] != first.split(" · ")[1], 10,
               "the new daemon's pid in the footer")
    assert site.row("grafana.macula.local") is not None
    assert site.driver.execute_script("return window.__notReloaded === true")
    _record("restart", {"daemon_start_to_live_s": back})
