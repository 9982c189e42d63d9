"""Reload is a transaction, against the real daemon: a reload that cannot bind everything new changes
nothing (DNS still answers on the old listener, the new route is not in the table, metrics stay on the
old port, status shows the old config), says why with a 4xx, and is recorded in `last_reload`, the event
stream and the log; a good reload afterwards applies; SIGHUP behaves the same. `/readyz` fails while a
configured listener does not serve."""

from __future__ import annotations

import json
import signal
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.daemon import Maculad, base_config, dig, free_port, http_get, maculactl, wait_until

ROUTES = "".join(f'[[route]]\nname = "{n}"\nhttp = "127.0.0.1:{3000 + i}"\n'
                 for i, n in enumerate(["grafana", "loki"]))
FRESH = '[[route]]\nname = "fresh"\nhttp = "127.0.0.1:4000"\n'


class Env:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.text, self.ports = base_config(tmp, extra=ROUTES)
        self.cfg = tmp / "maculad.toml"
        self.cfg.write_text(self.text)
        self.d = Maculad(self.cfg, log=tmp / "maculad.log")

    def write(self, *, dns: list[str] | None = None, metrics: int | None = None, extra: str = "") -> None:
        text = self.text
        if dns is not None:
            text = text.replace(f'listen = ["127.0.0.153:{self.ports["dns"]}"]',
                                "listen = [" + ", ".join(f'"{a}"' for a in dns) + "]")
        if metrics is not None:
            text = text.replace(f'listen = "127.0.0.1:{self.ports["metrics"]}"', f'listen = "127.0.0.1:{metrics}"')
        self.cfg.write_text(text + extra)

    def status(self) -> dict[str, Any]:
        rc, out, err = maculactl(self.tmp, "status", "--json")
        assert rc == 0, err
        result: dict[str, Any] = json.loads(out)
        return result

    def reload(self) -> tuple[int, str, str]:
        return maculactl(self.tmp, "reload", "--json")

    def metrics_up(self, port: int) -> bool:
        try:
            return http_get(f"http://127.0.0.1:{port}/healthz", timeout=2)[0] == 200
        except OSError:
            return False

    def reload_events(self) -> list[dict[str, Any]]:
        rc, out, _ = maculactl(self.tmp, "events", "--json", "--replay", "200")
        assert rc == 0
        return [e for e in map(json.loads, out.splitlines()) if e.get("kind") == "reload"]


@pytest.fixture
def env(tmp_path: Path) -> Iterator[Env]:
    e = Env(tmp_path)
    e.d.start()
    try:
        e.d.wait_ready(e.ports["metrics"])
        yield e
    finally:
        e.d.stop()


def assert_unchanged(e: Env, new_metrics: int) -> None:
    """Everything as before the refused reload."""
    assert dig(e.ports["dns"], "grafana.macula.local").startswith("127.0.10.")
    assert dig(e.ports["dns"], "grafana.macula.local", "+tcp").startswith("127.0.10.")
    assert dig(e.ports["dns"], "fresh.macula.local") == ""
    assert e.metrics_up(e.ports["metrics"])
    assert not e.metrics_up(new_metrics)
    st = e.status()
    assert st["dns_listen"] == [f"127.0.0.153:{e.ports['dns']}"]
    assert st["metrics_listen"] == f"127.0.0.1:{e.ports['metrics']}"
    assert st["routes"]["count"] == 2
    assert st["ready"] is True and st["not_ready"] == []
    assert st["last_reload"]["ok"] is False
    assert http_get(f"http://127.0.0.1:{e.ports['metrics']}/readyz") == (200, "ok\n")


