"""Reload as a transaction: plan, bind everything new, then swap — or change nothing.

1. Read: the config is read and checked in a thread (`config.load_config` accepts only a
   regular file of sane size, `preflight.check_host` the host checks), so neither a FIFO nor
   a slow resolver blocks the event loop. An invalid config is refused (400).
2. Plan: `plan_reload(old, new)` is pure: which keys need a restart (refused, 400), which
   addresses are new (DNS listeners, the metrics and page addresses), what else changes.
3. Stage: every new listener is bound beside the serving ones (on macOS after its lo0 alias is
   added) — DNS (`DNSServer.stage`),
   metrics and page sockets, and the relay listeners the new table would add
   (`RouteTableManager.preview` + `Relay.stage`). Any failure closes what was bound here
   and refuses the reload (409, the address and the reason); nothing else was touched.
4. Swap: only steps that cannot fail on a bind: the config, the pool and routes, DNS
   `commit` (closing the dropped addresses), the page and metrics servers handed their
   pre-bound sockets, live reconfiguration, sources restarted where their section changed.

Every outcome is recorded once (`Daemon.record_reload`): the reloads metric, the log,
`status.last_reload` {time, ok, error, changed} and a `reload` event.
"""

from __future__ import annotations

import asyncio
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from maculad.app.preflight import check_host
from maculad.config import Config, ConfigError, PowerDNSConfig, load_config
from maculad.control.protocol import ReloadAnswer
from maculad.core.net import Backend, tcp_listen_socket
from maculad.dns.server import StagedListener
from maculad.observability.logging import configure_logging
from maculad.providers.static import config_routes

if TYPE_CHECKING:
    from maculad.proxy.spec import ListenerSpec
    from maculad.app.daemon import Daemon


def peer_args(p: PowerDNSConfig) -> dict[str, Any]:
    """The DNS server's PowerDNS arguments: ask PowerDNS about in-zone names no route has."""
    if p.enabled and p.dns is not None:
        return {"peer": p.dns, "peer_zone": p.zone}
    return {"peer": None, "peer_zone": None}


def own_addresses(cfg: Config) -> tuple[str, ...]:
    """The IPs maculad itself binds besides route IPs: DNS listeners, the page and metrics addresses
    (on macOS each needs an lo0 alias: `proxy/platform.py`)."""
    ips = [b.host for b in cfg.dns.listen]
    if cfg.web.enabled:
        ips.append(cfg.web_listen.host)
    if cfg.metrics.listen is not None:
        ips.append(cfg.metrics.listen.host)
    return tuple(dict.fromkeys(ips))


def apex(cfg: Config) -> tuple[str, ...]:
    """The domain's own A answer: where the status page is served, when it is."""
    return (cfg.web_listen.host,) if cfg.web.enabled else ()


@dataclass(frozen=True, slots=True)
class ReloadPlan:
    """What a reload from one config to another does (pure: see `plan_reload`)."""

    restart: tuple[str, ...] = ()  # keys that need a restart: the reload is refused
    pool: bool = False
    dns: bool = False  # any [dns] setting
    dns_add: tuple[Backend, ...] = ()  # DNS addresses to bind first
    apex: bool = False
    web: bool = False  # the page server is replaced
    web_bind: Backend | None = None  # a new page address to bind first
    peer: bool = False
    powerdns: bool = False
    proxy: bool = False
    metrics: bool = False
    metrics_bind: Backend | None = None
    sources: tuple[str, ...] = ()  # of docker, kubernetes, kind: restarted
    coredns: bool = False
    containers: bool = False  # the container horizon is replaced
    containers_section: bool = False  # [containers] itself changed

    def changed(self, *, routes: bool) -> list[str]:
        """The names `maculactl reload` reports, `routes` when the config's routes changed."""
        out = ["proxy.pool"] if self.pool else []
        out += ["routes"] if routes else []
        for flag, name in ((self.dns, "dns"), (self.web, "web"), (self.peer, "powerdns.dns"),
                           (self.powerdns, "powerdns"), (self.proxy, "proxy"), (self.metrics, "metrics")):
            if flag:
                out.append(name)
        out += list(self.sources)
        if self.containers_section:
            out.append("containers")
        return out


def plan_reload(old: Config, new: Config) -> ReloadPlan:
    restart = [k for k in ("domain", "state_dir") if getattr(old, k) != getattr(new, k)]
    restart += [f"tls.{k}" for k in ("enabled", "handshake_timeout", "max_leaves", "signer_timeout")
                if getattr(old.tls, k) != getattr(new.tls, k)]
    if old.control.socket != new.control.socket:
        restart.append("control.socket")
    web = (old.web, old.web_listen) != (new.web, new.web_listen)
    web_new_address = not old.web.enabled or old.web_listen != new.web_listen
    metrics = old.metrics != new.metrics
    ports_changed = (old.proxy.http_port, old.proxy.https_port) != (new.proxy.http_port, new.proxy.https_port)
    sources = tuple(s for s, same in (("docker", old.docker == new.docker and not ports_changed),
                                      ("kubernetes", old.kubernetes == new.kubernetes and not ports_changed),
                                      ("kind", old.kind == new.kind)) if not same)
    return ReloadPlan(
        restart=tuple(restart),
        pool=(old.proxy.pool, old.proxy.allow_non_loopback) != (new.proxy.pool, new.proxy.allow_non_loopback),
        dns=old.dns != new.dns,
        dns_add=tuple(a for a in new.dns.listen if a not in old.dns.listen),
        apex=apex(old) != apex(new),
        web=web,
        web_bind=new.web_listen if web and new.web.enabled and web_new_address else None,
        peer=peer_args(old.powerdns) != peer_args(new.powerdns),
        powerdns=(old.powerdns, old.dns.ttl) != (new.powerdns, new.dns.ttl)
        and (old.powerdns.enabled or new.powerdns.enabled),
        proxy=old.proxy != new.proxy or old.tls.redirect_http != new.tls.redirect_http,
        metrics=metrics,
        metrics_bind=new.metrics.listen if metrics else None,
        sources=sources,
        coredns=(old.containers, old.kubernetes, old.domain) != (new.containers, new.kubernetes, new.domain),
        containers=(old.containers, old.docker, old.dns, old.proxy) != (new.containers, new.docker, new.dns,
                                                                         new.proxy),
        containers_section=old.containers != new.containers,
    )


