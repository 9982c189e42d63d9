"""The Ingress provider end to end: the real kubernetes-asyncio client, a real
kubeconfig, real sockets, the real route table.

Tests marked `both` run against the fake API server and — when
`MACULA_TEST_KUBECONFIG` (and optionally `MACULA_TEST_CONTEXT`) names a real
cluster — against it too, creating Ingresses in throw-away namespaces. The
failure-injection tests (cut streams, dead streams, 410, outages) need the fake.
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
import secrets
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest
from kubernetes_asyncio import client as k8s
from kubernetes_asyncio.client.exceptions import ApiException
from structlog.testing import capture_logs

from maculad.config import BackoffConfig, Config, KubernetesConfig, ProxyConfig
from maculad.core.events import EventBus
from maculad.observability.metrics import Metrics
from maculad.providers.base import port_maps
from maculad.providers.kubernetes import KubernetesProvider
from maculad.routes.manager import RouteTableManager
from maculad.routes.model import RouteSpec
from maculad.core.net import Backend
from maculad.routes.store import AllocationStore
from maculad.core.tasks import Stage, TaskOwner
from tests.support.k8s_reference import api_client
from tests.support.fake_k8s import INGRESSES, FakeKubeAPI

DOMAIN = "macula.local"
REAL_KUBECONFIG = os.environ.get("MACULA_TEST_KUBECONFIG")
REAL_CONTEXT = os.environ.get("MACULA_TEST_CONTEXT") or None
FAST = BackoffConfig(initial=0.05, factor=2.0, cap=0.5)


async def wait_until(cond: Callable[[], bool], what: str, timeout: float = 15.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not cond():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


class Cluster:
    """Writes Ingresses through kubernetes-asyncio: the same code for the fake and a real cluster."""

    def __init__(self, api: k8s.ApiClient, suffix: str) -> None:
        self.api = api
        self.net = k8s.NetworkingV1Api(api)
        self.core = k8s.CoreV1Api(api)
        self.suffix = suffix
        self.namespaces: list[str] = []

    def host(self, name: str) -> str:
        return f"{name}-{self.suffix}.{DOMAIN}"

    async def namespace(self, base: str) -> str:
        ns = f"{base}-{self.suffix}"
        if ns not in self.namespaces:
            await self.core.create_namespace(k8s.V1Namespace(metadata=k8s.V1ObjectMeta(name=ns)))
            self.namespaces.append(ns)
        return ns

    @staticmethod
    def body(ns: str, name: str, hosts: Iterable[str], **kw: Any) -> dict[str, Any]:
        return FakeKubeAPI.ingress_object(ns, name, hosts, **kw)

    async def create(self, ns: str, name: str, hosts: Iterable[str], **kw: Any) -> None:
        await self.net.create_namespaced_ingress(ns, self.body(ns, name, hosts, **kw))

    async def set_hosts(self, ns: str, name: str, hosts: Iterable[str]) -> None:
        current = await self.net.read_namespaced_ingress(name, ns)
        body = self.body(ns, name, hosts)
        body["metadata"]["resourceVersion"] = current.metadata.resource_version
        await self.net.replace_namespaced_ingress(name, ns, body)

    async def delete(self, ns: str, name: str) -> None:
        await self.net.delete_namespaced_ingress(name, ns)

    async def cleanup(self) -> None:
        for ns in self.namespaces:
            try:
                await self.core.delete_namespace(ns)
            except ApiException:
                pass


@dataclass
class Env:
    routes: RouteTableManager
    metrics: Metrics
    events: EventBus
    owner: TaskOwner
    config: Config
    fake: FakeKubeAPI | None = None
    cluster: Cluster | None = None
    providers: list[KubernetesProvider] = field(default_factory=list)
    fatal: list[str] = field(default_factory=list)

    async def start(self, **kube: Any) -> KubernetesProvider:
        cfg = replace(self.config, kubernetes=replace(self.config.kubernetes, **kube))
        p = KubernetesProvider(config=cfg, routes=self.routes, metrics=self.metrics, events=self.events,
                               backoff=FAST)
        self.owner.spawn(f"kubernetes-{len(self.providers)}", p.run, stage=Stage.SOURCES)
        self.providers.append(p)
        return p

    async def stop(self, p: KubernetesProvider) -> None:
        await self.owner.stop(f"kubernetes-{self.providers.index(p)}")
        p.close()

    def names(self) -> set[str]:
        return {r.name for r in self.routes.current.routes if r.source == "kubernetes"}

    def metric(self, name: str, **labels: str) -> float:
        v = self.metrics.registry.get_sample_value(name, labels)
        return 0.0 if v is None else v

    async def wait_names(self, present: Iterable[str] = (), absent: Iterable[str] = ()) -> None:
        want, gone = set(present), set(absent)
        await wait_until(lambda: want <= self.names() and not (gone & self.names()),
                         f"routes {sorted(want)} present and {sorted(gone)} absent")


def _config(tmp_path: Path, kubeconfig: Path, context: str | None) -> Config:
    return Config(
        path=tmp_path / "maculad.toml", domain=DOMAIN, state_dir=tmp_path / "state",
        proxy=ProxyConfig(pool=ipaddress.IPv4Network("127.1.0.0/16")),
        kubernetes=KubernetesConfig(enabled=True, kubeconfig=kubeconfig, context=context, stale_after=30,
                                    watch_timeout=60),
    )


async def _env(tmp_path: Path, kubeconfig: Path, context: str | None) -> Env:
    metrics = Metrics()
    cfg = _config(tmp_path, kubeconfig, context)
    routes = RouteTableManager(domain=DOMAIN, pool=cfg.proxy.pool, store=AllocationStore(state_dir=cfg.state_dir),
                               metrics=metrics)
    fatal: list[str] = []
    owner = TaskOwner(metrics=metrics, on_fatal=lambda name, exc: fatal.append(name))
    return Env(routes=routes, metrics=metrics, events=EventBus(), config=cfg, owner=owner, fatal=fatal)


async def _close(env: Env) -> None:
    for p in env.providers:
        await env.stop(p)
    assert env.fatal == []


@pytest.fixture
async def fenv(tmp_path: Path) -> AsyncIterator[Env]:
    """A provider environment against the fake API server (nothing started yet)."""
    fake = FakeKubeAPI(bookmark_interval=0.5)
    await fake.start()
    env = await _env(tmp_path, fake.write_kubeconfig(tmp_path / "kubeconfig"), "fake")
    env.fake = fake
    try:
        yield env
    finally:
        await _close(env)
        await fake.stop()


# a real API server cannot run here (no kind): the "real" cases exist only when one is given
@pytest.fixture(params=["fake", "real"] if REAL_KUBECONFIG else ["fake"])
async def env(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Env]:
    """An environment with a `Cluster` writer: the fake, and also a real cluster when
    MACULA_TEST_KUBECONFIG (and MACULA_TEST_CONTEXT) name one."""
    fake: FakeKubeAPI | None = None
    if request.param == "real":
        kubeconfig, context = Path(REAL_KUBECONFIG), REAL_CONTEXT
    else:
        fake = FakeKubeAPI(bookmark_interval=0.5)
        await fake.start()
        kubeconfig, context = fake.write_kubeconfig(tmp_path / "kubeconfig"), "fake"
    env = await _env(tmp_path, kubeconfig, context)
    env.fake = fake
    try:
        async with api_client(kubeconfig=kubeconfig, context=context) as api:
            env.cluster = Cluster(api, secrets.token_hex(3))
            try:
                yield env
            finally:
                await _close(env)
                await env.cluster.cleanup()
    finally:
        if fake is not None:
            await fake.stop()


# ---------------------------------------------------------------------------------- against any cluster


async def test_create_change_host_delete(env: Env) -> None:
    c = env.cluster
    assert c is not None
    p = await env.start()
    await wait_until(lambda: p.synced, "the first list")
    ns = await c.namespace("apps")
    await c.create(ns, "console", [c.host("console")])
    await env.wait_names(present=[c.host("console")])
    route = env.routes.current.lookup(c.host("console"))
    assert route is not None and route.origin == f"kubernetes:{ns}/console"
    assert ipaddress.IPv4Address(route.ip) in ipaddress.IPv4Network("127.1.0.0/16")
    assert route.backend_for("tcp", 80) == Backend("127.0.0.1", 8080)
    assert route.backend_for("tcp", 443) == Backend("127.0.0.1", 8443)
    assert route.backend_for("udp", 4433) == Backend("127.0.0.1", 4433)

    await c.set_hosts(ns, "console", [c.host("console2")])
    await env.wait_names(present=[c.host("console2")], absent=[c.host("console")])

    await c.delete(ns, "console")
    await env.wait_names(absent=[c.host("console2")])
    assert env.metric("maculad_kubernetes_watch_events_total", type="ADDED") >= 1
    assert env.metric("maculad_kubernetes_watch_events_total", type="MODIFIED") >= 1
    assert env.metric("maculad_kubernetes_watch_events_total", type="DELETED") >= 1
    assert env.metric("maculad_kubernetes_connected") == 1
    assert env.metric("maculad_routes", source="kubernetes") == len(env.names())


async def test_multi_host_multi_namespace_and_hosts_outside_the_domain(env: Env) -> None:
    c = env.cluster
    assert c is not None
    a, b = await c.namespace("team-a"), await c.namespace("team-b")
    await c.create(a, "web", [c.host("peer1"), c.host("peer2"), f"outside-{c.suffix}.example.com"])
    p = await env.start()
    await env.wait_names(present=[c.host("peer1"), c.host("peer2")])
    with capture_logs() as logs:
        await c.create(b, "web", [c.host("bootstrap"), f"*.apps-{c.suffix}.{DOMAIN}"])
        await env.wait_names(present=[c.host("bootstrap"), f"*.apps-{c.suffix}.{DOMAIN}"])
        await c.create(b, "other", [c.host("other")])
        await env.wait_names(present=[c.host("other")])
    origins = {r.name: r.origin for r in env.routes.current.routes}
    assert origins[c.host("peer1")] == origins[c.host("peer2")] == f"kubernetes:{a}/web"
    assert origins[c.host("bootstrap")] == f"kubernetes:{b}/web"
    wild = env.routes.current.lookup(f"anything.apps-{c.suffix}.{DOMAIN}")
    assert wild is not None and wild.name == f"*.apps-{c.suffix}.{DOMAIN}"
    assert not any(n.endswith(".example.com") for n in env.names())
    # the outside host was logged when first seen (before this capture), not again on later rebuilds
    assert not [e for e in logs if e["event"] == "kubernetes_ingress_host_skipped"
                and e["host"] == f"outside-{c.suffix}.example.com"]
    assert p.status()["skipped"] >= 1


async def test_a_config_route_wins_a_name_conflict_and_the_loser_is_reported(env: Env) -> None:
    c = env.cluster
    assert c is not None
    ns = await c.namespace("conflict")
    name = c.host("grafana")
    env.routes.update("config", [RouteSpec(name=name, source="config", origin="config:grafana", ports=port_maps(
        http_port=80, https_port=443, http=Backend("127.0.0.1", 3000)))])
    await env.start()
    await c.create(ns, "grafana", [name, c.host("ok")])
    await env.wait_names(present=[c.host("ok")])
    await wait_until(lambda: any(x.name == name for x in env.routes.current.conflicts), "the conflict")
    route = env.routes.current.lookup(name)
    assert route is not None and route.source == "config"
    conflict = next(x for x in env.routes.current.conflicts if x.name == name)
    assert (conflict.kind, conflict.loser, conflict.winner) == ("name", f"kubernetes:{ns}/grafana", "config:grafana")
    assert env.metric("maculad_route_conflicts", kind="name") >= 1


# ---------------------------------------------------------------------------------- fake-only failure modes


async def test_cut_streams_resume_from_the_last_version_without_relisting(fenv: Env) -> None:
    fake = fenv.fake
    assert fake is not None
    fake.create_ingress("a", "one", ["one.macula.local"])
    p = await fenv.start()
    await fenv.wait_names(present=["one.macula.local"])
    await wait_until(lambda: fake.watch_count == 1, "the watch")
    for i, mid_event in enumerate((False, True)):
        assert fake.cut_streams(mid_event=mid_event) == 1
        fake.create_ingress("a", f"gap{i}", [f"gap{i}.macula.local"])  # lands while nobody watches
        await fenv.wait_names(present=[f"gap{i}.macula.local"])
        await wait_until(lambda: fake.watch_count == 1, "the resumed watch")
    assert p.status()["relists"] == 1
    assert fake.count_requests("ingresses", watch=False) == 1  # one list, ever
    assert fake.count_requests("ingresses", watch=True) >= 3
    watches = [r for r in fake.requests if r.is_watch]
    assert all(r.query.get("resourceVersion") not in (None, "", "0") for r in watches)
    assert all(r.query.get("allowWatchBookmarks") == "true" and r.query.get("timeoutSeconds") == "60"
               for r in watches)
    assert fenv.metric("maculad_kubernetes_reconnects_total") >= 2
    assert fenv.metric("maculad_kubernetes_relists_total") == 1


async def test_server_side_timeout_resumes_and_bookmarks_advance_the_version(fenv: Env) -> None:
    fake = fenv.fake
    assert fake is not None
    p = await fenv.start(watch_timeout=1)
    await wait_until(lambda: p.synced, "the first list")
    rv0 = int(p.status()["resource_version"])
    fake.create(INGRESSES, {"metadata": {"name": "cm-like", "namespace": "x"}, "spec": {}})
    fake.delete(INGRESSES, "x", "cm-like")
    fake.create_ingress("b", "z", ["z.macula.local"])
    await fenv.wait_names(present=["z.macula.local"])
    await wait_until(lambda: fake.count_requests("ingresses", watch=True) >= 3, "watches ended by the server")
    await wait_until(lambda: fenv.metric("maculad_kubernetes_watch_events_total", type="BOOKMARK") >= 1, "a bookmark")
    assert int(p.status()["resource_version"]) > rv0
    assert p.status()["relists"] == 1
    assert fenv.metric("maculad_kubernetes_reconnects_total") == 0  # a clean end is no error


async def test_an_error_event_reconnects_and_resumes(fenv: Env) -> None:
    fake = fenv.fake
    assert fake is not None
    p = await fenv.start()
    await wait_until(lambda: p.synced and fake.watch_count == 1, "the watch")
    assert fake.send_error(500, "InternalError", "etcdserver: leader changed") == 1
    fake.create_ingress("a", "after", ["after.macula.local"])
    await fenv.wait_names(present=["after.macula.local"])
    assert p.status()["relists"] == 1
    assert fenv.metric("maculad_kubernetes_watch_events_total", type="ERROR") == 1
    assert fenv.metric("maculad_kubernetes_reconnects_total") >= 1


async def test_a_burst_of_changes_is_coalesced_and_ends_in_the_right_state(fenv: Env) -> None:
    fake = fenv.fake
    assert fake is not None
    p = await fenv.start()
    await wait_until(lambda: p.synced and fake.watch_count == 1, "the watch")
    # a lone event is one rebuild and one new table
    rebuilds, version = p.status()["rebuilds"], fenv.routes.current.version
    fake.create_ingress("solo", "one", ["one.macula.local"])
    await fenv.wait_names(present=["one.macula.local"])
    assert (p.status()["rebuilds"], fenv.routes.current.version) == (rebuilds + 1, version + 1)
    # 350 events committed while the provider cannot run (this test holds the loop): they reach its
    # stream together and are applied together
    rebuilds, version = p.status()["rebuilds"], fenv.routes.current.version
    for i in range(200):
        fake.create_ingress(f"ns{i % 7}", f"b{i}", [f"b{i}.macula.local"])
    for i in range(0, 200, 2):
        fake.delete_ingress(f"ns{i % 7}", f"b{i}")
    for i in range(1, 200, 4):
        fake.set_ingress_hosts(f"ns{i % 7}", f"b{i}", [f"b{i}-new.macula.local"])
    last_rv = str(fake.resource_version)
    want = {f"b{i}-new.macula.local" if i % 4 == 1 else f"b{i}.macula.local" for i in range(1, 200, 2)}
    want.add("one.macula.local")
    await wait_until(lambda: p.status()["resource_version"] == last_rv, "the last event of the burst")
    assert fenv.names() == want
    assert p.status()["ingresses"] == 101
    assert fenv.metric("maculad_kubernetes_watch_events_total", type="ADDED") == 201
    assert fenv.metric("maculad_kubernetes_watch_events_total", type="DELETED") == 100
    assert fenv.metric("maculad_kubernetes_watch_events_total", type="MODIFIED") == 50
    built = p.status()["rebuilds"] - rebuilds
    assert 1 <= built <= 35, f"350 buffered events cost {built} table rebuilds"
    assert fenv.routes.current.version - version <= built  # each rebuild at most one new table


async def test_a_silent_stream_is_restarted(fenv: Env) -> None:
    fake = fenv.fake
    assert fake is not None
    p = await fenv.start(stale_after=1.0)
    await wait_until(lambda: p.synced and fake.watch_count == 1, "the watch")
    assert fake.freeze_streams() == 1  # connected, but nothing ever arrives again
    fake.create_ingress("a", "late", ["late.macula.local"])
    await fenv.wait_names(present=["late.macula.local"])
    down = [e for e in fenv.events.recent() if e["kind"] == "kubernetes_disconnected"]
    assert [e["error"] for e in down] == ["no event or bookmark for 1s: the stream is dead"]
    assert p.status()["connected"] is True and p.status()["last_error"] is None  # cleared once reconnected
    assert p.status()["relists"] == 1
    assert fenv.metric("maculad_kubernetes_reconnects_total") >= 1


async def test_410_after_a_gap_relists_and_picks_up_what_was_missed(fenv: Env) -> None:
    fake = fenv.fake
    assert fake is not None
    for name in ("keep", "change", "drop"):
        fake.create_ingress("a", name, [f"{name}.macula.local"])
    p = await fenv.start()
    await fenv.wait_names(present=["keep.macula.local", "change.macula.local", "drop.macula.local"])
    await fake.outage("refuse")
    await wait_until(lambda: not p.status()["connected"], "the provider to notice the outage")
    fake.set_ingress_hosts("a", "change", ["changed.macula.local"])
    fake.delete_ingress("a", "drop")
    fake.create_ingress("b", "new", ["new.macula.local"])
    fake.compact()
    assert {"keep.macula.local", "change.macula.local", "drop.macula.local"} <= fenv.names()  # kept while down
    await fake.recover()
    await fenv.wait_names(present=["keep.macula.local", "changed.macula.local", "new.macula.local"],
                          absent=["change.macula.local", "drop.macula.local"])
    assert p.status()["relists"] == 2
    assert p.status()["connected"] is True and p.status()["last_error"] is None
    assert fenv.metric("maculad_kubernetes_watch_events_total", type="ERROR") == 1


@pytest.mark.parametrize("mode", ["refuse", "503"])
async def test_an_outage_keeps_the_routes_then_recovers(fenv: Env, mode: str) -> None:
    fake = fenv.fake
    assert fake is not None
    fake.create_ingress("a", "console", ["console.macula.local"])
    p = await fenv.start()
    await fenv.wait_names(present=["console.macula.local"])
    version = fenv.routes.current.version
    await fake.outage(mode)  # type: ignore[arg-type]
    await wait_until(lambda: p.status()["reconnects"] >= 3, "several failed reconnects")
    status = p.status()
    assert status["connected"] is False and status["last_error"]
    assert fenv.metric("maculad_kubernetes_connected") == 0
    assert fenv.routes.current.version == version  # nothing (no empty snapshot) was published
    assert fenv.names() == {"console.macula.local"}
    await fake.recover()
    fake.create_ingress("a", "peer1", ["peer1.macula.local"])
    await fenv.wait_names(present=["console.macula.local", "peer1.macula.local"])
    assert p.status()["connected"] is True
    assert [e["kind"] for e in fenv.events.recent() if e["kind"].startswith("kubernetes_")][-2:] \
        in (["kubernetes_disconnected", "kubernetes_connected"], ["kubernetes_connected", "kubernetes_relisted"])


async def test_slow_and_hanging_answers(fenv: Env) -> None:
    fake = fenv.fake
    assert fake is not None
    fake.create_ingress("a", "s", ["s.macula.local"])
    fake.delay = 0.3
    p = await fenv.start()
    await fenv.wait_names(present=["s.macula.local"])
    fake.delay = 0.0
    await wait_until(lambda: fake.watch_count == 1, "the watch")
    fake.pause()  # the next request hangs; the open stream still delivers
    fake.create_ingress("a", "t", ["t.macula.local"])
    await fenv.wait_names(present=["t.macula.local"])
    watches = fake.count_requests("ingresses", watch=True)
    fake.cut_streams()
    # the provider noticed the cut and its resumed watch is the request that hangs
    await wait_until(lambda: not p.status()["connected"] and fake.count_requests("ingresses", watch=True)
                     == watches + 1, "the resumed watch to arrive and hang")
    fake.create_ingress("a", "u", ["u.macula.local"])  # committed while the provider waits
    assert fenv.names() == {"s.macula.local", "t.macula.local"}  # kept while the server hangs
    fake.resume()
    await fenv.wait_names(present=["u.macula.local"])
    # the hanging watch itself delivered it: no relist, no other attempt
    assert p.status()["relists"] == 1 and p.status()["connected"] is True
    assert fake.count_requests("ingresses", watch=True) == watches + 1
    assert fenv.names() == {"s.macula.local", "t.macula.local", "u.macula.local"}


async def test_missing_kubeconfig_is_retried_until_it_appears(fenv: Env, tmp_path: Path) -> None:
    fake = fenv.fake
    assert fake is not None
    later = tmp_path / "later" / "kubeconfig"
    p = await fenv.start(kubeconfig=later)
    await wait_until(lambda: p.status()["reconnects"] >= 2, "failed attempts")
    assert "does not exist" in (p.status()["last_error"] or "")
    assert fenv.names() == set()
    fake.create_ingress("a", "x", ["x.macula.local"])
    fake.write_kubeconfig(later)
    await fenv.wait_names(present=["x.macula.local"])


async def test_malformed_objects_are_skipped_and_the_rest_routes(fenv: Env) -> None:
    fake = fenv.fake
    assert fake is not None
    fake.create(INGRESSES, {"metadata": {"name": "nospec", "namespace": "a"}})
    fake.create(INGRESSES, {"metadata": {"name": "rules", "namespace": "a"}, "spec": {"rules": ["x", 3]}})
    with capture_logs() as logs:
        p = await fenv.start()
        await wait_until(lambda: p.synced, "the first list")
        fake.create(INGRESSES, {"metadata": {"name": "bad", "namespace": "a"},
                                "spec": {"rules": [{"host": "bad host.macula.local"}, {"host": "ok.macula.local"}]}})
        await fenv.wait_names(present=["ok.macula.local"])
        fake.create_ingress("a", "more", ["more.macula.local"])
        await fenv.wait_names(present=["more.macula.local"])
    skipped = [e for e in logs if e["event"] == "kubernetes_ingress_host_skipped"]
    bad = [e for e in skipped if e["host"] == "bad host.macula.local"]
    assert len(bad) == 1 and bad[0]["log_level"] == "warning"  # logged once, not on every rebuild
    assert {e["ingress"] for e in skipped} == {"a/nospec", "a/rules", "a/bad"}
    assert fenv.names() == {"ok.macula.local", "more.macula.local"}


async def test_ingress_class_filter(fenv: Env) -> None:
    fake = fenv.fake
    assert fake is not None
    fake.create_ingress("a", "n", ["n.macula.local"], ingress_class="nginx")
    fake.create_ingress("a", "t", ["t.macula.local"], ingress_class="traefik")
    fake.create_ingress("a", "l", ["l.macula.local"], annotations={"kubernetes.io/ingress.class": "nginx"})
    await fenv.start(ingress_class="nginx")
    await fenv.wait_names(present=["n.macula.local", "l.macula.local"])
    fake.set_ingress_hosts("a", "t", ["t.macula.local"], ingress_class="nginx")
    await fenv.wait_names(present=["t.macula.local"])
    fake.set_ingress_hosts("a", "n", ["n.macula.local"], ingress_class="traefik")
    await fenv.wait_names(absent=["n.macula.local"])
    assert fenv.names() == {"l.macula.local", "t.macula.local"}


async def test_stop_and_status(fenv: Env) -> None:
    fake = fenv.fake
    assert fake is not None
    fake.create_ingress("a", "x", ["x.macula.local"])
    p = await fenv.start()
    await fenv.wait_names(present=["x.macula.local"])
    s = p.status()
    assert s["connected"] is True and s["ingresses"] == 1 and s["routes"] == 1
    assert s["resource_version"] == str(fake.resource_version)
    assert isinstance(s["last_event_age"], float)
    assert fenv.metric("maculad_kubernetes_seconds_since_last_event") >= 0
    await fenv.stop(p)
    await wait_until(lambda: fake.watch_count == 0, "the watch to close")
    assert p.status()["connected"] is False
    assert fenv.names() == {"x.macula.local"}  # stopping the provider does not withdraw its routes
