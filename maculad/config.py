"""TOML configuration → frozen, validated settings.

`load_config(path)` reads the file with tomllib and builds a tree of frozen
dataclasses. Each section is read through a `_Section` that knows its dotted
key path, so every `ConfigError` names the file, the key and the reason
(`maculad.toml: proxy.pool: '127.0.10.0/33' is not an IPv4 network`). Unknown
keys are errors too: a typo must not be ignored silently. Relative paths are
resolved against the config file's directory, `~` against the user's home.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import stat
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

from maculad.core.names import check_domain, qualify
from maculad.core.net import TLS_MODES, Backend, TLSMode, parse_hostport, pin_problem
from maculad.core.restart import RESTART_POLICIES, RestartPolicyName, parse_restart

LogFormat = Literal["auto", "json", "console"]


class ConfigError(Exception):
    """A configuration mistake: which file, which key, and why."""

    def __init__(self, file: str, key: str, reason: str) -> None:
        self.file = file
        self.key = key
        self.reason = reason
        super().__init__(f"{file}: {key}: {reason}" if key else f"{file}: {reason}")


@dataclass(frozen=True, slots=True)
class DNSConfig:
    listen: tuple[Backend, ...] = (Backend("127.0.0.153", 53),)
    ttl: int = 5
    forwarders: tuple[Backend, ...] = ()
    forward_timeout: float = 2.0
    max_tcp_clients: int = 256


@dataclass(frozen=True, slots=True)
class ProxyConfig:
    pool: ipaddress.IPv4Network = ipaddress.IPv4Network("127.0.10.0/24")
    http_port: int = 80
    https_port: int = 443
    allow_non_loopback: bool = False
    connect_timeout: float = 5.0
    drain_grace: float = 10.0
    udp_idle_timeout: float = 60.0
    udp_max_sessions: int = 1024
    bind_retry_max: float = 30.0


@dataclass(frozen=True, slots=True)
class TLSConfig:
    """The local CA and TLS termination in the relay (maculad/pki, maculad/proxy/tls.py)."""

    enabled: bool = True
    #: Plain HTTP on a route that also serves HTTPS answers 308 to https.
    redirect_http: bool = False
    handshake_timeout: float = 10.0
    #: Leaf certificates kept in memory (the disk cache holds one file per name).
    max_leaves: int = 4096


@dataclass(frozen=True, slots=True)
class MetricsConfig:
    listen: Backend | None = Backend("127.0.0.1", 9469)


@dataclass(frozen=True, slots=True)
class ControlConfig:
    socket: Path = Path("/run/maculad/maculad.sock")
    group: str | None = None


@dataclass(frozen=True, slots=True)
class BackoffConfig:
    initial: float = 0.1
    factor: float = 2.0
    cap: float = 60.0
    reset_after: float = 10.0
    start_limit: int = 10
    start_limit_window: float = 600.0


@dataclass(frozen=True, slots=True)
class ServiceConfig:
    """Per-service overrides for a container of the Docker tier."""

    restart: RestartPolicyName | None = None
    max_retries: int | None = None


@dataclass(frozen=True, slots=True)
class RouteConfig:
    name: str
    ip: str | None = None
    http: Backend | None = None
    https: Backend | None = None
    tcp: tuple[tuple[int, Backend], ...] = ()
    udp: tuple[tuple[int, Backend], ...] = ()
    service: str | None = None
    tls: TLSMode = "auto"
    h2c: bool = False


@dataclass(frozen=True, slots=True)
class DockerConfig:
    enabled: bool = False
    host: str | None = None
    compose_files: tuple[Path, ...] = ()
    compose_project: str = "macula"
    compose_command: tuple[str, ...] = ()
    default_restart: RestartPolicyName = "unless-stopped"
    backoff: BackoffConfig = BackoffConfig()
    services: Mapping[str, ServiceConfig] = field(default_factory=dict)
    labels: tuple[str, ...] = ()  # only containers carrying every one of these ("key" or "key=value")


@dataclass(frozen=True, slots=True)
class KubernetesConfig:
    enabled: bool = False
    kubeconfig: Path = Path("~/.kube/config").expanduser()
    context: str | None = "kind-macula-dev"
    ingress_http: Backend | None = Backend("127.0.0.1", 8080)
    ingress_https: Backend | None = Backend("127.0.0.1", 8443)
    ingress_udp: tuple[tuple[int, Backend], ...] = ((4433, Backend("127.0.0.1", 4433)),)
    ingress_class: str | None = None
    stale_after: float = 300.0
    watch_timeout: int = 240


@dataclass(frozen=True, slots=True)
class KindConfig:
    manage: bool = False
    binary: str = "kind"
    cluster: str = "macula-dev"
    config: Path | None = None
    kubeconfig: Path | None = None
    dry_run: bool = False
    ingress_manifest: str = (
        "https://raw.githubusercontent.com/kubernetes/ingress-nginx/main/deploy/static/provider/kind/deploy.yaml"
    )
    registry_container: str | None = "macula-registry"
    registry_host: str = "registry.macula.local:5001"
    registry_endpoint: str = "http://macula-registry:5000"
    recreate: bool = True
    check_interval: float = 15.0
    ready_timeout: float = 300.0
    backoff: BackoffConfig = BackoffConfig(initial=5.0, cap=300.0, reset_after=120.0, start_limit=5,
                                           start_limit_window=3600.0)


@dataclass(frozen=True, slots=True)
class PowerDNSConfig:
    """The team's PowerDNS: publish maculad's names there, answer in-zone names from it.

    `api_key` holds the secret read from `api_key_file` (or given inline); it is
    kept out of repr so it never reaches a log line or `maculactl status`."""

    enabled: bool = False
    api: str = "http://127.0.0.1:8081"
    api_key: str = field(default="", repr=False)
    api_key_file: Path | None = None
    server_id: str = "localhost"
    zone: str = ""                       # "" → the domain
    dns: Backend | None = Backend("127.0.0.1", 5399)
    publish: bool = True
    publish_address: str | None = None
    owner_id: str = ""                   # "" → maculad-<hostname>
    timeout: float = 5.0
    resync_interval: float = 60.0
    backoff: BackoffConfig = BackoffConfig(initial=0.5, cap=30.0, reset_after=0.0, start_limit=0)


@dataclass(frozen=True, slots=True)
class ContainersConfig:
    """The container horizon on G, the Docker bridge gateway (see maculad/horizons/)."""

    enabled: bool = False
    address: str = "auto"
    #: names outside the domain, for Docker clients only; None = the host's resolvers (/etc/resolv.conf)
    forwarders: tuple[Backend, ...] | None = None
    #: keep the `# BEGIN maculad` block in kube-system/coredns (when Kubernetes is enabled)
    coredns: bool = True
    coredns_interval: float = 10.0
    network_interval: float = 5.0


@dataclass(frozen=True, slots=True)
class WebConfig:
    """The read-only status page at http://<domain> (maculad.web)."""

    enabled: bool = True
    listen: Backend | None = None  # None: the first dns.listen IP at proxy.http_port
    max_clients: int = 32  # live (SSE) connections at once
    max_connections: int = 128  # HTTP connections at once
    check_interval: float = 5.0  # a backend's reachability is checked at most this often


