"""maculad and a real PowerDNS (Debian pdns-server, gsqlite3) on loopback, through the real daemon.

Each test starts its own pdns_server and its own `maculad run`, then looks at the
zone through PowerDNS's API and with `dig` against PowerDNS's DNS port, and at
maculad through `dig` against maculad and `maculactl`.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import require
from tests.support.daemon import Maculad, base_config
from tests.support.powerdns import PowerDNS, missing

ZONE = "macula.local"
PUBLISH = "10.20.30.40"
OWNER = "maculad-test"


@pytest.fixture
def pdns(tmp_path: Path) -> Iterator[PowerDNS]:
    why = missing()
    require(why is None, why or "")
    p = PowerDNS(tmp_path / "pdns")
    p.start()
    try:
        yield p
    finally:
        p.stop()


def routes_toml(*names: str) -> str:
    return "".join(f'\n[[route]]\nname = "{n}"\nhttp = "127.0.0.1:{9000 + i}"\n' for i, n in enumerate(names))


class Setup:
    """A maculad config pointing at `pdns`; `write()` rewrites it, `start()` runs the daemon."""

    def __init__(self, tmp: Path, pdns: PowerDNS, *, key: str | None = None, dns_ttl: int = 5,
                 publish: str | None = PUBLISH, extra: str = "") -> None:
        self.tmp = tmp
        self.publish = publish
        self.extra = extra
        self.pdns = pdns
        self.key_file = tmp / "pdns.key"
        self.key_file.write_text((key or pdns.api_key) + "\n")
        self.key_file.chmod(0o600)
        self.cfg = tmp / "maculad.toml"
        self.dns_ttl = dns_ttl
        self.base, self.ports = base_config(tmp, extra="", containers=bool(extra))
        self.base = self.base.replace("ttl = 5", f"ttl = {dns_ttl}")
        self.daemon: Maculad | None = None

    def write(self, *routes: str) -> None:
        address = f'publish_address = "{self.publish}"' if self.publish else ""
        text = self.base + self.extra + f"""
