"""`maculactl doctor`: check the installation end to end and explain each finding.

`run_checks(facts, probes)` is the whole diagnosis. `Facts` is what the daemon
(or the config file, when the daemon is down) says should be true: the domain,
the DNS listen addresses, the routes and their front ports. `Probes` are the
I/O functions that look at the real system — a DNS query, `getaddrinfo`, a file
read, the table of bound sockets with their owning processes, a Docker ping,
an address bind — injected so tests can run the doctor against real sockets in
situations they control. `real_probes()` builds the production set (Linux
/proc for sockets and processes, dnslib for queries, stdlib for the rest).

Every `Finding` has a level (ok, warn, fail, skip), a one-line summary and,
when something is wrong, the fix a person can apply.
"""

from __future__ import annotations

import http.client
import ipaddress
import os
import re
import socket
import struct
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from maculad.core.limits import LOW_NOFILE
from maculad.core.net import Backend, parse_hostport

Level = Literal["ok", "warn", "fail", "skip"]
Proto = Literal["tcp", "udp"]
WILDCARDS = frozenset({"0.0.0.0", "::"})


@dataclass(frozen=True, slots=True)
class Finding:
    check: str
    level: Level
    summary: str
    fix: str = ""

    def as_dict(self) -> dict[str, str]:
        return {"check": self.check, "level": self.level, "summary": self.summary, "fix": self.fix}


@dataclass(frozen=True, slots=True)
class RouteFacts:
    name: str
    ip: str
    ports: tuple[tuple[Proto, int], ...] = ()


@dataclass(frozen=True, slots=True)
class ClusterFacts:
    ready: bool
    state: str
    detail: str = ""


@dataclass(frozen=True, slots=True)
class Facts:
    socket: str
    daemon_error: str | None  # None: the daemon answered
    daemon_pid: int | None = None
    source: str = "daemon"  # where domain/routes came from: "daemon", "config FILE" or "nothing"
    domain: str = "macula.local"
    dns_listen: tuple[Backend, ...] = ()
    routes: tuple[RouteFacts, ...] = ()
    docker_enabled: bool = False
    kind_manage: bool = False
    cluster: ClusterFacts | str | None = None  # str: why the cluster state is unknown
    #: the container horizon as the daemon reports it: {"state", "address", "reason"}; None: unknown
    containers: Mapping[str, Any] | None = None
    #: the running daemon's open-file limits (status "limits": nofile_soft, nofile_hard); None: unknown
    limits: Mapping[str, Any] | None = None
    daemon_denied: bool = False  # a socket is there but this user may not open it
    #: how fix lines name maculactl so they work as written (`maculactl_command`)
    maculactl: str = "maculactl"


@dataclass(frozen=True, slots=True)
class DNSAnswer:
    rcode: str
    addresses: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class BoundSocket:
    proto: Proto
    ip: str
    port: int
    inode: int


@dataclass(frozen=True, slots=True)
class Process:
    pid: int
    name: str


@dataclass(frozen=True, slots=True)
class Probes:
    dns_query: Callable[[Backend, str, Proto], DNSAnswer]  # raises OSError / TimeoutError / ValueError
    resolve: Callable[[str], list[str]]  # raises OSError (socket.gaierror)
    read_text: Callable[[str], str | None]
    bound_sockets: Callable[[], list[BoundSocket]] | None  # None: cannot list (not Linux)
    owners: Callable[[set[int]], dict[int, Process]]
    docker_ping: Callable[[], str | None]  # None when the engine answers, else the error
    bind_address: Callable[[str], str | None]  # None when the address is local, else the error
    platform: str = field(default_factory=lambda: sys.platform)


#: Directories sudo's secure_path searches (Debian, Ubuntu, Fedora, macOS): a maculactl found
#: only elsewhere (a venv, ~/.local/bin) must be named by its full path after `sudo`.
SUDO_PATH = ("/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin")


def maculactl_command(running: str | None, found: str | None, found_resolved: str | None) -> str:
    """How fix lines name maculactl: `maculactl` when the one the shell finds on PATH (`found`,
    `found_resolved` with its links followed) is the one running (`running`, resolved) and sits
    where sudo finds it too; else the full path of the running one, so `sudo maculactl resolver
    install` works as written from a venv."""
    if running is None:
        return "maculactl"
    if found is not None and found_resolved == running and os.path.dirname(found) in SUDO_PATH:
        return "maculactl"
    return running


