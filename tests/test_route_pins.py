"""Pins against the real daemon: a pin onto an IP another name holds loses, visibly.

`maculad run` as a subprocess; a reload adds a route pinned onto grafana's pool
IP. grafana keeps its IP (dig, and its relay keeps reaching grafana's backend),
the pinned route is not served, and the conflict is in `maculactl routes`, the
metrics, the event stream and one log line. When grafana leaves, the pin is
served and the reservation grafana loses is reported, never silent.
"""

from __future__ import annotations

import json
import shutil
import time
import urllib.request
from pathlib import Path

from tests.conftest import require
from tests.support.daemon import Maculad, TaggedHTTP, base_config, ctl, dig
from tests.support.tls import metric


def http_body(ip: str, port: int) -> str:
    with urllib.request.urlopen(f"http://{ip}:{port}/", timeout=5) as r:
        return str(r.read().decode())


def test_a_pin_onto_a_held_ip_loses_as_a_conflict(tmp_path: Path) -> None:
    require(shutil.which("dig") is not None, "dig (bind9-dnsutils) is not installed")
    with TaggedHTTP("grafana") as grafana, TaggedHTTP("loki") as loki, TaggedHTTP("draw") as draw:
        grafana_route = f'[[route]]\nname = "grafana"\nhttp = "127.0.0.1:{grafana.port}"\n'
        loki_route = f'[[route]]\nname = "loki"\nhttp = "127.0.0.1:{loki.port}"\n'
        text, ports = base_config(tmp_path)
        cfg = tmp_path / "maculad.toml"
        cfg.write_text(text + grafana_route + loki_route)
        sock = tmp_path / "maculad.sock"
        d = Maculad(cfg, log=tmp_path / "maculad.log").start()
        try:
            d.wait_ready(ports["metrics"])
            held = dig(ports["dns"], "grafana.macula.local")
            assert held == "127.0.10.1"
            assert http_body(held, ports["http"]) == "grafana\n"

            pin = f'[[route]]\nname = "draw"\nip = "{held}"\nhttp = "127.0.0.1:{draw.port}"\n'
            cfg.write_text(text + grafana_route + loki_route + pin)
            r = ctl(sock, "reload")
            assert r.returncode == 0, r.stderr

            assert dig(ports["dns"], "grafana.macula.local") == held
            assert dig(ports["dns"], "draw.macula.local") == ""
            assert http_body(held, ports["http"]) == "grafana\n"
            r = ctl(sock, "routes")
            assert r.returncode == 0
            assert "conflicts (1):" in r.stdout
            line = next(ln for ln in r.stdout.splitlines() if "draw.macula.local" in ln)
            assert "config:grafana" in line and f"pinned IP {held} is held by grafana.macula.local" in line
            view = json.loads(ctl(sock, "routes", "--json").stdout)
            [conflict] = view["conflicts"]
            assert (conflict["kind"], conflict["loser"], conflict["winner"]) == ("ip", "config:draw.macula.local",
                                                                             "config:grafana.macula.local")
            assert "draw.macula.local" not in {x["name"] for x in view["routes"]}
            assert metric(ports["metrics"], "maculad_route_conflicts", kind="ip") == 1
            events = [json.loads(ln) for ln in
                      ctl(sock, "events", "--json", "--replay", "50").stdout.splitlines()]
            assert [e["name"] for e in events if e["kind"] == "route_conflict"] == ["draw.macula.local"]
            assert not [e for e in events if e["kind"] == "route_ip_changed"]
            logged = [json.loads(ln) for ln in d.logs().splitlines() if '"route_conflict"' in ln]
            assert len(logged) == 1 and logged[0]["name"] == "draw.macula.local"

            # grafana leaves: the pin is served, and grafana's lost reservation is a log line and an event
            cfg.write_text(text + loki_route + pin)
            r = ctl(sock, "reload")
            assert r.returncode == 0, r.stderr
            assert dig(ports["dns"], "draw.macula.local") == held
            assert http_body(held, ports["http"]) == "draw\n"
            assert metric(ports["metrics"], "maculad_route_conflicts", kind="ip") == 0
            assert metric(ports["metrics"], "maculad_route_ip_changes_total") == 1
            events = [json.loads(ln) for ln in
                      ctl(sock, "events", "--json", "--replay", "50").stdout.splitlines()]
            [moved] = [e for e in events if e["kind"] == "route_ip_changed"]
            assert (moved["name"], moved["old"], moved["new"]) == ("grafana.macula.local", held, None)
            deadline = time.monotonic() + 5
            while '"route_ip_changed"' not in d.logs() and time.monotonic() < deadline:
                time.sleep(0.05)
            assert sum('"route_ip_changed"' in ln for ln in d.logs().splitlines()) == 1
        finally:
            d.stop()
