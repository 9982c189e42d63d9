"""The container horizon's end-to-end stack: the real daemon with Docker and a fake API server on,
backends on the host, a dnsmasq stand-in for the host's upstream resolver, and G's ports held by a lock.

G's ports are the standard 53/80/443 (a container cannot be told another DNS
port), so two test runs on one machine would collide on them: `g_lock` is a
file lock every user of G holds for the whole test (tests and the benchmark).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import ipaddress
import json
import shutil
import ssl
import subprocess
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from maculad.core.net import Backend
from tests.support.daemon import Maculad, base_config, free_port
from tests.support.docker import DockerScope, docker_cli
from tests.support.fake_k8s import CONFIGMAPS, FakeKubeAPI
from tests.support.proxy import TcpEcho, self_signed

G_LOCK = Path("/tmp/maculad-test-g-ports.lock")
MACULACTL = Path(__file__).resolve().parents[2] / ".venv" / "bin" / "maculactl"


@contextlib.contextmanager
def g_lock() -> Iterator[None]:
    with G_LOCK.open("a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def bridge_gateway() -> str:
    """G as Docker reports it: the default bridge's gateway (Docker 20.10 leaves it out: .1 of the subnet)."""
    doc = json.loads(docker_cli("network", "inspect", "bridge"))[0]
    cfg = doc["IPAM"]["Config"][0]
    if cfg.get("Gateway"):
        return str(cfg["Gateway"])
    return str(ipaddress.ip_network(cfg["Subnet"]).network_address + 1)


async def run(*argv: str, timeout: float = 60, check: bool = True, stdin: bytes | None = None) -> str:
    proc = await asyncio.create_subprocess_exec(*argv, stdin=subprocess.PIPE if stdin is not None else None,
                                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        out, err = await asyncio.wait_for(proc.communicate(stdin), timeout)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise AssertionError(f"{' '.join(argv)} did not finish within {timeout:g}s") from None
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(argv)} failed ({proc.returncode}): {err.decode(errors='replace')}"
                             f"{out.decode(errors='replace')}")
    return out.decode(errors="replace") + (err.decode(errors="replace") if not check else "")


class HostEcho:
    """An HTTP backend answering `<tag> saw Host=<Host header>` (the Host header it received)."""

    def __init__(self, tag: str) -> None:
        self.tag = tag
        self.backend = Backend("127.0.0.1", 0)
        self._server: asyncio.AbstractServer | None = None

    async def __aenter__(self) -> HostEcho:
        async def handle(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            try:
                head = await r.readuntil(b"\r\n\r\n")
            except (asyncio.IncompleteReadError, asyncio.LimitOverrunError):
                w.close()
                return
            host = b"?"
            for line in head.split(b"\r\n")[1:]:
                k, _, v = line.partition(b":")
                if k.strip().lower() == b"host":
                    host = v.strip()
            body = f"{self.tag} saw Host={host.decode()}\n".encode()
            w.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\nConnection: close\r\n\r\n"
                    % len(body) + body)
            await w.drain()
            w.close()

        self._server = await asyncio.start_server(handle, "127.0.0.1", 0)
        self.backend = Backend("127.0.0.1", self._server.sockets[0].getsockname()[1])
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()


class TftpFile(asyncio.DatagramProtocol):
    """A one-file TFTP server (RFC 1350, answering from its own port): busybox's `tftp` is the
    container's UDP client, so the UDP route's backend speaks TFTP."""

    def __init__(self, content: bytes) -> None:
        assert len(content) < 512
        self.content = content
        self.transport: Any = None
        self.backend = Backend("127.0.0.1", 0)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr: tuple[Any, ...]) -> None:
        if data[:2] == b"\x00\x01":  # RRQ → DATA block 1 (short: the last one)
            self.transport.sendto(b"\x00\x03\x00\x01" + self.content, addr)

    async def __aenter__(self) -> TftpFile:
        loop = asyncio.get_running_loop()
        await loop.create_datagram_endpoint(lambda: self, local_addr=("127.0.0.1", 0))
        self.backend = Backend("127.0.0.1", self.transport.get_extra_info("sockname")[1])
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.transport.close()


@dataclass
class Stack:
    g: str
    uid: str
    daemon: Maculad
    ports: dict[str, Any]
    config: Path
    kube: FakeKubeAPI
    scope: DockerScope
    tls_cert_der: bytes
    label_host: str
    tmp: Path

    async def exec(self, container: str, script: str, timeout: float = 60) -> str:
        return await run("docker", "exec", container, "sh", "-c", script, timeout=timeout, check=False)

    def metrics(self) -> str:
        import urllib.request

        with urllib.request.urlopen(f"http://127.0.0.1:{self.ports['metrics']}/metrics", timeout=5) as r:
            return str(r.read().decode())

    def ctl(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(MACULACTL), "--socket", str(self.tmp / "maculad.sock"), *args],
                              capture_output=True, text=True, timeout=30)


def nslookup_addresses(output: str, name: str) -> list[str]:
    """The addresses busybox `nslookup` printed for `name`."""
    out: list[str] = []
    seen = False
    for line in output.splitlines():
        if line.startswith("Name:"):
            seen = line.split(":", 1)[1].strip().rstrip(".") == name
        elif seen and line.startswith("Address:"):
            out.append(line.split(":", 1)[1].strip())
    return out


