"""The container horizon on G against nginx, from inside a container, in front of the same backends.

    .venv/bin/python benchmarks/horizon_vs_nginx.py [--rounds 3] [--duration 8] [--workers 1]

Needs root, a running Docker engine with the test image (scripts/build-test-image.sh), nginx with
libnginx-mod-stream, and wrk. G is the Docker bridge gateway; G's ports 53/80/443 are taken by the
real daemon (`maculad run`, Docker and the container horizon on), so nginx listens on G too, on
other ports:

* HTTP by Host header — maculad G:80 (peek at the request head, then relay at L4) against nginx
  `http` with `server_name bench.macula.local` and `proxy_pass` to an upstream with keepalive;
* TLS by SNI — maculad G:443 (peek at the ClientHello, relay untouched) against nginx `stream`
  with `ssl_preread on` and a `map $ssl_preread_server_name` → upstream;

both in front of the same nginx backend (`http` on 127.0.0.1 and `ssl` on 127.0.0.1, one small
page), with `worker_processes` 1 for the fronts (or `--workers auto`).

The client is wrk run in a busybox container's network namespace (`nsenter -n -t PID`), in a private
mount namespace whose /etc/resolv.conf says `nameserver G` — so wrk resolves bench.macula.local
through maculad's DNS on G and connects from the container's address, as a container would (wrk
is not in the busybox image). Each round runs every case for both fronts, alternating the order;
keep-alive (`wrk -c32 -t2`) and one connection per request (`Connection: close`, which pays the
peek / server_name match on every request). nginx `http` keeps its upstream connections alive
(`keepalive 64`) while an L4 relay opens one backend connection per client connection, so the
connection-per-request HTTP case also runs nginx without upstream keepalive ("nginx-1"). The client
container runs with its own port range and TIME_WAIT reuse (`CLIENT_SYSCTLS`), so connection-per-
request runs measure the fronts, not the client's exhausted ports. Prints req/s and the front's CPU
per request (user + system, from /proc) per run, the medians and the ratio maculad / nginx. Not
part of the test suite.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import ipaddress
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MACULAD = ROOT / ".venv" / "bin" / "maculad"
STREAM_MODULE = "/usr/lib/nginx/modules/ngx_stream_module.so"
IMAGE = "maculad-test/busybox:latest"
G_LOCK = Path("/tmp/maculad-test-g-ports.lock")  # shared with tests/support/horizon.py
NAME = "bench.macula.local"
#: The client container's own network namespace (these sysctls are per namespace; the machine's stay as
#: they are): the whole port range, and reuse of its TIME_WAIT ports for new connects. Without them a
#: client making thousands of connections a second to one address runs out of ports within seconds,
#: whichever front it measures, and every later run measures that exhaustion instead of the front.
CLIENT_SYSCTLS = ("--sysctl", "net.ipv4.ip_local_port_range=1024 65535", "--sysctl", "net.ipv4.tcp_tw_reuse=1")


@contextlib.contextmanager
def g_lock() -> Iterator[None]:
    with G_LOCK.open("a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def free_port(ip: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((ip, 0))
        return int(s.getsockname()[1])


def wait_port(ip: str, port: int, timeout: float = 20.0) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            with socket.create_connection((ip, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"nothing listens on {ip}:{port} after {timeout}s")


def bridge_gateway() -> str:
    out = subprocess.run(["docker", "network", "inspect", "bridge"], check=True, capture_output=True, text=True)
    cfg = json.loads(out.stdout)[0]["IPAM"]["Config"][0]
    return str(cfg.get("Gateway") or ipaddress.ip_network(cfg["Subnet"]).network_address + 1)


def nginx_conf(work: Path, name: str, body: str, workers: str) -> Path:
    (work / name).mkdir(exist_ok=True)
    conf = work / name / "nginx.conf"
    conf.write_text(f"""
load_module {STREAM_MODULE};
worker_processes {workers};
daemon off;
pid {work / name / "nginx.pid"};
error_log {work / name / "error.log"} warn;
events {{ worker_connections 4096; }}
{body}
""")
    return conf


def start_nginx(conf: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(["nginx", "-c", str(conf), "-p", str(conf.parent)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)


def cpu_seconds(pid: int) -> float:
    """CPU time (user + system, every thread) of `pid` and its child processes (nginx's workers)."""
    pids, total = [pid], 0
    for p in pids:  # grows while it is walked
        try:
            for task in Path(f"/proc/{p}/task").iterdir():
                pids.extend(int(c) for c in (task / "children").read_text().split())
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of stat)
        except (OSError, ValueError, IndexError):
            continue
    return total / os.sysconf("SC_CLK_TCK")


