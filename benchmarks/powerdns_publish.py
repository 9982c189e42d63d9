"""Route change → visible in PowerDNS, through the real daemon and a real PowerDNS.

A real `pdns_server` (Debian pdns-server, gsqlite3, PowerDNS's default caches)
and a real `maculad run` with `[powerdns]` enabled, both on loopback free ports:

* **bulk**: the daemon runs with no routes against an empty zone; its config
  gets 1,000 routes and SIGHUP. The clock runs from the signal until `dig`
  against PowerDNS's DNS port answers the last of them; then every one of the
  1,000 names is checked with dig (A) against PowerDNS.
* **changes**: with those 1,000 present, 100 route changes, one at a time:
  one route renamed (its old name must disappear, the new one appear), config
  rewritten, SIGHUP. Each change's clock runs from the signal until dig against
  PowerDNS shows the new name *and* NXDOMAIN for the old one (dig is re-run
  as soon as it shows the old state, so a figure includes up to one dig run).

PATCH requests come from maculad's own `maculad_powerdns_patches_total`, the
reload count from `maculad_reloads_total`: the goal is one PATCH per table change.

Beside it: ExternalDNS's default `--interval` of 1 minute (a change reaches the
DNS provider at the next sync, so up to 60 s, 30 s on average). ExternalDNS
cannot run here (no Kubernetes API server), so that is its documented default,
not a measurement.

    .venv/bin/python benchmarks/powerdns_publish.py [--routes 1000] [--changes 100]
"""

from __future__ import annotations

import argparse
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.support.daemon import Maculad, base_config
from tests.support.powerdns import PowerDNS, missing

EXTERNALDNS_INTERVAL_S = 60.0
ZONE = "macula.local"
PUBLISH = "10.20.30.40"


def dig(port: int, name: str) -> tuple[str, list[str]]:
    out = subprocess.run(["dig", "-p", str(port), "@127.0.0.1", name, "A", "+tries=1", "+time=2", "+noall",
                          "+answer", "+comments"], capture_output=True, text=True, timeout=10).stdout
    status = out.split("status:")[1].split(",")[0].strip() if "status:" in out else "no reply"
    answers = [ln.split()[-1] for ln in out.splitlines() if ln and not ln.startswith(";") and "\tA\t" in ln]
    return status, answers


def metric(port: int, name: str) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        text = r.read().decode()
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name) and not line.startswith("#"):
            key = line.split()[0]
            if key == name or key.startswith(name + "{"):
                total += float(line.split()[1])
    return total