@contextlib.asynccontextmanager
async def container_stack(tmp: Path, scope: DockerScope) -> AsyncIterator[Stack]:
    """Everything above, up and ready; torn down afterwards (the lock is the caller's)."""
    g = bridge_gateway()
    dnsmasq = shutil.which("dnsmasq")
    assert dnsmasq, "dnsmasq is needed (Debian dnsmasq-base) as the stand-in upstream resolver"
    up_port = free_port("127.0.0.1")
    upstream = subprocess.Popen(
        [dnsmasq, "--no-daemon", "--keep-in-foreground", f"--port={up_port}", "--listen-address=127.0.0.1",
         "--bind-interfaces", "--no-resolv", "--no-hosts", "--address=/outside.example/192.0.2.99",
         "--pid-file="], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    cert, key = self_signed(tmp, "console.macula.local")
    tls_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls_ctx.load_cert_chain(cert, key)

    async def tls_handle(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        try:
            await r.readuntil(b"\r\n\r\n")
            body = b"console over its own TLS\n"
            w.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n" % len(body) + body)
            await w.drain()
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass
        w.close()

    tls_server = await asyncio.start_server(tls_handle, "127.0.0.1", 0, ssl=tls_ctx)
    tls_port = tls_server.sockets[0].getsockname()[1]
    kube = FakeKubeAPI()
    await kube.start()
    kubeconfig = kube.write_kubeconfig(tmp / "kubeconfig")
    kube.create_ingress("apps", "console", ["ingress-app.macula.local"])
    kube.create(CONFIGMAPS, {"metadata": {"name": "coredns", "namespace": "kube-system"},
                             "data": {"Corefile": ".:53 {\n    forward . /etc/resolv.conf\n    reload\n}\n"}})
    label_host = f"labelled-{scope.uid}"
    try:
        async with HostEcho("grafana") as grafana, HostEcho("ingress") as ingress, TcpEcho(b"pg") as pg, \
                TftpFile(b"bootstrap over udp via G\n") as tftp:
            scope.run("labelled", "-p", "127.0.0.1::8080",
                      labels={"macula.host": label_host, "macula.http": "8080"},
                      cmd=("sh", "-c", "echo labelled backend > /www/index.html; exec httpd -f -p 8080 -h /www"))
            text, ports = base_config(tmp, containers=True, extra=f"""
[docker]
enabled = true
[containers]
forwarders = ["127.0.0.1:{up_port}"]
network_interval = 0.5
coredns_interval = 0.5
[kubernetes]
enabled = true
kubeconfig = "{kubeconfig}"
context = ""
ingress_http = "{ingress.backend}"
ingress_https = ""
ingress_udp = {{}}
[[route]]
name = "grafana"
http = "{grafana.backend}"
[[route]]
name = "console"
https = "127.0.0.1:{tls_port}"
[[route]]
name = "postgres"
tcp = {{ 5432 = "{pg.backend}" }}
[[route]]
name = "bootstrap"
udp = {{ 4433 = "{tftp.backend}" }}
""")
            cfg = tmp / "maculad.toml"
            cfg.write_text(text)
            daemon = Maculad(cfg, log=tmp / "maculad.log").start()
            try:
                await asyncio.to_thread(daemon.wait_ready, ports["metrics"])
                stack = Stack(g=g, uid=scope.uid, daemon=daemon, ports=ports, config=cfg, kube=kube, scope=scope,
                              tls_cert_der=ssl.PEM_cert_to_DER_cert(cert.read_text()), label_host=label_host,
                              tmp=tmp)
                await wait_routes(stack, ["grafana.macula.local", f"{label_host}.macula.local",
                                          "ingress-app.macula.local"])
                yield stack
            finally:
                daemon.stop()
    finally:
        tls_server.close()
        await kube.stop()
        upstream.terminate()
        upstream.wait(10)


async def wait_routes(stack: Stack, names: list[str], timeout: float = 30) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while True:
        r = await asyncio.to_thread(stack.ctl, "routes", "--json")
        have = {x["name"] for x in json.loads(r.stdout).get("routes", [])} if r.returncode == 0 else set()
        if all(n in have for n in names):
            return
        if loop.time() > end:
            raise AssertionError(f"routes {names} not all in the table after {timeout:g}s: {sorted(have)}\n"
                                 f"{stack.daemon.logs()}")
        await asyncio.sleep(0.2)


def peer_cert_in_netns(pid: int, g: str, port: int, sni: str) -> bytes:
    """The DER certificate a TLS server at g:port presents for `sni`, asked from the network namespace
    of process `pid` (a container) with the host's Python."""
    import sys

    code = ("import socket,ssl,sys;c=ssl.create_default_context();c.check_hostname=False;c.verify_mode=ssl.CERT_NONE;"
            f"s=c.wrap_socket(socket.create_connection(('{g}',{port}),timeout=10),server_hostname='{sni}');"
            "s.sendall(b'GET / HTTP/1.1\\r\\nHost: x\\r\\n\\r\\n');body=s.recv(4096);"
            "assert body.endswith(b'console over its own TLS\\n'), body;"
            "sys.stdout.write(s.getpeercert(binary_form=True).hex())")
    out = subprocess.run(["nsenter", "-n", "-t", str(pid), sys.executable, "-c", code], capture_output=True,
                         text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    return bytes.fromhex(out.stdout.strip())


def container_pid(name: str) -> int:
    return int(docker_cli("inspect", "-f", "{{.State.Pid}}", name))


def udp_query_from(source: str, g: str, name: str) -> bytes:
    """A DNS query for `name` sent to g:53 from `source` (a host address outside the Docker subnets)."""
    import dns.message
    import dns.query

    q = dns.message.make_query(name, "A")
    r = dns.query.udp(q, g, port=53, timeout=5, source=source)
    return bytes(r.to_wire())

