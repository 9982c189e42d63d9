"""What maculad costs to keep running all day, beside dnsmasq and nginx doing the same job idle.

    .venv/bin/python benchmarks/footprint.py [--scenario user|all|both] [--rounds 3] [--window 30]

Scenarios (the real `maculad run` each time):

* `user`: `config/maculad-user.toml` as shipped (Docker on, Kubernetes off), only its ports,
  state_dir and control socket moved to free/private places (one state dir for all rounds: round 1
  is a first start, whose signer child makes the CA and the leaves, the later rounds are restarts);
* `all`: the same plus every source on and 1,000 routes: Docker (a private dockerd, so the
  daemon supervises nobody else's containers), Kubernetes (tests/support/fake_k8s.py's API
  server in its own process, serving enough Ingresses to make 1,000 routes in total), and
  a pool large enough for them.

The daemon starts from bytecode, as scripts/run.sh leaves it (`compileall` first).

Per round: start-up time to the first DNS answer (from exec to an answer for a configured
name, UDP queries every 2 ms), then, once the daemon is ready and has settled, over one idle
window measured for maculad, dnsmasq and nginx side by side: RSS (VmRSS, and the peak
VmHWM), wake-ups per second (voluntary + non-voluntary context switches summed over every
thread in /proc/PID/task/*/status) and CPU (on-CPU nanoseconds from /proc/PID/task/*/schedstat,
which is finer than /proc/PID/stat's ticks). dnsmasq answers the same names (one
`--host-record` each) and nginx stream has one listener per IP:port the relay binds (the
same IPs, on ports of its own; master + worker summed); both start with the same number of names. Prints each round, the
quietest round and the spread, and the ratios. Not part of the test suite.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
import tomllib
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
PY = ROOT / ".venv" / "bin" / "python"
STREAM_MODULE = "/usr/lib/nginx/modules/ngx_stream_module.so"
DNS_IP = "127.0.0.153"


# --------------------------------------------------------------------------- /proc


def pids_of(pid: int) -> list[int]:
    """`pid` and its descendants (nginx's workers)."""
    out = [pid]
    for p in list(out):
        try:
            kids = Path(f"/proc/{p}/task/{p}/children").read_text().split()
        except OSError:
            continue
        out += [int(k) for k in kids]
    return out


def tasks(pids: list[int]) -> list[Path]:
    out: list[Path] = []
    for p in pids:
        try:
            out += list(Path(f"/proc/{p}/task").iterdir())
        except OSError:
            pass
    return out


def status_field(path: Path, name: str) -> int:
    try:
        for line in path.read_text().splitlines():
            if line.startswith(name + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


@dataclass
class Sample:
    switches: int
    cpu_ns: int
    t: float


def sample(pids: list[int]) -> Sample:
    sw = cpu = 0
    for t in tasks(pids):
        sw += status_field(t / "status", "voluntary_ctxt_switches")
        sw += status_field(t / "status", "nonvoluntary_ctxt_switches")
        try:
            cpu += int((t / "schedstat").read_text().split()[0])
        except (OSError, IndexError, ValueError):
            pass
    return Sample(sw, cpu, time.monotonic())


def rss_kb(pids: list[int], field: str = "VmRSS") -> int:
    return sum(status_field(Path(f"/proc/{p}/status"), field) for p in pids)


@dataclass
class Idle:
    rss_mb: float
    hwm_mb: float
    wakeups: float
    cpu_pct: float
    threads: int


def idle_many(procs: dict[str, list[int]], window: float) -> dict[str, Idle]:
    """One window, every process measured over the same seconds."""
    before = {k: sample(v) for k, v in procs.items()}
    time.sleep(window)
    out: dict[str, Idle] = {}
    for k, v in procs.items():
        after = sample(v)
        dt = after.t - before[k].t
        out[k] = Idle(rss_mb=rss_kb(v) / 1024, hwm_mb=rss_kb(v, "VmHWM") / 1024,
                      wakeups=(after.switches - before[k].switches) / dt,
                      cpu_pct=(after.cpu_ns - before[k].cpu_ns) / 1e9 / dt * 100, threads=len(tasks(v)))
    return out


# --------------------------------------------------------------------------- DNS probe


def query(name: str, qid: int) -> bytes:
    q = b"".join(bytes([len(lbl)]) + lbl.encode() for lbl in name.split(".")) + b"\0"
    return struct.pack("!HHHHHH", qid, 0x0100, 1, 0, 0, 0) + q + struct.pack("!HH", 1, 1)


def first_answer(ip: str, port: int, name: str, start: float, proc: subprocess.Popen[bytes],
                 timeout: float = 30.0) -> float:
    """Seconds from `start` until a NOERROR answer with an A record arrives."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(0.002)
        qid = 1
        while time.monotonic() - start < timeout:
            if proc.poll() is not None:
                raise SystemExit(f"the process exited with {proc.returncode} before answering DNS")
            qid = (qid + 1) & 0xFFFF
            try:
                s.sendto(query(name, qid), (ip, port))
                while True:
                    data = s.recv(4096)
                    if data[:2] == struct.pack("!H", qid):
                        break
                rcode = data[3] & 0xF
                ancount = struct.unpack("!H", data[6:8])[0]
                if rcode == 0 and ancount > 0:
                    return time.monotonic() - start
            except (TimeoutError, ConnectionRefusedError):
                pass
            time.sleep(0.002)
    raise SystemExit(f"no DNS answer from {ip}:{port} for {name} within {timeout}s")


# --------------------------------------------------------------------------- configs


def free_port(ip: str = "127.0.0.1", udp_too: bool = False) -> int:
    for _ in range(50):
        with socket.socket() as s:
            s.bind((ip, 0))
            port = int(s.getsockname()[1])
        if not udp_too:
            return port
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
                u.bind((ip, port))
            return port
        except OSError:
            continue
    raise SystemExit("no free port")


def toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return repr(v)
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(v, list):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{k} = {toml_value(x)}" for k, x in v.items()) + " }"
    raise TypeError(type(v))


def to_toml(data: dict[str, Any]) -> str:
    """Enough TOML for maculad's config: scalars, sections, sub-sections, [[route]]."""
    lines: list[str] = []

    def is_table(v: Any) -> bool:
        return isinstance(v, dict) and (not v or any(isinstance(x, dict) for x in v.values()))

    def table(prefix: str, d: dict[str, Any]) -> None:
        for k, v in d.items():
            if not is_table(v) and not (isinstance(v, list) and v and isinstance(v[0], dict)):
                lines.append(f"{k} = {toml_value(v)}")
        for k, v in d.items():
            if is_table(v):
                lines.append(f"[{prefix}{k}]")
                table(f"{prefix}{k}.", v)
        for k, v in d.items():
            if isinstance(v, list) and v and isinstance(v[0], dict):
                for item in v:
                    lines.append(f"[[{prefix}{k}]]")
                    table(f"{prefix}{k}.", item)

    top = {k: v for k, v in data.items() if not isinstance(v, dict)}
    table("", top)
    for k, v in data.items():
        if isinstance(v, dict):
            lines.append(f"[{k}]")
            table(f"{k}.", v)
    return "\n".join(lines) + "\n"


@dataclass
class Scenario:
    name: str
    config: Path
    dns_port: int
    metrics_port: int
    probe: str  # a configured name
    names: list[tuple[str, str]]  # every (name, ip) the daemon will serve, for dnsmasq
    binds: list[tuple[str, int]]  # every IP:port the relay binds, for nginx
    env: dict[str, str]


def user_config(work: Path, *, routes: int = 0, docker_host: str | None = None,
                kubeconfig: Path | None = None, ingress_hosts: list[str] | None = None) -> Scenario:
    data = tomllib.loads((ROOT / "config" / "maculad-user.toml").read_text())
    dns_port = free_port(DNS_IP, udp_too=True)
    metrics_port = free_port()
    http_port, https_port = free_port(), free_port()
    data["state_dir"] = str(work / "state")
    data["dns"]["listen"] = [f"{DNS_IP}:{dns_port}"]
    data["proxy"]["http_port"] = http_port
    data["proxy"]["https_port"] = https_port
    data["metrics"]["listen"] = f"127.0.0.1:{metrics_port}"
    data["control"]["socket"] = str(work / "maculad.sock")
    data.setdefault("log", {}).update(level="warning", format="json")
    env = {}
    if docker_host:
        env["DOCKER_HOST"] = docker_host
    static = [r for r in data.get("route", [])]
    hosts = list(ingress_hosts or [])
    if routes:
        data["proxy"]["pool"] = "127.1.0.0/16"
        for r in static:
            r.pop("ip", None)
    if kubeconfig is not None:
        data["kubernetes"].update(enabled=True, kubeconfig=str(kubeconfig), context="fake")
    domain = data.get("domain", "macula.local")
    all_names = [r["name"] if r["name"].endswith(domain) else f"{r['name']}.{domain}" for r in static] + hosts
    pool = ipaddress.IPv4Network(data["proxy"]["pool"])
    ips = [str(ip) for ip, _ in zip(pool.hosts(), all_names, strict=False)]
    names = list(zip(all_names, ips, strict=True))
    binds: list[tuple[str, int]] = []
    for r, (_, ip) in zip(static, names, strict=False):
        for k, port in (("http", http_port), ("https", https_port)):
            if k in r:
                binds.append((ip, port))
        for p in r.get("tcp", {}):
            binds.append((ip, int(p)))
    for _, ip in names[len(static):]:
        binds += [(ip, http_port), (ip, https_port)]
    cfg = work / "maculad.toml"
    cfg.write_text(to_toml(data))
    return Scenario(name="all sources, 1,000 routes" if routes else "user config", config=cfg,
                    dns_port=dns_port, metrics_port=metrics_port, probe=names[0][0], names=names,
                    binds=binds, env=env)


# --------------------------------------------------------------------------- helpers


def stop(proc: subprocess.Popen[bytes] | None) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def wait_for(pred: Callable[[], bool], timeout: float, what: str) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return
        time.sleep(0.05)
    raise SystemExit(f"timed out waiting for {what}")


def ready(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1) as r:
            return bool(r.status == 200)
    except OSError:
        return False


def start_private_dockerd(work: Path) -> tuple[subprocess.Popen[bytes], str]:
    d = work / "dockerd"
    d.mkdir()
    sock = d / "docker.sock"
    # In its own network namespace: with --bridge none a dockerd deletes the host's docker0, and
    # this one must touch nothing of the machine's own engine.
    proc = subprocess.Popen(
        ["unshare", "--net", "--", "dockerd", "--data-root", str(d / "data"), "--exec-root", str(d / "exec"),
         "--pidfile", str(d / "pid"),
         "-H", f"unix://{sock}", "--bridge", "none", "--iptables=false", "--ip6tables=false", "--ip-masq=false",
         "--userland-proxy=false", "--containerd-namespace", f"footprint-{os.getpid()}",
         "--containerd-plugins-namespace", f"footprint-plugins-{os.getpid()}"],
        stdout=open(d / "log", "wb"), stderr=subprocess.STDOUT)
    wait_for(sock.exists, 60, "the private dockerd")
    time.sleep(0.5)
    return proc, f"unix://{sock}"


FAKE_K8S = """
import asyncio, sys
sys.path.insert(0, {root!r})
from pathlib import Path
from tests.support.fake_k8s import FakeKubeAPI
async def main():
    api = FakeKubeAPI(bookmark_interval=60.0)  # about what a real API server does
    await api.start()
    hosts = {hosts!r}
    for i in range(0, len(hosts), 10):
        api.create_ingress("default", f"app-{{i}}", hosts[i:i + 10])
    api.write_kubeconfig(Path({kubeconfig!r}), context="fake")
    print("ready", flush=True)
    await asyncio.Event().wait()
asyncio.run(main())
"""


def start_fake_k8s(work: Path, hosts: list[str]) -> tuple[subprocess.Popen[bytes], Path]:
    kc = work / "kubeconfig"
    proc = subprocess.Popen([str(PY), "-c", FAKE_K8S.format(root=str(ROOT), hosts=hosts, kubeconfig=str(kc))],
                            stdout=subprocess.PIPE)
    assert proc.stdout is not None
    if proc.stdout.readline().strip() != b"ready":
        raise SystemExit("the fake Kubernetes API server did not start")
    return proc, kc


def start_dnsmasq(work: Path, sc: Scenario) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port(DNS_IP, udp_too=True)
    conf = work / "dnsmasq.conf"
    conf.write_text("".join(f"host-record={n},{ip}\n" for n, ip in sc.names))
    proc = subprocess.Popen(["dnsmasq", "--keep-in-foreground", "--no-resolv", "--no-hosts", "--conf-file=" + str(conf),
                             f"--listen-address={DNS_IP}", "--bind-interfaces", f"--port={port}",
                             "--user=root", "--pid-file=", "--cache-size=1000"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return proc, port


def start_nginx(work: Path, sc: Scenario, backend: int) -> subprocess.Popen[bytes]:
    d = work / "nginx"
    d.mkdir(exist_ok=True)
    # the same IPs and as many listeners, on ports of its own: maculad holds the relay's
    ports = {p: free_port() for p in sorted({p for _, p in sc.binds})}
    servers = "".join(f"    server {{ listen {ip}:{ports[port]}; proxy_pass 127.0.0.1:{backend}; }}\n"
                      for ip, port in sc.binds)
    (d / "nginx.conf").write_text(f"""
load_module {STREAM_MODULE};
worker_processes 1;
worker_rlimit_nofile 65536;
daemon off;
pid {d / 'nginx.pid'};
error_log {d / 'error.log'} warn;
events {{ worker_connections 4096; }}
stream {{
{servers}}}
""")
    return subprocess.Popen(["nginx", "-c", str(d / "nginx.conf"), "-p", str(d)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


# --------------------------------------------------------------------------- main


def run_scenario(sc: Scenario, work: Path, rounds: int, window: float, settle: float) -> None:
    print(f"\n== {sc.name}: {len(sc.names)} names, {len(sc.binds)} relay listeners; "
          f"window {window:.0f}s after {settle:.0f}s settle, {rounds} rounds")
    env = dict(os.environ, **sc.env)
    rows: list[dict[str, Any]] = []
    for rnd in range(1, rounds + 1):
        ref: dict[str, subprocess.Popen[bytes]] = {}
        daemon: subprocess.Popen[bytes] | None = None
        try:
            t0 = time.monotonic()
            dnsmasq, dport = start_dnsmasq(work, sc)
            ref["dnsmasq"] = dnsmasq
            t_dnsmasq = first_answer(DNS_IP, dport, sc.probe, t0, dnsmasq)
            ref["nginx"] = start_nginx(work, sc, free_port())
            t0 = time.monotonic()
            daemon = subprocess.Popen([str(PY), "-m", "maculad", "run", "--config", str(sc.config)], env=env,
                                      cwd=ROOT, stdout=open(work / f"maculad-{rnd}.log", "wb"),
                                      stderr=subprocess.STDOUT)
            t_maculad = first_answer(DNS_IP, sc.dns_port, sc.probe, t0, daemon)
            cpu_first = sample([daemon.pid]).cpu_ns / 1e9  # CPU spent until then: less load-sensitive
            wait_for(lambda: ready(sc.metrics_port), 60, "maculad /readyz")
            t_ready = time.monotonic() - t0
            time.sleep(settle)
            procs = {"maculad": pids_of(daemon.pid), "dnsmasq": pids_of(dnsmasq.pid),
                     "nginx": pids_of(ref["nginx"].pid)}
            idle = idle_many(procs, window)
            rows.append({"start": t_maculad, "start_cpu": cpu_first, "ready": t_ready, "dnsmasq_start": t_dnsmasq,
                         **idle})
            m, d, n = idle["maculad"], idle["dnsmasq"], idle["nginx"]
            print(f"round {rnd}: maculad first DNS answer {t_maculad * 1000:.0f} ms (CPU {cpu_first * 1000:.0f} ms, "
                  f"ready {t_ready * 1000:.0f} ms), "
                  f"RSS {m.rss_mb:.1f} MB (peak {m.hwm_mb:.1f}), {m.wakeups:.2f} wake-ups/s, "
                  f"{m.cpu_pct:.3f} % CPU, {m.threads} threads | dnsmasq {t_dnsmasq * 1000:.0f} ms, "
                  f"{d.rss_mb:.1f} MB, {d.wakeups:.2f}/s, {d.cpu_pct:.3f} % | nginx {n.rss_mb:.1f} MB, "
                  f"{n.wakeups:.2f}/s, {n.cpu_pct:.3f} %", flush=True)
        finally:
            stop(daemon)
            for p in ref.values():
                stop(p)
    quiet = min(rows, key=lambda r: r["maculad"].cpu_pct)

    def spread(f: Callable[[dict[str, Any]], float], fmt: str) -> str:
        vals = [f(r) for r in rows]
        return (f"{fmt.format(f(quiet))} (spread {fmt.format(min(vals))}..{fmt.format(max(vals))}, "
                f"median {fmt.format(statistics.median(vals))})")

    def ratio(a: float, b: float) -> str:
        return f"{a / b:.1f}×" if b > 0 else "n/a (0)"

    m, d, n = quiet["maculad"], quiet["dnsmasq"], quiet["nginx"]
    print(f"-- {sc.name}, quietest round (least maculad CPU in the idle window) and spread over rounds:")
    print(f"   start-up to first DNS answer  maculad {spread(lambda r: r['start'] * 1000, '{:.0f} ms')}; "
          f"dnsmasq {spread(lambda r: r['dnsmasq_start'] * 1000, '{:.0f} ms')}")
    print(f"   CPU until the first answer    maculad {spread(lambda r: r['start_cpu'] * 1000, '{:.0f} ms')}")
    print(f"   RSS                           maculad {spread(lambda r: r['maculad'].rss_mb, '{:.1f} MB')}; "
          f"dnsmasq {d.rss_mb:.1f} MB; nginx {n.rss_mb:.1f} MB; maculad/(dnsmasq+nginx) "
          f"{ratio(m.rss_mb, d.rss_mb + n.rss_mb)}")
    if len(rows) > 1:  # round 1 starts on an empty state dir; the later ones restart on what it made
        print(f"   RSS, first start / restarts   maculad {rows[0]['maculad'].rss_mb:.1f} MB (CA and "
              f"leaves by the signer's child) / median {statistics.median(r['maculad'].rss_mb for r in rows[1:]):.1f}"
              " MB (the certificates on disk are used as they are)")
    print(f"   idle wake-ups/s               maculad {spread(lambda r: r['maculad'].wakeups, '{:.2f}')}; "
          f"dnsmasq {d.wakeups:.2f}; nginx {n.wakeups:.2f}; maculad/(dnsmasq+nginx) "
          f"{ratio(m.wakeups, d.wakeups + n.wakeups)}")
    print(f"   idle CPU % of a core          maculad {spread(lambda r: r['maculad'].cpu_pct, '{:.3f}')}; "
          f"dnsmasq {d.cpu_pct:.3f}; nginx {n.cpu_pct:.3f}; maculad/(dnsmasq+nginx) "
          f"{ratio(m.cpu_pct, d.cpu_pct + n.cpu_pct)}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scenario", choices=("user", "all", "both"), default="both")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--window", type=float, default=30.0, help="idle seconds measured per round")
    ap.add_argument("--settle", type=float, default=5.0, help="seconds after /readyz before the window")
    ap.add_argument("--routes", type=int, default=1000, help="routes in the 'all' scenario")
    args = ap.parse_args()
    for tool in ("dnsmasq", "nginx"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} is not installed")
    # as installed: scripts/run.sh compiles the bytecode, so no start compiles the sources
    subprocess.run([str(PY), "-m", "compileall", "-q", str(ROOT / "maculad")], check=True)
    work = Path(tempfile.mkdtemp(prefix="footprint-"))
    work.chmod(0o755)
    helpers: list[subprocess.Popen[bytes]] = []
    try:
        if args.scenario in ("user", "both"):
            uw = work / "user"
            uw.mkdir()
            dockerd, host = start_private_dockerd(uw)
            helpers.append(dockerd)
            run_scenario(user_config(uw, docker_host=host), uw, args.rounds, args.window, args.settle)
        if args.scenario in ("all", "both"):
            aw = work / "all"
            aw.mkdir()
            n_static = len(tomllib.loads((ROOT / "config" / "maculad-user.toml").read_text()).get("route", []))
            hosts = [f"app{i}.macula.local" for i in range(args.routes - n_static)]
            k8s, kubeconfig = start_fake_k8s(aw, hosts)
            helpers.append(k8s)
            if not any(h.args[0] == "dockerd" for h in helpers if isinstance(h.args, list)):
                dockerd, host = start_private_dockerd(aw)
                helpers.append(dockerd)
            run_scenario(user_config(aw, routes=args.routes, docker_host=host, kubeconfig=kubeconfig,
                                     ingress_hosts=hosts), aw, args.rounds, args.window, args.settle)
    finally:
        for h in reversed(helpers):
            stop(h)
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