def stop(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> None:
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class Client:
    """wrk in a container's network namespace, resolving through G."""

    def __init__(self, pid: int, resolv: Path) -> None:
        self.pid = pid
        self.resolv = resolv

    def wrk(self, url: str, *, duration: int, close: bool) -> tuple[float, int]:
        """req/s and the number of requests of one wrk run."""
        wrk = shutil.which("wrk")
        assert wrk
        header = ["-H", "Connection: close"] if close else []
        argv = ["nsenter", "-n", "-t", str(self.pid), "unshare", "-m", "sh", "-c",
                'mount --bind "$0" /etc/resolv.conf && exec "$@"', str(self.resolv),
                wrk, "-c", "32", "-t", "2", "-d", f"{duration}s", "--timeout", "10s", *header, url]
        out = subprocess.run(argv, check=True, capture_output=True, text=True).stdout
        m = re.search(r"Requests/sec:\s+([\d.]+)", out)
        n = re.search(r"(\d+) requests in", out)
        assert m is not None and n is not None, out
        if "Non-2xx" in out or re.search(r"Socket errors: connect \d+, read \d+, write \d+, timeout [1-9]", out):
            print(f"  wrk reported errors for {url}:\n{out}", file=sys.stderr)
        return float(m.group(1)), int(n.group(1))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--duration", type=int, default=8, help="seconds per wrk run")
    ap.add_argument("--workers", default="1", help="nginx front worker_processes (1 or auto)")
    args = ap.parse_args()
    for tool in ("nginx", "wrk", "docker", "nsenter", "unshare"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} is not installed")
    if os.geteuid() != 0:
        raise SystemExit("run as root: G's ports 53/80/443 and nsenter need it")
    g = bridge_gateway()

    work = Path(tempfile.mkdtemp(prefix="horizon-bench-"))
    work.chmod(0o755)
    www = work / "www"
    www.mkdir()
    (www / "index.html").write_bytes(b"<html><body>maculad container horizon benchmark</body></html>\n" * 4)
    cert, key = work / "cert.pem", work / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                    "-keyout", str(key), "-out", str(cert), "-days", "2", "-subj", f"/CN={NAME}",
                    "-addext", f"subjectAltName=DNS:{NAME}"], check=True, capture_output=True)
    resolv = work / "resolv.conf"
    resolv.write_text(f"nameserver {g}\n")
    http_b, tls_b = free_port(), free_port()
    http_f, tls_f, http_f1 = free_port(g), free_port(g), free_port(g)
    container = f"mbench-{uuid.uuid4().hex[:8]}"
    procs: list[subprocess.Popen[bytes]] = []
    with g_lock():
        try:
            procs.append(start_nginx(nginx_conf(work, "backend", f"""
http {{
    access_log off;
    keepalive_requests 1000000;
    server {{ listen 127.0.0.1:{http_b}; root {www}; }}
    server {{ listen 127.0.0.1:{tls_b} ssl; root {www}; ssl_certificate {cert}; ssl_certificate_key {key};
             ssl_session_cache off; ssl_session_tickets off; }}
}}""", "1")))
            front_http = start_nginx(nginx_conf(work, "front-http", f"""
http {{
    access_log off;
    keepalive_requests 1000000;
    upstream bench {{ server 127.0.0.1:{http_b}; keepalive 64; }}
    upstream bench_no_keepalive {{ server 127.0.0.1:{http_b}; }}
    server {{ listen {g}:{http_f} default_server; return 404; }}
    server {{  # like maculad's L4 relay: one backend connection per client connection
        listen {g}:{http_f1};
        server_name {NAME};
        location / {{ proxy_pass http://bench_no_keepalive; proxy_set_header Host $host; }}
    }}
    server {{
        listen {g}:{http_f};
        server_name {NAME};
        location / {{
            proxy_pass http://bench;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $host;
        }}
    }}
}}""", args.workers))
            procs.append(front_http)
            front_stream = start_nginx(nginx_conf(work, "front-stream", f"""
stream {{
    upstream bench_tls {{ server 127.0.0.1:{tls_b}; }}
    upstream nowhere {{ server 127.0.0.1:1; }}
    map $ssl_preread_server_name $bench_up {{ {NAME} bench_tls; default nowhere; }}
    server {{ listen {g}:{tls_f}; ssl_preread on; proxy_pass $bench_up; }}
}}""", args.workers))
            procs.append(front_stream)
            metrics = free_port()
            cfg = work / "maculad.toml"
            cfg.write_text(f"""
domain = "macula.local"
state_dir = "{work / 'state'}"
[dns]
listen = ["127.0.0.1:{free_port()}"]
[proxy]
pool = "127.0.78.0/24"
http_port = {free_port()}
https_port = {free_port()}
[metrics]
listen = "127.0.0.1:{metrics}"
[control]
socket = "{work / 'maculad.sock'}"
[docker]
enabled = true
[containers]
forwarders = []
[log]
level = "warning"
format = "console"
[[route]]
name = "bench"
http = "127.0.0.1:{http_b}"
https = "127.0.0.1:{tls_b}"
""")
            daemon = subprocess.Popen([str(MACULAD), "run", "--config", str(cfg)], stdout=subprocess.DEVNULL)
            procs.append(daemon)
            for ip, port in ((g, 80), (g, 443), (g, http_f), (g, http_f1), (g, tls_f), ("127.0.0.1", http_b),
                             ("127.0.0.1", tls_b)):
                wait_port(ip, port)
            subprocess.run(["docker", "run", "-d", "--name", container, "--dns", g, *CLIENT_SYSCTLS, IMAGE,
                            "sleep", "3600"], check=True, capture_output=True)
            pid = int(subprocess.run(["docker", "inspect", "-f", "{{.State.Pid}}", container], check=True,
                                     capture_output=True, text=True).stdout)
            client = Client(pid, resolv)
            cases = {
                "HTTP by Host, keep-alive": (f"http://{NAME}/index.html", f"http://{NAME}:{http_f}/index.html", False),
                "HTTP by Host, conn/request": (f"http://{NAME}/index.html", f"http://{NAME}:{http_f}/index.html",
                                               True),
                "TLS by SNI, keep-alive": (f"https://{NAME}/index.html", f"https://{NAME}:{tls_f}/index.html",
                                           False),
                "TLS by SNI, conn/request": (f"https://{NAME}/index.html", f"https://{NAME}:{tls_f}/index.html",
                                             True),
            }
            extra = f"http://{NAME}:{http_f1}/index.html"  # nginx http without upstream keepalive
            for m_url, n_url, close in cases.values():  # warm up both paths
                client.wrk(m_url, duration=1, close=close)
                client.wrk(n_url, duration=1, close=close)
            results: dict[str, dict[str, list[float]]] = {c: {"maculad": [], "nginx": [], "nginx-1": []}
                                                          for c in cases}
            cpu_us: dict[str, dict[str, list[float]]] = {c: {"maculad": [], "nginx": [], "nginx-1": []}
                                                         for c in cases}
            print(f"G = {g}; client: wrk -c32 -t2 in container {container}'s network namespace, resolving via G:53; "
                  f"nginx fronts worker_processes {args.workers}; backend nginx on 127.0.0.1")
            for rnd in range(1, args.rounds + 1):
                for case, (m_url, n_url, close) in cases.items():
                    order = [("maculad", m_url), ("nginx", n_url)]
                    if case == "HTTP by Host, conn/request":
                        order.append(("nginx-1", extra))
                    if rnd % 2 == 0:
                        order.reverse()
                    for who, url in order:
                        front = daemon.pid if who == "maculad" else (
                            front_http.pid if case.startswith("HTTP") else front_stream.pid)
                        before = cpu_seconds(front)
                        r, n = client.wrk(url, duration=args.duration, close=close)
                        us = (cpu_seconds(front) - before) / max(n, 1) * 1e6
                        results[case][who].append(r)
                        cpu_us[case][who].append(us)
                        print(f"round {rnd}  {case:28s} {who:8s} {r:12,.0f} req/s  {us:7.1f} µs CPU/request "
                              "in the front")
            print()
            print(f"{'median req/s':30s}{'maculad':>12s}{'nginx':>12s}{'ratio':>8s}   "
                  "(µs CPU/request in the front: maculad, nginx)")
            for case, res in results.items():
                m, n = statistics.median(res["maculad"]), statistics.median(res["nginx"])
                cm, cn = statistics.median(cpu_us[case]["maculad"]), statistics.median(cpu_us[case]["nginx"])
                label = "nginx http server_name" if case.startswith("HTTP") else "nginx stream ssl_preread"
                print(f"{case:30s}{m:12,.0f}{n:12,.0f}{m / n:8.2f}   ({cm:.1f}, {cn:.1f} µs; {label})")
                if res["nginx-1"]:
                    n1, c1 = statistics.median(res["nginx-1"]), statistics.median(cpu_us[case]["nginx-1"])
                    print(f"{'':30s}{'':12s}{n1:12,.0f}{m / n1:8.2f}   ({cm:.1f}, {c1:.1f} µs; nginx http "
                          "server_name, no upstream keepalive: a backend connection per client connection, as an "
                          "L4 relay)")
            print(f"load average at the end: {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs")
            if daemon.poll() is not None:
                raise SystemExit(f"maculad exited early with {daemon.returncode}")
            return 0
        finally:
            subprocess.run(["docker", "rm", "-f", container], capture_output=True)
            for p in reversed(procs):
                stop(p, signal.SIGQUIT if p.args[0] == "nginx" else signal.SIGTERM)
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
