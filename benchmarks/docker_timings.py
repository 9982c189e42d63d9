"""Docker tier timings against the real engine (not part of the test suite).

1. Death → restart: a container supervised by maculad (`macula.restart=always`,
   no Docker restart policy) and one under Docker's own `--restart always` have
   their process SIGKILLed from the host, alternately, in the same run; the time from the engine's `die`
   event to its next `start` event is measured for each (engine timestamps,
   so the client's overhead does not count). Kills are spaced more than 10 s
   apart so both restart managers are back at their initial 100 ms delay
   (Docker resets after 10 s of running; maculad's `backoff.reset_after` is 10 s).
2. Labelled container start → its name in the route table, and → answering
   DNS through maculad's DNS server (when `maculad.dns.server` is importable),
   measured from the engine's `start` event. Also removal → route gone.

    .venv/bin/python benchmarks/docker_timings.py [--rounds 6] [--routes 20]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections import defaultdict
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from maculad.config import LogConfig, parse_config  # noqa: E402
from maculad.adapters.docker.api import EngineAPI, resolve_endpoint  # noqa: E402
from maculad.adapters.docker.model import ContainerEvent  # noqa: E402
from maculad.app.docker_tier import DockerTier  # noqa: E402
from maculad.core.events import EventBus  # noqa: E402
from maculad.observability.logging import configure_logging  # noqa: E402
from maculad.observability.metrics import Metrics  # noqa: E402
from maculad.routes.manager import RouteTableManager  # noqa: E402
from maculad.routes.store import AllocationStore  # noqa: E402
from maculad.routes.table import RouteTable  # noqa: E402
from maculad.core.tasks import TaskOwner  # noqa: E402

IMAGE = "maculad-test/busybox:latest"


def docker(*args: str) -> str:
    r = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=120)
    if r.returncode != 0:
        raise SystemExit(f"docker {' '.join(args)}: {r.stderr.strip()}")
    return r.stdout.strip()


def fmt(xs: list[float]) -> str:
    return f"p50 {statistics.median(xs) * 1000:8.1f} ms   max {max(xs) * 1000:8.1f} ms   (n={len(xs)})"


class EventLog:
    """Engine events of the benchmark's containers, with the engine's own timestamps."""

    def __init__(self) -> None:
        self.by_id: dict[str, list[ContainerEvent]] = defaultdict(list)
        self.changed = asyncio.Event()

    async def run(self, api: EngineAPI, label: str) -> None:
        stream = await api.events(labels=[label])
        try:
            async for ev in stream:
                self.by_id[ev.id].append(ev)
                self.changed.set()
        finally:
            await stream.close()

    async def wait(self, cid: str, action: str, after: float, timeout: float = 60) -> ContainerEvent:
        deadline = time.monotonic() + timeout
        while True:
            for ev in self.by_id[cid]:
                if ev.action == action and ev.time > after:
                    return ev
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise SystemExit(f"no {action} event for {cid[:12]} within {timeout}s")
            self.changed.clear()
            try:
                await asyncio.wait_for(self.changed.wait(), remaining)
            except TimeoutError:
                pass


async def dns_answers(port: int, name: str) -> bool:
    import dns.asyncquery
    import dns.message
    import dns.rdatatype

    q = dns.message.make_query(name, dns.rdatatype.A)
    try:
        r = await dns.asyncquery.udp(q, "127.0.0.1", port=port, timeout=0.05)
    except (TimeoutError, dns.exception.Timeout):
        return False
    return any(rr.rdtype == dns.rdatatype.A for rr in r.answer)


async def main(rounds: int, routes_n: int, spacing: float) -> None:
    configure_logging_quiet()
    subprocess.run([str(REPO / "scripts" / "build-test-image.sh")], check=True, capture_output=True)
    uid = uuid.uuid4().hex[:8]
    label = f"maculad.bench={uid}"
    tmp = Path(tempfile.mkdtemp(prefix="maculad-bench-"))
    cfg = parse_config({"state_dir": str(tmp), "dns": {"listen": ["127.0.0.1:0"]},
                        "docker": {"enabled": True}}, file=str(tmp / "bench.toml"), base=tmp)
    metrics = Metrics()
    routes = RouteTableManager(domain=cfg.domain, pool=cfg.proxy.pool, store=AllocationStore(state_dir=tmp),
                               metrics=metrics)
    owner = TaskOwner(metrics=metrics, on_fatal=lambda n, e: None)
    tier = DockerTier(config=cfg, routes=routes, metrics=metrics, events=EventBus(), labels=[label])
    dns_server: Any = None
    try:
        from maculad.dns.server import DNSServer

        dns_server = DNSServer(config=cfg.dns, domain=cfg.domain, routes=routes, metrics=metrics)
        await dns_server.start(owner)
        dns_port = next(p for proto, _, p in dns_server.bound() if proto == "udp")
    except ImportError:
        dns_port = 0
    appeared: dict[str, float] = {}
    gone: dict[str, float] = {}

    def on_table(table: RouteTable) -> None:
        now = time.time()
        names = {r.name for r in table.routes}
        for n in names:
            appeared.setdefault(n, now)
        for n in list(appeared):
            if n not in names:
                gone.setdefault(n, now)

    routes.add_listener(on_table)
    api = EngineAPI(endpoint=resolve_endpoint(None))
    log = EventLog()
    ev_task = asyncio.create_task(log.run(api, label))
    await tier.start(owner)
    await asyncio.sleep(0.5)
    names: list[str] = []
    try:
        # ---------------------------------------------------------------- 1. death → restart
        m_name, d_name = f"bench-{uid}-maculad", f"bench-{uid}-docker"
        names += [m_name, d_name]
        m_id = docker("run", "-d", "--name", m_name, "-l", label, "-l", "macula.restart=always",
                      IMAGE, "sleep", "1000000")
        d_id = docker("run", "-d", "--name", d_name, "-l", label, "--restart", "always",
                      IMAGE, "sleep", "1000000")
        print(f"death → restart: {rounds} rounds, kills {spacing:g} s apart (both back at the 100 ms initial delay)")
        await asyncio.sleep(spacing)
        res: dict[str, list[float]] = {"maculad": [], "docker": []}
        for i in range(rounds):
            order = [("maculad", m_id), ("docker", d_id)]
            if i % 2:
                order.reverse()
            for who, cid in order:
                before = time.time() - 0.5
                # a real death: SIGKILL the container's process from the host (`docker kill` would
                # count as a manual stop, which Docker's --restart always does not restart)
                os.kill(int(docker("inspect", "-f", "{{.State.Pid}}", cid)), signal.SIGKILL)
                die = await log.wait(cid, "die", before)
                start = await log.wait(cid, "start", die.time)
                res[who].append(start.time - die.time)
            print(f"  round {i + 1}: maculad {res['maculad'][-1] * 1000:7.1f} ms   "
                  f"docker --restart always {res['docker'][-1] * 1000:7.1f} ms")
            if i + 1 < rounds:
                await asyncio.sleep(spacing)
        mp, dp = statistics.median(res["maculad"]), statistics.median(res["docker"])
        print(f"maculad (macula.restart=always)   {fmt(res['maculad'])}")
        print(f"docker  (--restart always)        {fmt(res['docker'])}")
        print(f"ratio maculad/docker: p50 {mp / dp:.2f}x   max {max(res['maculad']) / max(res['docker']):.2f}x")

        # ---------------------------------------------------------------- 2. start → route / DNS
        to_table: list[float] = []
        to_dns: list[float] = []
        to_gone: list[float] = []
        for i in range(routes_n):
            name = f"r{i}-{uid}"
            fqdn = f"{name}.{cfg.domain}"
            cname = f"bench-{uid}-route{i}"
            names.append(cname)
            cid = docker("create", "--name", cname, "-l", label, "-l", f"macula.host={name}", "-l",
                         "macula.http=8080", "-p", "127.0.0.1::8080", IMAGE, "httpd", "-f", "-p", "8080")
            before = time.time() - 0.5
            docker("start", cid)
            start = await log.wait(cid, "start", before)
            if dns_port:
                while not await dns_answers(dns_port, fqdn):
                    pass
                to_dns.append(time.time() - start.time)
            while fqdn not in appeared:
                await asyncio.sleep(0.001)
            to_table.append(appeared[fqdn] - start.time)
            before = time.time() - 0.5
            docker("rm", "-f", cid)
            destroy = await log.wait(cid, "destroy", before)
            while fqdn not in gone:
                await asyncio.sleep(0.001)
            to_gone.append(gone[fqdn] - destroy.time)
        print(f"\nlabelled container start → name in the route table   {fmt(to_table)}")
        if to_dns:
            print(f"labelled container start → name answers DNS         {fmt(to_dns)}  (maculad DNS, UDP)")
        else:
            print("labelled container start → DNS: maculad.dns.server not importable, skipped")
        print(f"container removed → name leaves the route table     {fmt(to_gone)}")
    finally:
        for n in names:
            subprocess.run(["docker", "rm", "-f", n], capture_output=True)
        ev_task.cancel()
        await tier.stop()
        if dns_server is not None:
            await dns_server.stop()
        await owner.stop_stage("sources")
        await api.close()


def configure_logging_quiet() -> None:
    configure_logging(LogConfig(level="warning", format="console"))


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=6, help="kills per contender")
    ap.add_argument("--routes", type=int, default=20, help="labelled containers started and removed")
    ap.add_argument("--spacing", type=float, default=11.0, help="seconds between kills (>10 resets backoff)")
    a = ap.parse_args()
    asyncio.run(main(a.rounds, a.routes, a.spacing))
