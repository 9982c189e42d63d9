"""The systemd watchdog pings only while the daemon is healthy: the pure verdict, the DNS probe
against real sockets, and the real daemon under a fake NOTIFY_SOCKET, paused with SIGSTOP."""

from __future__ import annotations

import json
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

from maculad.app.health import Health, check_reply, probe_dns, probe_target, soa_query, verdict
from maculad.core.net import Backend
from maculad.observability.metrics import Metrics
from tests.support.daemon import Maculad, base_config
from tests.support.dns import manager, serving


def test_verdict() -> None:
    ok = Health(loop_lag=0.01, dns=None, relay=None)
    assert verdict(ok, max_lag=1.0) is None
    assert verdict(Health(loop_lag=1.5, dns=None, relay=None), max_lag=1.0) == "the event loop stalled for 1.5 s"
    both = verdict(Health(loop_lag=0.0, dns="no answer from 127.0.0.153:53 within 1 s", relay="not running"),
                   max_lag=1.0)
    assert both == "DNS: no answer from 127.0.0.153:53 within 1 s; relay: not running"


def test_probe_query_and_reply_checks() -> None:
    q = soa_query("macula.local", 0xBEEF)
    assert q[:2] == b"\xbe\xef" and q.endswith(b"\x06macula\x05local\x00\x00\x06\x00\x01")
    good = q[:2] + b"\x84\x00" + q[4:]
    assert check_reply(q, good) is None
    assert check_reply(q, b"\x00\x00" + good[2:]) == "an answer that is not ours"
    assert check_reply(q, q) == "an answer without QR"
    assert check_reply(q, q[:2] + b"\x84\x02" + q[4:]) == "rcode 2 for the domain's SOA"
    assert probe_target("0.0.0.0", 53) == Backend("127.0.0.1", 53)
    assert probe_target("::", 53) == Backend("::1", 53)
    assert probe_target("127.0.0.153", 53) == Backend("127.0.0.153", 53)


async def test_probe_against_a_real_server_and_a_silent_socket(tmp_path: Path) -> None:
    metrics = Metrics()
    routes = manager(tmp_path, metrics, {"grafana": "127.0.0.2"})
    async with serving(routes, metrics) as server:
        _, host, port = server.bound()[0]
        assert await probe_dns(Backend(host, port), "macula.local", timeout=2.0) is None
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:  # bound, never read: a wedged server
        silent.bind(("127.0.0.1", 0))
        target = Backend("127.0.0.1", silent.getsockname()[1])
        assert await probe_dns(target, "macula.local", timeout=0.2) == \
            f"no answer from 127.0.0.1:{target.port} within 0.2 s"
    # the same port once closed: the kernel says so at once (ICMP port unreachable)
    problem = await probe_dns(target, "macula.local", timeout=2.0)
    assert problem is not None and "refused" in problem.lower()


def test_the_daemon_withholds_pings_while_stalled_and_resumes(tmp_path: Path) -> None:
    text, ports = base_config(tmp_path, extra='[[route]]\nname = "grafana"\nhttp = "127.0.0.1:3000"\n')
    cfg = tmp_path / "maculad.toml"
    cfg.write_text(text)
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(tmp_path / "notify.sock"))
    # WATCHDOG_USEC 0.4 s: a round every 0.2 s, each with a DNS query to the daemon itself
    env = {"NOTIFY_SOCKET": str(tmp_path / "notify.sock"), "WATCHDOG_USEC": "400000"}
    d = Maculad(cfg, log=tmp_path / "maculad.log", env=env).start()

    def next_ping() -> None:
        notify.settimeout(20)
        while notify.recv(4096) != b"WATCHDOG=1":
            pass

    def drain() -> None:  # read what arrived, as systemd does
        notify.setblocking(False)
        try:
            while True:
                notify.recv(4096)
        except BlockingIOError:
            pass

    def watchdog() -> dict[str, Any]:
        exe = Path(sys.executable).parent / "maculactl"
        out = subprocess.run([str(exe), "--socket", str(tmp_path / "maculad.sock"), "status", "--json"],
                             capture_output=True, text=True, timeout=60).stdout
        drain()
        state: dict[str, Any] = json.loads(out)["watchdog"]
        return state

    try:
        for _ in range(3):
            next_ping()
        before = watchdog()
        assert before["interval"] == 0.2 and before["withheld"] == 0
        d.signal(signal.SIGSTOP)  # a wedged daemon: neither the loop, DNS nor the relay run
        try:
            time.sleep(1.2)  # the stall itself: three watchdog timeouts
        finally:
            d.signal(signal.SIGCONT)
        deadline = time.monotonic() + 20
        while (state := watchdog())["withheld"] == 0:  # the round after the stall: no ping, and why
            assert time.monotonic() < deadline, d.logs()
            time.sleep(0.05)
        assert state["last_withheld"].startswith("the event loop stalled for"), state
        drain()
        next_ping()  # healthy again: pings resume
        assert "watchdog_withheld" in d.log_path.read_text()
        with urllib.request.urlopen(f"http://127.0.0.1:{ports['metrics']}/metrics", timeout=10) as r:
            assert re.search(r"^maculad_watchdog_withheld_total [1-9]", r.read().decode(), re.M)
    finally:
        d.stop()
        notify.close()
