"""TLS through the real daemon (`maculad run`) with real clients: curl, openssl s_client, Python's
ssl, a WebSocket over wss; terminated, passed-through and h2c routes; redirect_http; bad SNI."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import shutil
import ssl
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
from cryptography import x509

from maculad.pki.ca import load_or_create
from maculad.pki.leaves import LeafStore
from tests.conftest import require
from tests.support.daemon import Maculad, base_config
from tests.support.tls import Backend, ca_paths, metric

GRAFANA_IP, SECURE_IP, H2_IP, WILD_IP = "127.0.10.21", "127.0.10.22", "127.0.10.23", "127.0.10.24"


@dataclass
class Env:
    daemon: Maculad
    ports: dict[str, int]
    tmp: Path
    ca: Path
    grafana: Backend
    secure: Backend
    secure_fingerprint: str

    @property
    def https(self) -> int:
        return self.ports["https"]


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    require(shutil.which("curl") is not None and shutil.which("openssl") is not None, "curl and openssl needed")
    tmp = tmp_path_factory.mktemp("tls")
    # The CA exists before the daemon starts (the daemon must load it, not replace it), so the
    # passthrough backend can have a certificate from the same root.
    ca, _ = load_or_create(tmp / "state" / "ca", "macula.local")
    store = LeafStore(ca=ca, directory=tmp / "backend-leaves")
    leaf = store.get(("secure.macula.local",))
    sctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    sctx.load_cert_chain(str(leaf.path))
    grafana = Backend("grafana").start()
    secure = Backend("secure", ssl_context=sctx).start()
    h2 = Backend("h2").start()
    routes = f"""