# --------------------------------------------------------------------------- checks


def run_checks(facts: Facts, probes: Probes) -> list[Finding]:
    out = [check_daemon(facts)]
    out += check_dns(facts, probes)
    out.append(check_os_resolver(facts, probes))
    out += check_ports(facts, probes)
    out.append(check_loopback(facts, probes))
    out.append(check_docker(facts, probes))
    out.append(check_cluster(facts))
    out.append(check_containers(facts))
    out.append(check_limits(facts))
    return out


def check_limits(facts: Facts) -> Finding:
    """The daemon's open-file soft limit: below LOW_NOFILE, a few hundred clients exhaust it."""
    lim = facts.limits
    soft = lim.get("nofile_soft") if lim is not None else None
    if not isinstance(soft, int):
        return Finding("limits", "skip", "the daemon's open-file limit is unknown (daemon not running)")
    hard = lim.get("nofile_hard") if lim is not None else None
    if soft < 0 or soft >= LOW_NOFILE:
        return Finding("limits", "ok", f"the daemon may open {'unlimited' if soft < 0 else soft} files")
    return Finding("limits", "warn",
                   f"the daemon may open only {soft} files (hard limit {hard}); every relayed connection "
                   "takes two, so a few hundred clients exhaust it",
                   f"raise the hard limit to at least {LOW_NOFILE}: LimitNOFILE=65536 in the [Service] section "
                   "of maculad.service (systemctl edit maculad), or ulimit -Hn before maculad run; maculad "
                   "raises its soft limit to the hard one at start")


def check_containers(facts: Facts) -> Finding:
    """The container horizon on G: off is a warning (the host horizon serves on), with why and a fix."""
    c = facts.containers
    if c is None:
        return Finding("containers", "skip", "the container horizon's state is unknown (daemon not running, "
                                             "or [containers] enabled = false)")
    if c.get("state") == "on":
        return Finding("containers", "ok", f"containers and pods reach every name through {c.get('address')} "
                                           "(DNS :53, HTTP :80 by Host, TLS :443 by SNI)")
    reason = str(c.get("reason") or "unknown")
    if "CAP_NET_BIND_SERVICE" in reason or "ermission" in reason:
        fix = "run maculad as the system service (it has CAP_NET_BIND_SERVICE) or as root"
    elif "Docker" in reason or "bridge" in reason:
        fix = "start the Docker engine, or set [containers] address to the bridge gateway"
    else:
        fix = f"see `{facts.maculactl} status` (containers) and the daemon log"
    return Finding("containers", "warn", f"the container horizon is off: {reason}", fix)


def check_daemon(facts: Facts) -> Finding:
    if facts.daemon_error is None:
        pid = f" (pid {facts.daemon_pid})" if facts.daemon_pid else ""
        return Finding("daemon", "ok", f"maculad answers on {facts.socket}{pid}")
    if facts.daemon_denied:
        return Finding("daemon", "fail", facts.daemon_error,
                       "a permission problem, not a stopped daemon: this user may not open the socket; join the "
                       f"socket's group (above) and log in again, or run: sudo {facts.maculactl} doctor")
    return Finding("daemon", "fail", facts.daemon_error,
                   "start it: sudo systemctl start maculad (logs: journalctl -u maculad), "
                   "or maculad run --config FILE; pass --socket if it uses another socket")


def _probe_name(facts: Facts) -> RouteFacts | None:
    for r in facts.routes:
        if not r.name.startswith("*."):
            return r
    return None