def test_a_reload_that_cannot_bind_changes_nothing_then_a_good_one_applies(env: Env) -> None:
    e = env
    port = e.ports["dns"]
    new_metrics = free_port(udp_too=False)
    # an address of no interface, with a new route and a new metrics port: refused by the host check
    e.write(dns=[f"127.0.0.153:{port}", f"192.0.2.1:{port}"], metrics=new_metrics, extra=FRESH)
    rc, out, err = e.reload()
    assert rc == 1 and out == ""
    assert "dns.listen[1]" in err and "192.0.2.1 is not an address of this host" in err
    assert "nothing changed" in err and "internal error" not in err
    assert_unchanged(e, new_metrics)

    # a local address whose port another process holds: refused when it is bound, the others closed
    extra_ip = "127.0.0.154"
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.bind((extra_ip, port))
        e.write(dns=[f"127.0.0.153:{port}", f"{extra_ip}:{port}"], metrics=new_metrics, extra=FRESH)
        rc, _, err = e.reload()
        assert rc == 1
        assert f"DNS cannot listen on udp {extra_ip}:{port}" in err and "nothing changed" in err
        assert_unchanged(e, new_metrics)
        st = e.status()
        assert f"{extra_ip}:{port}" in st["last_reload"]["error"] and st["last_reload"]["changed"] == []

    # the metrics port in use: refused
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", new_metrics))
        busy.listen(1)
        e.write(metrics=new_metrics, extra=FRESH)
        rc, _, err = e.reload()
        assert rc == 1 and f"metrics: cannot listen on 127.0.0.1:{new_metrics}: address already in use" in err
        assert dig(port, "fresh.macula.local") == ""
        assert e.status()["metrics_listen"] == f"127.0.0.1:{e.ports['metrics']}"

    # a new route pinned onto an address:port another process holds: the relay's bind refuses it
    with socket.socket() as busy:
        busy.bind(("127.0.10.250", e.ports["http"]))
        busy.listen(1)
        e.write(extra=FRESH + 'ip = "127.0.10.250"\n')
        rc, _, err = e.reload()
        assert rc == 1 and f"cannot bind 127.0.10.250:{e.ports['http']}/tcp for fresh.macula.local" in err
        assert dig(port, "fresh.macula.local") == ""

    # now everything can be bound: applied
    e.write(dns=[f"127.0.0.153:{port}", f"{extra_ip}:{port}"], metrics=new_metrics, extra=FRESH)
    rc, out, err = e.reload()
    assert rc == 0, err
    assert set(json.loads(out)["changed"]) >= {"routes", "dns", "metrics"}
    fresh = dig(port, "fresh.macula.local")
    assert fresh.startswith("127.0.10.")
    assert dig(port, "fresh.macula.local", server=extra_ip) == fresh
    assert e.metrics_up(new_metrics) and not e.metrics_up(e.ports["metrics"])
    st = e.status()
    assert st["last_reload"]["ok"] is True and st["last_reload"]["error"] is None
    assert st["dns_listen"] == [f"127.0.0.153:{port}", f"{extra_ip}:{port}"]
    events = e.reload_events()
    assert [ev["ok"] for ev in events] == [False, False, False, False, True]
    assert "192.0.2.1" in events[0]["error"]
    # and back: the dropped listener is closed, the kept one still answers
    e.write()
    rc, _, err = e.reload()
    assert rc == 0, err
    assert dig(port, "grafana.macula.local").startswith("127.0.10.")
    assert "connection refused" in dig(port, "grafana.macula.local", server=extra_ip)
    assert e.metrics_up(e.ports["metrics"])
    logs = e.d.logs()
    assert "Traceback" not in logs and '"event": "reload_refused"' in logs


def test_sighup_reload_failures_are_logged_and_recorded(env: Env) -> None:
    e = env
    new_metrics = free_port(udp_too=False)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", new_metrics))
        busy.listen(1)
        e.write(metrics=new_metrics, extra=FRESH)
        e.d.signal(signal.SIGHUP)
        last = wait_until(lambda: e.status()["last_reload"], "the SIGHUP reload to be recorded")
    assert last["ok"] is False and f"127.0.0.1:{new_metrics}" in last["error"]
    refused = [ln for ln in e.d.logs().splitlines() if '"reload_refused"' in ln]
    assert len(refused) == 1 and "address already in use" in refused[0]
    assert "Traceback" not in e.d.logs()
    assert dig(e.ports["dns"], "fresh.macula.local") == ""
    assert e.metrics_up(e.ports["metrics"])
    # the reload task lives on: the next SIGHUP applies
    e.d.signal(signal.SIGHUP)
    wait_until(lambda: e.status()["last_reload"]["ok"], "the second SIGHUP reload to apply")
    assert dig(e.ports["dns"], "fresh.macula.local").startswith("127.0.10.")
    assert e.metrics_up(new_metrics)
    assert e.d.proc is not None and e.d.proc.poll() is None


def test_readyz_fails_while_a_configured_listener_does_not_serve(tmp_path: Path) -> None:
    pinned = '[[route]]\nname = "pinned"\nip = "127.0.10.251"\nhttp = "127.0.0.1:4001"\n'
    text, ports = base_config(tmp_path, extra=ROUTES + pinned)
    text = text.replace("drain_grace = 1.0", "drain_grace = 1.0\nbind_retry_max = 0.2")
    cfg = tmp_path / "maculad.toml"
    cfg.write_text(text)
    busy = socket.socket()
    busy.bind(("127.0.10.251", ports["http"]))
    busy.listen(1)
    d = Maculad(cfg, log=tmp_path / "maculad.log").start()
    try:
        url = f"http://127.0.0.1:{ports['metrics']}/readyz"

        def readyz() -> tuple[int, str] | None:
            try:
                return http_get(url, timeout=2)
            except OSError:
                return None

        # "proxy: not started" while the daemon starts (the signer's child makes the CA first), then the bind
        _code, body = wait_until(lambda: (r := readyz()) is not None and r[0] == 503 and "cannot bind" in r[1] and r,
                                "/readyz to report the listener")
        assert f"cannot bind 127.0.10.251:{ports['http']}/tcp" in body and "address already in use" in body
        st = json.loads(maculactl(tmp_path, "status", "--json")[1])
        assert st["ready"] is False and any("127.0.10.251" in r for r in st["not_ready"])
        assert dig(ports["dns"], "grafana.macula.local").startswith("127.0.10.")  # everything else serves
        busy.close()
        wait_until(lambda: readyz() == (200, "ok\n"), "/readyz to recover once the port is free")
    finally:
        busy.close()
        d.stop()
