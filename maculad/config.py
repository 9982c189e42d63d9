"""TOML configuration → frozen, validated settings: the schema, declared once.

Each section is a frozen dataclass; each field is declared with `setting(default, lo, hi, …)`,
so its default, range and checks live in one place, and `maculad.core.schema` reads the TOML
into it by type (see there). Cross-field rules are a section's `_check(values, reader)` hook.
Every `ConfigError` names the file, the dotted key and the reason
(`maculad.toml: proxy.pool: '127.0.10.0/33' is not an IPv4 network`); unknown keys are errors
(with a did-you-mean), relative paths are resolved against the config file's directory, `~`
against the user's home. Adding a section is a dataclass plus one field on `Config`.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import stat
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal

from maculad.core.names import check_domain, qualify
from maculad.core.net import Backend, TLSMode, parse_hostport, pin_problem, same_socket
from maculad.core.restart import RestartPolicyName, parse_restart
from maculad.core.schema import Invalid, Reader, SchemaError, setting

LogFormat = Literal["auto", "json", "console"]


class ConfigError(Exception):
    """A configuration mistake: which file, which key, and why."""

    def __init__(self, file: str, key: str, reason: str) -> None:
        self.file = file
        self.key = key
        self.reason = reason
        super().__init__(f"{file}: {key}: {reason}" if key else f"{file}: {reason}")


# --------------------------------------------------------------------------- value rules


def _pool(text: str, md: Mapping[str, Any]) -> ipaddress.IPv4Network:
    try:
        return ipaddress.IPv4Network(text, strict=False)
    except ValueError as exc:
        raise ValueError(f"{text!r} is not an IPv4 network ({exc})") from None


_CONVERTERS = {
    Backend: (lambda text, md: parse_hostport(text, what=md.get("what", "address")), '"host:port" string'),
    ipaddress.IPv4Network: (_pool, "network string like \"127.0.10.0/24\""),
}


def ip_literal(addr: Backend) -> str | None:
    try:
        ipaddress.ip_address(addr.host)
    except ValueError:
        return f"{addr.host!r} is not an IP address (listen addresses must be literal IPs)"
    return None


def _compose_project(p: str) -> str | None:
    if not p or not all(c.isalnum() or c in "-_" for c in p) or p != p.lower():
        return f"{p!r}: use lower-case letters, digits, '-' and '_'"
    return None


def _kind_cluster(c: str) -> str | None:
    if not c or not all(c.isalnum() or c in "-." for c in c):
        return f"{c!r} is not a valid kind cluster name"
    return None


def _label_filter(v: str) -> str | None:
    return None if v.strip() and not v.startswith("=") else 'must be a list of "key" or "key=value" strings'


def _nonempty(v: str) -> str | None:
    return None if v else "must not be empty"


# --------------------------------------------------------------------------- the schema


@dataclass(frozen=True, slots=True)
class DNSConfig:
    listen: tuple[Backend, ...] = setting((Backend("127.0.0.153", 53),), check=ip_literal)
    ttl: int = setting(5, 0, 86400)
    forwarders: tuple[Backend, ...] = setting((), check=ip_literal)
    forward_timeout: float = setting(2.0, 0.05, 60)
    max_tcp_clients: int = setting(256, 1, 100_000)
    #: a TCP client with nothing to do (no query, no answer read) for this long is closed
    tcp_idle_timeout: float = setting(10.0, 0.05, 3600)

    @staticmethod
    def _check(v: dict[str, Any], ctx: Reader) -> None:
        if not v["listen"]:
            raise Invalid("listen", "at least one address is needed")


@dataclass(frozen=True, slots=True)
class ProxyConfig:
    pool: ipaddress.IPv4Network = setting(ipaddress.IPv4Network("127.0.10.0/24"))
    http_port: int = setting(80, 1, 65535)
    https_port: int = setting(443, 1, 65535)
    allow_non_loopback: bool = setting(False)
    connect_timeout: float = setting(5.0, 0.01, 600)
    drain_grace: float = setting(10.0, 0, 3600)
    udp_idle_timeout: float = setting(60.0, 0.01, 86400)
    udp_max_sessions: int = setting(1024, 1, 1_000_000)
    bind_retry_max: float = setting(30.0, 0.01, 3600)
    #: TCP connections one listener holds at once; beyond, a new one is closed at accept (and counted)
    max_connections: int = setting(10_000, 1, 10_000_000)
    #: a relayed TCP connection with no byte either way for this long is closed
    idle_timeout: float = setting(3600.0, 0.05, 7 * 86400)
    #: on ports where the client speaks first (HTTP, terminated TLS, Host/SNI routing), a client that
    #: sends nothing for this long is closed; plain TCP ports (the server may speak first) are exempt
    first_byte_timeout: float = setting(30.0, 0.05, 3600)

    @staticmethod
    def _check(v: dict[str, Any], ctx: Reader) -> None:
        if not v["pool"].is_loopback and not v["allow_non_loopback"]:
            raise Invalid("pool", f"{v['pool']} is not inside 127.0.0.0/8 "
                          "(set proxy.allow_non_loopback = true to allow)")
        if v["http_port"] == v["https_port"]:
            raise Invalid("https_port", f"equals http_port ({v['http_port']})")


@dataclass(frozen=True, slots=True)
class TLSConfig:
    """The local CA and TLS termination in the relay (maculad/pki, maculad/proxy/tls.py)."""

    enabled: bool = setting(True)
    #: Plain HTTP on a route that also serves HTTPS answers 308 to https.
    redirect_http: bool = setting(False)
    handshake_timeout: float = setting(10.0, 0.1, 600)
    #: Leaf certificates kept in memory (the disk cache holds one file per name).
    max_leaves: int = setting(4096, 1, 1_000_000)
    #: Seconds the child that makes the CA and leaves may take (`python -m maculad.pki.sign`); beyond, it is
    #: killed and the daemon signs in-process.
    signer_timeout: float = setting(30.0, 0.01, 600)


@dataclass(frozen=True, slots=True)
class MetricsConfig:
    listen: Backend | None = setting(Backend("127.0.0.1", 9469), check=ip_literal)


@dataclass(frozen=True, slots=True)
class ControlConfig:
    socket: Path = setting(Path("/run/maculad/maculad.sock"))
    group: str | None = setting(None)


@dataclass(frozen=True, slots=True)
class BackoffConfig:
    initial: float = setting(0.1, 0.001, 3600)
    factor: float = setting(2.0, 1.0, 100)
    cap: float = setting(60.0, 0.001, 86400)
    reset_after: float = setting(10.0, 0, 86400)
    start_limit: int = setting(10, 0, 1_000_000)
    start_limit_window: float = setting(600.0, 0, 10 * 86400)

    @staticmethod
    def _check(v: dict[str, Any], ctx: Reader) -> None:
        if v["cap"] < v["initial"]:
            raise Invalid("cap", f"{v['cap']} is smaller than initial ({v['initial']})")


@dataclass(frozen=True, slots=True)
class ServiceConfig:
    """Per-service overrides for a container of the Docker tier."""

    restart: RestartPolicyName | None = setting(None, parse=parse_restart)  # "on-failure:3" sets both
    max_retries: int | None = setting(None, toml=False)

    @staticmethod
    def _check(v: dict[str, Any], ctx: Reader) -> None:
        if isinstance(v["restart"], tuple):
            v["restart"], v["max_retries"] = v["restart"]


@dataclass(frozen=True, slots=True)
class RouteConfig:
    name: str = setting(required="is required (a name like \"grafana\" or \"grafana.macula.local\")",
                        check=_nonempty)
    ip: str | None = setting(None)
    http: Backend | None = setting(None, what="backend")
    https: Backend | None = setting(None, what="backend")
    tcp: tuple[tuple[int, Backend], ...] = setting(())
    udp: tuple[tuple[int, Backend], ...] = setting(())
    service: str | None = setting(None)
    tls: TLSMode = setting("auto")
    h2c: bool = setting(False)

    @staticmethod
    def _check(v: dict[str, Any], ctx: Reader) -> None:
        proxy: ProxyConfig = ctx.root["proxy"]
        try:
            v["name"] = qualify(v["name"], ctx.root["domain"])
        except ValueError as exc:
            raise Invalid("name", str(exc)) from None
        if v["ip"] is not None:
            problem = pin_problem(v["ip"], allow_non_loopback=proxy.allow_non_loopback)
            if problem is not None:
                raise Invalid("ip", problem)
        for k in ("http", "https"):
            if v[k] is not None and v[k].port == 0:
                raise Invalid(k, "backend port 0 is not a port")
        if v["http"] is None and v["https"] is None and not v["tcp"] and not v["udp"]:
            raise Invalid("name", f"route {v['name']} has no backend (give http, https, tcp or udp)")
        if v["tls"] == "terminate" and v["http"] is None:
            raise Invalid("tls", "\"terminate\" needs an http backend (TLS is terminated in front of it)")
        if v["tls"] == "passthrough" and v["https"] is None:
            raise Invalid("tls", "\"passthrough\" needs an https backend (TLS is passed through to it)")
        for port, _ in v["tcp"]:
            if port in (proxy.http_port, proxy.https_port):
                raise Invalid(f"tcp.{port}", f"port {port} is the http/https port; use http/https instead")


@dataclass(frozen=True, slots=True)
class DockerConfig:
    enabled: bool = setting(False)
    host: str | None = setting(None)
    compose_files: tuple[Path, ...] = setting((), expect="must be a list of paths")
    compose_project: str = setting("macula", check=_compose_project)
    compose_command: tuple[str, ...] = setting((), split=True, check=_nonempty,
                                               expect="must be a list of strings, e.g. [\"docker\", \"compose\"]")
    default_restart: RestartPolicyName = setting("unless-stopped")
    backoff: BackoffConfig = setting(BackoffConfig())
    services: Mapping[str, ServiceConfig] = setting(MappingProxyType({}))
    #: only containers carrying every one of these ("key" or "key=value")
    labels: tuple[str, ...] = setting((), check=_label_filter, list_only=True,
                                      expect='must be a list of "key" or "key=value" strings')


@dataclass(frozen=True, slots=True)
class KubernetesConfig:
    enabled: bool = setting(False)
    kubeconfig: Path = setting(Path("~/.kube/config").expanduser())
    context: str | None = setting("kind-macula-dev")
    ingress_http: Backend | None = setting(Backend("127.0.0.1", 8080))
    ingress_https: Backend | None = setting(Backend("127.0.0.1", 8443))
    ingress_udp: tuple[tuple[int, Backend], ...] = setting(((4433, Backend("127.0.0.1", 4433)),))
    ingress_class: str | None = setting(None)
    stale_after: float = setting(300.0, 1, 86400)
    watch_timeout: int = setting(240, 1, 86400)


@dataclass(frozen=True, slots=True)
class KindConfig:
    manage: bool = setting(False)
    binary: str = setting("kind")
    cluster: str = setting("macula-dev", check=_kind_cluster)
    config: Path | None = setting(None)
    kubeconfig: Path | None = setting(None)
    dry_run: bool = setting(False)
    ingress_manifest: str = setting(
        "https://raw.githubusercontent.com/kubernetes/ingress-nginx/main/deploy/static/provider/kind/deploy.yaml")
    registry_container: str | None = setting("macula-registry")
    registry_host: str = setting("registry.macula.local:5001")
    registry_endpoint: str = setting("http://macula-registry:5000")
    recreate: bool = setting(True)
    check_interval: float = setting(15.0, 0.05, 86400)
    ready_timeout: float = setting(300.0, 0.1, 86400)
    backoff: BackoffConfig = setting(BackoffConfig(initial=5.0, cap=300.0, reset_after=120.0, start_limit=5,
                                                   start_limit_window=3600.0))


def _api_url(text: str) -> str:
    api = text.strip().rstrip("/")
    scheme, sep, rest = api.partition("://")
    if scheme not in ("http", "https") or not sep or not rest or "/" in rest:
        raise ValueError(f"{api!r} is not an http(s)://host:port URL (the /api/v1 path is added by maculad)")
    return api


def _server_id(text: str) -> str:
    sid = text.strip()
    if not sid or not all(c.isalnum() or c in "-_." for c in sid):
        raise ValueError(f"{sid!r} is not a PowerDNS server id (letters, digits, '-', '_', '.')")
    return sid


def _ipv4(text: str) -> str:
    try:
        return str(ipaddress.IPv4Address(text.strip()))
    except ValueError:
        raise ValueError(f"{text!r} is not an IPv4 address") from None


@dataclass(frozen=True, slots=True)
class PowerDNSConfig:
    """The team's PowerDNS: publish maculad's names there, answer in-zone names from it.

    `api_key` holds the secret read from `api_key_file` (or given inline); it is
    kept out of repr so it never reaches a log line or `maculactl status`."""

    enabled: bool = setting(False)
    api: str = setting("http://127.0.0.1:8081", parse=_api_url)
    api_key: str = setting("", repr=False)
    api_key_file: Path | None = setting(None)
    server_id: str = setting("localhost", parse=_server_id)
    zone: str = setting("")  # "" → the domain
    dns: Backend | None = setting(Backend("127.0.0.1", 5399), check=ip_literal)
    publish: bool = setting(True)
    #: the A records' address; None: the container horizon's G (when [containers] is on), else required
    publish_address: str | None = setting(None, parse=_ipv4)
    owner_id: str = setting("")  # "" → maculad-<hostname>
    timeout: float = setting(5.0, 0.1, 300)
    resync_interval: float = setting(60.0, 1, 86400)
    backoff: BackoffConfig = setting(BackoffConfig(initial=0.5, cap=30.0, reset_after=0.0, start_limit=0))

    @staticmethod
    def _check(v: dict[str, Any], ctx: Reader) -> None:
        key_file: Path | None = v["api_key_file"]
        inline = v["api_key"] or None
        if inline is not None and key_file is not None:
            raise Invalid("api_key", "give api_key_file or api_key, not both")
        key = ""
        if inline is not None:
            if ctx.options.get("world_readable"):
                raise Invalid("api_key", "refused: the config file is readable by others; put the key in "
                                         "api_key_file (mode 0600) or chmod o-r the config file")
            key = inline.strip()
        elif key_file is not None and v["enabled"]:
            try:
                key = key_file.read_text(encoding="utf-8").strip()
            except OSError as exc:
                raise Invalid("api_key_file", f"{key_file} cannot be read: {exc.strerror or exc}") from None
            except UnicodeDecodeError:
                raise Invalid("api_key_file", f"{key_file} is not UTF-8 text") from None
            if not key:
                raise Invalid("api_key_file", f"{key_file} is empty")
        if key and any(c in key for c in "\r\n\0"):
            raise Invalid("api_key_file" if key_file else "api_key", "the key must be one line")
        if v["enabled"] and not key:
            raise Invalid("api_key_file", "is required when powerdns.enabled = true (or api_key)")
        v["api_key"] = key
        domain = ctx.root["domain"]
        zone = v["zone"].strip().lower().rstrip(".") or domain
        if zone != domain and not zone.endswith("." + domain) and not domain.endswith("." + zone):
            raise Invalid("zone", f"{zone!r} is neither the domain {domain!r}, below it nor above it")
        if any(not lbl or len(lbl) > 63 for lbl in zone.split(".")):
            raise Invalid("zone", f"{zone!r} is not a zone name")
        v["zone"] = zone
        if v["enabled"] and v["publish"] and v["publish_address"] is None and not ctx.root["containers"].enabled:
            raise Invalid("publish_address", "is required when powerdns.publish = true and [containers] is off "
                                             "(the address other machines and clusters reach this one at)")
        owner = v["owner_id"].strip() or f"maculad-{socket.gethostname().split('.')[0] or 'host'}"
        if not all(c.isalnum() or c in "-_." for c in owner) or len(owner) > 100:
            raise Invalid("owner_id", f"{owner!r}: use letters, digits, '-', '_' and '.' (at most 100)")
        v["owner_id"] = owner


def _gateway(text: str) -> str:
    address = text.strip()
    if address != "auto":
        try:
            if ipaddress.ip_address(address).version != 4:
                raise ValueError
        except ValueError:
            raise ValueError(f"{address!r} is neither \"auto\" nor an IPv4 address") from None
    return address


@dataclass(frozen=True, slots=True)
class ContainersConfig:
    """The container horizon on G, the Docker bridge gateway (see maculad/horizons/)."""

    enabled: bool = setting(False, default_from=lambda r: r.root["docker"].enabled)  # on with [docker]
    address: str = setting("auto", parse=_gateway)
    #: names outside the domain, for Docker clients only; None ("auto") = the host's resolvers
    forwarders: tuple[Backend, ...] | None = setting(None, none="auto", check=ip_literal)
    #: keep the `# BEGIN maculad` block in kube-system/coredns (when Kubernetes is enabled)
    coredns: bool = setting(True)
    coredns_interval: float = setting(10.0, 0.05, 86400)
    network_interval: float = setting(5.0, 0.05, 86400)

    @staticmethod
    def _check(v: dict[str, Any], ctx: Reader) -> None:
        if v["enabled"] and not ctx.root["docker"].enabled and v["address"] == "auto":
            raise Invalid("enabled", "the container horizon finds G through Docker: enable [docker] or set "
                          "[containers] address")


@dataclass(frozen=True, slots=True)
class WebConfig:
    """The read-only status page at http://<domain> (maculad.web)."""

    enabled: bool = setting(True)
    listen: Backend | None = setting(None, check=ip_literal)  # None: the first dns.listen IP at proxy.http_port
    max_clients: int = setting(32, 1, 10_000)  # live (SSE) connections at once
    max_connections: int = setting(128, 2, 100_000)  # HTTP connections at once
    check_interval: float = setting(5.0, 0.5, 3600)  # a backend's reachability is checked at most this often