[powerdns]
enabled = true
api = "{self.pdns.api_url}"
api_key_file = "{self.key_file}"
dns = "{self.pdns.dns}"
{address}
owner_id = "{OWNER}"
resync_interval = 3600
[powerdns.backoff]
initial = 0.1
cap = 0.5
""" + routes_toml(*routes)
        self.cfg.write_text(text)
        self.cfg.chmod(0o600)

    def start(self, *routes: str) -> Maculad:
        self.write(*routes)
        self.daemon = Maculad(self.cfg, log=self.tmp / "maculad.log").start()
        self.daemon.wait_ready(self.ports["metrics"])
        return self.daemon

    def reload(self, *routes: str) -> None:
        self.write(*routes)
        assert self.daemon is not None
        self.daemon.signal(signal.SIGHUP)

    def ctl(self, *args: str) -> tuple[int, str]:
        exe = Path(sys.executable).parent / "maculactl"
        p = subprocess.run([str(exe), "--socket", str(self.tmp / "maculad.sock"), *args],
                           capture_output=True, text=True, timeout=30)
        return p.returncode, p.stdout + p.stderr

    def status(self) -> dict[str, Any]:
        _, out = self.ctl("powerdns", "status", "--json")
        data = json.loads(out)
        assert isinstance(data, dict)
        return data

    def dig_maculad(self, name: str, rtype: str = "A") -> str:
        return dig("127.0.0.153", self.ports["dns"], name, rtype)

    def stop(self) -> None:
        if self.daemon is not None:
            self.daemon.stop()


@pytest.fixture
def setup(tmp_path: Path, pdns: PowerDNS) -> Iterator[Setup]:
    s = Setup(tmp_path, pdns)
    try:
        yield s
    finally:
        s.stop()


def dig(host: str, port: int, name: str, rtype: str = "A", *extra: str) -> str:
    p = subprocess.run(["dig", "-p", str(port), f"@{host}", name, rtype, "+tries=1", "+time=3", *extra],
                       capture_output=True, text=True, timeout=20)
    return p.stdout


def short(host: str, port: int, name: str, rtype: str = "A") -> list[str]:
    return sorted(dig(host, port, name, rtype, "+short").split())


def rcode(out: str) -> str:
    for line in out.splitlines():
        if "status:" in line:
            return line.split("status:")[1].split(",")[0].strip()
    return "no reply"


def eventually(check: Callable[[], Any], *, timeout: float = 15.0, what: str = "", logs: Callable[[], str] = str) \
        -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(0.05)
    raise AssertionError(f"not within {timeout}s: {what} (last: {last!r})\n{logs()}")


def owner_txt(route: str, source: str = "config") -> str:
    return (f'"heritage=external-dns,external-dns/owner={OWNER},'
            f'external-dns/resource=maculad/{source}/{route}"')


def published(pdns: PowerDNS, *names: str) -> bool:
    rr = pdns.rrsets(ZONE)
    return all(rr.get((f"{n}.{ZONE}", "A")) == [PUBLISH]
               and rr.get((f"a-{n}.{ZONE}", "TXT")) == [owner_txt(f"{n}.{ZONE}")] for n in names)


# --------------------------------------------------------------------------- tests


def test_names_appear_as_a_and_txt(setup: Setup, pdns: PowerDNS) -> None:
    pdns.create_zone(ZONE)
    d = setup.start("grafana", "console")
    eventually(lambda: published(pdns, "grafana", "console"), what="A + TXT in the zone", logs=d.logs)
    # through PowerDNS's own DNS port, as another cluster or a teammate would ask
    assert short("127.0.0.1", pdns.dns_port, f"grafana.{ZONE}") == [PUBLISH]
    assert short("127.0.0.1", pdns.dns_port, f"a-console.{ZONE}", "TXT") == [
        '"heritage=external-dns,external-dns/owner=maculad-test,external-dns/resource=maculad/config/console.macula.local"'
    ]
    st = setup.status()
    assert st["connected"] is True and st["records_owned"] == 2 and st["conflicts"] == []
    assert st["last_sync"] is not None and st["last_error"] is None
    rc, out = setup.ctl("powerdns", "status")
    assert rc == 0 and "connected    yes" in out and "2 names owned" in out
    metrics = _metrics(setup)
    assert "maculad_powerdns_connected 1.0" in metrics and "maculad_powerdns_records_owned 2.0" in metrics


def test_foreign_records_untouched_and_answered_on_the_host(setup: Setup, pdns: PowerDNS) -> None:
    pdns.create_zone(ZONE)
    foreign = [
        {"name": f"peer9.{ZONE}.", "type": "A", "ttl": 300, "changetype": "REPLACE",
         "records": [{"content": "10.1.2.3", "disabled": False}]},
        {"name": f"peer9.{ZONE}.", "type": "AAAA", "ttl": 300, "changetype": "REPLACE",
         "records": [{"content": "fd00::9", "disabled": False}]},
        {"name": f"a-peer9.{ZONE}.", "type": "TXT", "ttl": 300, "changetype": "REPLACE",
         "records": [{"content": '"heritage=external-dns,external-dns/owner=kind-b,'
                                 'external-dns/resource=ingress/apps/peer9"', "disabled": False}]},
        {"name": f"alias.{ZONE}.", "type": "CNAME", "ttl": 300, "changetype": "REPLACE",
         "records": [{"content": f"peer9.{ZONE}.", "disabled": False}]},
    ]
    pdns.patch(ZONE, foreign)
    before = {k: v for k, v in pdns.rrsets(ZONE).items() if "peer9" in k[0] or "alias" in k[0]}
    d = setup.start("grafana")
    eventually(lambda: published(pdns, "grafana"), what="grafana published", logs=d.logs)
    setup.reload("grafana", "console")  # another table change: another round over the same zone
    eventually(lambda: published(pdns, "grafana", "console"), what="console published", logs=d.logs)
    after = {k: v for k, v in pdns.rrsets(ZONE).items() if "peer9" in k[0] or "alias" in k[0]}
    assert after == before

    # the host asks maculad; maculad asks PowerDNS; the TTL is capped at dns.ttl (5)
    out = setup.dig_maculad(f"peer9.{ZONE}")
    assert rcode(out) == "NOERROR" and "10.1.2.3" in out
    ttl = int(next(ln for ln in out.splitlines() if ln.startswith(f"peer9.{ZONE}.") and "\tA\t" in ln).split()[1])
    assert ttl <= 5
    assert "fd00::9" in setup.dig_maculad(f"peer9.{ZONE}", "AAAA")
    alias = setup.dig_maculad(f"alias.{ZONE}")
    assert "CNAME" in alias and "10.1.2.3" in alias
    assert rcode(setup.dig_maculad(f"nobody.{ZONE}")) == "NXDOMAIN"
    # maculad's own names stay its own loopback IPs (not the published address)
    own = short("127.0.0.153", setup.ports["dns"], f"grafana.{ZONE}")
    assert len(own) == 1 and own[0].startswith("127.0.10.")


def test_deleting_a_route_removes_its_records(setup: Setup, pdns: PowerDNS) -> None:
    pdns.create_zone(ZONE)
    d = setup.start("grafana", "console")
    eventually(lambda: published(pdns, "grafana", "console"), what="both published", logs=d.logs)
    setup.reload("grafana")
    def gone() -> bool:
        rr = pdns.rrsets(ZONE)
        return (f"console.{ZONE}", "A") not in rr and (f"a-console.{ZONE}", "TXT") not in rr
    eventually(gone, what="console's A and TXT deleted", logs=d.logs)
    assert published(pdns, "grafana")
    assert short("127.0.0.1", pdns.dns_port, f"console.{ZONE}") == []


def test_powerdns_down_while_routes_change_then_converges(setup: Setup, pdns: PowerDNS) -> None:
    pdns.create_zone(ZONE)
    d = setup.start("grafana", "console")
    eventually(lambda: published(pdns, "grafana", "console"), what="published", logs=d.logs)
    pdns.stop()
    setup.reload("grafana", "registry")  # console goes, registry comes, while PowerDNS is away
    eventually(lambda: setup.status()["connected"] is False, what="status shows the outage", logs=d.logs)
    st = setup.status()
    assert "unreachable" in (st["last_error"] or "")
    # own names unaffected; names only PowerDNS could answer: SERVFAIL, no negative answer to cache
    assert short("127.0.0.153", setup.ports["dns"], f"registry.{ZONE}")[0].startswith("127.0.10.")
    assert rcode(setup.dig_maculad(f"peer9.{ZONE}")) == "SERVFAIL"
    pdns.start()
    def converged() -> bool:
        rr = pdns.rrsets(ZONE)
        return published(pdns, "grafana", "registry") and (f"console.{ZONE}", "A") not in rr \
            and (f"a-console.{ZONE}", "TXT") not in rr
    eventually(converged, timeout=20, what="zone converged after PowerDNS came back", logs=d.logs)
    eventually(lambda: setup.status()["connected"] is True, what="connected again", logs=d.logs)


def test_foreign_owner_at_maculads_name_is_a_conflict(setup: Setup, pdns: PowerDNS) -> None:
    pdns.create_zone(ZONE)
    pdns.patch(ZONE, [
        {"name": f"grafana.{ZONE}.", "type": "A", "ttl": 60, "changetype": "REPLACE",
         "records": [{"content": "10.9.9.9", "disabled": False}]},
        {"name": f"a-grafana.{ZONE}.", "type": "TXT", "ttl": 60, "changetype": "REPLACE",
         "records": [{"content": '"heritage=external-dns,external-dns/owner=kind-b,'
                                 'external-dns/resource=ingress/monitoring/grafana"', "disabled": False}]},
    ])
    before = pdns.rrsets(ZONE)
    d = setup.start("grafana", "console")
    eventually(lambda: published(pdns, "console"), what="console published", logs=d.logs)
    st = eventually(lambda: (s := setup.status())["conflicts"] and s, what="conflict reported", logs=d.logs)
    assert [c["name"] for c in st["conflicts"]] == [f"grafana.{ZONE}"]
    assert st["conflicts"][0]["owner"] == "kind-b" and st["records_owned"] == 1
    after = pdns.rrsets(ZONE)
    for key in ((f"grafana.{ZONE}", "A"), (f"a-grafana.{ZONE}", "TXT")):
        assert after[key] == before[key]
    rc, out = setup.ctl("routes")
    assert rc == 0 and "PowerDNS conflicts (1)" in out and "kind-b" in out
    assert "maculad_powerdns_conflicts 1.0" in _metrics(setup)
    assert "powerdns_conflict" in d.logs()
    # maculad keeps answering its own name locally
    assert short("127.0.0.153", setup.ports["dns"], f"grafana.{ZONE}")[0].startswith("127.0.10.")


def test_missing_zone_is_created(setup: Setup, pdns: PowerDNS) -> None:
    assert pdns.zone(ZONE) is None
    d = setup.start("grafana")
    eventually(lambda: published(pdns, "grafana"), what="zone created and grafana published", logs=d.logs)
    z = pdns.zone(ZONE)
    assert z is not None and z["kind"] == "Native"
    assert pdns.rrsets(ZONE)[(ZONE, "NS")] == [f"ns.{ZONE}."]
    assert setup.status()["zone_created"] is True
    assert short("127.0.0.1", pdns.dns_port, f"grafana.{ZONE}") == [PUBLISH]


def test_wrong_api_key_is_a_clear_error_and_dns_is_unaffected(tmp_path: Path, pdns: PowerDNS) -> None:
    pdns.create_zone(ZONE)
    s = Setup(tmp_path, pdns, key="not-the-key")
    try:
        d = s.start("grafana")
        st = eventually(lambda: (x := s.status())["last_error"] and x, what="an error in status", logs=d.logs)
        assert st["connected"] is False and st["last_error_kind"] == "auth"
        assert "API key" in st["last_error"] and "401" in st["last_error"]
        rc, out = s.ctl("powerdns", "status")
        assert rc == 1 and "refused the API key" in out
        assert short("127.0.0.153", s.ports["dns"], f"grafana.{ZONE}")[0].startswith("127.0.10.")
        assert (f"grafana.{ZONE}", "A") not in pdns.rrsets(ZONE)
        assert "not-the-key" not in d.logs() and "not-the-key" not in json.dumps(st)
    finally:
        s.stop()


def test_publish_address_defaults_to_the_container_horizons_address(tmp_path: Path, pdns: PowerDNS) -> None:
    """No publish_address: the A records carry G, the address containers and other machines reach."""
    pdns.create_zone(ZONE)
    g = "127.0.0.89"  # G given explicitly, so no Docker engine is involved
    s = Setup(tmp_path, pdns, publish=None, extra=f'\n[containers]\nenabled = true\naddress = "{g}"\n')
    try:
        d = s.start("grafana")
        eventually(lambda: pdns.rrsets(ZONE).get((f"grafana.{ZONE}", "A")) == [g], what="A = G", logs=d.logs)
        st = s.status()
        assert st["publish_address"] == g and st["publish_address_from"] == "containers"
        assert short("127.0.0.1", pdns.dns_port, f"grafana.{ZONE}") == [g]
    finally:
        s.stop()


def test_no_publish_address_without_the_container_horizon_is_refused(tmp_path: Path) -> None:
    cfg = tmp_path / "maculad.toml"
    cfg.write_text('[docker]\nenabled = false\n[powerdns]\nenabled = true\napi_key = "k"\n')
    cfg.chmod(0o600)
    p = subprocess.run([sys.executable, "-m", "maculad", "check-config", "--config", str(cfg)],
                       capture_output=True, text=True, timeout=30)
    assert p.returncode == 2 and "powerdns.publish_address" in p.stderr and "[containers] is off" in p.stderr


def test_inline_api_key_in_a_world_readable_config_is_refused(tmp_path: Path) -> None:
    cfg = tmp_path / "maculad.toml"
    cfg.write_text('[powerdns]\nenabled = true\napi_key = "secret"\npublish_address = "10.0.0.1"\n')
    cfg.chmod(0o644)
    p = subprocess.run([sys.executable, "-m", "maculad", "check-config", "--config", str(cfg)],
                       capture_output=True, text=True, timeout=30)
    assert p.returncode == 2 and "powerdns.api_key" in p.stderr and "readable by others" in p.stderr
    cfg.chmod(0o600)
    p = subprocess.run([sys.executable, "-m", "maculad", "check-config", "--config", str(cfg)],
                       capture_output=True, text=True, timeout=30)
    assert p.returncode == 0, p.stderr
    assert os.stat(cfg).st_mode & 0o777 == 0o600


def _metrics(setup: Setup) -> str:
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{setup.ports['metrics']}/metrics", timeout=5) as r:
        return str(r.read().decode())