def check_dns(facts: Facts, probes: Probes) -> list[Finding]:
    if not facts.dns_listen:
        return [Finding("dns", "skip", "no DNS listen address known (daemon down and no --config)")]
    route = _probe_name(facts)
    name = route.name if route else facts.domain
    out: list[Finding] = []
    for addr in facts.dns_listen:
        protos: tuple[Proto, ...] = ("udp", "tcp")
        for proto in protos:
            where = f"{addr}/{proto}"
            try:
                ans = probes.dns_query(addr, name, proto)
            except (OSError, TimeoutError, ValueError) as exc:
                out.append(Finding("dns", "fail", f"no answer from {where} for {name}: {exc or 'timeout'}",
                                   f"is maculad running and did it bind the address? {facts.maculactl} status "
                                   "shows the DNS listeners; another DNS server may hold the port (see ports below)"))
                continue
            if route is None:
                ok = ans.rcode == "NOERROR"
                expect = "NOERROR for the zone apex"
            else:
                ok = ans.rcode == "NOERROR" and route.ip in ans.addresses
                expect = route.ip
            if ok:
                out.append(Finding("dns", "ok", f"{where} answers {name} → {', '.join(ans.addresses) or ans.rcode}"))
            else:
                got = ", ".join(ans.addresses) or ans.rcode
                out.append(Finding("dns", "fail", f"{where} answers {name} with {got}, expected {expect}",
                                   "another DNS server answers on this address, or maculad's table is stale: "
                                   f"compare {facts.maculactl} dns {name}"))
    return out


def nsswitch_hosts(text: str | None) -> list[str]:
    """The `hosts:` sources of nsswitch.conf, tokens as written (`[NOTFOUND=return]` kept)."""
    if not text:
        return []
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if line.startswith("hosts:"):
            return line[len("hosts:"):].split()
    return []


def mdns_shadows_dns(tokens: Sequence[str]) -> str | None:
    """The nss-mdns entry that ends a `.local` lookup before `dns` is asked, if any."""
    seen_dns = False
    for i, tok in enumerate(tokens):
        if tok in ("dns", "resolve"):
            seen_dns = True
        if tok.startswith("mdns") and not seen_dns:
            nxt = tokens[i + 1] if i + 1 < len(tokens) and tokens[i + 1].startswith("[") else ""
            if not tok.endswith("_minimal") or nxt.upper() == "[NOTFOUND=RETURN]":
                return f"{tok} {nxt}".strip()
    return None


def hosts_entries(text: str | None) -> dict[str, list[str]]:
    """name → IPs from a hosts file, skipping maculad's own block."""
    out: dict[str, list[str]] = {}
    inside = False
    for raw in (text or "").splitlines():
        if raw.startswith("# BEGIN maculad"):
            inside = True
            continue
        if raw.strip() == "# END maculad":
            inside = False
            continue
        line = raw.split("#", 1)[0].split()
        if inside or len(line) < 2:
            continue
        for name in line[1:]:
            out.setdefault(name.lower(), []).append(line[0])
    return out


def check_os_resolver(facts: Facts, probes: Probes) -> Finding:
    route = _probe_name(facts)
    if route is None:
        return Finding("os-resolver", "skip", "no route name to look up")
    name = route.name
    tokens = nsswitch_hosts(probes.read_text("/etc/nsswitch.conf"))
    mdns = mdns_shadows_dns(tokens) if facts.domain.endswith("local") else None
    stale = [ip for ip in hosts_entries(probes.read_text("/etc/hosts")).get(name, []) if ip != route.ip]
    try:
        ips = probes.resolve(name)
    except OSError as exc:
        ips = []
        err = str(exc)
    else:
        err = ""
    if route.ip in ips:
        return Finding("os-resolver", "ok", f"the OS resolves {name} to {route.ip}, as maculad answers")
    if stale:
        return Finding("os-resolver", "fail",
                       f"/etc/hosts maps {name} to {', '.join(stale)} (maculad answers {route.ip})",
                       "remove the old lines (the setup notes' '127.0.0.1 *.macula.local' block) from /etc/hosts; "
                       f"sudo {facts.maculactl} hosts --apply writes a managed block if you need one")
    if mdns:
        return Finding("os-resolver", "fail",
                       f"mDNS claims .local: /etc/nsswitch.conf has '{mdns}' before dns, so {name} "
                       f"{'resolves to ' + ', '.join(ips) if ips else 'never reaches maculad'}",
                       "in /etc/nsswitch.conf put dns first: 'hosts: files dns mdns4_minimal [NOTFOUND=return]' "
                       f"(or use sudo {facts.maculactl} hosts --apply)")
    if ips:
        return Finding("os-resolver", "fail",
                       f"another resolver answers {name} with {', '.join(ips)} (maculad answers {route.ip})",
                       f"send {facts.domain} to maculad: sudo {facts.maculactl} resolver install")
    return Finding("os-resolver", "fail", f"the OS cannot resolve {name} ({err}): {facts.domain} is not sent "
                   "to maculad", f"sudo {facts.maculactl} resolver install (systemd-resolved, NetworkManager "
                   f"or macOS), or sudo {facts.maculactl} hosts --apply")


