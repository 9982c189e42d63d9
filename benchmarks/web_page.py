"""The status page: update latency of the live page against 1 s polling, and what the page costs the daemon.

Latency: the real daemon and the page in headless Chromium; each round adds a route by reload
(SIGHUP) and measures, against the wall clock at the signal, when the row appears in the page's
DOM (a MutationObserver's Date.now()) and when a client polling `/api/status` every second (the
usual dashboard refresh) sees it. Both watch the same change; rounds alternate which is started
first. Prints the median and maximum of each and the ratio.

Cost: the same config with `[web] enabled = false` and with the page on and watched (one Chromium
page plus `--streams` raw SSE clients), alternating; for each, the daemon's resident memory
(VmRSS) and its idle wake-ups per second (context switches over `--idle` seconds, nothing
changing). Prints both figures and the differences.

    .venv/bin/python benchmarks/web_page.py [--rounds 10] [--streams 20] [--idle 10]
"""

from __future__ import annotations

import argparse
import json
import signal
import socket
import statistics
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.support.browser import chrome, wait_until
from tests.support.daemon import Maculad, base_config

DNS_IP = "127.0.0.153"

OBSERVER = """
window.__seen = {};
new MutationObserver(() => {
  for (const tr of document.querySelectorAll('tr[data-name]')) {
    const n = tr.dataset.name; if (!(n in window.__seen)) window.__seen[n] = Date.now();
  }
}).observe(document.body, {childList: true, subtree: true});
"""


def proc_status(pid: int) -> dict[str, int]:
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        k, _, v = line.partition(":")
        if k in ("VmRSS", "voluntary_ctxt_switches", "nonvoluntary_ctxt_switches"):
            out[k] = int(v.split()[0])
    return out


class Poller(threading.Thread):
    """GET /api/status every `interval` seconds; records when each name was first seen."""

    def __init__(self, url: str, host: str, interval: float = 1.0) -> None:
        super().__init__(daemon=True)
        self.url, self.host, self.interval = url, host, interval
        self.seen: dict[str, float] = {}
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            req = urllib.request.Request(self.url, headers={"Host": self.host})
            try:
                with urllib.request.urlopen(req, timeout=5) as r:
                    doc = json.loads(r.read())
                now = time.time()
                for route in doc["routes"]["routes"]:
                    self.seen.setdefault(route["name"], now)
            except OSError:
                pass
            self.stop.wait(self.interval)


def start(tmp: Path, *, web: bool, routes: list[str]) -> tuple[Maculad, dict[str, Any], Path, str]:
    extra = "" if web else "[web]\nenabled = false\n"
    text, ports = base_config(tmp, dns_ip=DNS_IP, pool="127.0.33.0/24", extra=extra)
    text += "".join(f'\n[[route]]\nname = "{n}"\nhttp = "127.0.0.1:{ports["metrics"]}"\n' for n in routes)
    cfg = tmp / "maculad.toml"
    cfg.write_text(text)
    d = Maculad(cfg, log=tmp / "maculad.log").start()
    d.wait_ready(ports["metrics"])
    return d, ports, cfg, text