@dataclass(frozen=True, slots=True)
class LogConfig:
    level: str = "info"
    format: LogFormat = "auto"


@dataclass(frozen=True, slots=True)
class Config:
    path: Path
    domain: str = "macula.local"
    state_dir: Path = Path("/var/lib/maculad")
    dns: DNSConfig = DNSConfig()
    proxy: ProxyConfig = ProxyConfig()
    tls: TLSConfig = TLSConfig()
    metrics: MetricsConfig = MetricsConfig()
    control: ControlConfig = ControlConfig()
    routes: tuple[RouteConfig, ...] = ()
    docker: DockerConfig = DockerConfig()
    kubernetes: KubernetesConfig = KubernetesConfig()
    kind: KindConfig = KindConfig()
    powerdns: PowerDNSConfig = PowerDNSConfig()
    containers: ContainersConfig = ContainersConfig()
    web: WebConfig = WebConfig()
    log: LogConfig = LogConfig()

    @property
    def web_listen(self) -> Backend:
        """Where the page is served: `web.listen`, else the first DNS address at the HTTP port."""
        if self.web.listen is not None:
            return self.web.listen
        host = self.dns.listen[0].host
        if ipaddress.ip_address(host).is_unspecified:
            host = "127.0.0.1" if ipaddress.ip_address(host).version == 4 else "::1"
        return Backend(host, self.proxy.http_port)


