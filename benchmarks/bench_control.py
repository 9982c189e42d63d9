"""Control socket round trips: maculad's control API against dockerd's API, same client, same work.

Both are JSON-over-HTTP on a unix socket; the work is one small GET per request on a fresh
connection (what `maculactl` and `docker` CLI calls do): maculad `GET /v1/ping` against
dockerd `GET /_ping`. Rounds alternate between the two; the script prints requests/s for each
and the ratio. Needs a running Docker engine (/var/run/docker.sock).

    .venv/bin/python benchmarks/bench_control.py [--requests 2000] [--rounds 5]
"""

from __future__ import annotations

import argparse
import http.client
import os
import shutil
import socket
import statistics
import sys
import tempfile
import subprocess
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.support.control_target import write_config

SERVER = """
import asyncio, sys
sys.path.insert(0, sys.argv[3])
from pathlib import Path
from maculad.config import ControlConfig
from maculad.control.server import ControlServer
from maculad.observability.metrics import Metrics
from tests.support.control_target import TableTarget
import uvloop

async def main():
    m = Metrics()
    srv = ControlServer(config=ControlConfig(socket=Path(sys.argv[2])),
                        target=TableTarget(config_path=Path(sys.argv[1])), metrics=m)
    await srv.start()
    print("ready", flush=True)
    await asyncio.Event().wait()

uvloop.run(main())
"""
REPO = str(Path(__file__).resolve().parent.parent)


def one(path: str, url: str) -> None:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(path)
    c = http.client.HTTPConnection("localhost")
    c.sock = s
    c.request("GET", url)
    r = c.getresponse()
    r.read()
    c.close()
    if r.status != 200:
        raise SystemExit(f"{path}{url}: HTTP {r.status}")


def rate(path: str, url: str, n: int) -> float:
    t0 = time.perf_counter()
    for _ in range(n):
        one(path, url)
    return n / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--docker", default="/var/run/docker.sock")
    a = ap.parse_args()
    if not os.path.exists(a.docker):
        raise SystemExit(f"no Docker engine at {a.docker}")
    d = Path(tempfile.mkdtemp(prefix="bctl", dir="/tmp"))
    cfg = d / "maculad.toml"
    write_config(cfg, dns_port=53, routes='[[route]]\nname = "grafana"\nhttp = "127.0.0.1:3000"\n')
    sock = d / "maculad.sock"
    # the server runs in its own process, as the daemon would: no GIL shared with the client
    child = subprocess.Popen([sys.executable, "-c", SERVER, str(cfg), str(sock), REPO], stdout=subprocess.PIPE,
                             stderr=subprocess.DEVNULL, text=True)
    try:
        assert child.stdout is not None
        while (line := child.stdout.readline()) and line.strip() != "ready":
            pass
        if not line:
            raise SystemExit("the control server did not start")
        one(str(sock), "/v1/ping")
        one(a.docker, "/_ping")
        ours: list[float] = []
        theirs: list[float] = []
        for i in range(a.rounds):
            pair = [(str(sock), "/v1/ping", ours), (a.docker, "/_ping", theirs)]
            for path, url, acc in (pair if i % 2 == 0 else pair[::-1]):
                acc.append(rate(path, url, a.requests))
    except OSError as exc:
        raise SystemExit(f"a socket went away mid-run (is something restarting dockerd?): {exc}") from None
    finally:
        child.terminate()
        child.wait()
        shutil.rmtree(d, ignore_errors=True)
    m, dk = statistics.median(ours), statistics.median(theirs)
    print(f"control socket, {a.requests} requests x {a.rounds} rounds (median), one connection per request")
    print(f"  maculad GET /v1/ping : {m:8.0f} req/s")
    print(f"  dockerd GET /_ping   : {dk:8.0f} req/s")
    print(f"  ratio maculad/dockerd: {m / dk:.2f}")


if __name__ == "__main__":
    main()