def _wanted_ports(facts: Facts) -> list[tuple[str, str, Proto, int]]:
    """(label, ip, proto, port) maculad needs to bind: DNS listeners and every route's front ports."""
    out: list[tuple[str, str, Proto, int]] = []
    for b in facts.dns_listen:
        out += [("maculad DNS", b.host, "udp", b.port), ("maculad DNS", b.host, "tcp", b.port)]
    for r in facts.routes:
        out += [(r.name, r.ip, proto, port) for proto, port in r.ports]
    return out


def check_ports(facts: Facts, probes: Probes) -> list[Finding]:
    wanted = _wanted_ports(facts)
    if not wanted:
        return [Finding("ports", "skip", "no routes or DNS addresses known")]
    if probes.bound_sockets is None:
        return [Finding("ports", "skip", f"listing bound sockets is not supported on {probes.platform}",
                        "lsof -nP -iTCP -sTCP:LISTEN shows who holds a port")]
    try:
        bound = probes.bound_sockets()
    except OSError as exc:
        return [Finding("ports", "skip", f"cannot list bound sockets: {exc}")]
    relevant = [s for s in bound if any(s.proto == p and s.port == port and (s.ip == ip or s.ip in WILDCARDS)
                                        for _, ip, p, port in wanted)]
    owners = probes.owners({s.inode for s in relevant})
    out: list[Finding] = []
    served = 0
    for label, ip, proto, port in wanted:
        here = [s for s in relevant if s.proto == proto and s.port == port and (s.ip == ip or s.ip in WILDCARDS)]
        mine = [s for s in here if facts.daemon_pid is not None and
                (o := owners.get(s.inode)) is not None and o.pid == facts.daemon_pid]
        others = [s for s in here if s not in mine]
        where = f"{ip}:{port}/{proto} ({label})"
        if mine:
            served += 1
        for s in others:
            o = owners.get(s.inode)
            who = f"{o.name} (pid {o.pid})" if o else "a process this user cannot see (run doctor as root)"
            bound_at = f"{'[::]' if s.ip == '::' else s.ip}:{s.port}"
            if s.ip in WILDCARDS:
                level: Level = "warn" if mine else "fail"
                out.append(Finding(
                    "ports", level, f"{who} listens on every address ({bound_at}/{proto}), which covers {where}",
                    f"make it listen on 127.0.0.1:{port} only (nginx: 'listen 127.0.0.1:{port};', KinD: "
                    "listenAddress 127.0.0.1 in extraPortMappings — the setup notes' port-80 clash), or stop it"))
            else:
                out.append(Finding("ports", "fail", f"{who} holds {where}",
                                   f"stop it or move it off {ip}; maculad needs this address"))
        if not here and facts.daemon_error is None:
            out.append(Finding("ports", "warn", f"nothing listens on {where}",
                               f"maculad's listener for it is not serving: {facts.maculactl} status shows its "
                               "last error"))
    if not out:
        out.append(Finding("ports", "ok", f"no conflicts; {served} of {len(wanted)} addresses served by maculad"))
    return out


def check_loopback(facts: Facts, probes: Probes) -> Finding:
    ips = sorted({r.ip for r in facts.routes} | {b.host for b in facts.dns_listen},
                 key=lambda a: ipaddress.ip_address(a))
    if not ips:
        return Finding("loopback", "skip", "no addresses known")
    missing = [(ip, err) for ip in ips if (err := probes.bind_address(ip)) is not None]
    if not missing:
        return Finding("loopback", "ok", f"all {len(ips)} route and DNS addresses are local")
    first = ", ".join(f"{ip} ({err})" for ip, err in missing[:5])
    if probes.platform == "darwin":
        fix = "; ".join(f"sudo ifconfig lo0 alias {ip} up" for ip, _ in missing[:5])
        fix += (" — maculad adds the lo0 aliases of its loopback route, DNS, page and metrics addresses itself "
                "when it runs as root (as under the launchd plist), and removes them when it stops")
    else:
        fix = "on Linux all of 127.0.0.0/8 is local; for other addresses: sudo ip addr add IP/32 dev lo"
    return Finding("loopback", "fail", f"{len(missing)} address(es) are not local: {first}", fix)