def latency(rounds: int) -> None:
    with tempfile.TemporaryDirectory() as td:
        tmp = Path(td)
        d, ports, cfg, text = start(tmp, web=True, routes=["grafana"])
        driver = chrome(tmp / "profile", map_names={"macula.local": DNS_IP})
        host = f"macula.local:{ports['http']}"
        poller = Poller(f"http://{DNS_IP}:{ports['http']}/api/status", host)
        try:
            driver.get(f"http://{host}/")
            wait_until(lambda: driver.execute_script("return document.body.dataset.live") == "live", 15, "live")
            driver.execute_script(OBSERVER)
            poller.start()
            time.sleep(1.5)
            page, poll = [], []
            for i in range(rounds):
                name = f"bench{i}.macula.local"
                text += f'\n[[route]]\nname = "bench{i}"\nhttp = "127.0.0.1:{ports["metrics"]}"\n'
                cfg.write_text(text)
                time.sleep(0.3 + (i % 4) * 0.25)  # spread the change over the poller's phase
                t0 = time.time()
                d.signal(signal.SIGHUP)
                wait_until(lambda n=name: n in poller.seen and driver.execute_script(
                    "return arguments[0] in window.__seen", n), 10, name)
                page.append(driver.execute_script("return window.__seen[arguments[0]]", name) / 1000 - t0)
                poll.append(poller.seen[name] - t0)
            print(f"update latency over {rounds} reloads (SIGHUP → the new name visible):")
            for label, xs in (("live page (SSE)", page), ("1 s polling", poll)):
                print(f"  {label:16s} median {statistics.median(xs) * 1000:7.1f} ms   max {max(xs) * 1000:7.1f} ms")
            print(f"  ratio (polling / live, median): {statistics.median(poll) / statistics.median(page):.1f}x")
        finally:
            poller.stop.set()
            driver.quit()
            d.stop()


def open_streams(port: int, n: int) -> list[socket.socket]:
    socks = []
    for _ in range(n):
        s = socket.create_connection((DNS_IP, port), timeout=5)
        s.sendall(f"GET /api/events HTTP/1.1\r\nHost: macula.local:{port}\r\n\r\n".encode())
        socks.append(s)
    for s in socks:
        assert s.recv(4096).startswith(b"HTTP/1.1 200")
    return socks


def cost(rounds: int, streams: int, idle: float) -> None:
    results: dict[str, list[tuple[float, float]]] = {"web off": [], "web on, watched": []}
    for r in range(rounds):
        for web in ((False, True) if r % 2 == 0 else (True, False)):
            with tempfile.TemporaryDirectory() as td:
                tmp = Path(td)
                d, ports, _cfg, _text = start(tmp, web=web, routes=[f"svc{i}" for i in range(20)])
                driver = None
                socks: list[socket.socket] = []
                try:
                    assert d.proc is not None
                    if web:
                        driver = chrome(tmp / "profile", map_names={"macula.local": DNS_IP})
                        driver.get(f"http://macula.local:{ports['http']}/")
                        wait_until(lambda drv=driver: drv.execute_script("return document.body.dataset.live")
                                   == "live", 15, "live")
                        socks = open_streams(ports["http"], streams)
                    time.sleep(2.0)
                    a = proc_status(d.proc.pid)
                    time.sleep(idle)
                    b = proc_status(d.proc.pid)
                    switches = sum(b[k] - a[k] for k in ("voluntary_ctxt_switches", "nonvoluntary_ctxt_switches"))
                    results["web on, watched" if web else "web off"].append((b["VmRSS"] / 1024, switches / idle))
                finally:
                    for s in socks:
                        s.close()
                    if driver is not None:
                        driver.quit()
                    d.stop()
    print(f"daemon cost, idle {idle:g} s, {rounds} rounds (web on: 1 Chromium page + {streams} SSE streams):")
    med = {}
    for label, xs in results.items():
        rss = statistics.median(x[0] for x in xs)
        wake = statistics.median(x[1] for x in xs)
        med[label] = (rss, wake)
        print(f"  {label:16s} RSS {rss:6.1f} MB   wake-ups {wake:5.2f}/s")
    off, on = med["web off"], med["web on, watched"]
    print(f"  difference: RSS {on[0] - off[0]:+.1f} MB ({on[0] / off[0]:.2f}x), wake-ups {on[1] - off[1]:+.2f}/s")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--cost-rounds", type=int, default=2)
    ap.add_argument("--streams", type=int, default=20)
    ap.add_argument("--idle", type=float, default=10.0)
    args = ap.parse_args()
    latency(args.rounds)
    cost(args.cost_rounds, args.streams, args.idle)


if __name__ == "__main__":
    main()
