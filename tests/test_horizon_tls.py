"""HTTPS by name, and the status page, on the container horizon, through the real daemon.

G:443 routes by SNI. A route with an https backend is passed through untouched (as on
the host horizon's per-route https port); a route with only an http backend gets its TLS
terminated by maculad with the local CA's leaf for the name, exactly as the host horizon
does — so `https://grafana.macula.local` verifies against the CA from a container too.
G is given explicitly (a loopback address), so no Docker engine is involved; the relay,
the terminator and the CA are the daemon's own.
"""

from __future__ import annotations

import shutil
import socket
import ssl
import subprocess
from pathlib import Path

from tests.conftest import require
from tests.support.daemon import Maculad, base_config, wait_until
from tests.support.tls import Backend, ca_paths, metric

G = "127.0.0.98"


def _config(tmp: Path, http: Backend, https: Backend) -> tuple[Path, dict[str, int]]:
    text, ports = base_config(tmp, containers=True, extra=f"""
[containers]
enabled = true
address = "{G}"
forwarders = []
[[route]]
name = "grafana"
http = "127.0.0.1:{http.port}"
[[route]]
name = "vault"
https = "127.0.0.1:{https.port}"
""")
    cfg = tmp / "maculad.toml"
    cfg.write_text(text)
    return cfg, ports


def _curl(name: str, ca: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["curl", "-sS", "--max-time", "10", "--cacert", str(ca), "--resolve", f"{name}:443:{G}",
                           "-D", "-", f"https://{name}/"], capture_output=True, text=True, timeout=30)


def test_g443_terminates_for_http_only_routes_and_passes_https_through(tmp_path: Path) -> None:
    require(shutil.which("curl") is not None, "curl is not installed")
    http = Backend("grafana").start()
    # the https backend has its own self-signed certificate: passthrough shows it, not maculad's
    key, crt = tmp_path / "vault-key.pem", tmp_path / "vault.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                    "-keyout", str(key), "-out", str(crt), "-days", "2", "-subj", "/CN=vault.macula.local",
                    "-addext", "subjectAltName=DNS:vault.macula.local"], check=True, capture_output=True)
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(crt, key)
    https = Backend("vault", ssl_context=server_ctx).start()
    cfg, ports = _config(tmp_path, http, https)
    d = Maculad(cfg, log=tmp_path / "maculad.log").start()
    try:
        d.wait_ready(ports["metrics"])
        wait_until(lambda: _listening(G, 443), "G:443 to listen")
        ca, _ = ca_paths(tmp_path / "state")

        r = _curl("grafana.macula.local", ca)  # terminated with the CA's leaf, relayed to the http backend
        assert r.returncode == 0, r.stderr + d.logs()
        assert "hello from grafana" in r.stdout and "x-seen-host: grafana.macula.local" in r.stdout.lower()
        assert metric(ports["metrics"], "maculad_proxy_connections_total", horizon="containers",
                      route="grafana.macula.local") >= 1

        r = _curl("vault.macula.local", ca)  # passthrough: the backend's own certificate, not the CA's
        assert r.returncode != 0 and "certificate" in r.stderr.lower()
        r = subprocess.run(["curl", "-sS", "--max-time", "10", "--cacert", str(crt), "--resolve",
                            f"vault.macula.local:443:{G}", "https://vault.macula.local/"],
                           capture_output=True, text=True, timeout=30)
        assert r.returncode == 0 and "hello from vault" in r.stdout, r.stderr

        # a name no route has: no certificate could be right, the connection is closed
        r = _curl("nobody.macula.local", ca)
        assert r.returncode != 0
        assert metric(ports["metrics"], "maculad_proxy_unrouted_connections_total", horizon="containers",
                      reason="unknown-host") >= 1
        # the handshake of a terminated name that fails is counted like on the host horizon
        with socket.create_connection((G, 443), timeout=5) as s:
            s.sendall(b"GET / HTTP/1.1\r\nHost: grafana.macula.local\r\n\r\n")  # plain HTTP on 443: no SNI
            s.settimeout(5)
            assert s.recv(100) == b""
    finally:
        d.stop()
        http.stop()
        https.stop()


def _listening(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def test_the_status_page_is_served_on_g(tmp_path: Path) -> None:
    """`http://macula.local` from a container: the apex answers G there, and G:80 relays the domain
    itself (Host: macula.local) to the status page, which accepts that Host on port 80."""
    require(shutil.which("dig") is not None and shutil.which("curl") is not None, "dig and curl are needed")
    http = Backend("grafana").start()
    https = Backend("vault").start()
    cfg, ports = _config(tmp_path, http, https)
    d = Maculad(cfg, log=tmp_path / "maculad.log").start()
    try:
        d.wait_ready(ports["metrics"])
        wait_until(lambda: _listening(G, 80), "G:80 to listen")
        out = subprocess.run(["dig", "+short", "-p", "53", f"@{G}", "macula.local", "A"], capture_output=True,
                             text=True, timeout=20).stdout.split()
        assert out == [G]
        r = subprocess.run(["curl", "-sS", "--max-time", "10", "-D", "-", "--resolve", f"macula.local:80:{G}",
                            "http://macula.local/"], capture_output=True, text=True, timeout=30)
        assert r.returncode == 0, r.stderr + d.logs()
        assert r.stdout.startswith("HTTP/1.1 200") and "<title>" in r.stdout and "maculad" in r.stdout
        api = subprocess.run(["curl", "-sS", "--max-time", "10", "--resolve", f"macula.local:80:{G}",
                              "http://macula.local/api/status"], capture_output=True, text=True, timeout=30)
        assert '"grafana.macula.local"' in api.stdout, api.stdout[:300]
        # names that are not the domain still route as before; an unknown one is a 404 naming it
        r = subprocess.run(["curl", "-sS", "--max-time", "10", "-o", "/dev/null", "-w", "%{http_code}",
                            "--resolve", f"nobody.macula.local:80:{G}", "http://nobody.macula.local/"],
                           capture_output=True, text=True, timeout=30)
        assert r.stdout == "404"
    finally:
        d.stop()
        http.stop()
        https.stop()
