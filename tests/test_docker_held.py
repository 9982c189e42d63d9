"""A supervised service keeps its name and IP while it does not run, and says why (real Docker, real daemon).

`maculad run` with the Docker tier on (filtered to this test's label) routes a
busybox httpd container published on a *dynamic* host port. `maculactl stop`
stops it: dig still answers the same IP, and the relay's HTTP port answers
503 with a short HTML page naming the service, "stopped with maculactl stop"
and the fix (`maculactl start NAME`), HEAD without a body. `maculactl start`
brings it back and the same IP serves it again. (The container's policy is
`unless-stopped`: another engineer's daemon on this engine that watches every
labelled container leaves a stopped one alone. The restarting and give-up
wordings are table-tested in test_policy.py, the page in test_proxy_spec.py.)
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from tests.conftest import require
from tests.support.daemon import Maculad, base_config, ctl, dig
from tests.support.docker import DockerScope, docker_cli

HTTPD = ("sh", "-c", "mkdir -p /www && echo served by the container > /www/index.html && "
         "exec httpd -f -p 8080 -h /www")


def fetch(ip: str, port: int, host: str, method: str = "GET") -> tuple[int, dict[str, str], bytes]:
    """One raw HTTP/1.1 request through the relay, read to EOF (the page closes the connection)."""
    with socket.create_connection((ip, port), timeout=10) as s:
        s.sendall(f"{method} / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
        raw = b""
        while chunk := s.recv(65536):
            raw += chunk
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:])}
    return int(lines[0].split()[1]), headers, body


def curl(url: str, host: str) -> tuple[int, str]:
    out = subprocess.run(["curl", "-s", "--max-time", "10", "-H", f"Host: {host}", "-w", "\n%{http_code}", url],
                         capture_output=True, text=True, timeout=30)
    body, _, code = out.stdout.rpartition("\n")
    return int(code or 0), body.rstrip("\n")


def until(cond: Callable[[], object], timeout: float, what: str, logs: Callable[[], str]) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}\n{logs()}")
        time.sleep(0.1)


def test_a_stopped_service_keeps_its_name_and_ip_and_answers_503(tmp_path: Path, docker_scope: DockerScope) -> None:
    require(shutil.which("dig") is not None and shutil.which("curl") is not None, "dig and curl are needed")
    host = f"held-{docker_scope.uid}"
    fq = f"{host}.macula.local"
    svc = docker_scope.name("web")
    docker_scope.run("web", "-p", "127.0.0.1::8080", cmd=HTTPD,
                     labels={"macula.host": host, "macula.http": "8080", "macula.restart": "unless-stopped"})
    text, ports = base_config(tmp_path, extra=f"""
[docker]
enabled = true
labels = ["{docker_scope.label}"]
""")
    cfg = tmp_path / "maculad.toml"
    cfg.write_text(text)
    sock = tmp_path / "maculad.sock"
    d = Maculad(cfg, log=tmp_path / "maculad.log").start()
    try:
        d.wait_ready(ports["metrics"])
        until(lambda: dig(ports["dns"], fq), 30, f"{fq} in DNS", d.logs)
        ip = dig(ports["dns"], fq)
        url = f"http://{ip}:{ports['http']}/"
        until(lambda: curl(url, fq) == (200, "served by the container"), 30, "the container to serve", d.logs)

        r = ctl(sock, "stop", svc)
        assert r.returncode == 0, r.stderr
        assert docker_cli("inspect", "-f", "{{.State.Running}}", svc) == "false", d.logs()
        until(lambda: curl(url, fq)[0] == 503, 30, "the held page", d.logs)
        assert dig(ports["dns"], fq) == ip
        assert dig(ports["dns"], fq, "+tcp") == ip
        status, body = curl(url, fq)
        assert status == 503
        assert f"<strong>{svc}</strong>" in body and "stopped with maculactl stop" in body
        assert f"maculactl start {svc}" in body
        status, headers, head_body = fetch(ip, ports["http"], fq, "HEAD")
        assert status == 503 and head_body == b"" and int(headers["content-length"]) > 0
        assert headers["content-type"].startswith("text/html")
        routes = json.loads(ctl(sock, "routes", "--json").stdout)
        assert [x["ip"] for x in routes["routes"] if x["name"] == fq] == [ip]

        r = ctl(sock, "start", svc)
        assert r.returncode == 0, r.stderr
        until(lambda: curl(url, fq) == (200, "served by the container"), 30, "the container to serve again",
              d.logs)
        assert dig(ports["dns"], fq) == ip
    finally:
        d.stop()
