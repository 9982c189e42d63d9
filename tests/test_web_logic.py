"""The status page's pure parts: Host/Origin rules, the backend probe's bounds, the rate meter,
the apex A answer and the [web] config section."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from maculad.config import ConfigError, parse_config
from maculad.dns.answer import A, Question, ZoneSettings, ZoneView, answer
from maculad.dns.codes import QTYPE_A, QTYPE_AAAA, QTYPE_SOA
from maculad.observability.metrics import Metrics
from maculad.core.net import Backend
from maculad.routes.table import RouteTable
from maculad.web.figures import RateMeter, relay_connections
from maculad.web.guard import Allowed, fetch_site_ok, host_ok, origin_ok, split_host
from maculad.web.probe import BackendProbe, parse_backend

ALLOWED = Allowed.build(domain="macula.local", listen_host="127.0.0.153", port=10080)
AT_80 = Allowed.build(domain="macula.local", listen_host="127.0.0.153", port=80)


@pytest.mark.parametrize(("header", "ok"), [
    ("macula.local:10080", True),
    ("MACULA.LOCAL:10080", True),
    ("macula.local.:10080", True),
    ("127.0.0.153:10080", True),
    ("macula.local", False),  # port 80 implied, the page is on 10080
    ("macula.local:80", False),
    ("grafana.macula.local:10080", False),  # a route's name is not the page
    ("evil.example:10080", False),  # DNS rebinding: the attacker's name
    ("127.0.0.1:10080", False),
    ("localhost:10080", False),
    ("macula.local:10080@evil", False),
    ("macula.local:99999", False),
    ("macula.local:", False),
    ("", False),
    ("macula.local:10080 x", False),
])
def test_host_header(header: str, ok: bool) -> None:
    assert host_ok(header, ALLOWED) is ok


def test_host_without_port_is_port_80() -> None:
    assert host_ok("macula.local", AT_80)
    assert host_ok("macula.local:80", AT_80)
    assert not host_ok(None, AT_80)


def test_split_host_ipv6() -> None:
    assert split_host("[::1]:8080") == ("::1", 8080)
    assert split_host("[::1]") == ("::1", None)
    assert split_host("[nope]:1") is None
    assert split_host("::1") is None
    v6 = Allowed.build(domain="macula.local", listen_host="::1", port=8080)
    assert host_ok("[0:0::1]:8080", v6)


@pytest.mark.parametrize(("origin", "ok"), [
    (None, True),
    ("http://macula.local:10080", True),
    ("http://127.0.0.153:10080", True),
    ("http://evil.example", False),
    ("http://evil.example:10080", False),
    ("https://macula.local:10080", False),
    ("http://macula.local", False),
    ("null", False),
    ("http://macula.local:10080/path", False),
    ("http://[::1", False),
])
def test_origin(origin: str | None, ok: bool) -> None:
    assert origin_ok(origin, ALLOWED) is ok


def test_fetch_site() -> None:
    assert fetch_site_ok(None) and fetch_site_ok("same-origin") and fetch_site_ok("none")
    assert not fetch_site_ok("cross-site") and not fetch_site_ok("same-site")


def test_parse_backend() -> None:
    assert parse_backend("127.0.0.1:80") == Backend("127.0.0.1", 80)
    assert parse_backend("[::1]:80") == Backend("::1", 80)
    assert parse_backend("nope") is None and parse_backend(":80") is None


class FakeClock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


async def test_probe_caches_shares_and_bounds() -> None:
    calls: list[Backend] = []
    up = {Backend("127.0.0.1", 1)}
    clock = FakeClock()
    running = 0
    peak = 0

    async def connect(b: Backend, timeout: float) -> None:
        nonlocal running, peak
        calls.append(b)
        running += 1
        peak = max(peak, running)
        await asyncio.sleep(0.01)
        running -= 1
        if b not in up:
            raise ConnectionRefusedError(111, "Connection refused")

    metrics = Metrics()
    probe = BackendProbe(metrics=metrics, interval=5.0, min_interval=0.5, connect=connect, clock=clock,
                         concurrency=2, wait=1.0)
    backends = [Backend("127.0.0.1", p) for p in range(1, 6)]
    # ten pages asking at once: one connect per backend
    results = await asyncio.gather(*(probe.check(backends) for _ in range(10)))
    assert len(calls) == 5 and peak <= 2
    assert results[0]["127.0.0.1:1"]["accepts"] is True
    assert results[0]["127.0.0.1:2"]["accepts"] is False
    assert results[0]["127.0.0.1:2"]["error"] == "Connection refused"
    # an event marks the answers stale, but no backend is connected to more often than min_interval
    probe.invalidate()
    clock.t += 0.1
    await probe.check(backends)
    assert len(calls) == 5
    clock.t += 0.5
    await probe.check(backends)
    assert len(calls) == 10
    # no event: cached for the whole interval
    clock.t += 4.0
    await probe.check(backends)
    assert len(calls) == 10
    clock.t += 1.0
    await probe.check(backends)
    assert len(calls) == 15
    assert metrics.web_backend_checks.labels(result="accepts")._value.get() == 3


async def test_probe_reports_slow_checks_as_checking_and_keeps_a_bounded_cache() -> None:
    release = asyncio.Event()

    async def connect(b: Backend, timeout: float) -> None:
        await release.wait()

    probe = BackendProbe(metrics=Metrics(), connect=connect, wait=0.05, max_backends=3)
    out = await probe.check([Backend("10.0.0.1", 1)])
    assert out["10.0.0.1:1"] == {"accepts": None, "error": None, "latency_ms": None, "age_seconds": None,
                                 "checking": True}
    release.set()
    await asyncio.sleep(0.01)
    out = await probe.check([Backend("10.0.0.1", 1)])
    assert out["10.0.0.1:1"]["accepts"] is True and not out["10.0.0.1:1"]["checking"]
    many = [Backend("127.0.0.1", p) for p in range(10, 20)]
    out = await probe.check(many)
    assert len(out) == 3  # at most max_backends are checked and kept
    await probe.close()


async def test_probe_timeout_is_a_clear_error() -> None:
    async def connect(b: Backend, timeout: float) -> None:
        raise TimeoutError

    probe = BackendProbe(metrics=Metrics(), connect=connect, timeout=0.25)
    out = await probe.check([Backend("192.0.2.1", 80)])
    assert out["192.0.2.1:80"]["error"] == "no answer within 0.25s"


def test_rate_meter() -> None:
    m = RateMeter(window=10, resolution=1)
    assert m.add(0.0, 0) is None
    assert m.add(1.0, 100) == pytest.approx(100.0)
    for t in range(2, 30):
        rate = m.add(float(t), 100 * t)
    assert rate == pytest.approx(100.0)
    assert len(m._samples) <= 12
    assert m.add(30.0, 5) is None  # counter reset: start over


def test_relay_connections_sums_listeners() -> None:
    status: Any = {"components": {"proxy": {"listeners": [{"conns": 2}, {"conns": 3}, {"conns": 0}]}}}
    assert relay_connections(status) == 5
    no_relay: Any = {"components": {}}
    assert relay_connections(no_relay) == 0
    broken: Any = {"components": {"proxy": {"error": "KeyError: 'x'"}}}
    assert relay_connections(broken) == 0


def _view(apex: tuple[str, ...]) -> ZoneView:
    table = RouteTable.empty("macula.local")
    s = ZoneSettings.from_listen(domain="macula.local", ttl=5, listen_hosts=("127.0.0.153",), forwarding=False,
                                 apex_a=apex)
    return ZoneView.build(table, s)


def test_apex_answers_a_with_the_page_address() -> None:
    labels = (b"macula", b"local")
    d = answer(Question(labels, QTYPE_A), _view(("127.0.0.153",)))
    assert [rr.data for rr in d.answer] == [A("127.0.0.153")] and d.aa
    assert answer(Question(labels, QTYPE_SOA), _view(("127.0.0.153",))).answer[0].data.__class__.__name__ == "SOA"
    nodata = answer(Question(labels, QTYPE_AAAA), _view(("127.0.0.153",)))
    assert not nodata.answer and nodata.authority
    off = answer(Question(labels, QTYPE_A), _view(()))
    assert not off.answer and off.authority  # page off: NODATA as before


def test_web_config(tmp_path: Path) -> None:
    c = parse_config({"dns": {"listen": ["127.0.0.153:10053"]}, "proxy": {"http_port": 10080, "https_port": 10443}},
                     file="m.toml", base=tmp_path)
    assert c.web.enabled and c.web_listen == Backend("127.0.0.153", 10080)
    c = parse_config({"web": {"listen": "127.0.0.1:8088", "max_clients": 4}}, file="m.toml", base=tmp_path)
    assert c.web_listen == Backend("127.0.0.1", 8088) and c.web.max_clients == 4
    c = parse_config({"dns": {"listen": ["0.0.0.0:53"]}}, file="m.toml", base=tmp_path)
    assert c.web_listen == Backend("127.0.0.1", 80)
    with pytest.raises(ConfigError, match=r"web\.listen: 'host' is not an IP address"):
        parse_config({"web": {"listen": "host:80"}}, file="m.toml", base=tmp_path)
    with pytest.raises(ConfigError, match=r"web\.max_clients: 0 is out of range"):
        parse_config({"web": {"max_clients": 0}}, file="m.toml", base=tmp_path)
    with pytest.raises(ConfigError, match=r"web\.secret: unknown key"):
        parse_config({"web": {"secret": 1}}, file="m.toml", base=tmp_path)
    with pytest.raises(ConfigError, match=r"docker\.labels"):
        parse_config({"docker": {"labels": "x"}}, file="m.toml", base=tmp_path)
    assert parse_config({"docker": {"labels": ["a=b"]}}, file="m.toml", base=tmp_path).docker.labels == ("a=b",)