# --------------------------------------------------------------------------- reading


class _Section:
    """A TOML table with its dotted key path; every accessor validates and records the key."""

    def __init__(self, file: str, prefix: str, data: Mapping[str, Any], base: Path) -> None:
        self.file = file
        self.prefix = prefix
        self.data = data
        self.base = base
        self.seen: set[str] = set()

    def key(self, name: str) -> str:
        return f"{self.prefix}.{name}" if self.prefix else name

    def error(self, name: str, reason: str) -> ConfigError:
        return ConfigError(self.file, self.key(name), reason)

    def get(self, name: str) -> Any:
        self.seen.add(name)
        return self.data.get(name)

    def has(self, name: str) -> bool:
        return name in self.data

    def sub(self, name: str) -> _Section:
        v = self.get(name)
        if v is None:
            v = {}
        if not isinstance(v, dict):
            raise self.error(name, f"must be a table, not {_kind(v)}")
        return _Section(self.file, self.key(name), v, self.base)

    def str_(self, name: str, default: str) -> str:
        v = self.get(name)
        if v is None:
            return default
        if not isinstance(v, str):
            raise self.error(name, f"must be a string, not {_kind(v)}")
        return v

    def opt_str(self, name: str, default: str | None) -> str | None:
        v = self.get(name)
        if v is None:
            return default
        if not isinstance(v, str):
            raise self.error(name, f"must be a string, not {_kind(v)}")
        return v or None

    def bool_(self, name: str, default: bool) -> bool:
        v = self.get(name)
        if v is None:
            return default
        if not isinstance(v, bool):
            raise self.error(name, f"must be true or false, not {_kind(v)}")
        return v

    def int_(self, name: str, default: int, lo: int, hi: int) -> int:
        v = self.get(name)
        if v is None:
            return default
        if isinstance(v, bool) or not isinstance(v, int):
            raise self.error(name, f"must be an integer, not {_kind(v)}")
        if not lo <= v <= hi:
            raise self.error(name, f"{v} is out of range {lo}..{hi}")
        return v

    def float_(self, name: str, default: float, lo: float, hi: float) -> float:
        v = self.get(name)
        if v is None:
            return default
        if isinstance(v, bool) or not isinstance(v, int | float):
            raise self.error(name, f"must be a number, not {_kind(v)}")
        if not lo <= float(v) <= hi:
            raise self.error(name, f"{v} is out of range {lo}..{hi}")
        return float(v)

    def literal(self, name: str, default: Any, options: tuple[str, ...]) -> Any:
        v = self.str_(name, default)
        if v not in options:
            raise self.error(name, f"{v!r} is not one of {', '.join(options)}")
        return v

    def path(self, name: str, default: Path) -> Path:
        p = self.opt_path(name, default)
        assert p is not None
        return p

    def opt_path(self, name: str, default: Path | None) -> Path | None:
        v = self.opt_str(name, None)
        if v is None:
            return default
        p = Path(os.path.expanduser(v))
        return p if p.is_absolute() else (self.base / p)

    def addr(self, name: str, default: Backend | None, *, what: str = "address") -> Backend | None:
        v = self.get(name)
        if v is None:
            return default
        if not isinstance(v, str):
            raise self.error(name, f"must be a \"host:port\" string, not {_kind(v)}")
        if v == "":
            return None
        return _parse_hostport(v, lambda r: self.error(name, r), what=what)

    def addrs(self, name: str, default: tuple[Backend, ...]) -> tuple[Backend, ...]:
        v = self.get(name)
        if v is None:
            return default
        if isinstance(v, str):
            v = [v]
        if not isinstance(v, list):
            raise self.error(name, f"must be a list of \"host:port\" strings, not {_kind(v)}")
        out: list[Backend] = []
        for i, item in enumerate(v):
            if not isinstance(item, str):
                raise self.error(f"{name}[{i}]", f"must be a \"host:port\" string, not {_kind(item)}")
            out.append(_parse_hostport(item, lambda r, i=i: self.error(f"{name}[{i}]", r)))
        return tuple(out)

    def port_map(self, name: str, default: tuple[tuple[int, Backend], ...]) -> tuple[tuple[int, Backend], ...]:
        v = self.get(name)
        if v is None:
            return default
        if not isinstance(v, dict):
            raise self.error(name, f"must be a table of port = \"host:port\", not {_kind(v)}")
        out: list[tuple[int, Backend]] = []
        for k, item in v.items():
            sub = f"{name}.{k}"
            try:
                port = int(k)
            except ValueError:
                raise self.error(sub, f"{k!r} is not a port number") from None
            if not 1 <= port <= 65535:
                raise self.error(sub, f"port {port} is out of range 1..65535")
            if not isinstance(item, str):
                raise self.error(sub, f"must be a \"host:port\" string, not {_kind(item)}")
            out.append((port, _parse_hostport(item, lambda r, sub=sub: self.error(sub, r))))
        return tuple(sorted(out))

    def done(self) -> None:
        unknown = sorted(set(self.data) - self.seen)
        if unknown:
            raise self.error(unknown[0], "unknown key")


