#!/usr/bin/env python3
"""maculad's DNS vs dnsmasq: the same 50 names, dnsperf against each, alternating.

Starts the real daemon (`maculad run --config <generated>`, on uvloop) and
dnsmasq (`--address=/name/ip` for the same 50 names), each on its own loopback
address and a free port, checks both answer every name identically with dig,
then runs `dnsperf` against them in turn for `--rounds` rounds of
`--duration` seconds with the same query file. Prints each round, the mean
queries per second of both, their ratio (maculad / dnsmasq), and the CPU
time each server spent per answered query (less sensitive to other load on
the machine than QPS).

    .venv/bin/python benchmarks/dns_vs_dnsmasq.py [--rounds 3] [--duration 10]

Needs dnsperf, dnsmasq and dig (Debian: dnsperf, dnsmasq-base, bind9-dnsutils).
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

ROOT = Path(__file__).resolve().parents[1]
NAMES = [f"svc{i:02d}" for i in range(1, 51)]
DOMAIN = "macula.local"
MACULAD_IP = "127.0.0.153"
DNSMASQ_IP = "127.0.0.154"
CLK_TCK = os.sysconf("SC_CLK_TCK")


def free_port(host: str) -> int:
    """A port free on `host` for both UDP and TCP."""
    for _ in range(100):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
            u.bind((host, 0))
            port = int(u.getsockname()[1])
            try:
                with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as t:
                    t.bind((host, port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port on {host}")


def ip_of(i: int) -> str:
    return f"127.0.20.{i + 1}"


def maculad_config(tmp: Path, dns_port: int) -> Path:
    routes = "".join(
        f'\n[[route]]\nname = "{n}"\nip = "{ip_of(i)}"\nhttp = "127.0.0.1:{free_port("127.0.0.1")}"\n'
        for i, n in enumerate(NAMES)
    )
    text = f"""
