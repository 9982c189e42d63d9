"""Ingress reaction time and scale through the real daemon: API change → DNS answer and relay, end to end.

Two processes, as in real life:

* this process plays the Kubernetes API server (`tests/support/fake_k8s.py`, the real
  watch protocol over HTTP), the ingress controller behind the relay (a small HTTP
  server) and the clients;
* the child is `maculad run` itself (`tests/support/daemon.py`: `base_config` on free
  ports, pool 127.1.0.0/16, log level warning) with `[kubernetes]` enabled against that
  API server: the Ingress watch → the route table (and its allocation store) → DNS, and
  the relay reconciling its listeners on every table change, as in production.

Reaction: for each of N Ingresses, one at a time, the clock starts when the change is
committed in the API server (create / change host / delete) and stops when the daemon's
DNS gives the new answer (A record, or NXDOMAIN for a deleted name; the prober asks again
as soon as it gets the old answer). For creates a second clock stops when an HTTP request
to the new name's IP on the relay's http port is answered by the ingress controller.

Scale: S Ingresses exist before the daemon starts: start → /readyz, start → the last of
them answers in DNS, the daemon's RSS (/proc) with an empty cluster and with S Ingresses,
the provider's rebuild time as the daemon reports it (`components.kubernetes` in
`GET /v1/status`: `last_build_seconds` for the builder, `last_rebuild_seconds` with the
table merge, allocation store and listeners) after each of N more changes, the reaction
time at that size, and DNS throughput with `dnsperf` (when installed) for both tables.

    .venv/bin/python benchmarks/ingress_reaction.py [--count 100] [--scale 1000]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import dns.message
import dns.rcode

from maculad.ctl.client import ControlClient
from tests.support.daemon import Maculad, TaggedHTTP, base_config
from tests.support.fake_k8s import FakeKubeAPI

DOMAIN = "macula.local"
DNS_IP = "127.0.0.153"


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


class Prober(asyncio.DatagramProtocol):
    """One outstanding UDP query at a time to the daemon's DNS."""

    def __init__(self) -> None:
        self.waiter: asyncio.Future[bytes] | None = None
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # asyncio's UDP transport is no DatagramTransport

    def datagram_received(self, data: bytes, addr: Any) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(data)

    async def ask(self, name: str) -> tuple[int, list[str]]:
        assert self.transport is not None
        q = dns.message.make_query(name, "A")
        self.waiter = asyncio.get_running_loop().create_future()
        self.transport.sendto(q.to_wire())
        try:
            data = await asyncio.wait_for(self.waiter, timeout=1.0)
        except TimeoutError:
            return -1, []
        r = dns.message.from_wire(data)
        return r.rcode(), [rd.address for rrset in r.answer for rd in rrset]


async def until(prober: Prober, name: str, *, present: bool, timeout: float = 30.0) -> tuple[float, str]:
    """(the moment the answer changed, the address) — asking again on every old answer."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        rcode, addrs = await prober.ask(name)
        if present and rcode == dns.rcode.NOERROR and addrs:
            return time.monotonic(), addrs[0]
        if not present and rcode == dns.rcode.NXDOMAIN:
            return time.monotonic(), ""
    raise RuntimeError(f"{name} never became {'present' if present else 'absent'}")


async def http_answers(ip: str, port: int, name: str, tag: bytes, timeout: float = 30.0) -> float:
    """The moment a GET to ip:port (the relay) is answered 200 with the controller's tag."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            reader, writer = await asyncio.open_connection(ip, port)
        except OSError:
            await asyncio.sleep(0.0005)
            continue
        try:
            writer.write(f"GET / HTTP/1.0\r\nHost: {name}\r\n\r\n".encode())
            data = await asyncio.wait_for(reader.read(), 5)
        except (OSError, TimeoutError):
            data = b""
        finally:
            writer.close()
        if data.startswith(b"HTTP/1.0 200") and data.endswith(tag):
            return time.monotonic()
        await asyncio.sleep(0.0005)
    raise RuntimeError(f"the relay at {ip}:{port} never answered for {name}")


def pct(values: list[float], p: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(p / 100 * len(s) + 0.5) - 1))]


def summary(label: str, ms: list[float]) -> dict[str, float]:
    out = {"n": len(ms), "p50": statistics.median(ms), "p99": pct(ms, 99), "max": max(ms)}
    print(f"  {label:<30} n={out['n']:<5} p50={out['p50']:7.2f} ms  p99={out['p99']:7.2f} ms  "
          f"max={out['max']:7.2f} ms")
    return out