def check_docker(facts: Facts, probes: Probes) -> Finding:
    if not facts.docker_enabled:
        return Finding("docker", "skip", "Docker is disabled in the config (docker.enabled = false)")
    err = probes.docker_ping()
    if err is None:
        return Finding("docker", "ok", "the Docker engine answers")
    return Finding("docker", "fail", f"the Docker engine does not answer: {err}",
                   "start it (sudo systemctl start docker); check DOCKER_HOST; the maculad user needs the "
                   f"docker group: sudo {facts.maculactl} service install adds it (a drop-in) when the group "
                   "exists, so run it again after installing Docker")


def check_cluster(facts: Facts) -> Finding:
    if not facts.kind_manage:
        return Finding("cluster", "skip", "kind management is off (kind.manage = false)")
    c = facts.cluster
    if c is None or isinstance(c, str):
        return Finding("cluster", "skip", f"cluster state unknown: {c or 'the daemon is not running'}")
    if c.ready:
        return Finding("cluster", "ok", f"the kind cluster is ready ({c.state})")
    detail = f": {c.detail}" if c.detail else ""
    return Finding("cluster", "fail", f"the kind cluster is not ready (state {c.state}){detail}",
                   f"{facts.maculactl} cluster status for details; maculad repairs it per policy, "
                   f"{facts.maculactl} cluster recreate forces a new one")


def cluster_facts(data: Any) -> ClusterFacts | str:
    """Read the daemon's cluster status leniently: `ready` flag or `state == "ready"`."""
    if not isinstance(data, dict):
        return "unexpected cluster status"
    state = str(data.get("state", "unknown"))
    ready = data.get("ready") is True or state == "ready"
    detail = data.get("last_error") or data.get("api_error") or data.get("reason") or ""
    return ClusterFacts(ready=ready, state=state, detail=str(detail) if detail else "")


# --------------------------------------------------------------------------- real probes


def parse_proc_net(text: str, proto: Proto, *, v6: bool) -> list[BoundSocket]:
    """Bound sockets from /proc/net/{tcp,udp}{,6}: TCP in LISTEN, UDP with no remote peer."""
    out: list[BoundSocket] = []
    for line in text.splitlines()[1:]:
        parts = line.split()
        if len(parts) < 10:
            continue
        local, remote, st, inode = parts[1], parts[2], parts[3], parts[9]
        if proto == "tcp" and st != "0A":
            continue
        if proto == "udp" and not remote.endswith(":0000"):
            continue
        try:
            hexip, hexport = local.split(":")
            raw = bytes.fromhex(hexip)
            words = [raw[i:i + 4] for i in range(0, len(raw), 4)]
            packed = b"".join(struct.pack("=I", int.from_bytes(w, "big")) for w in words)
            ip = socket.inet_ntop(socket.AF_INET6 if v6 else socket.AF_INET, packed)
            if v6 and ip.startswith("::ffff:") and "." in ip:
                ip = ip[7:]
            out.append(BoundSocket(proto, ip, int(hexport, 16), int(inode)))
        except (ValueError, OSError):
            continue
    return out


def proc_bound_sockets(proc: Path = Path("/proc")) -> list[BoundSocket]:
    out: list[BoundSocket] = []
    protos: tuple[Proto, ...] = ("tcp", "udp")
    for proto in protos:
        for v6 in (False, True):
            p = proc / "net" / f"{proto}{'6' if v6 else ''}"
            try:
                text = p.read_text()
            except OSError:
                continue
            out += parse_proc_net(text, proto, v6=v6)
    return out


_SOCKET_LINK = re.compile(r"socket:\[(\d+)\]")


