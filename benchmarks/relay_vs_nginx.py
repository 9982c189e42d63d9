"""maculad's L4 relay against nginx's stream proxy, in front of the same backend.

    .venv/bin/python benchmarks/relay_vs_nginx.py [--rounds 3] [--duration 10] [--workers 1]

The backend is nginx `http` on 127.0.0.1 serving a small file and a 100 MB
file. In front of it, in one session and alternating run by run:

* maculad: the real daemon (`maculad run --config <generated toml>`) with one
  `[[route]]` whose `http` backend is the nginx backend, relayed on its own
  loopback IP;
* nginx stream: `stream { server { listen IP:PORT; proxy_pass backend;
  proxy_buffer_size B; } }` with `worker_processes` 1 (or `--workers auto`).

The same buffers on both sides: nginx stream holds one buffer of `proxy_buffer_size`
per direction (default 16k) and reads into it; maculad's pump (every connection past its
first 64 chunks, i.e. all of wrk's keep-alive connections) reads up to `HIGH_WATER`
(maculad/proxy/tcp.py, 512 KiB) at a time and holds at most that per direction that the
other side has not taken (the first chunks go through uvloop: reads of up to 256,000 bytes,
at most `HIGH_WATER` queued). So B is `HIGH_WATER` unless `--nginx-buffer` says otherwise
(e.g. `16k` for nginx's default); the value used is printed. Kernel socket buffers are the
defaults for both; both serve from one thread (nginx `worker_processes 1`, maculad's event loop).

Small requests: `wrk -c 32 -t 2 -d 10s`, req/s per round and the median.
Large bodies: `wrk -c 4 -t 2` on the 100 MB file, MB/s per round and the
median. Prints both figures and the ratio maculad / nginx (and the ratio of each round's
back-to-back pair, which other load on the machine moves less than the medians), plus the CPU time
each proxy process spent per small request (utime + stime from /proc), which
is less sensitive than req/s to other load on a shared 2-core machine. Not
part of the test suite; needs nginx, libnginx-mod-stream and wrk.
"""

from __future__ import annotations

import argparse
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
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from maculad.proxy.tcp import HIGH_WATER  # noqa: E402  (after the path: runs from a checkout)

MACULAD = ROOT / ".venv" / "bin" / "maculad"
STREAM_MODULE = "/usr/lib/nginx/modules/ngx_stream_module.so"

MACULAD_IP = "127.0.77.1"
NGINX_IP = "127.0.77.2"