class Daemon:
    """`maculad run` with [kubernetes] against `fake`, its ports and a control client."""

    def __init__(self, work: Path, kubeconfig: Path, backend: int) -> None:
        work.mkdir(parents=True)
        text, self.ports = base_config(work, pool="127.1.0.0/16", log_level="warning", extra=f"""
[kubernetes]
enabled = true
kubeconfig = "{kubeconfig}"
context = "fake"
ingress_http = "127.0.0.1:{backend}"
""")
        (work / "maculad.toml").write_text(text)
        self.proc = Maculad(work / "maculad.toml", log=work / "maculad.log")
        self.control = ControlClient(str(work / "maculad.sock"))

    async def start(self) -> float:
        """Start it; seconds until /readyz answers."""
        t0 = time.monotonic()
        self.proc.start()
        await asyncio.to_thread(self.proc.wait_ready, self.ports["metrics"], 120)
        return time.monotonic() - t0

    @property
    def pid(self) -> int:
        assert self.proc.proc is not None
        return self.proc.proc.pid

    async def kubernetes(self) -> dict[str, Any]:
        status = await asyncio.to_thread(self.control.status)
        return dict(status["components"]["kubernetes"])  # type: ignore[arg-type]

    def stop(self) -> None:
        rc = self.proc.stop()
        if rc not in (0, None):
            print(f"maculad exited with {rc}:\n{self.proc.logs()}", file=sys.stderr)


async def reaction(fake: FakeKubeAPI, daemon: Daemon, prober: Prober, count: int, prefix: str,
                   tag: bytes) -> tuple[dict[str, dict[str, float]], list[tuple[float, float]]]:
    """The three passes; with the rebuild timings the daemon reported after each change."""
    created, relayed, changed, deleted = [], [], [], []
    rebuilds: list[tuple[float, float]] = []

    async def rebuild() -> None:
        k = await daemon.kubernetes()
        rebuilds.append((k["last_build_seconds"] or 0.0, k["last_rebuild_seconds"] or 0.0))

    for i in range(count):
        name = f"{prefix}{i}.{DOMAIN}"
        t0 = time.monotonic()
        fake.create_ingress(f"{prefix}-ns{i % 5}", f"{prefix}{i}", [name])
        t_dns, ip = await until(prober, name, present=True)
        created.append((t_dns - t0) * 1000)
        relayed.append((await http_answers(ip, daemon.ports["http"], name, tag) - t0) * 1000)
        await rebuild()
    for i in range(count):
        t0 = time.monotonic()
        fake.set_ingress_hosts(f"{prefix}-ns{i % 5}", f"{prefix}{i}", [f"{prefix}{i}-v2.{DOMAIN}"])
        changed.append((((await until(prober, f"{prefix}{i}-v2.{DOMAIN}", present=True))[0]) - t0) * 1000)
        await rebuild()
    for i in range(count):
        t0 = time.monotonic()
        fake.delete_ingress(f"{prefix}-ns{i % 5}", f"{prefix}{i}")
        deleted.append((((await until(prober, f"{prefix}{i}-v2.{DOMAIN}", present=False))[0]) - t0) * 1000)
        await rebuild()
    return {"create": summary("create → A answer", created),
            "relay": summary("create → HTTP via the relay", relayed),
            "change": summary("change host → new A", changed),
            "delete": summary("delete → NXDOMAIN", deleted)}, rebuilds


def dnsperf_qps(port: int, name: str, seconds: int = 4) -> float | None:
    if shutil.which("dnsperf") is None:
        return None
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as f:
        f.write(f"{name} A\n")
    try:
        out = subprocess.run(["dnsperf", "-s", DNS_IP, "-p", str(port), "-d", f.name, "-l", str(seconds),
                              "-c", "4", "-Q", "200000"], capture_output=True, text=True, timeout=seconds + 30).stdout
    finally:
        os.unlink(f.name)
    for line in out.splitlines():
        if "Queries per second" in line:
            return float(line.split(":")[1])
    return None


