"""The real daemon end to end: start, answer, survive kill -9 with the same IPs, reload, stop."""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.daemon import Maculad, base_config, dig, http_get, maculactl

ROUTES = "".join(
    f'[[route]]\nname = "{n}"\nhttp = "127.0.0.1:{3000 + i}"\n'
    for i, n in enumerate(["grafana", "loki", "tempo", "prometheus", "registry"])
)


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[tuple[Maculad, dict[str, int], Path]]:
    text, ports = base_config(tmp_path, extra=ROUTES)
    cfg = tmp_path / "maculad.toml"
    cfg.write_text(text)
    d = Maculad(cfg, log=tmp_path / "maculad.log").start()
    try:
        d.wait_ready(ports["metrics"])
        yield d, ports, cfg
    finally:
        d.stop()


def test_answers_and_exports_metrics(daemon: tuple[Maculad, dict[str, int], Path]) -> None:
    _d, ports, _ = daemon
    a = dig(ports["dns"], "grafana.macula.local")
    assert a.startswith("127.0.10.")
    assert dig(ports["dns"], "grafana.macula.local", "+tcp") == a
    status, body = http_get(f"http://127.0.0.1:{ports['metrics']}/metrics")
    assert status == 200
    assert 'maculad_dns_queries_total{qtype="A",rcode="NOERROR"}' in body
    assert 'maculad_routes{source="config"} 5.0' in body
    assert "maculad_build_info{" in body
    assert http_get(f"http://127.0.0.1:{ports['metrics']}/healthz") == (200, "ok\n")
    assert http_get(f"http://127.0.0.1:{ports['metrics']}/readyz") == (200, "ok\n")


def test_sigterm_is_a_clean_exit(daemon: tuple[Maculad, dict[str, int], Path]) -> None:
    d, _, _ = daemon
    d.signal(signal.SIGTERM)
    assert d.wait(30) == 0
    assert '"event": "stopped"' in d.logs()


def test_kill_9_keeps_every_ip(tmp_path: Path, daemon: tuple[Maculad, dict[str, int], Path]) -> None:
    d, ports, cfg = daemon
    names = ["grafana", "loki", "tempo", "prometheus", "registry"]
    before = {n: dig(ports["dns"], f"{n}.macula.local") for n in names}
    assert len(set(before.values())) == len(names)
    d.signal(signal.SIGKILL)
    d.wait(10)
    # the same names in another order, plus a new one: old names keep their IPs
    text = cfg.read_text().replace(ROUTES, "")
    reordered = "".join(f'[[route]]\nname = "{n}"\nhttp = "127.0.0.1:4000"\n'
                        for n in ["new", *reversed(names)])
    cfg.write_text(text + reordered)
    d2 = Maculad(cfg, log=tmp_path / "maculad2.log").start()
    try:
        d2.wait_ready(ports["metrics"])
        after = {n: dig(ports["dns"], f"{n}.macula.local") for n in names}
        assert after == before
        assert dig(ports["dns"], "new.macula.local") not in before.values()
        state = json.loads((tmp_path / "state" / "allocations.json").read_text())
        assert state["allocations"]["grafana.macula.local"] == before["grafana"]
    finally:
        d2.stop()


def test_reload_applies_good_config_and_refuses_broken(daemon: tuple[Maculad, dict[str, int], Path]) -> None:
    d, ports, cfg = daemon
    good = cfg.read_text()
    cfg.write_text(good + '[[route]]\nname = "draw"\nhttp = "127.0.0.7:80"\n')
    d.signal(signal.SIGHUP)
    deadline = time.monotonic() + 10
    while not dig(ports["dns"], "draw.macula.local") and time.monotonic() < deadline:
        time.sleep(0.05)
    assert dig(ports["dns"], "draw.macula.local").startswith("127.0.10.")
    grafana = dig(ports["dns"], "grafana.macula.local")
    cfg.write_text(good + "[dns]\nttl = -1\n")
    d.signal(signal.SIGHUP)
    deadline = time.monotonic() + 10
    while "reload_refused" not in d.logs() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert "reload_refused" in d.logs()
    assert dig(ports["dns"], "grafana.macula.local") == grafana
    assert dig(ports["dns"], "draw.macula.local").startswith("127.0.10.")


def test_a_port_in_use_is_a_clear_startup_error(tmp_path: Path) -> None:
    import socket

    text, ports = base_config(tmp_path, extra=ROUTES)
    cfg = tmp_path / "maculad.toml"
    cfg.write_text(text)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.153", ports["dns"]))
        d = Maculad(cfg, log=tmp_path / "maculad.log").start()
        rc = d.wait(30)
    assert rc == 1
    assert f"127.0.0.153:{ports['dns']}" in d.logs()
    assert "Traceback" not in d.logs()