def pct(values: list[float], p: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(p / 100 * len(s) + 0.5) - 1))]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--routes", type=int, default=1000)
    ap.add_argument("--changes", type=int, default=100)
    args = ap.parse_args()
    why = missing()
    if why:
        print(f"cannot run: {why}")
        return 1

    with tempfile.TemporaryDirectory(prefix="pdns-bench-") as d:
        tmp = Path(d)
        pdns = PowerDNS(tmp / "pdns").start()
        key = tmp / "pdns.key"
        key.write_text(pdns.api_key)
        key.chmod(0o600)
        base, ports = base_config(tmp, pool="127.16.0.0/20")
        base = base.replace('level = "debug"', 'level = "info"')
        cfg = tmp / "maculad.toml"

        def write(names: list[str]) -> None:
            routes = "".join(f'\n[[route]]\nname = "{n}"\nhttp = "127.0.0.1:9"\n' for n in names)
            cfg.write_text(base + f"""
[powerdns]
enabled = true
api = "{pdns.api_url}"
api_key_file = "{key}"
dns = "{pdns.dns}"
publish_address = "{PUBLISH}"
owner_id = "maculad-bench"
""" + routes)
            cfg.chmod(0o600)

        write([])
        daemon = Maculad(cfg, log=tmp / "maculad.log").start()
        try:
            daemon.wait_ready(ports["metrics"])
            mport = ports["metrics"]
            deadline = time.monotonic() + 20
            while pdns.zone(ZONE) is None and time.monotonic() < deadline:
                time.sleep(0.05)

            def wait_synced(reloads: float) -> None:
                end = time.monotonic() + 60
                while metric(mport, "maculad_reloads_total") < reloads and time.monotonic() < end:
                    time.sleep(0.01)

            # --- bulk: 1,000 routes into the empty zone
            names = [f"svc-{i:04d}" for i in range(args.routes)]
            patches0 = metric(mport, "maculad_powerdns_patches_total")
            reloads0 = metric(mport, "maculad_reloads_total")
            write(names)
            t0 = time.perf_counter()
            daemon.signal(signal.SIGHUP)
            last = f"{names[-1]}.{ZONE}"
            while dig(pdns.dns_port, last)[1] != [PUBLISH]:
                if time.perf_counter() - t0 > 120:
                    raise TimeoutError(f"{last} not in PowerDNS after 120 s:\n{daemon.logs()}")
            bulk = time.perf_counter() - t0
            missing_names = [n for n in names if dig(pdns.dns_port, f"{n}.{ZONE}")[1] != [PUBLISH]]
            wait_synced(reloads0 + 1)
            bulk_patches = metric(mport, "maculad_powerdns_patches_total") - patches0
            rrsets = len(pdns.rrsets(ZONE))

            # --- 100 changes with 1,000 present
            patches1 = metric(mport, "maculad_powerdns_patches_total")
            reloads1 = metric(mport, "maculad_reloads_total")
            times: list[float] = []
            current = list(names)
            for k in range(args.changes):
                old = current[k]
                new = f"new-{k:04d}"
                current[k] = new
                write(current)
                t = time.perf_counter()
                daemon.signal(signal.SIGHUP)
                while True:
                    got_new = dig(pdns.dns_port, f"{new}.{ZONE}")
                    got_old = dig(pdns.dns_port, f"{old}.{ZONE}") if got_new[1] == [PUBLISH] else ("", [])
                    if got_new[1] == [PUBLISH] and got_old[0] == "NXDOMAIN":
                        break
                    if time.perf_counter() - t > 30:
                        raise TimeoutError(f"change {k} not visible after 30 s:\n{daemon.logs()}")
                times.append(time.perf_counter() - t)
                wait_synced(reloads1 + k + 1)  # the next signal must not fold into this reload
            change_patches = metric(mport, "maculad_powerdns_patches_total") - patches1
            change_reloads = metric(mport, "maculad_reloads_total") - reloads1
        finally:
            daemon.stop()
            pdns.stop()

    p50, p99 = pct(times, 50) * 1000, pct(times, 99) * 1000
    print(f"PowerDNS {ZONE}: {args.routes} routes, then {args.changes} changes (real pdns_server 4.x, gsqlite3)")
    print(f"  bulk     {args.routes} routes into an empty zone: visible via dig after {bulk * 1000:.0f} ms, "
          f"{bulk_patches:.0f} PATCH, zone holds {rrsets} RRsets, {len(missing_names)} names missing")
    print(f"  changes  {args.changes} renames with {args.routes} present: p50 {p50:.0f} ms, p99 {p99:.0f} ms, "
          f"max {max(times) * 1000:.0f} ms, mean {statistics.mean(times) * 1000:.0f} ms")
    print(f"           {change_patches:.0f} PATCH for {change_reloads:.0f} table changes "
          f"({change_patches / max(change_reloads, 1):.2f} per change)")
    print(f"  ExternalDNS default --interval: {EXTERNALDNS_INTERVAL_S:.0f} s (documented default, not measured): "
          f"a change waits up to {EXTERNALDNS_INTERVAL_S:.0f} s, {EXTERNALDNS_INTERVAL_S / 2:.0f} s on average")
    goal = p99 <= 1000 and change_patches == change_reloads
    print(f"  goal (p99 <= 1 s, one PATCH per table change): {'met' if goal else 'NOT met'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