def free_port(ip: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((ip, 0))
        return int(s.getsockname()[1])


def wait_port(ip: str, port: int, timeout: float = 15.0) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            with socket.create_connection((ip, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"nothing listens on {ip}:{port} after {timeout}s")


def nginx_conf(work: Path, name: str, body: str, workers: str) -> Path:
    (work / name).mkdir(exist_ok=True)
    conf = work / name / "nginx.conf"
    conf.write_text(
        f"""
load_module {STREAM_MODULE};
worker_processes {workers};
daemon off;
pid {work / name / "nginx.pid"};
error_log {work / name / "error.log"} warn;
events {{ worker_connections 4096; }}
{body}
"""
    )
    return conf


def start_nginx(conf: Path) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(["nginx", "-c", str(conf), "-p", str(conf.parent)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    return proc


def wrk(url: str, *, connections: int, threads: int, duration: int) -> tuple[float, float]:
    """(requests/s, bytes/s) as wrk reports them."""
    out = subprocess.run(
        ["wrk", "-c", str(connections), "-t", str(threads), "-d", f"{duration}s", "--timeout", "60s", url],
        check=True, capture_output=True, text=True,
    ).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    m = re.search(r"Transfer/sec:\s+([\d.]+)([KMGT]?B)", out)
    assert m is not None, out
    unit = {"B": 1, "KB": 1024, "MB": 1024**2, "GB": 1024**3, "TB": 1024**4}[m.group(2)]
    if "Socket errors" in out or "Non-2xx" in out:
        print(f"  wrk reported errors for {url}:\n{out}", file=sys.stderr)
    return rps, float(m.group(1)) * unit


def cpu_seconds(pids: list[int]) -> float:
    """utime + stime of `pids` (Linux /proc), in seconds."""
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def children(pid: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
    return [int(x) for x in out.split()]


def stop(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> None:
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--duration", type=int, default=10, help="seconds per small-request run")
    ap.add_argument("--big-duration", type=int, default=6, help="seconds per large-body run")
    ap.add_argument("--workers", default="1", help="nginx stream worker_processes (1 or auto)")
    ap.add_argument("--big-mb", type=int, default=100)
    ap.add_argument("--nginx-buffer", default=f"{HIGH_WATER // 1024}k",
                    help="nginx stream proxy_buffer_size (default: maculad's HIGH_WATER)")
    args = ap.parse_args()
    for tool in ("nginx", "wrk"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} is not installed")
    if not Path(STREAM_MODULE).exists():
        raise SystemExit(f"{STREAM_MODULE} missing: apt-get install libnginx-mod-stream")
    if not MACULAD.exists():
        raise SystemExit(f"{MACULAD} missing: create the venv first")

    work = Path(tempfile.mkdtemp(prefix="relay-bench-"))
    work.chmod(0o755)  # nginx workers run unprivileged and must read the files
    www = work / "www"
    www.mkdir()
    (www / "index.html").write_bytes(b"<html><body>maculad relay benchmark</body></html>\n" * 4)
    with open(www / "big.bin", "wb") as fh:
        block = os.urandom(1024 * 1024)
        for _ in range(args.big_mb):
            fh.write(block)

    backend_port = free_port()
    front_port = free_port()
    procs: list[subprocess.Popen[bytes]] = []
    try:
        backend = start_nginx(nginx_conf(work, "backend", f"""
http {{
    access_log off;
    sendfile on;
    tcp_nopush on;
    keepalive_requests 1000000;
    server {{ listen 127.0.0.1:{backend_port}; root {www}; }}
}}""", "1"))
        procs.append(backend)
        stream = start_nginx(nginx_conf(work, "stream", f"""
stream {{
    server {{
        listen {NGINX_IP}:{front_port};
        proxy_pass 127.0.0.1:{backend_port};
        proxy_buffer_size {args.nginx_buffer};
    }}
}}""", args.workers))
        procs.append(stream)

        state = work / "maculad-state"
        cfg = work / "maculad.toml"
        cfg.write_text(
            f"""
domain = "macula.local"
state_dir = "{state}"
[dns]
listen = ["127.0.0.1:{free_port()}"]
[proxy]
pool = "127.0.77.0/24"
http_port = {front_port}
https_port = {free_port()}
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
"""
        )
        daemon = subprocess.Popen([str(MACULAD), "run", "--config", str(cfg)], stdout=subprocess.DEVNULL)
        procs.append(daemon)
        for ip, port in ((NGINX_IP, front_port), (MACULAD_IP, front_port), ("127.0.0.1", backend_port)):
            wait_port(ip, port)

        targets = {"maculad": MACULAD_IP, "nginx-stream": NGINX_IP}
        # whose CPU time to charge: the daemon itself, nginx's stream workers
        cpu_of = {"maculad": [daemon.pid], "nginx-stream": children(stream.pid)}
        for ip in targets.values():  # warm up both paths
            wrk(f"http://{ip}:{front_port}/index.html", connections=32, threads=2, duration=2)

        rps: dict[str, list[float]] = {k: [] for k in targets}
        us_per_req: dict[str, list[float]] = {k: [] for k in targets}
        mbps: dict[str, list[float]] = {k: [] for k in targets}
        print(f"backend nginx http 127.0.0.1:{backend_port}; nginx stream worker_processes {args.workers}, "
              f"proxy_buffer_size {args.nginx_buffer}; maculad {MACULAD_IP}:{front_port} (HIGH_WATER "
              f"{HIGH_WATER // 1024} KiB per direction); nginx stream {NGINX_IP}:{front_port}")
        for rnd in range(1, args.rounds + 1):
            order = list(targets.items()) if rnd % 2 else list(reversed(targets.items()))
            for name, ip in order:
                cpu0 = cpu_seconds(cpu_of[name])
                r, _ = wrk(f"http://{ip}:{front_port}/index.html", connections=32, threads=2,
                           duration=args.duration)
                cpu = cpu_seconds(cpu_of[name]) - cpu0
                rps[name].append(r)
                us_per_req[name].append(cpu / (r * args.duration) * 1e6)
                print(f"round {rnd} small  {name:13s} {r:12,.0f} req/s   {us_per_req[name][-1]:6.1f} us CPU/req")
            for name, ip in order:
                _, bps = wrk(f"http://{ip}:{front_port}/big.bin", connections=4, threads=2,
                             duration=args.big_duration)
                mbps[name].append(bps / 1e6)
                print(f"round {rnd} large  {name:13s} {bps / 1e6:12,.0f} MB/s")

        m_rps = {k: statistics.median(v) for k, v in rps.items()}
        m_mbps = {k: statistics.median(v) for k, v in mbps.items()}
        m_cpu = {k: statistics.median(v) for k, v in us_per_req.items()}
        print()
        print(f"{'':24s}{'maculad':>14s}{'nginx stream':>14s}{'ratio':>8s}")
        print(f"{'req/s (wrk -c32 -t2)':24s}{m_rps['maculad']:14,.0f}{m_rps['nginx-stream']:14,.0f}"
              f"{m_rps['maculad'] / m_rps['nginx-stream']:8.2f}")
        print(f"{f'MB/s ({args.big_mb} MB body)':24s}{m_mbps['maculad']:14,.0f}{m_mbps['nginx-stream']:14,.0f}"
              f"{m_mbps['maculad'] / m_mbps['nginx-stream']:8.2f}")
        print(f"{'proxy CPU us/request':24s}{m_cpu['maculad']:14.1f}{m_cpu['nginx-stream']:14.1f}"
              f"{m_cpu['maculad'] / m_cpu['nginx-stream']:8.2f}   (lower is better)")
        per_round = [m / n for m, n in zip(rps["maculad"], rps["nginx-stream"], strict=True)]
        print("req/s ratio per round (each pair back to back): "
              + " ".join(f"{r:.2f}" for r in per_round) + f"; median {statistics.median(per_round):.2f}")
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