class EchoServer:
    """A threaded TCP echo backend on a free port."""

    def __init__(self) -> None:
        import socket
        import threading

        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        import threading

        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._echo, args=(conn,), daemon=True).start()

    @staticmethod
    def _echo(conn: Any) -> None:
        with conn:
            while data := conn.recv(65536):
                conn.sendall(data)

    def close(self) -> None:
        self.sock.close()


def echo_roundtrip(conn: Any, payload: bytes) -> bytes:
    conn.sendall(payload)
    got = b""
    while len(got) < len(payload):
        chunk = conn.recv(65536)
        if not chunk:
            break
        got += chunk
    return got


def test_reload_under_live_traffic_keeps_open_connections(tmp_path: Path) -> None:
    import socket

    echo = EchoServer()
    route = f'[[route]]\nname = "echo"\nip = "127.0.10.200"\nhttp = "127.0.0.1:{echo.port}"\n'
    text, ports = base_config(tmp_path, extra=route)
    cfg = tmp_path / "maculad.toml"
    cfg.write_text(text)
    d = Maculad(cfg, log=tmp_path / "maculad.log").start()
    try:
        d.wait_ready(ports["metrics"])
        conn = socket.create_connection(("127.0.10.200", ports["http"]), timeout=5)
        assert echo_roundtrip(conn, b"before") == b"before"
        cfg.write_text(text + '[[route]]\nname = "more"\nhttp = "127.0.0.1:9"\n')
        rc, out, _ = maculactl(tmp_path, "reload", "--json")
        assert rc == 0 and json.loads(out)["changed"] == ["routes"]
        assert echo_roundtrip(conn, b"after good reload") == b"after good reload"
        assert dig(ports["dns"], "more.macula.local").startswith("127.0.10.")
        cfg.write_text(text.replace('pool = "127.0.10.0/24"', 'pool = "nonsense"'))
        rc, _, err = maculactl(tmp_path, "reload")
        assert rc == 1 and "proxy.pool" in err and "nothing changed" in err
        assert echo_roundtrip(conn, b"after broken reload") == b"after broken reload"
        assert dig(ports["dns"], "more.macula.local").startswith("127.0.10.")
        with socket.create_connection(("127.0.10.200", ports["http"]), timeout=5) as fresh:
            assert echo_roundtrip(fresh, b"new connection") == b"new connection"
        conn.close()
    finally:
        d.stop()
        echo.close()


def test_maculactl_against_the_real_daemon(daemon: tuple[Maculad, dict[str, int], Path]) -> None:
    d, ports, cfg = daemon
    tmp = cfg.parent
    rc, out, _ = maculactl(tmp, "status", "--json")
    assert rc == 0
    status = json.loads(out)
    assert status["ready"] is True and status["routes"]["count"] == 5
    assert status["dns_listen"] == [f"127.0.0.153:{ports['dns']}"]
    rc, out, _ = maculactl(tmp, "routes")
    assert rc == 0 and "grafana.macula.local" in out and "config" in out
    rc, out, _ = maculactl(tmp, "dns", "grafana", "--json")
    answer = json.loads(out)
    assert rc == 0 and answer["answer"] == dig(ports["dns"], "grafana.macula.local")
    assert answer["route"]["source"] == "config"
    rc, out, _ = maculactl(tmp, "dns", "nothing-here", "--json")
    assert json.loads(out)["rcode"] == "NXDOMAIN"
    rc, _, err = maculactl(tmp, "restart", "grafana")
    assert rc == 1 and "Docker tier is not enabled" in err
    d.stop()
    rc, out, err = maculactl(tmp, "status")
    assert rc == 3 and out == "" and len(err.strip().splitlines()) == 1


def test_sd_notify_ready_watchdog_reloading_stopping(tmp_path: Path) -> None:
    import socket

    text, _ = base_config(tmp_path, extra=ROUTES)
    cfg = tmp_path / "maculad.toml"
    cfg.write_text(text)
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(tmp_path / "notify.sock"))
    notify.settimeout(20)
    env = {"NOTIFY_SOCKET": str(tmp_path / "notify.sock"), "WATCHDOG_USEC": "400000"}
    d = Maculad(cfg, log=tmp_path / "maculad.log", env=env).start()
    messages: list[str] = []

    def until(pred: Any) -> None:
        while not any(pred(m) for m in messages):
            messages.append(notify.recv(4096).decode())

    try:
        until(lambda m: "READY=1" in m)
        until(lambda m: m.startswith("STATUS=") and "5 routes" in m)
        until(lambda m: "WATCHDOG=1" in m)
        messages.clear()
        d.signal(signal.SIGHUP)
        until(lambda m: "RELOADING=1" in m and "MONOTONIC_USEC=" in m)
        until(lambda m: "READY=1" in m)
        d.signal(signal.SIGTERM)
        until(lambda m: "STOPPING=1" in m)
        assert d.wait(30) == 0
    finally:
        d.stop()
        notify.close()