def _kind(v: object) -> str:
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string", list: "a list",
            dict: "a table"}.get(type(v), type(v).__name__)


def _parse_hostport(text: str, err: Any, *, what: str = "address") -> Backend:
    try:
        return parse_hostport(text, what=what)
    except ValueError as exc:
        raise err(str(exc)) from None


def _ip_literal(addr: Backend, err: Any) -> None:
    try:
        ipaddress.ip_address(addr.host)
    except ValueError:
        raise err(f"{addr.host!r} is not an IP address (listen addresses must be literal IPs)") from None


def _backoff(sec: _Section, default: BackoffConfig) -> BackoffConfig:
    b = BackoffConfig(
        initial=sec.float_("initial", default.initial, 0.001, 3600),
        factor=sec.float_("factor", default.factor, 1.0, 100),
        cap=sec.float_("cap", default.cap, 0.001, 86400),
        reset_after=sec.float_("reset_after", default.reset_after, 0, 86400),
        start_limit=sec.int_("start_limit", default.start_limit, 0, 1_000_000),
        start_limit_window=sec.float_("start_limit_window", default.start_limit_window, 0, 10 * 86400),
    )
    sec.done()
    if b.cap < b.initial:
        raise sec.error("cap", f"{b.cap} is smaller than initial ({b.initial})")
    return b