[tls]
redirect_http = true
[[route]]
name = "grafana"
ip = "{GRAFANA_IP}"
http = "127.0.0.1:{grafana.port}"
[[route]]
name = "secure"
ip = "{SECURE_IP}"
https = "127.0.0.1:{secure.port}"
[[route]]
name = "h2"
ip = "{H2_IP}"
http = "127.0.0.1:{h2.port}"
h2c = true
[[route]]
name = "*.apps"
ip = "{WILD_IP}"
http = "127.0.0.1:{grafana.port}"
"""
    text, ports = base_config(tmp, extra=routes)
    cfg = tmp / "maculad.toml"
    cfg.write_text(text)
    d = Maculad(cfg, log=tmp / "maculad.log").start()
    try:
        d.wait_ready(ports["metrics"])
        yield Env(d, ports, tmp, ca_paths(tmp / "state")[0], grafana, secure, leaf.fingerprint)
    finally:
        d.stop()
        for b in (grafana, secure, h2):
            b.stop()


def curl(env: Env, name: str, ip: str, *args: str, path: str = "/", port: int | None = None,
         scheme: str = "https") -> subprocess.CompletedProcess[str]:
    port = port or env.https
    return subprocess.run(
        ["curl", "-sS", "--max-time", "10", "--resolve", f"{name}:{port}:{ip}", *args,
         f"{scheme}://{name}:{port}{path}"],
        capture_output=True, text=True, timeout=30, check=False)


def s_client(ip: str, port: int, *args: str, data: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(["openssl", "s_client", "-connect", f"{ip}:{port}", *args],
                          input=data, capture_output=True, text=True, timeout=30, check=False)


def peer_cert(out: str) -> x509.Certificate:
    start = out.index("-----BEGIN CERTIFICATE-----")
    end = out.index("-----END CERTIFICATE-----") + len("-----END CERTIFICATE-----")
    return x509.load_pem_x509_certificate(out[start:end].encode())


def sans(cert: x509.Certificate) -> list[str]:
    return cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
        x509.DNSName)


def test_curl_trusts_a_terminated_route_with_the_root(env: Env) -> None:
    out = curl(env, "grafana.macula.local", GRAFANA_IP, "--cacert", str(env.ca), "-D", "-",
               "-w", "\nhttp_version=%{http_version}")
    assert out.returncode == 0, out.stderr
    assert "hello from grafana" in out.stdout
    assert "x-seen-host: grafana.macula.local" in out.stdout.lower()
    assert out.stdout.rstrip().endswith("http_version=1.1")  # ALPN offers only http/1.1 (curl asks h2 first)
    # Without the root, curl refuses: the chain is not trusted, and the failure is counted.
    before = metric(env.ports["metrics"], "maculad_tls_handshake_failures_total",
                    reason="client_rejected_certificate")
    bad = curl(env, "grafana.macula.local", GRAFANA_IP)
    assert bad.returncode == 60, bad.stderr
    assert metric(env.ports["metrics"], "maculad_tls_handshake_failures_total",
                  reason="client_rejected_certificate") == before + 1


def test_openssl_s_client_verifies_terminated_and_passthrough(env: Env) -> None:
    req = "GET / HTTP/1.1\r\nHost: {h}\r\nConnection: close\r\n\r\n"
    out = s_client(GRAFANA_IP, env.https, "-servername", "grafana.macula.local", "-verify_return_error",
                   "-CAfile", str(env.ca), "-verify_hostname", "grafana.macula.local", "-ign_eof",
                   data=req.format(h="grafana.macula.local"))
    assert "Verify return code: 0 (ok)" in out.stdout, out.stdout + out.stderr
    assert "hello from grafana" in out.stdout
    assert sans(peer_cert(out.stdout)) == ["grafana.macula.local"]  # its own leaf, not a wildcard
    out = s_client(SECURE_IP, env.https, "-servername", "secure.macula.local", "-verify_return_error",
                   "-CAfile", str(env.ca), "-verify_hostname", "secure.macula.local", "-ign_eof",
                   data=req.format(h="secure.macula.local"))
    assert "Verify return code: 0 (ok)" in out.stdout, out.stdout + out.stderr
    assert "hello from secure" in out.stdout  # the backend's own TLS, passed through untouched
    from cryptography.hazmat.primitives import hashes
    assert peer_cert(out.stdout).fingerprint(hashes.SHA256()).hex(":").upper() == env.secure_fingerprint
    c = curl(env, "secure.macula.local", SECURE_IP, "--cacert", str(env.ca))
    assert c.returncode == 0 and "hello from secure" in c.stdout, c.stderr


def test_each_name_under_a_wildcard_route_gets_its_own_leaf(env: Env) -> None:
    seen = []
    for name in ("a.apps.macula.local", "b.apps.macula.local"):
        out = s_client(WILD_IP, env.https, "-servername", name, "-verify_return_error", "-CAfile", str(env.ca),
                       "-verify_hostname", name)
        assert "Verify return code: 0 (ok)" in out.stdout, out.stdout + out.stderr
        seen.append(sans(peer_cert(out.stdout)))
    assert seen == [["a.apps.macula.local"], ["b.apps.macula.local"]]
    # Without SNI a wildcard route shows the apex's certificate.
    out = s_client(WILD_IP, env.https, "-noservername")
    assert sans(peer_cert(out.stdout)) == ["macula.local"]


def test_no_sni_gets_the_routes_certificate(env: Env) -> None:
    # No SNI, and an IP literal as SNI (not allowed by RFC 6066, sent by wrk and others): the route's leaf.
    for sni in (("-noservername",), ("-servername", GRAFANA_IP)):
        out = s_client(GRAFANA_IP, env.https, *sni, "-CAfile", str(env.ca), "-verify_return_error",
                       "-verify_hostname", "grafana.macula.local")
        assert "Verify return code: 0 (ok)" in out.stdout, out.stdout + out.stderr


def test_sni_outside_the_domain_gets_an_alert_and_is_counted(env: Env) -> None:
    port = env.ports["metrics"]
    outside = metric(port, "maculad_tls_handshake_failures_total", reason="sni_outside_domain")
    other = metric(port, "maculad_tls_handshake_failures_total", reason="sni_other_name")
    for name in ("www.example.com", "macula.local.evil.com"):
        out = s_client(GRAFANA_IP, env.https, "-servername", name)
        assert out.returncode != 0
        assert "unrecognized name" in out.stderr, out.stderr
        assert "BEGIN CERTIFICATE" not in out.stdout
    out = s_client(GRAFANA_IP, env.https, "-servername", "loki.macula.local")  # in the domain, not this route
    assert "unrecognized name" in out.stderr
    assert metric(port, "maculad_tls_handshake_failures_total", reason="sni_outside_domain") == outside + 2
    assert metric(port, "maculad_tls_handshake_failures_total", reason="sni_other_name") == other + 1
    assert not list((env.tmp / "state" / "ca" / "leaves").glob("*example*"))


def test_garbage_and_plain_http_on_the_tls_port_are_counted_and_survived(env: Env) -> None:
    import socket
    port = env.ports["metrics"]
    before = metric(port, "maculad_tls_handshake_failures_total", route="grafana.macula.local")
    for payload in (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", b"\x16\x03\x01\x00\x05hello", b"\x00" * 300):
        with socket.create_connection((GRAFANA_IP, env.https), timeout=5) as s:
            s.sendall(payload)
            s.shutdown(socket.SHUT_WR)
            while s.recv(4096):
                pass
    after = metric(port, "maculad_tls_handshake_failures_total", route="grafana.macula.local")
    assert after >= before + 3
    assert metric(port, "maculad_tls_handshake_failures_total", reason="plain_http") >= 1
    ok = curl(env, "grafana.macula.local", GRAFANA_IP, "--cacert", str(env.ca))
    assert ok.returncode == 0 and "hello from grafana" in ok.stdout


def test_h2c_route_offers_h2(env: Env) -> None:
    out = s_client(H2_IP, env.https, "-servername", "h2.macula.local", "-alpn", "h2,http/1.1")
    assert "ALPN protocol: h2" in out.stdout, out.stdout
    out = s_client(GRAFANA_IP, env.https, "-servername", "grafana.macula.local", "-alpn", "h2,http/1.1")
    assert "ALPN protocol: http/1.1" in out.stdout, out.stdout


def test_redirect_http_answers_308_to_https(env: Env) -> None:
    out = curl(env, "grafana.macula.local", GRAFANA_IP, "-D", "-", "-o", "/dev/null", path="/d/abc?x=1",
               port=env.ports["http"], scheme="http")
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("HTTP/1.1 308")
    assert f"location: https://grafana.macula.local:{env.https}/d/abc?x=1" in out.stdout.lower()
    follow = curl(env, "grafana.macula.local", GRAFANA_IP, "-L", "--cacert", str(env.ca),
                  "--resolve", f"grafana.macula.local:{env.https}:{GRAFANA_IP}", port=env.ports["http"],
                  scheme="http")
    assert follow.returncode == 0 and "hello from grafana" in follow.stdout, follow.stderr


def test_python_ssl_and_websocket_over_wss(env: Env) -> None:
    async def go() -> str:
        ctx = ssl.create_default_context(cafile=str(env.ca))
        resolver = _FixedResolver({"grafana.macula.local": GRAFANA_IP})
        conn = aiohttp.TCPConnector(ssl=ctx, resolver=resolver)
        async with aiohttp.ClientSession(connector=conn) as session:
            async with session.get(f"https://grafana.macula.local:{env.https}/") as r:
                assert r.status == 200 and "hello from grafana" in await r.text()
            async with session.ws_connect(f"wss://grafana.macula.local:{env.https}/ws") as ws:
                answers = []
                for i in range(3):
                    await ws.send_str(f"ping {i}")
                    answers.append((await ws.receive(timeout=5)).data)
                big = "x" * 300_000
                await ws.send_str(big)
                answers.append(str(len((await ws.receive(timeout=10)).data)))
                return "|".join(answers)

    assert asyncio.run(go()) == "grafana echoes ping 0|grafana echoes ping 1|grafana echoes ping 2|" + str(
        len("grafana echoes ") + 300_000)


class _FixedResolver(aiohttp.abc.AbstractResolver):
    def __init__(self, table: dict[str, str]) -> None:
        self.table = table

    async def resolve(self, host: str, port: int = 0, family: int = 0) -> list[dict[str, object]]:  # type: ignore[override]
        import socket
        return [{"hostname": host, "host": self.table[host], "port": port, "family": socket.AF_INET, "proto": 0,
                 "flags": socket.AI_NUMERICHOST}]

    async def close(self) -> None:
        pass


def test_the_ca_key_never_leaves_the_key_file(env: Env) -> None:
    key_pem = ca_paths(env.tmp / "state")[1].read_text()
    body = "".join(key_pem.strip().splitlines()[1:-1])
    exe = Path(sys.executable).parent / "maculactl"
    status = subprocess.run([str(exe), "--socket", str(env.tmp / "maculad.sock"), "status", "--json"],
                            capture_output=True, text=True, timeout=30)
    assert status.returncode == 0, status.stderr
    tls = json.loads(status.stdout)["tls"]
    assert tls["enabled"] and tls["fingerprint_sha256"] and tls["ca"].endswith("ca.pem")
    assert dt.datetime.fromisoformat(tls["expires"]) > dt.datetime.now(dt.UTC) + dt.timedelta(days=3000)
    import urllib.request
    with urllib.request.urlopen(f"http://127.0.0.1:{env.ports['metrics']}/metrics", timeout=5) as r:
        metrics_text = r.read().decode()
    logs = (env.tmp / "maculad.log").read_text()
    for text in (status.stdout, metrics_text, logs):
        for chunk in (body[i:i + 40] for i in range(0, len(body) - 40, 40)):
            assert chunk not in text
        assert "PRIVATE KEY" not in text


def _client_hello(sni: str | None) -> bytes:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    inc, out = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(inc, out, server_hostname=sni)
    try:
        obj.do_handshake()
    except ssl.SSLWantReadError:
        pass
    return out.read()


HELLO = _client_hello("grafana.macula.local")


def _mutations() -> object:
    from hypothesis import strategies as st

    flips = st.lists(st.tuples(st.integers(0, len(HELLO) - 1), st.integers(0, 255)), min_size=1, max_size=8)
    mutated = flips.map(lambda fs: bytes(_apply(HELLO, fs)))
    truncated = st.integers(1, len(HELLO) - 1).map(lambda n: HELLO[:n])
    return st.one_of(st.binary(min_size=1, max_size=600), mutated, truncated)


def _apply(data: bytes, flips: list[tuple[int, int]]) -> bytearray:
    b = bytearray(data)
    for i, v in flips:
        b[i] = v
    return b


def test_bad_client_hellos_never_crash_the_relay(env: Env) -> None:
    import socket

    from hypothesis import HealthCheck, given, settings

    @settings(max_examples=80, deadline=None, suppress_health_check=list(HealthCheck))
    @given(_mutations())  # type: ignore[arg-type]
    def one(payload: bytes) -> None:
        with socket.create_connection((GRAFANA_IP, env.https), timeout=5) as s:
            s.sendall(payload)
            s.shutdown(socket.SHUT_WR)
            s.settimeout(5)
            try:
                while s.recv(65536):
                    pass
            except ConnectionResetError:
                pass

    one()
    ok = curl(env, "grafana.macula.local", GRAFANA_IP, "--cacert", str(env.ca))
    assert ok.returncode == 0 and "hello from grafana" in ok.stdout
    logs = (env.tmp / "maculad.log").read_text()
    assert "Traceback" not in logs and '"exception"' not in logs and "Exception ignored" not in logs


# --------------------------------------------------------------------------- trust + real clients

PY_CLIENT = r"""
import socket, ssl, sys
ip, port = sys.argv[1], int(sys.argv[2])
ctx = ssl.create_default_context()
try:
    with socket.create_connection((ip, port), timeout=10) as raw:
        with ctx.wrap_socket(raw, server_hostname="grafana.macula.local") as s:
            s.sendall(b"GET / HTTP/1.1\r\nHost: grafana.macula.local\r\nConnection: close\r\n\r\n")
            data = b""
            while chunk := s.recv(65536):
                data += chunk
    print(data.decode(errors="replace"))