async def main(args: argparse.Namespace) -> None:
    work = Path(tempfile.mkdtemp(prefix="mib-", dir="/tmp"))  # short: the control socket path is limited
    loop = asyncio.get_running_loop()
    tag = b"ingress-controller\n"
    try:
        with TaggedHTTP(tag.decode().strip()) as controller:
            # ------------------------------------------------------------------ reaction, empty cluster
            async with FakeKubeAPI() as fake:
                d = Daemon(work / "small", fake.write_kubeconfig(work / "kubeconfig"), controller.port)
                try:
                    ready_small = await d.start()
                    port = d.ports["dns"]
                    _, prober = await loop.create_datagram_endpoint(Prober, remote_addr=(DNS_IP, port))
                    fake.create_ingress("probe", "probe", [f"probe.{DOMAIN}"])
                    await until(prober, f"probe.{DOMAIN}", present=True)  # the watch is up
                    rss_empty = rss_mib(d.pid)
                    small_qps = dnsperf_qps(port, f"probe.{DOMAIN}") if args.dnsperf else None
                    print(f"\nReaction through `maculad run`, API change → answer, {args.count} Ingresses "
                          "one by one (empty cluster):")
                    reaction_small, rebuilds_small = await reaction(fake, d, prober, args.count, "app", tag)
                finally:
                    d.stop()

            # ------------------------------------------------------------------ scale
            async with FakeKubeAPI() as fake:
                for i in range(args.scale):
                    fake.create_ingress(f"team{i % 50}", f"svc{i}", [f"svc{i}.{DOMAIN}"])
                d = Daemon(work / "big", fake.write_kubeconfig(work / "kubeconfig2"), controller.port)
                try:
                    t0 = time.monotonic()
                    ready_big = await d.start()
                    port = d.ports["dns"]
                    _, prober = await loop.create_datagram_endpoint(Prober, remote_addr=(DNS_IP, port))
                    synced = (await until(prober, f"svc{args.scale - 1}.{DOMAIN}", present=True, timeout=120))[0] - t0
                    rss_big = rss_mib(d.pid)
                    k = await d.kubernetes()
                    big_qps = dnsperf_qps(port, f"svc{args.scale // 2}.{DOMAIN}") if args.dnsperf else None
                    print(f"\nScale: {args.scale} Ingresses present, {args.count} more changes one by one:")
                    reaction_big, rebuilds_big = await reaction(fake, d, prober, args.count, "late", tag)
                    rss_after = rss_mib(d.pid)
                finally:
                    d.stop()

        print("\nFigures (all from the daemon process)")
        print(f"  start → /readyz:                  {ready_small * 1000:8.0f} ms empty, {ready_big * 1000:.0f} ms "
              f"with {args.scale} Ingresses")
        print(f"  start → the last of {args.scale} answers:  {synced * 1000:8.0f} ms "
              f"(list + build + table + allocation store + DNS; {k['routes']} routes, {k['rebuilds']} rebuilds)")
        print(f"  RSS empty / {args.scale} Ingresses:       {rss_empty:8.1f} / {rss_big:.1f} MiB "
              f"(+{(rss_big - rss_empty) * 1024 / max(args.scale, 1):.1f} KiB per Ingress, relay listeners "
              f"included); {rss_after:.1f} MiB after {args.count * 3} more changes")
        for label, rb in (("empty cluster", rebuilds_small), (f"{args.scale}+ Ingresses", rebuilds_big)):
            whole = [r[1] * 1000 for r in rb]
            build = [r[0] * 1000 for r in rb]
            print(f"  one rebuild, {label:<16}     {statistics.median(whole):8.2f} ms median, "
                  f"{pct(whole, 99):.2f} ms p99; the provider's part {statistics.median(build):.2f} ms median")
        if small_qps and big_qps:
            print(f"  DNS (dnsperf, 1 name):            {small_qps:8.0f} qps with a small table, "
                  f"{big_qps:.0f} qps with {args.scale} routes (ratio {big_qps / small_qps:.2f})")
        worst = max(x["p99"] for r in (reaction_small, reaction_big) for k2, x in r.items() if k2 != "relay")
        print(f"  target p99 < 100 ms (API change → DNS): {'met' if worst < 100 else 'NOT met'} "
              f"(worst p99 {worst:.1f} ms; load average now {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs)")
    finally:
        shutil.rmtree(work, ignore_errors=True)


def cli() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--count", type=int, default=100, help="Ingresses created/changed/deleted one by one")
    ap.add_argument("--scale", type=int, default=1000, help="Ingresses present for the scale run")
    ap.add_argument("--no-dnsperf", dest="dnsperf", action="store_false", help="skip the dnsperf runs")
    asyncio.run(main(ap.parse_args()))


if __name__ == "__main__":
    cli()