def parse_config(data: Mapping[str, Any], *, file: str, base: Path, world_readable: bool = False) -> Config:
    """`world_readable`: the config file can be read by others (then an inline secret is refused)."""
    top = _Section(file, "", data, base)
    try:
        domain = check_domain(top.str_("domain", "macula.local"))
    except ValueError as exc:
        raise top.error("domain", str(exc)) from None
    state_dir = top.path("state_dir", Path("/var/lib/maculad"))

    s = top.sub("dns")
    dns = DNSConfig(
        listen=s.addrs("listen", DNSConfig().listen),
        ttl=s.int_("ttl", 5, 0, 86400),
        forwarders=s.addrs("forwarders", ()),
        forward_timeout=s.float_("forward_timeout", 2.0, 0.05, 60),
        max_tcp_clients=s.int_("max_tcp_clients", 256, 1, 100_000),
    )
    for i, a in enumerate(dns.listen):
        _ip_literal(a, lambda r, i=i: s.error(f"listen[{i}]", r))
    for i, a in enumerate(dns.forwarders):
        _ip_literal(a, lambda r, i=i: s.error(f"forwarders[{i}]", r))
    if not dns.listen:
        raise s.error("listen", "at least one address is needed")
    s.done()

    s = top.sub("proxy")
    pool_s = s.str_("pool", "127.0.10.0/24")
    try:
        pool = ipaddress.IPv4Network(pool_s, strict=False)
    except ValueError as exc:
        raise s.error("pool", f"{pool_s!r} is not an IPv4 network ({exc})") from None
    allow_nl = s.bool_("allow_non_loopback", False)
    if not pool.is_loopback and not allow_nl:
        raise s.error("pool", f"{pool} is not inside 127.0.0.0/8 (set proxy.allow_non_loopback = true to allow)")
    proxy = ProxyConfig(
        pool=pool,
        http_port=s.int_("http_port", 80, 1, 65535),
        https_port=s.int_("https_port", 443, 1, 65535),
        allow_non_loopback=allow_nl,
        connect_timeout=s.float_("connect_timeout", 5.0, 0.01, 600),
        drain_grace=s.float_("drain_grace", 10.0, 0, 3600),
        udp_idle_timeout=s.float_("udp_idle_timeout", 60.0, 0.01, 86400),
        udp_max_sessions=s.int_("udp_max_sessions", 1024, 1, 1_000_000),
        bind_retry_max=s.float_("bind_retry_max", 30.0, 0.01, 3600),
    )
    if proxy.http_port == proxy.https_port:
        raise s.error("https_port", f"equals http_port ({proxy.http_port})")
    s.done()

    s = top.sub("tls")
    tls = TLSConfig(
        enabled=s.bool_("enabled", True),
        redirect_http=s.bool_("redirect_http", False),
        handshake_timeout=s.float_("handshake_timeout", 10.0, 0.1, 600),
        max_leaves=s.int_("max_leaves", 4096, 1, 1_000_000),
    )
    s.done()

    s = top.sub("metrics")
    metrics = MetricsConfig(listen=s.addr("listen", MetricsConfig().listen))
    if metrics.listen is not None:
        _ip_literal(metrics.listen, lambda r: s.error("listen", r))
    s.done()

    s = top.sub("control")
    control = ControlConfig(
        socket=s.path("socket", ControlConfig().socket),
        group=s.opt_str("group", None),
    )
    s.done()

    routes = _routes(top, domain, proxy)

    s = top.sub("docker")
    bo = _backoff(s.sub("backoff"), BackoffConfig())
    services_sec = s.sub("services")
    services: dict[str, ServiceConfig] = {}
    for svc_name in list(services_sec.data):
        ss = services_sec.sub(svc_name)
        restart_s = ss.opt_str("restart", None)
        policy: RestartPolicyName | None = None
        retries: int | None = None
        if restart_s is not None:
            try:
                policy, retries = parse_restart(restart_s)
            except ValueError as exc:
                raise ss.error("restart", str(exc)) from None
        ss.done()
        services[svc_name] = ServiceConfig(restart=policy, max_retries=retries)
    compose_cmd = s.get("compose_command")
    if compose_cmd is None:
        compose_cmd = []
    if isinstance(compose_cmd, str):
        compose_cmd = compose_cmd.split()
    if not isinstance(compose_cmd, list) or not all(isinstance(x, str) and x for x in compose_cmd):
        raise s.error("compose_command", "must be a list of strings, e.g. [\"docker\", \"compose\"]")
    files = s.get("compose_files") or []
    if isinstance(files, str):
        files = [files]
    if not isinstance(files, list) or not all(isinstance(x, str) for x in files):
        raise s.error("compose_files", "must be a list of paths")
    project = s.str_("compose_project", "macula")
    if not project or not all(c.isalnum() or c in "-_" for c in project) or project != project.lower():
        raise s.error("compose_project", f"{project!r}: use lower-case letters, digits, '-' and '_'")
    docker = DockerConfig(
        enabled=s.bool_("enabled", False),
        host=s.opt_str("host", None),
        compose_files=tuple(
            p if p.is_absolute() else base / p for p in (Path(os.path.expanduser(f)) for f in files)
        ),
        compose_project=project,
        compose_command=tuple(compose_cmd),
        default_restart=s.literal("default_restart", "unless-stopped", RESTART_POLICIES),
        backoff=bo,
        services=services,
        labels=_label_filters(s),
    )
    s.done()

    s = top.sub("kubernetes")
    kd = KubernetesConfig()
    kube = KubernetesConfig(
        enabled=s.bool_("enabled", False),
        kubeconfig=s.path("kubeconfig", kd.kubeconfig),
        context=s.opt_str("context", kd.context),
        ingress_http=s.addr("ingress_http", kd.ingress_http),
        ingress_https=s.addr("ingress_https", kd.ingress_https),
        ingress_udp=s.port_map("ingress_udp", kd.ingress_udp),
        ingress_class=s.opt_str("ingress_class", None),
        stale_after=s.float_("stale_after", kd.stale_after, 1, 86400),
        watch_timeout=s.int_("watch_timeout", kd.watch_timeout, 1, 86400),
    )
    s.done()

    s = top.sub("kind")
    kdd = KindConfig()
    kind = KindConfig(
        manage=s.bool_("manage", False),
        binary=s.str_("binary", kdd.binary),
        cluster=s.str_("cluster", kdd.cluster),
        config=s.opt_path("config", None),
        kubeconfig=s.opt_path("kubeconfig", None),
        dry_run=s.bool_("dry_run", False),
        ingress_manifest=s.str_("ingress_manifest", kdd.ingress_manifest),
        registry_container=s.opt_str("registry_container", kdd.registry_container),
        registry_host=s.str_("registry_host", kdd.registry_host),
        registry_endpoint=s.str_("registry_endpoint", kdd.registry_endpoint),
        recreate=s.bool_("recreate", True),
        check_interval=s.float_("check_interval", kdd.check_interval, 0.05, 86400),
        ready_timeout=s.float_("ready_timeout", kdd.ready_timeout, 0.1, 86400),
        backoff=_backoff(s.sub("backoff"), kdd.backoff),
    )
    if not kind.cluster or not all(c.isalnum() or c in "-." for c in kind.cluster):
        raise s.error("cluster", f"{kind.cluster!r} is not a valid kind cluster name")
    s.done()

    powerdns = _powerdns(top.sub("powerdns"), domain=domain, world_readable=world_readable)

    s = top.sub("containers")
    address = s.str_("address", "auto").strip()
    if address != "auto":
        try:
            if ipaddress.ip_address(address).version != 4:
                raise ValueError
        except ValueError:
            raise s.error("address", f"{address!r} is neither \"auto\" nor an IPv4 address") from None
    fw_raw = s.get("forwarders")
    forwarders: tuple[Backend, ...] | None = None
    if fw_raw is not None and fw_raw != "auto":
        s.seen.discard("forwarders")
        forwarders = s.addrs("forwarders", ())
        for i, a in enumerate(forwarders):
            _ip_literal(a, lambda r, i=i: s.error(f"forwarders[{i}]", r))
    containers = ContainersConfig(
        enabled=s.bool_("enabled", docker.enabled),
        address=address,
        forwarders=forwarders,
        coredns=s.bool_("coredns", True),
        coredns_interval=s.float_("coredns_interval", 10.0, 0.05, 86400),
        network_interval=s.float_("network_interval", 5.0, 0.05, 86400),
    )
    if containers.enabled and not docker.enabled and address == "auto":
        raise s.error("enabled", "the container horizon finds G through Docker: enable [docker] or set "
                      "[containers] address")
    s.done()

    s = top.sub("web")
    web = WebConfig(
        enabled=s.bool_("enabled", True),
        listen=s.addr("listen", None),
        max_clients=s.int_("max_clients", 32, 1, 10_000),
        max_connections=s.int_("max_connections", 128, 2, 100_000),
        check_interval=s.float_("check_interval", 5.0, 0.5, 3600),
    )
    if web.listen is not None:
        _ip_literal(web.listen, lambda r: s.error("listen", r))
    s.done()

    s = top.sub("log")
    logc = LogConfig(
        level=s.literal("level", "info", ("debug", "info", "warning", "error")),
        format=s.literal("format", "auto", get_args(LogFormat)),
    )
    s.done()

    top.seen.add("route")
    top.done()
    return Config(
        path=Path(file), domain=domain, state_dir=state_dir, dns=dns, proxy=proxy, tls=tls, metrics=metrics,
        control=control, routes=routes, docker=docker, kubernetes=kube, kind=kind, powerdns=powerdns,
        containers=containers, web=web, log=logc,
    )


