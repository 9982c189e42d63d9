"""The doctor's checks against real sockets and processes in situations the tests set up:
a real DNS server (dnsmasq) answering right or wrong, ports held by other processes on the
route's IP or on every address, the real Docker engine, real address binds."""

from __future__ import annotations

import dataclasses
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import dns.resolver
import pytest

from maculad.control.doctor import (
    BoundSocket,
    ClusterFacts,
    Facts,
    Probes,
    RouteFacts,
    bind_address,
    check_cluster,
    check_limits,
    check_dns,
    check_docker,
    check_loopback,
    check_os_resolver,
    check_ports,
    cluster_facts,
    docker_ping,
    mdns_shadows_dns,
    nsswitch_hosts,
    parse_proc_net,
    proc_bound_sockets,
    real_probes,
    run_checks,
)
from maculad.core.net import Backend
from tests.conftest import require

DNS_IP = "127.0.0.153"


def free_port(ip: str = "127.0.0.1", kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind((ip, 0))
        return int(s.getsockname()[1])


def dnsmasq(port: int, answers: dict[str, str]) -> subprocess.Popen[bytes]:
    binary = shutil.which("dnsmasq") or "/usr/sbin/dnsmasq"
    require(os.path.exists(binary), "dnsmasq (apt-get install -y dnsmasq)")
    args = [binary, "--no-daemon", "--conf-file=/dev/null", f"--port={port}", f"--listen-address={DNS_IP}",
            "--bind-interfaces", "--no-resolv", "--no-hosts", "--pid-file=", "--user=root", "--log-facility=-"]
    args += [f"--address=/{name}/{ip}" for name, ip in answers.items()]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((DNS_IP, port), timeout=0.5):
                return proc
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise AssertionError("dnsmasq did not start")


@pytest.fixture
def dns_port() -> int:
    return free_port(DNS_IP)


def facts(dns_port: int, **kw: object) -> Facts:
    base = Facts(socket="/run/maculad/maculad.sock", daemon_error=None, daemon_pid=None,
                 dns_listen=(Backend(DNS_IP, dns_port),),
                 routes=(RouteFacts("grafana.macula.local", "127.0.0.2", (("tcp", 80),)),))
    return dataclasses.replace(base, **kw)  # type: ignore[arg-type]


def via(server: Backend) -> dns.resolver.Resolver:
    r = dns.resolver.Resolver(configure=False)
    r.nameservers = [server.host]
    r.port = server.port
    r.lifetime = 3
    return r


def resolver_probe(server: Backend) -> Probes:
    """The real probes, with the OS resolver played by a stub resolver that sends queries to `server`
    (what systemd-resolved does once `maculactl resolver install` wrote its drop-in)."""
    res = via(server)

    def resolve(name: str) -> list[str]:
        try:
            return sorted(a.address for a in res.resolve(name, "A"))
        except dns.exception.DNSException as exc:
            raise OSError(str(exc)) from None

    return dataclasses.replace(real_probes(), resolve=resolve, read_text=lambda p: "hosts: files dns\n")


def test_dns_answers_on_every_listen_address(dns_port: int) -> None:
    proc = dnsmasq(dns_port, {"grafana.macula.local": "127.0.0.2"})
    try:
        out = check_dns(facts(dns_port), real_probes())
        assert [(f.level, f.summary) for f in out] == [
            ("ok", f"{DNS_IP}:{dns_port}/udp answers grafana.macula.local → 127.0.0.2"),
            ("ok", f"{DNS_IP}:{dns_port}/tcp answers grafana.macula.local → 127.0.0.2"),
        ]
        res = check_os_resolver(facts(dns_port), resolver_probe(Backend(DNS_IP, dns_port)))
        assert res.level == "ok"
    finally:
        proc.terminate()
        proc.wait()


def test_another_dns_server_answering_wrong_is_a_failure(dns_port: int) -> None:
    proc = dnsmasq(dns_port, {"grafana.macula.local": "127.0.0.1"})  # the setup notes' Option B
    try:
        out = check_dns(facts(dns_port), real_probes())
        assert {f.level for f in out} == {"fail"}
        assert "answers grafana.macula.local with 127.0.0.1, expected 127.0.0.2" in out[0].summary
        res = check_os_resolver(facts(dns_port), resolver_probe(Backend(DNS_IP, dns_port)))
        assert res.level == "fail" and "another resolver answers" in res.summary
        assert "maculactl resolver install" in res.fix
    finally:
        proc.terminate()
        proc.wait()


def test_dns_silence_is_a_failure_with_a_fix(dns_port: int) -> None:
    out = check_dns(facts(dns_port), real_probes())
    assert [f.level for f in out] == ["fail", "fail"]
    assert "no answer from" in out[0].summary and out[0].fix


def test_mdns_claiming_local_is_detected(tmp_path: Path, dns_port: int) -> None:
    nss = "passwd: files\nhosts:          files mdns4_minimal [NOTFOUND=return] dns myhostname\n"
    probes = dataclasses.replace(real_probes(), read_text=lambda p: nss if p.endswith("nsswitch.conf") else "")
    res = check_os_resolver(facts(dns_port), probes)  # real getaddrinfo: nothing resolves it here
    assert res.level == "fail"
    assert "mDNS claims .local" in res.summary and "mdns4_minimal [NOTFOUND=return]" in res.summary
    assert "hosts: files dns mdns4_minimal" in res.fix


def test_nsswitch_parsing() -> None:
    assert nsswitch_hosts("hosts: files dns # comment\n") == ["files", "dns"]
    assert mdns_shadows_dns(["files", "mdns4_minimal", "[NOTFOUND=return]", "dns"]) == \
        "mdns4_minimal [NOTFOUND=return]"
    assert mdns_shadows_dns(["files", "dns", "mdns4_minimal", "[NOTFOUND=return]"]) is None
    assert mdns_shadows_dns(["files", "mdns4_minimal", "dns"]) is None  # falls through to dns
    assert mdns_shadows_dns(["files", "mdns4", "dns"]) == "mdns4"
    assert nsswitch_hosts(None) == []


def test_stale_hosts_lines_are_named(dns_port: int) -> None:
    hosts = "127.0.0.1 localhost\n127.0.0.1 grafana.macula.local registry.macula.local\n"
    probes = dataclasses.replace(real_probes(), read_text=lambda p: hosts if p == "/etc/hosts" else "",
                                 resolve=lambda name: ["127.0.0.1"])
    res = check_os_resolver(facts(dns_port), probes)
    assert res.level == "fail" and "/etc/hosts maps grafana.macula.local to 127.0.0.1" in res.summary


def holder(ip: str, port: int, kind: str = "tcp") -> subprocess.Popen[str]:
    """Another process holding ip:port (what the host nginx does on 0.0.0.0:80)."""
    code = (
        "import socket, sys, time\n"
        f"s = socket.socket(socket.AF_INET, socket.SOCK_{'STREAM' if kind == 'tcp' else 'DGRAM'})\n"
        f"s.bind(({ip!r}, {port}))\n"
        + ("s.listen()\n" if kind == "tcp" else "")
        + "print('bound', flush=True)\ntime.sleep(120)\n"
    )
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert p.stdout is not None and p.stdout.readline().strip() == "bound"
    return p


@pytest.fixture
def linux_proc() -> Iterator[None]:
    require(sys.platform.startswith("linux") and os.path.exists("/proc/net/tcp"), "Linux /proc/net")
    yield


def test_port_held_on_every_address_names_the_process(linux_proc: None, dns_port: int) -> None:
    port = free_port("0.0.0.0")
    p = holder("0.0.0.0", port)
    try:
        f = facts(dns_port, dns_listen=(), routes=(RouteFacts("grafana.macula.local", "127.0.0.2",
                                                             (("tcp", port),)),))
        (finding,) = check_ports(f, real_probes())
        assert finding.level == "fail"
        assert f"(pid {p.pid}) listens on every address (0.0.0.0:{port}/tcp)" in finding.summary
        assert f"127.0.0.2:{port}/tcp (grafana.macula.local)" in finding.summary
        assert "listen 127.0.0.1" in finding.fix and "port-80 clash" in finding.fix
    finally:
        p.kill()
        p.wait()


def test_port_held_on_the_route_ip_and_udp(linux_proc: None, dns_port: int) -> None:
    tport = free_port("127.0.0.2")
    uport = free_port("127.0.0.2", socket.SOCK_DGRAM)
    a = holder("127.0.0.2", tport)
    b = holder("127.0.0.2", uport, "udp")
    try:
        f = facts(dns_port, dns_listen=(), routes=(
            RouteFacts("grafana.macula.local", "127.0.0.2", (("tcp", tport), ("udp", uport))),))
        out = check_ports(f, real_probes())
        assert [x.level for x in out] == ["fail", "fail"]
        assert f"(pid {a.pid}) holds 127.0.0.2:{tport}/tcp" in out[0].summary
        assert f"(pid {b.pid}) holds 127.0.0.2:{uport}/udp" in out[1].summary
    finally:
        for p in (a, b):
            p.kill()
            p.wait()


def test_ports_served_by_the_daemon_are_fine(linux_proc: None) -> None:
    with socket.socket() as tcp, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        tcp.bind(("127.0.0.2", 0))
        tcp.listen()
        udp.bind((DNS_IP, 0))
        dport = udp.getsockname()[1]
        with socket.socket() as dtcp:
            dtcp.bind((DNS_IP, dport))
            dtcp.listen()
            f = facts(dport, daemon_pid=os.getpid(),
                      routes=(RouteFacts("grafana.macula.local", "127.0.0.2", (("tcp", tcp.getsockname()[1]),)),))
            out = check_ports(f, real_probes())
    assert [(x.level, x.summary) for x in out] == [("ok", "no conflicts; 3 of 3 addresses served by maculad")]


def test_nothing_listening_while_the_daemon_runs_is_a_warning(linux_proc: None, dns_port: int) -> None:
    port = free_port("127.0.0.2")
    f = facts(dns_port, dns_listen=(), routes=(RouteFacts("grafana.macula.local", "127.0.0.2", (("tcp", port),)),))
    (finding,) = check_ports(f, real_probes())
    assert finding.level == "warn" and "nothing listens on" in finding.summary


def test_proc_net_parsing() -> None:
    tcp = (
        "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n"
        "   0: 0200007F:0050 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 4242 1\n"
        "   1: 0100007F:1F90 0100007F:D431 01 00000000:00000000 00:00000000 00000000     0        0 4343 1\n"
    )
    assert parse_proc_net(tcp, "tcp", v6=False) == [BoundSocket("tcp", "127.0.0.2", 80, 4242)]
    tcp6 = (
        "  sl  local_address                         remote_address                        st ...\n"
        "   0: 00000000000000000000000000000000:0050 00000000000000000000000000000000:0000 0A "
        "00000000:00000000 00:00000000 00000000     0        0 77 1\n"
    )
    assert parse_proc_net(tcp6, "tcp", v6=True) == [BoundSocket("tcp", "::", 80, 77)]
    assert parse_proc_net("header\ngarbage line\n", "udp", v6=False) == []


def test_own_listener_is_found_in_proc(linux_proc: None) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.9", 0))
        s.listen()
        port = s.getsockname()[1]
        found = [b for b in proc_bound_sockets() if b.port == port and b.proto == "tcp"]
        assert [b.ip for b in found] == ["127.0.0.9"]
        owners = real_probes().owners({found[0].inode})
        assert owners[found[0].inode].pid == os.getpid()


def test_loopback_addresses() -> None:
    assert bind_address("127.0.0.2") is None
    assert bind_address("192.0.2.1") is not None  # TEST-NET-1: never local
    f = Facts(socket="s", daemon_error=None, routes=(RouteFacts("x.macula.local", "192.0.2.1"),
                                                     RouteFacts("y.macula.local", "127.0.0.2")))
    ok = check_loopback(dataclasses.replace(f, routes=f.routes[1:]), real_probes())
    assert ok.level == "ok"
    mac = check_loopback(f, dataclasses.replace(real_probes(), platform="darwin"))
    assert mac.level == "fail" and "192.0.2.1" in mac.summary
    assert mac.fix.startswith("sudo ifconfig lo0 alias 192.0.2.1 up")


def test_docker_reachable_and_not() -> None:
    require(os.path.exists("/var/run/docker.sock"), "a running Docker engine")
    f = Facts(socket="s", daemon_error=None, docker_enabled=True)
    assert check_docker(f, real_probes()).level == "ok"
    gone = dataclasses.replace(real_probes(), docker_ping=lambda: docker_ping({"DOCKER_HOST": "unix:///nonexistent"}))
    res = check_docker(f, gone)
    assert res.level == "fail" and "unix:///nonexistent" in res.summary and "systemctl start docker" in res.fix
    assert docker_ping({"DOCKER_HOST": "ssh://x"}) is not None
    assert check_docker(dataclasses.replace(f, docker_enabled=False), gone).level == "skip"


def test_cluster() -> None:
    f = Facts(socket="s", daemon_error=None, kind_manage=True)
    assert check_cluster(dataclasses.replace(f, cluster=cluster_facts({"state": "ready"}))).level == "ok"
    bad = cluster_facts({"state": "degraded", "ready": False, "last_error": "node container stopped"})
    assert bad == ClusterFacts(ready=False, state="degraded", detail="node container stopped")
    res = check_cluster(dataclasses.replace(f, cluster=bad))
    assert res.level == "fail" and "node container stopped" in res.summary
    assert check_cluster(dataclasses.replace(f, kind_manage=False)).level == "skip"


def test_daemon_down_checks_still_run_from_config_facts(dns_port: int) -> None:
    f = facts(dns_port, daemon_error="maculad is not running: no control socket at /x", source="config f")
    out = run_checks(f, real_probes())
    by = {(x.check, x.level) for x in out}
    assert ("daemon", "fail") in by and ("dns", "fail") in by
    assert all(x.level != "warn" or x.check != "ports" for x in out)  # no "nothing listens" noise


def test_a_low_open_file_limit_is_a_warning_with_the_unit_setting() -> None:
    f = Facts(socket="s", daemon_error=None, limits={"nofile_soft": 1024, "nofile_hard": 1024})
    res = check_limits(f)
    assert res.level == "warn" and "1024" in res.summary and "LimitNOFILE=" in res.fix
    assert check_limits(dataclasses.replace(f, limits={"nofile_soft": 65536, "nofile_hard": 65536})).level == "ok"
    assert check_limits(dataclasses.replace(f, limits=None)).level == "skip"