def read_checked(path: Path) -> Config:
    """The config at `path`, through the schema and the host checks (blocking: run in a thread)."""
    cfg = load_config(path)
    check_host(cfg)
    return cfg


@dataclass(slots=True)
class Staged:
    """What stage bound: handed to the components on swap, closed on failure."""

    dns: list[StagedListener] = field(default_factory=list)
    metrics: socket.socket | None = None
    web: socket.socket | None = None
    relay: dict[ListenerSpec, socket.socket] = field(default_factory=dict)

    def close(self, d: Daemon) -> None:
        if d.dns is not None:
            d.dns.discard(self.dns)
        for sock in (self.metrics, self.web, *self.relay.values()):
            if sock is not None:
                sock.close()


async def stage(d: Daemon, new: Config, p: ReloadPlan) -> Staged:
    """Bind every new listener; OSError (the others closed) when one cannot be bound."""
    staged = Staged()
    try:
        await d.own_aliases.keep_only({*own_addresses(d.config), *own_addresses(new)})
        if d.dns is not None and p.dns_add:
            staged.dns = await d.dns.stage(p.dns_add)
        if p.metrics_bind is not None:
            staged.metrics = _listen(p.metrics_bind, "metrics")
        if p.web_bind is not None:
            staged.web = _listen(p.web_bind, "web")
        if d.relay is not None:
            candidate = d.table.preview({"config": config_routes(new)}, pool=new.proxy.pool,
                                        allow_non_loopback=new.proxy.allow_non_loopback)
            staged.relay = await d.relay.stage(candidate, new.proxy, redirect_http=new.tls.redirect_http)
    except BaseException:
        staged.close(d)
        await d.own_aliases.keep_only(own_addresses(d.config))
        raise
    return staged


def _listen(addr: Backend, what: str) -> socket.socket:
    try:
        return tcp_listen_socket(addr, backlog=128)
    except OSError as exc:
        raise OSError(exc.errno, f"{what}: {exc.strerror}") from None


async def reload(d: Daemon) -> ReloadAnswer:
    """Re-read the config and apply it as one transaction; ControlError (4xx) when refused."""
    old = d.config
    try:
        new = await asyncio.to_thread(read_checked, old.path)
    except ConfigError as exc:
        raise d.record_reload("invalid", error=f"config refused, nothing changed: {exc}", status=400) from None
    p = plan_reload(old, new)
    if p.restart:
        raise d.record_reload("refused", status=400,
                              error=f"changing {', '.join(p.restart)} needs a restart; nothing changed")
    try:
        staged = await stage(d, new, p)
    except OSError as exc:
        raise d.record_reload("bind_failed", status=409,
                              error=f"{exc.strerror or exc}; nothing changed") from None
    changed = await swap(d, old, new, p, staged)
    reply: ReloadAnswer = {"ok": True, "changed": changed}
    if d.table.save_error is not None:
        reply["state_error"] = (f"{d.table.save_error}; the new routes are served once the state is saved "
                                "(retrying)")
    d.record_reload("applied", changed=changed, state_error=reply.get("state_error"))
    return reply


async def swap(d: Daemon, old: Config, new: Config, p: ReloadPlan, staged: Staged) -> list[str]:
    """Apply `new`: no step here binds an address that was not bound in `stage`."""
    configure_logging(new.log)
    d.config = new
    if p.pool:
        d.table.set_pool(new.proxy.pool, allow_non_loopback=new.proxy.allow_non_loopback)
    if d.relay is not None:
        d.relay.adopt(staged.relay)
        if p.proxy:
            d.relay.reconfigure(new.proxy, redirect_http=new.tls.redirect_http)
    routes = d.table.update("config", config_routes(new))
    if d.dns is not None:
        if p.dns:
            d.dns.commit(staged.dns, new.dns, apex_a=apex(new))
        elif p.apex:
            d.dns.reconfigure(new.dns, apex_a=apex(new))
        if p.peer:
            d.dns.set_peer(**peer_args(new.powerdns))
    if p.web:
        await d.stop_web()
        await d.start_web(new, sock=staged.web)
    if p.powerdns:
        await d.stop_powerdns()
        await d.start_powerdns(new)
    if p.metrics:
        await d.stop_metrics()
        if new.metrics.listen is not None:
            await d.start_metrics(new, sock=staged.metrics)
    for section in p.sources:
        await d.stop_source(section)
    if p.coredns:
        await d.stop_source("coredns")
    if p.containers:
        await d.stop_containers(grace=old.proxy.drain_grace)  # drained under the settings it served with
        await d.start_containers(new)
    if p.sources or p.containers_section or d.coredns is None:
        await d.start_sources(new)
    await d.own_aliases.keep_only(own_addresses(new))  # the dropped addresses are closed by now
    if d.relay is not None:
        await d.relay.wait_reconciled()
    return p.changed(routes=routes)