def _powerdns(s: _Section, *, domain: str, world_readable: bool) -> PowerDNSConfig:
    d = PowerDNSConfig()
    enabled = s.bool_("enabled", False)
    api = s.str_("api", d.api).strip().rstrip("/")
    scheme, sep, rest = api.partition("://")
    if scheme not in ("http", "https") or not sep or not rest or "/" in rest:
        raise s.error("api", f"{api!r} is not an http(s)://host:port URL (the /api/v1 path is added by maculad)")
    key_file = s.opt_path("api_key_file", None)
    inline = s.opt_str("api_key", None)
    if inline is not None and key_file is not None:
        raise s.error("api_key", "give api_key_file or api_key, not both")
    key = ""
    if inline is not None:
        if world_readable:
            raise s.error("api_key", "refused: the config file is readable by others; put the key in "
                                     "api_key_file (mode 0600) or chmod o-r the config file")
        key = inline.strip()
    elif key_file is not None and enabled:
        try:
            key = key_file.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise s.error("api_key_file", f"{key_file} cannot be read: {exc.strerror or exc}") from None
        except UnicodeDecodeError:
            raise s.error("api_key_file", f"{key_file} is not UTF-8 text") from None
        if not key:
            raise s.error("api_key_file", f"{key_file} is empty")
    if key and any(c in key for c in "\r\n\0"):
        raise s.error("api_key_file" if key_file else "api_key", "the key must be one line")
    if enabled and not key:
        raise s.error("api_key_file", "is required when powerdns.enabled = true (or api_key)")
    server_id = s.str_("server_id", d.server_id).strip()
    if not server_id or not all(c.isalnum() or c in "-_." for c in server_id):
        raise s.error("server_id", f"{server_id!r} is not a PowerDNS server id (letters, digits, '-', '_', '.')")
    zone = s.str_("zone", domain).strip().lower().rstrip(".")
    if zone != domain and not zone.endswith("." + domain) and not domain.endswith("." + zone):
        raise s.error("zone", f"{zone!r} is neither the domain {domain!r}, below it nor above it")
    if not zone or any(not lbl or len(lbl) > 63 for lbl in zone.split(".")):
        raise s.error("zone", f"{zone!r} is not a zone name")
    dns = s.addr("dns", d.dns)
    if dns is not None:
        _ip_literal(dns, lambda r: s.error("dns", r))
    publish = s.bool_("publish", True)
    addr = s.opt_str("publish_address", None)
    if addr is not None:
        try:
            addr = str(ipaddress.IPv4Address(addr.strip()))
        except ValueError:
            raise s.error("publish_address", f"{addr!r} is not an IPv4 address") from None
    if enabled and publish and addr is None:
        raise s.error("publish_address", "is required when powerdns.publish = true (the address other "
                                         "machines and clusters reach this one at)")
    owner = s.str_("owner_id", "").strip() or f"maculad-{socket.gethostname().split('.')[0] or 'host'}"
    if not all(c.isalnum() or c in "-_." for c in owner) or len(owner) > 100:
        raise s.error("owner_id", f"{owner!r}: use letters, digits, '-', '_' and '.' (at most 100)")
    cfg = PowerDNSConfig(
        enabled=enabled, api=api, api_key=key, api_key_file=key_file, server_id=server_id, zone=zone,
        dns=dns, publish=publish, publish_address=addr, owner_id=owner,
        timeout=s.float_("timeout", d.timeout, 0.1, 300),
        resync_interval=s.float_("resync_interval", d.resync_interval, 1, 86400),
        backoff=_backoff(s.sub("backoff"), d.backoff),
    )
    s.done()
    return cfg


