"""maculad's TLS termination against nginx `listen … ssl`, in front of the same plain backend.

    .venv/bin/python benchmarks/tls_vs_nginx.py [--rounds 3] [--duration 8]

The backend is nginx `http` on 127.0.0.1 serving a small page. In front of
it, alternating run by run in one session:

* maculad: the real daemon (`maculad run`) with one `[[route]]` that has only
  an `http` backend, so its https port terminates TLS with the route's leaf
  (ECDSA P-256, minted by maculad's CA) and relays the plaintext;
* nginx: `stream { server { listen IP:PORT ssl; proxy_pass backend; } }` —
  termination in front of a layer-4 relay, as maculad does — with
  `worker_processes 1` and *the same leaf file* as `ssl_certificate`/`_key`.

New handshakes per second: `openssl s_time -new` (a full handshake per
connection, no resumption), two client processes at once, the same for both.
Keep-alive requests per second: `wrk -c 32 -t 2` over TLS. Prints every round,
the medians, the ratios maculad / nginx, and each proxy's CPU time per
handshake and per request (utime + stime from /proc; steadier than rates on a
shared machine). Not part of the test suite; needs nginx, libnginx-mod-stream,
wrk and openssl.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from relay_vs_nginx import (
    MACULAD,
    STREAM_MODULE,
    children,
    cpu_seconds,
    free_port,
    nginx_conf,
    start_nginx,
    stop,
    wait_port,
    wrk,
)

MACULAD_IP = "127.0.78.1"
NGINX_IP = "127.0.78.2"
NAME = "bench.macula.local"


def s_time(ip: str, port: int, seconds: int, clients: int) -> float:
    """Full handshakes per second (sum over `clients` parallel `openssl s_time -new`)."""
    procs = [subprocess.Popen(["openssl", "s_time", "-connect", f"{ip}:{port}", "-new", "-time", str(seconds)],
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
             for _ in range(clients)]
    total = 0.0
    for p in procs:
        out, _ = p.communicate(timeout=seconds + 60)
        m = re.search(r"(\d+) connections in ([\d.]+) real seconds", out)
        if m is None:
            raise SystemExit(f"openssl s_time against {ip}:{port} printed no result:\n{out}")
        total += int(m.group(1)) / float(m.group(2))
    return total


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--duration", type=int, default=8, help="seconds per run")
    ap.add_argument("--clients", type=int, default=2, help="parallel openssl s_time processes")
    args = ap.parse_args()
    for tool in ("nginx", "wrk", "openssl"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} is not installed")
    if not Path(STREAM_MODULE).exists():
        raise SystemExit(f"{STREAM_MODULE} missing: apt-get install libnginx-mod-stream")
    if not MACULAD.exists():
        raise SystemExit(f"{MACULAD} missing: create the venv first")

    work = Path(tempfile.mkdtemp(prefix="tls-bench-"))
    work.chmod(0o755)
    www = work / "www"
    www.mkdir()
    (www / "index.html").write_bytes(b"<html><body>maculad TLS benchmark</body></html>\n" * 4)
    backend_port, https_port = free_port(), free_port()
    procs: list[subprocess.Popen[bytes]] = []
    try:
        backend = start_nginx(nginx_conf(work, "backend", f"""
http {{
    access_log off;
    keepalive_requests 1000000;
    server {{ listen 127.0.0.1:{backend_port}; root {www}; }}
}}""", "1"))
        procs.append(backend)

        state = work / "maculad-state"
        cfg = work / "maculad.toml"
        cfg.write_text(f"""
domain = "macula.local"
state_dir = "{state}"
[dns]
listen = ["127.0.0.1:{free_port()}"]
[proxy]
pool = "127.0.78.0/24"
http_port = {free_port()}
https_port = {https_port}
[metrics]
listen = "127.0.0.1:{free_port()}"
[control]
socket = "{work / 'maculad.sock'}"
[log]
level = "warning"
format = "console"
[[route]]
name = "bench"
ip = "{MACULAD_IP}"
http = "127.0.0.1:{backend_port}"
""")
        daemon = subprocess.Popen([str(MACULAD), "run", "--config", str(cfg)], stdout=subprocess.DEVNULL)
        procs.append(daemon)
        wait_port(MACULAD_IP, https_port)
        leaf = state / "ca" / "leaves" / f"{NAME}.pem"
        for _ in range(100):
            if leaf.exists():
                break
            time.sleep(0.1)
        shared = work / "leaf.pem"  # nginx's workers run unprivileged; the leaf file itself is 0600
        shutil.copy(leaf, shared)
        shared.chmod(0o644)
        stream = start_nginx(nginx_conf(work, "stream", f"""