except ssl.SSLCertVerificationError as exc:
    print("VERIFY FAILED", exc.verify_message)
    sys.exit(1)
"""


def maculactl(env: Env, *args: str, home: Path) -> subprocess.CompletedProcess[str]:
    import os
    exe = Path(sys.executable).parent / "maculactl"
    return subprocess.run([str(exe), "--socket", str(env.tmp / "maculad.sock"), *args], capture_output=True,
                          text=True, timeout=120, env=dict(os.environ, HOME=str(home)))


def test_trust_install_show_export_uninstall_with_root(env: Env, tmp_path: Path) -> None:
    import os
    require(shutil.which("update-ca-certificates") is not None and shutil.which("certutil") is not None,
            "update-ca-certificates (ca-certificates) and certutil (libnss3-tools) needed")
    root, home = tmp_path / "root", tmp_path / "home"
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "debian_version").write_text("12.0\n")
    # A system with one public root already trusted: install adds to it, uninstall leaves it.
    public = sorted(Path("/usr/share/ca-certificates/mozilla").glob("*.crt"))[0]
    (root / "usr/share/ca-certificates/mozilla").mkdir(parents=True)
    shutil.copy(public, root / "usr/share/ca-certificates/mozilla" / public.name)
    (root / "etc" / "ca-certificates.conf").write_text(f"mozilla/{public.name}\n")
    home.mkdir()
    bundle = root / "etc" / "ssl" / "certs" / "ca-certificates.crt"
    client_env = dict(os.environ, SSL_CERT_FILE=str(bundle), SSL_CERT_DIR=str(root / "etc" / "ssl" / "certs"))

    def python_client() -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-c", PY_CLIENT, GRAFANA_IP, str(env.https)], capture_output=True,
                              text=True, timeout=60, env=client_env)

    before = python_client()
    assert before.returncode == 1 and "VERIFY FAILED" in before.stdout, before.stdout + before.stderr

    dry = maculactl(env, "trust", "install", "--root", str(root), "--dry-run", home=home)
    assert dry.returncode == 0, dry.stderr
    assert "would write" in dry.stdout and not (root / "usr/local").exists() and not (home / ".pki").exists()

    inst = maculactl(env, "trust", "install", "--root", str(root), "--json", home=home)
    assert inst.returncode == 0, inst.stderr
    anchor = root / "usr/local/share/ca-certificates/maculad-macula.local.crt"
    assert anchor.read_bytes() == env.ca.read_bytes()
    assert env.ca.read_text().strip() in bundle.read_text()

    after = python_client()  # Python's default context, reading the bundle install rebuilt
    assert after.returncode == 0 and "hello from grafana" in after.stdout, after.stdout + after.stderr

    show = maculactl(env, "trust", "show", "--root", str(root), "--json", home=home)
    assert show.returncode == 0, show.stderr
    info = json.loads(show.stdout)
    assert info["path"] == str(env.ca)
    assert sorted(info["installed"]) == sorted([str(anchor), f"nss:{home / '.pki' / 'nssdb'}"])
    out = subprocess.run(["openssl", "x509", "-in", str(env.ca), "-noout", "-fingerprint", "-sha256"],
                         capture_output=True, text=True, check=True).stdout
    assert out.strip().split("=", 1)[1] == info["fingerprint_sha256"]
    assert dt.datetime.fromisoformat(info["expires"]).year >= dt.datetime.now(dt.UTC).year + 9
    exp = maculactl(env, "trust", "export", home=home)
    assert exp.returncode == 0 and exp.stdout == env.ca.read_text()

    bundle_without = bundle.read_text().replace(env.ca.read_text().strip(), "").strip()
    un = maculactl(env, "trust", "uninstall", "--root", str(root), home=home)
    assert un.returncode == 0, un.stderr
    assert not anchor.exists()
    assert env.ca.read_text().strip() not in bundle.read_text()
    assert bundle.read_text().strip() == bundle_without
    assert public.read_text().strip() in bundle.read_text()
    nss = subprocess.run(["certutil", "-L", "-d", f"sql:{home / '.pki' / 'nssdb'}"], capture_output=True,
                         text=True, check=True, env=dict(os.environ, HOME=str(home)))
    assert "maculad" not in nss.stdout
    assert json.loads(maculactl(env, "trust", "show", "--root", str(root), "--json", home=home).stdout)[
        "installed"] == []
    assert python_client().returncode == 1


def _chromium(home: Path, url: str, profile: Path) -> tuple[str, str]:
    import os

    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = shutil.which("chromium") or "/usr/bin/chromium"
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                f"--user-data-dir={profile}", "--no-first-run", "--disable-extensions",
                "--disable-background-networking", "--disable-component-update",
                f"--host-resolver-rules=MAP grafana.macula.local {GRAFANA_IP}"):
        opts.add_argument(arg)
    service = Service(executable_path=shutil.which("chromedriver") or "/usr/bin/chromedriver",
                      env=dict(os.environ, HOME=str(home)))
    driver = webdriver.Chrome(options=opts, service=service)
    try:
        driver.set_page_load_timeout(30)
        for _ in range(5):
            driver.get(url)
            title, body = driver.title, driver.find_element("tag name", "body").text
            # Docker networks other tests create and remove make Chromium abort a load now and then.
            if "ERR_NETWORK_CHANGED" not in body:
                break
        return title, body
    finally:
        driver.quit()


def test_real_chromium_trusts_the_root_from_nss_and_shows_the_interstitial_without(env: Env,
                                                                                   tmp_path: Path) -> None:
    require(shutil.which("chromium") is not None and shutil.which("chromedriver") is not None,
            "chromium and chromium-driver (Debian) needed")
    require(shutil.which("certutil") is not None, "certutil (libnss3-tools) needed")
    url = f"https://grafana.macula.local:{env.https}/"
    trusted = tmp_path / "trusted"
    trusted.mkdir()
    inst = maculactl(env, "trust", "install", "--root", str(tmp_path / "sysroot"), home=trusted)
    assert inst.returncode == 0, inst.stderr
    assert "NSS database" in inst.stdout or ".pki/nssdb" in inst.stdout, inst.stdout
    title, body = _chromium(trusted, url, tmp_path / "profile-trusted")
    assert title == "Grafana backend" and "hello from grafana" in body, (title, body)

    untrusted = tmp_path / "untrusted"
    untrusted.mkdir()
    title, body = _chromium(untrusted, url, tmp_path / "profile-untrusted")
    assert "hello from grafana" not in body
    assert "ERR_CERT_AUTHORITY_INVALID" in body or "Privacy error" in title, (title, body[:500])