@dataclass(frozen=True, slots=True)
class LogConfig:
    level: Literal["debug", "info", "warning", "error"] = setting("info")
    format: LogFormat = setting("auto")


@dataclass(frozen=True, slots=True)
class Config:
    path: Path = setting(toml=False)
    domain: str = setting("macula.local", parse=check_domain)
    state_dir: Path = setting(Path("/var/lib/maculad"))
    dns: DNSConfig = setting(DNSConfig())
    proxy: ProxyConfig = setting(ProxyConfig())
    tls: TLSConfig = setting(TLSConfig())
    metrics: MetricsConfig = setting(MetricsConfig())
    control: ControlConfig = setting(ControlConfig())
    routes: tuple[RouteConfig, ...] = setting((), key="route", expect="must be an array of tables ([[route]])")
    docker: DockerConfig = setting(DockerConfig())
    kubernetes: KubernetesConfig = setting(KubernetesConfig())
    kind: KindConfig = setting(KindConfig())
    containers: ContainersConfig = setting(ContainersConfig())  # before powerdns: its default reads it
    powerdns: PowerDNSConfig = setting(PowerDNSConfig())
    web: WebConfig = setting(WebConfig())
    log: LogConfig = setting(LogConfig())

    @property
    def web_listen(self) -> Backend:
        """Where the page is served: `web.listen`, else the first DNS address at the HTTP port."""
        if self.web.listen is not None:
            return self.web.listen
        host = self.dns.listen[0].host
        if ipaddress.ip_address(host).is_unspecified:
            host = "127.0.0.1" if ipaddress.ip_address(host).version == 4 else "::1"
        return Backend(host, self.proxy.http_port)

    @staticmethod
    def _check(v: dict[str, Any], ctx: Reader) -> None:
        names: dict[str, int] = {}
        ips: dict[str, int] = {}
        routes: tuple[RouteConfig, ...] = v["routes"]
        for i, r in enumerate(routes):
            if r.name in names:
                raise Invalid(f"route[{i}].name", f"{r.name} is also the name of route[{names[r.name]}]")
            names[r.name] = i
            if r.ip is not None:
                if r.ip in ips:
                    j = ips[r.ip]
                    raise Invalid(f"route[{i}].ip", f"{r.ip} is also pinned by route[{j}] ({routes[j].name})")
                ips[r.ip] = i
        Config._check_listeners(v)
        pool: ipaddress.IPv4Network = v["proxy"].pool
        unpinned = sum(1 for r in routes if r.ip is None)
        free = pool.num_addresses - 2 if pool.num_addresses > 2 else pool.num_addresses
        free -= sum(1 for ip in ips if ipaddress.IPv4Address(ip) in pool)
        if unpinned > free:
            raise Invalid("proxy.pool", f"the pool {pool} has {free} free addresses but {unpinned} routes need one")


    @staticmethod
    def _check_listeners(v: dict[str, Any]) -> None:
        """maculad's own addresses must not collide: DNS, metrics and the page are distinct sockets, no
        forwarder (nor the PowerDNS peer) is a DNS listener of maculad's own (a query would loop), and
        no route is pinned onto a DNS address (its relay ports would share the page's and DNS's IP)."""
        dns: DNSConfig = v["dns"]
        listens = list(enumerate(dns.listen))
        metrics: MetricsConfig = v["metrics"]
        if metrics.listen is not None:
            for i, addr in listens:
                if same_socket(metrics.listen, addr):
                    raise Invalid("metrics.listen", f"{metrics.listen} is also DNS listener dns.listen[{i}] "
                                                    f"({addr}; DNS serves TCP there too)")
        web: WebConfig = v["web"]
        if web.enabled and web.listen is not None:
            for i, addr in listens:
                if same_socket(web.listen, addr):
                    raise Invalid("web.listen", f"{web.listen} is also DNS listener dns.listen[{i}] ({addr})")
            if metrics.listen is not None and same_socket(web.listen, metrics.listen):
                raise Invalid("web.listen", f"{web.listen} is also metrics.listen")
        for j, fwd in enumerate(dns.forwarders):
            for i, addr in listens:
                if same_socket(fwd, addr):
                    raise Invalid(f"dns.forwarders[{j}]", f"{fwd} is maculad's own DNS listener dns.listen[{i}]; "
                                                          "queries would be forwarded to itself")
        pdns: PowerDNSConfig = v["powerdns"]
        if pdns.enabled and pdns.dns is not None:
            for i, addr in listens:
                if same_socket(pdns.dns, addr):
                    raise Invalid("powerdns.dns", f"{pdns.dns} is maculad's own DNS listener dns.listen[{i}]; "
                                                  "queries would be asked of itself")
        hosts = {addr.host: i for i, addr in reversed(listens)}
        for n, r in enumerate(v["routes"]):
            if r.ip is not None and r.ip in hosts:
                raise Invalid(f"route[{n}].ip", f"{r.ip} is the DNS address (dns.listen[{hosts[r.ip]}]); "
                                                "pin the route to another IP")