stream {{
    server {{
        listen {NGINX_IP}:{https_port} ssl;
        ssl_certificate {shared};
        ssl_certificate_key {shared};
        proxy_pass 127.0.0.1:{backend_port};
    }}
}}""", "1"))
        procs.append(stream)
        wait_port(NGINX_IP, https_port)
        wait_port("127.0.0.1", backend_port)

        targets = {"maculad": MACULAD_IP, "nginx": NGINX_IP}
        cpu_of = {"maculad": [daemon.pid], "nginx": children(stream.pid)}
        for ip in targets.values():
            wrk(f"https://{ip}:{https_port}/index.html", connections=32, threads=2, duration=2)
            s_time(ip, https_port, 2, 1)

        hs: dict[str, list[float]] = {k: [] for k in targets}
        hs_cpu: dict[str, list[float]] = {k: [] for k in targets}
        rps: dict[str, list[float]] = {k: [] for k in targets}
        rq_cpu: dict[str, list[float]] = {k: [] for k in targets}
        print(f"backend nginx http 127.0.0.1:{backend_port}; maculad {MACULAD_IP}:{https_port}; nginx stream ssl "
              f"{NGINX_IP}:{https_port} (worker_processes 1); same ECDSA P-256 leaf {NAME}")
        for rnd in range(1, args.rounds + 1):
            order = list(targets.items()) if rnd % 2 else list(reversed(targets.items()))
            for name, ip in order:
                c0 = cpu_seconds(cpu_of[name])
                r = s_time(ip, https_port, args.duration, args.clients)
                cpu = cpu_seconds(cpu_of[name]) - c0
                hs[name].append(r)
                hs_cpu[name].append(cpu / (r * args.duration) * 1e6)
                print(f"round {rnd} handshakes {name:8s} {r:10,.0f} /s   {hs_cpu[name][-1]:7.1f} us CPU/handshake")
            for name, ip in order:
                c0 = cpu_seconds(cpu_of[name])
                r, _ = wrk(f"https://{ip}:{https_port}/index.html", connections=32, threads=2,
                           duration=args.duration)
                cpu = cpu_seconds(cpu_of[name]) - c0
                rps[name].append(r)
                rq_cpu[name].append(cpu / (r * args.duration) * 1e6)
                print(f"round {rnd} keep-alive {name:8s} {r:10,.0f} req/s {rq_cpu[name][-1]:7.1f} us CPU/request")

        med = {k: {n: statistics.median(v) for n, v in d.items()} for k, d in
               (("hs", hs), ("hs_cpu", hs_cpu), ("rps", rps), ("rq_cpu", rq_cpu))}
        print()
        print(f"{'':34s}{'maculad':>12s}{'nginx':>12s}{'ratio':>8s}")
        for key, label, better in (("hs", f"new handshakes/s (s_time -new x{args.clients})", ""),
                                   ("rps", "keep-alive req/s (wrk -c32 -t2)", ""),
                                   ("hs_cpu", "proxy CPU us/handshake", "   (lower is better)"),
                                   ("rq_cpu", "proxy CPU us/request", "   (lower is better)")):
            a, b = med[key]["maculad"], med[key]["nginx"]
            print(f"{label:34s}{a:12,.1f}{b:12,.1f}{a / b:8.2f}{better}")
        print(f"load average at the end: {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs")
        if daemon.poll() is not None:
            raise SystemExit(f"maculad exited early with {daemon.returncode}")
        return 0
    finally:
        for p in reversed(procs):
            stop(p, signal.SIGQUIT if p.args[0] == "nginx" else signal.SIGTERM)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