domain = "{DOMAIN}"
state_dir = "{tmp / 'state'}"
[dns]
listen = ["{MACULAD_IP}:{dns_port}"]
ttl = 5
[proxy]
pool = "127.0.21.0/24"
http_port = {free_port("127.0.0.1")}
https_port = {free_port("127.0.0.1")}
[metrics]
listen = "127.0.0.1:{free_port("127.0.0.1")}"
[control]
socket = "{tmp / 'maculad.sock'}"
[log]
level = "warning"
format = "json"
{routes}"""
    path = tmp / "maculad.toml"
    path.write_text(text)
    return path


def dig(ip: str, port: int, name: str) -> str:
    out = subprocess.run(["dig", "+short", "+time=1", "+tries=1", "-p", str(port), f"@{ip}", name],
                         capture_output=True, text=True, timeout=10)
    return out.stdout.strip()


def wait_answering(ip: str, port: int, proc: subprocess.Popen[bytes], what: str, log: Path) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            sys.exit(f"{what} exited with {proc.returncode}:\n{log.read_text(errors='replace')[-3000:]}")
        if dig(ip, port, f"{NAMES[0]}.{DOMAIN}") == ip_of(0):
            return
        time.sleep(0.1)
    sys.exit(f"{what} did not answer within 30 s:\n{log.read_text(errors='replace')[-3000:]}")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime + stime


def dnsperf(ip: str, port: int, queries: Path, duration: int, extra: list[str]) -> tuple[float, int, int]:
    out = subprocess.run(
        ["dnsperf", "-s", ip, "-p", str(port), "-d", str(queries), "-l", str(duration), *extra],
        capture_output=True, text=True, timeout=duration + 60,
    )
    text = out.stdout + out.stderr
    qps = re.search(r"Queries per second:\s+([\d.]+)", text)
    done = re.search(r"Queries completed:\s+(\d+)", text)
    lost = re.search(r"Queries lost:\s+(\d+)", text)
    if qps is None or done is None or lost is None:
        sys.exit(f"could not read dnsperf's output:\n{text}")
    return float(qps.group(1)), int(done.group(1)), int(lost.group(1))


def stop(proc: subprocess.Popen[bytes] | None) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--duration", type=int, default=10, help="seconds of dnsperf per server per round")
    ap.add_argument("--dnsperf-args", default="", help="extra dnsperf arguments, e.g. \"-c 4 -q 200\"")
    args = ap.parse_args()
    for tool in ("dnsperf", "dnsmasq", "dig"):
        if shutil.which(tool) is None:
            sys.exit(f"{tool} is not installed (Debian: dnsperf, dnsmasq-base, bind9-dnsutils)")
    maculad_bin = Path(sys.executable).parent / "maculad"
    cmd_maculad = [str(maculad_bin)] if maculad_bin.exists() else [sys.executable, "-m", "maculad"]

    with tempfile.TemporaryDirectory(prefix="dnsbench-") as td:
        tmp = Path(td)
        queries = tmp / "queries.txt"
        queries.write_text("".join(f"{n}.{DOMAIN} A\n" for n in NAMES))
        m_port = free_port(MACULAD_IP)
        d_port = free_port(DNSMASQ_IP)
        m_log, d_log = tmp / "maculad.log", tmp / "dnsmasq.log"
        maculad: subprocess.Popen[bytes] | None = None
        dnsmasq: subprocess.Popen[bytes] | None = None
        try:
            with open(m_log, "wb") as ml:
                maculad = subprocess.Popen([*cmd_maculad, "run", "--config", str(maculad_config(tmp, m_port))],
                                           stdout=ml, stderr=subprocess.STDOUT, cwd=ROOT)
            with open(d_log, "wb") as dl:
                dnsmasq = subprocess.Popen(
                    ["dnsmasq", "--no-daemon", "--no-resolv", "--no-hosts", "--port", str(d_port),
                     "--listen-address", DNSMASQ_IP, "--bind-interfaces", "--user=root", "--pid-file=",
                     *(f"--address=/{n}.{DOMAIN}/{ip_of(i)}" for i, n in enumerate(NAMES))],
                    stdout=dl, stderr=subprocess.STDOUT,
                )
            wait_answering(MACULAD_IP, m_port, maculad, "maculad", m_log)
            wait_answering(DNSMASQ_IP, d_port, dnsmasq, "dnsmasq", d_log)
            for i, n in enumerate(NAMES):
                a, b = dig(MACULAD_IP, m_port, f"{n}.{DOMAIN}"), dig(DNSMASQ_IP, d_port, f"{n}.{DOMAIN}")
                if a != ip_of(i) or b != ip_of(i):
                    sys.exit(f"{n}: maculad answered {a!r}, dnsmasq {b!r}, expected {ip_of(i)}")

            print(f"maculad {MACULAD_IP}:{m_port} (pid {maculad.pid}) vs dnsmasq {DNSMASQ_IP}:{d_port} "
                  f"(pid {dnsmasq.pid}); {len(NAMES)} names; {args.rounds} rounds x {args.duration} s each, "
                  f"alternating; {os.cpu_count()} CPUs", flush=True)
            extra = args.dnsperf_args.split()
            results: dict[str, list[tuple[float, float, int]]] = {"maculad": [], "dnsmasq": []}
            targets = [("maculad", MACULAD_IP, m_port, maculad.pid), ("dnsmasq", DNSMASQ_IP, d_port, dnsmasq.pid)]
            for rnd in range(args.rounds):
                order = targets if rnd % 2 == 0 else targets[::-1]
                for name, ip, port, pid in order:
                    c0 = cpu_seconds(pid)
                    qps, done, lost = dnsperf(ip, port, queries, args.duration, extra)
                    cpu_us = (cpu_seconds(pid) - c0) / max(done, 1) * 1e6
                    results[name].append((qps, cpu_us, lost))
                    print(f"  round {rnd + 1}  {name:8s} {qps:10.0f} qps  {cpu_us:5.1f} us CPU/query  "
                          f"lost {lost}", flush=True)

            m_qps = statistics.mean(r[0] for r in results["maculad"])
            d_qps = statistics.mean(r[0] for r in results["dnsmasq"])
            m_cpu = statistics.mean(r[1] for r in results["maculad"])
            d_cpu = statistics.mean(r[1] for r in results["dnsmasq"])
            print(f"maculad: {m_qps:10.0f} qps (mean)   {m_cpu:5.1f} us CPU/query")
            print(f"dnsmasq: {d_qps:10.0f} qps (mean)   {d_cpu:5.1f} us CPU/query")
            print(f"ratio maculad/dnsmasq: {m_qps / d_qps:.2f}x qps   "
                  f"(CPU per query: maculad uses {m_cpu / d_cpu:.2f}x dnsmasq's)")
        finally:
            stop(maculad)
            stop(dnsmasq)


if __name__ == "__main__":
    main()