# --------------------------------------------------------------------------- reading


def parse_config(data: Mapping[str, Any], *, file: str, base: Path, world_readable: bool = False) -> Config:
    """`world_readable`: the config file can be read by others (then an inline secret is refused)."""
    reader = Reader(base=base, converters=_CONVERTERS, options={"world_readable": world_readable})
    try:
        cfg: Config = reader.read(Config, data, extra={"path": Path(file)})
    except SchemaError as exc:
        raise ConfigError(file, exc.key, exc.reason) from None
    return cfg


#: a config file larger than this is refused (it is not a config someone wrote)
MAX_CONFIG_BYTES = 4 * 1024 * 1024


def read_config_file(p: Path) -> tuple[bytes, bool]:
    """The bytes of a regular file of sane size, and whether others can read it; ConfigError otherwise.

    Opened with O_NONBLOCK and judged by fstat before a byte is read, so a FIFO, a device
    (`/dev/zero`) or a huge file is refused at once instead of blocking or filling memory."""
    file = str(p)
    try:
        fd = os.open(p, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise ConfigError(file, "", "no such file") from None
    except OSError as exc:
        raise ConfigError(file, "", f"cannot be read: {exc.strerror or exc}") from None
    try:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            raise ConfigError(file, "", "is a directory, not a config file")
        if not stat.S_ISREG(st.st_mode):
            kind = "a FIFO" if stat.S_ISFIFO(st.st_mode) else "a device" if (
                stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode)) else "a socket or special file"
            raise ConfigError(file, "", f"is {kind}, not a regular file")
        if st.st_size > MAX_CONFIG_BYTES:
            raise ConfigError(file, "", f"is {st.st_size} bytes; a config file is at most {MAX_CONFIG_BYTES}")
        chunks: list[bytes] = []
        size = 0
        while size <= MAX_CONFIG_BYTES:
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        if size > MAX_CONFIG_BYTES:
            raise ConfigError(file, "", f"grew beyond {MAX_CONFIG_BYTES} bytes while being read")
    except OSError as exc:
        raise ConfigError(file, "", f"cannot be read: {exc.strerror or exc}") from None
    finally:
        os.close(fd)
    return b"".join(chunks), bool(st.st_mode & stat.S_IROTH)


def load_config(path: str | Path) -> Config:
    """Read and validate the config file (blocking I/O: the daemon calls it in a thread)."""
    p = Path(path)
    file = str(p)
    raw, world_readable = read_config_file(p)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(file, "", f"is not UTF-8 ({exc.reason} at byte {exc.start})") from None
    if not text.strip():
        raise ConfigError(file, "", "is empty (write at least one setting, or a comment to take every default)")
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(file, "", f"is not valid TOML: {exc}") from None
    return parse_config(data, file=file, base=p.resolve().parent, world_readable=world_readable)