def proc_owners(inodes: set[int], proc: Path = Path("/proc")) -> dict[int, Process]:
    """inode → the (first) process holding it, by scanning /proc/PID/fd links."""
    found: dict[int, Process] = {}
    if not inodes:
        return found
    try:
        pids = [p for p in proc.iterdir() if p.name.isdigit()]
    except OSError:
        return found
    for pdir in pids:
        try:
            fds = list((pdir / "fd").iterdir())
        except OSError:
            continue
        for fd in fds:
            try:
                m = _SOCKET_LINK.fullmatch(os.readlink(fd))
            except OSError:
                continue
            if m and (ino := int(m.group(1))) in inodes and ino not in found:
                try:
                    name = (pdir / "comm").read_text().strip()
                except OSError:
                    name = "?"
                found[ino] = Process(int(pdir.name), name)
        if len(found) == len(inodes):
            break
    return found


def dnslib_query(server: Backend, name: str, proto: Proto, *, timeout: float = 2.0) -> DNSAnswer:
    from dnslib import QTYPE, RCODE, DNSRecord  # local import: only the doctor needs dnslib

    q = DNSRecord.question(name, "A")
    data = q.pack()
    family = socket.AF_INET6 if ":" in server.host else socket.AF_INET
    if proto == "udp":
        with socket.socket(family, socket.SOCK_DGRAM) as s:
            s.settimeout(timeout)
            s.sendto(data, (server.host, server.port))
            while True:
                reply, _ = s.recvfrom(65535)
                if len(reply) >= 2 and reply[:2] == data[:2]:
                    break
    else:
        with socket.create_connection((server.host, server.port), timeout=timeout) as s:
            s.sendall(struct.pack("!H", len(data)) + data)
            head = _recv_exact(s, 2)
            reply = _recv_exact(s, struct.unpack("!H", head)[0])
    try:
        r = DNSRecord.parse(reply)
    except Exception as exc:  # dnslib raises its own DNSError and others on garbage
        raise ValueError(f"unparseable answer: {exc}") from None
    addrs = tuple(str(rr.rdata) for rr in r.rr if rr.rtype == QTYPE.A)
    return DNSAnswer(rcode=str(RCODE.get(r.header.rcode)), addresses=addrs)


def _recv_exact(s: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = s.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("connection closed mid-answer")
        buf += chunk
    return buf


def getaddrinfo_ipv4(name: str) -> list[str]:
    infos = socket.getaddrinfo(name, None, socket.AF_INET, socket.SOCK_STREAM)
    return sorted({str(i[4][0]) for i in infos})


def read_text(path: str) -> str | None:
    try:
        return Path(path).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None


def docker_ping(env: dict[str, str] | None = None, *, timeout: float = 3.0) -> str | None:
    host = (env if env is not None else dict(os.environ)).get("DOCKER_HOST", "unix:///var/run/docker.sock")
    try:
        if host.startswith("unix://"):
            path = host[len("unix://"):]
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.settimeout(timeout)
            s.connect(path)
            conn = http.client.HTTPConnection("docker", timeout=timeout)
            conn.sock = s
        elif host.startswith("tcp://"):
            hp = host[len("tcp://"):]
            b = parse_hostport(hp)
            conn = http.client.HTTPConnection(b.host, b.port, timeout=timeout)
        else:
            return f"DOCKER_HOST={host!r} is not unix:// or tcp://"
        try:
            conn.request("GET", "/_ping")
            resp = conn.getresponse()
            body = resp.read().decode(errors="replace").strip()
        finally:
            conn.close()
    except (OSError, ValueError, http.client.HTTPException) as exc:
        return f"{host}: {exc}"
    if resp.status != 200:
        return f"{host}: /_ping answered HTTP {resp.status} {body[:80]}"
    return None


def bind_address(ip: str) -> str | None:
    family = socket.AF_INET6 if ":" in ip else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_DGRAM) as s:
            s.bind((ip, 0))
    except OSError as exc:
        return exc.strerror or str(exc)
    return None


def real_probes() -> Probes:
    linux = sys.platform.startswith("linux")
    return Probes(
        dns_query=dnslib_query,
        resolve=getaddrinfo_ipv4,
        read_text=read_text,
        bound_sockets=proc_bound_sockets if linux else None,
        owners=proc_owners,
        docker_ping=docker_ping,
        bind_address=bind_address,
    )