def _label_filters(s: _Section) -> tuple[str, ...]:
    v = s.get("labels")
    if v is None:
        return ()
    if not isinstance(v, list) or not all(isinstance(x, str) and x.strip() and not x.startswith("=")
                                          for x in v):
        raise s.error("labels", 'must be a list of "key" or "key=value" strings')
    return tuple(x.strip() for x in v)


def _routes(top: _Section, domain: str, proxy: ProxyConfig) -> tuple[RouteConfig, ...]:
    raw = top.get("route")
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise top.error("route", "must be an array of tables ([[route]])")
    out: list[RouteConfig] = []
    names: dict[str, int] = {}
    ips: dict[str, int] = {}
    for i, item in enumerate(raw):
        if not isinstance(item, dict):
            raise top.error(f"route[{i}]", f"must be a table, not {_kind(item)}")
        s = _Section(top.file, f"route[{i}]", item, top.base)
        name_s = s.get("name")
        if not isinstance(name_s, str) or not name_s.strip():
            raise s.error("name", "is required (a name like \"grafana\" or \"grafana.macula.local\")")
        try:
            name = qualify(name_s, domain)
        except ValueError as exc:
            raise s.error("name", str(exc)) from None
        ip = s.opt_str("ip", None)
        if ip is not None:
            problem = pin_problem(ip, allow_non_loopback=proxy.allow_non_loopback)
            if problem is not None:
                raise s.error("ip", problem)
        rc = RouteConfig(
            name=name,
            ip=ip,
            http=s.addr("http", None, what="backend"),
            https=s.addr("https", None, what="backend"),
            tcp=s.port_map("tcp", ()),
            udp=s.port_map("udp", ()),
            service=s.opt_str("service", None),
            tls=s.literal("tls", "auto", TLS_MODES),
            h2c=s.bool_("h2c", False),
        )
        if rc.tls == "terminate" and rc.http is None:
            raise s.error("tls", "\"terminate\" needs an http backend (TLS is terminated in front of it)")
        if rc.tls == "passthrough" and rc.https is None:
            raise s.error("tls", "\"passthrough\" needs an https backend (TLS is passed through to it)")
        for field_name in ("http", "https"):
            b = getattr(rc, field_name)
            if b is not None and b.port == 0:
                raise s.error(field_name, "backend port 0 is not a port")
        if rc.http is None and rc.https is None and not rc.tcp and not rc.udp:
            raise s.error("name", f"route {name} has no backend (give http, https, tcp or udp)")
        for port, _ in rc.tcp:
            if port in (proxy.http_port, proxy.https_port):
                raise s.error(f"tcp.{port}", f"port {port} is the http/https port; use http/https instead")
        s.done()
        if name in names:
            raise ConfigError(top.file, f"route[{i}].name",
                              f"{name} is also the name of route[{names[name]}]")
        names[name] = i
        if ip is not None:
            if ip in ips:
                raise ConfigError(top.file, f"route[{i}].ip",
                                  f"{ip} is also pinned by route[{ips[ip]}] ({out[ips[ip]].name})")
            ips[ip] = i
        out.append(rc)
    unpinned = sum(1 for r in out if r.ip is None)
    free = sum(1 for _ in proxy.pool.hosts()) if proxy.pool.num_addresses > 2 else proxy.pool.num_addresses
    free -= sum(1 for ip in ips if ipaddress.IPv4Address(ip) in proxy.pool)
    if unpinned > free:
        raise ConfigError(top.file, "proxy.pool",
                          f"the pool {proxy.pool} has {free} free addresses but {unpinned} routes need one")
    return tuple(out)


def load_config(path: str | Path) -> Config:
    p = Path(path)
    file = str(p)
    try:
        raw = p.read_bytes()
    except FileNotFoundError:
        raise ConfigError(file, "", "no such file") from None
    except OSError as exc:
        raise ConfigError(file, "", f"cannot be read: {exc.strerror or exc}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(file, "", f"is not UTF-8 ({exc.reason} at byte {exc.start})") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(file, "", f"is not valid TOML: {exc}") from None
    try:
        world_readable = bool(p.stat().st_mode & stat.S_IROTH)
    except OSError:
        world_readable = True
    return parse_config(data, file=file, base=p.resolve().parent, world_readable=world_readable)
