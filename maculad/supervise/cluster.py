"""ClusterSupervisor: keeps the kind cluster in the state the config asks for.

One reconcile loop (a task on the daemon's `TaskOwner`) repeats: observe
(`kind get clusters`, the node containers by label, `/readyz` through the
exported kubeconfig), ask the pure `cluster_plan.plan()` for the next step,
do it. Repairs (create, recreate, start nodes) go through the shared
`RestartTracker` (policy `always`, `kind.backoff`): the first repair at
start-up is immediate, a cluster that breaks after running well, or a repair
that did not take, waits the tracker's backoff, and too many repairs inside
the start-limit window end in `failed` until `recreate()` is asked for.

After every (re)creation — and once after maculad starts, to verify — the
wiring is (re)done: the registry container joins the `kind` network, each
node gets containerd's `hosts.toml` for the registry, the KEP-1755 ConfigMap
and the ingress controller are server-side applied, and the controller's
Deployments are waited for. The cluster is `ready` only when every node
runs, `/readyz` answers and the wiring is done.

Dry-run observes the same way but only reports each new plan (status, log,
`cluster_dry_run` event); it never runs kind, starts a container or writes to
the API server. One lock serialises the loop and `recreate()`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any, TypedDict

import structlog

from maculad.config import Config
from maculad.core.events import EventBus
from maculad.core.fsutil import atomic_write
from maculad.observability.metrics import Metrics
from maculad.adapters.docker.api import EngineAPI, resolve_endpoint
from maculad.adapters.docker.nodes import KIND_NETWORK, EngineNodes, Node, NodeDocker, NodeDockerError
from maculad.pki.leaves import LeafStore
from maculad.pki.secret import REF as SECRET_REF
from maculad.pki.secret import ingress_leaf, secret_object
from maculad.supervise.cluster_plan import (
    CLUSTER_STATES,
    ClusterState,
    Observation,
    ClusterPlan,
    PlanContext,
    plan,
    state_for,
)
from maculad.supervise.cluster_wiring import (
    WiringError,
    hosts_toml,
    hosts_toml_path,
    registry_configmap,
    with_default_certificate,
)
from maculad.adapters.kube.apply import Applier, ManifestError, describe, load_manifest, parse_manifest
from maculad.adapters.kube.client import KubeError, KubeSession, KubeTransport, api_ready
from maculad.adapters.kind import KindBinary, KindCLI, KindError
from maculad.supervise.policy import RestartPolicy, RestartSnapshot, RestartTracker

__all__ = ["ClusterSupervisor", "KubeOpener", "NodeDocker"]

log = structlog.get_logger("maculad.cluster")


class NodeView(TypedDict):
    name: str
    role: str
    state: str
    exit_code: int | None


class ClusterRestart(RestartSnapshot):
    next_attempt_in: float


class ClusterStatus(TypedDict):
    """`GET /v1/cluster`: the kind cluster as the supervisor sees it."""

    cluster: str
    state: ClusterState
    reason: str
    dry_run: bool
    nodes: list[NodeView]
    api_ready: bool | None
    api_error: str | None
    kubeconfig: str
    context: str
    wired: bool
    wiring: dict[str, str]
    last_action: dict[str, Any] | None  # action, reason, time (epoch seconds), result
    last_error: str | None
    kind_error: str | None
    recreations: int
    restart: ClusterRestart
    dry_run_plans: list[dict[str, Any]]

KubeOpener = Callable[[Path, str | None], Awaitable[KubeTransport]]
"""Opens an API client for (kubeconfig, context); `KubeSession.open` by default."""

_FAST_POLL = 1.0


class ClusterSupervisor:
    name = "kind"

    def __init__(
        self,
        *,
        config: Config,
        metrics: Metrics,
        events: EventBus,
        kind: KindCLI | None = None,
        docker: NodeDocker | None = None,
        kube: KubeOpener | None = None,
        clock: Callable[[], float] = time.monotonic,
        tls: LeafStore | None = None,
    ) -> None:
        kc = config.kind
        #: The local CA's leaves: the ingress gets Secret ingress-nginx/maculad-default-tls from it.
        self._tls = tls
        self._config = config
        self._kc = kc
        self._cluster = kc.cluster
        self._metrics = metrics
        self._events = events
        self._kind: KindCLI = kind if kind is not None else KindBinary(
            binary=kc.binary, timeout=max(600.0, kc.ready_timeout)
        )
        self._docker: NodeDocker = docker if docker is not None else EngineNodes(
            api=EngineAPI(endpoint=resolve_endpoint(config.docker.host)))
        self._owns_docker = docker is None
        self._kube_open: KubeOpener = kube if kube is not None else KubeSession.open
        self._clock = clock
        self.kubeconfig: Path = kc.kubeconfig or config.kubernetes.kubeconfig
        self.context = f"kind-{kc.cluster}"
        self._tracker = RestartTracker(RestartPolicy(name="always", backoff=kc.backoff))
        self._state: ClusterState = "absent"
        self._reason = "not observed yet"
        self._nodes: tuple[Node, ...] = ()
        self._api_ready: bool | None = None
        self._api_error = ""
        self._api_down_since: float | None = None
        self._exported = False
        self._wired = False
        self._wiring: dict[str, str] = {}
        self._next_attempt = 0.0
        self._attempt_outstanding = False
        self._last_action: dict[str, Any] | None = None
        self._last_error: str | None = None
        self._plans: deque[dict[str, Any]] = deque(maxlen=20)
        self._last_plan_key: tuple[str, str] | None = None
        self._recreations = 0
        self._lock = asyncio.Lock()
        self._wake = asyncio.Event()
        self._state_file = config.state_dir / "kind" / f"{kc.cluster}.json"
        self._known: dict[str, str] = self._load_known()
        """Node containers of the current incarnation (name → container id), kept under state_dir."""
        self._kind_error = ""
        self._wire_retry_at = 0.0
        self._set_state("absent", self._reason, publish=False)

    # ------------------------------------------------------------------ Component

    async def start(self) -> None:
        """Arm the tracker; `run()` (a long-lived task) observes and acts."""
        self._tracker.on_start_requested(self._clock())
        self._next_attempt = 0.0
        log.info("cluster_supervisor_started", cluster=self._cluster, dry_run=self._kc.dry_run,
                 kubeconfig=str(self.kubeconfig))

    async def stop(self) -> None:
        if self._owns_docker:
            with contextlib.suppress(Exception):
                await self._docker.close()

    def status(self) -> ClusterStatus:
        wait = max(0.0, self._next_attempt - self._clock()) if self._tracker.state == "backoff" else 0.0
        return {
            "cluster": self._cluster,
            "state": self._state,
            "reason": self._reason,
            "dry_run": self._kc.dry_run,
            "nodes": [{"name": n.name, "role": n.role, "state": n.state, "exit_code": n.exit_code}
                      for n in self._nodes],
            "api_ready": self._api_ready,
            "api_error": self._api_error or None,
            "kubeconfig": str(self.kubeconfig),
            "context": self.context,
            "wired": self._wired,
            "wiring": dict(self._wiring),
            "last_action": dict(self._last_action) if self._last_action else None,
            "last_error": self._last_error,
            "kind_error": self._kind_error or None,
            "recreations": self._recreations,
            "restart": {**self._tracker.snapshot(), "next_attempt_in": round(wait, 3)},
            "dry_run_plans": list(self._plans),
        }

    async def recreate(self, reason: str) -> None:
        """Delete and create the cluster now (a person asked), then wire it. Raises on failure."""
        async with self._lock:
            now = self._clock()
            self._tracker.on_start_requested(now)
            self._next_attempt = 0.0
            if self._kc.dry_run:
                self._dry_run(ClusterPlan("recreate", reason))
                return
            try:
                await self._create(ClusterPlan("recreate", reason), recreate=True)
                await self._bring_up(f"recreated: {reason}")
            except (KindError, NodeDockerError, KubeError, WiringError, ManifestError) as exc:
                self._attempt_failed(exc)
                raise
        self._wake.set()

    # ------------------------------------------------------------------ loop

    async def run(self) -> None:
        while True:
            self._wake.clear()
            try:
                await self.reconcile()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a bug must not end supervision; the owner would restart us anyway
                log.exception("cluster_reconcile_error", cluster=self._cluster)
                self._last_error = f"{type(exc).__name__}: {exc}"
            interval = self._kc.check_interval
            if self._state in ("starting", "creating") or self._attempt_outstanding:
                interval = min(interval, _FAST_POLL)
            elif self._tracker.state == "backoff":
                interval = min(interval, max(0.05, self._next_attempt - self._clock()))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), interval)

    async def reconcile(self) -> ClusterPlan:
        """One pass: observe, plan, act. Returns the plan it followed."""
        async with self._lock:
            obs = await self._observe()
            now = self._clock()
            if obs.api_ready is False and self._api_down_since is None:
                self._api_down_since = now
            elif obs.api_ready:
                self._api_down_since = None
            ctx = PlanContext(
                known_nodes=frozenset(self._known),
                recreate_allowed=self._kc.recreate,
                exported=self._exported,
                api_down_for=0.0 if self._api_down_since is None else now - self._api_down_since,
                ready_timeout=self._kc.ready_timeout,
            )
            p = plan(self._cluster, obs, ctx)
            await self._follow(p, obs, now)
            self._tracker.tick(now)
            return p

    async def _observe(self) -> Observation:
        listed: bool | None = None
        kind_error = ""
        try:
            listed = self._cluster in await self._kind.get_clusters()
        except KindError as exc:
            kind_error = str(exc)
        self._kind_error = kind_error
        try:
            nodes = tuple(await self._docker.list_nodes(self._cluster))
        except NodeDockerError as exc:
            return Observation(listed=listed, kind_error=kind_error, docker_error=exc.message)
        self._nodes = nodes
        if nodes:
            if self._known and not {n.id for n in nodes} & set(self._known.values()):
                # None of the containers we knew is left: this cluster was made without us.
                self._known = {}
            self._remember(nodes)
        ready: bool | None = None
        why = ""
        if nodes and all(n.running for n in nodes):
            ready, why = await self._check_api()
        self._api_ready, self._api_error = ready, why
        return Observation(nodes=nodes, listed=listed, kind_error=kind_error, api_ready=ready, api_error=why)

    async def _check_api(self) -> tuple[bool, str]:
        try:
            api = await self._kube_open(self.kubeconfig, self.context)
        except KubeError as exc:
            return False, str(exc)
        try:
            return await api_ready(api)
        finally:
            await api.close()

    async def _follow(self, p: ClusterPlan, obs: Observation, now: float) -> None:
        if p.action == "none":
            if not self._wired:
                if now < self._wire_retry_at:
                    return
                if self._kc.dry_run:
                    self._dry_run(ClusterPlan("none", "verify the wiring: registry network, hosts.toml, "
                                       "ConfigMap, ingress controller"))
                    self._set_state("ready", "healthy (dry-run: wiring not verified)")
                    self._tracker.on_running(now)
                    return
                self._set_state("starting", "every node runs and the API server is ready; wiring")
                try:
                    await self._wire("verify after maculad started" if self._last_action is None
                                     else "retry after a failed wiring")
                except (KubeError, WiringError, ManifestError, NodeDockerError) as exc:
                    self._last_error = str(exc)
                    self._wire_retry_at = self._clock() + self._kc.check_interval
                    if self._last_action is not None:
                        self._last_action.update(result="failed", error=str(exc))
                    self._set_state("degraded", f"wiring failed: {exc}; retrying in {self._kc.check_interval:g}s")
                    log.warning("cluster_wiring_failed", cluster=self._cluster, error=str(exc))
                    return
            elif not self._kc.dry_run:
                await self._ensure_registry()
            self._tracker.on_running(now)
            self._attempt_outstanding = False
            self._set_state("ready", "every node runs, the API server is ready and the wiring is done")
            return
        if p.action == "wait":
            self._set_state("starting", p.reason)
            return
        if p.action in ("hold", "blind"):
            self._set_state("degraded", p.reason)
            return
        if p.action == "export_kubeconfig":
            self._set_state("starting", p.reason)
            if self._kc.dry_run:
                self._dry_run(p)
                self._exported = True
                return
            self._exported = True
            try:
                await self._export(p.reason)
            except KindError as exc:
                self._last_error = str(exc)
                log.warning("cluster_export_failed", cluster=self._cluster, error=str(exc))
            self._wake.set()
            return
        await self._repair(p, now)

    async def _repair(self, p: ClusterPlan, now: float) -> None:
        t = self._tracker
        if t.state == "running" or self._attempt_outstanding:
            # The cluster broke after running well, or our last repair did not take: count it.
            self._attempt_outstanding = False
            d = t.on_unhealthy(now)
            if d.action == "give_up":
                self._give_up(p, t.reason)
                return
            self._next_attempt = now + d.delay
        if t.state == "failed":
            self._set_state("failed", f"{t.reason} (now: {p.reason}); `maculactl cluster recreate` retries")
            return
        if now < self._next_attempt:
            self._set_state(state_for(p), f"{p.reason}; next attempt in {self._next_attempt - now:.1f}s")
            return
        if self._kc.dry_run:
            self._set_state(state_for(p), f"{p.reason} (dry-run: would {p.action})")
            self._dry_run(p)
            return
        t.on_starting(now)
        try:
            if p.action == "start":
                await self._start_nodes(p)
                await self._bring_up(None)
            else:
                await self._create(p, recreate=p.action == "recreate")
                await self._bring_up(f"{p.action}: {p.reason}")
        except (KindError, NodeDockerError, KubeError, WiringError, ManifestError) as exc:
            self._attempt_failed(exc)
            return
        self._attempt_outstanding = True
        self._wake.set()  # look again right away

    def _attempt_failed(self, exc: Exception) -> None:
        now = self._clock()
        self._last_error = str(exc)
        if self._last_action is not None:
            self._last_action["result"] = "failed"
            self._last_action["error"] = str(exc)
        log.warning("cluster_repair_failed", cluster=self._cluster, error=str(exc))
        self._attempt_outstanding = False
        d = self._tracker.on_unhealthy(now)
        if d.action == "give_up":
            self._give_up(ClusterPlan("hold", str(exc)), self._tracker.reason)
            return
        self._next_attempt = now + d.delay
        self._set_state("degraded", f"{exc}; next attempt in {d.delay:g}s")

    def _give_up(self, p: ClusterPlan, why: str) -> None:
        self._set_state("failed", f"{why} (now: {p.reason})")
        self._metrics.cluster_actions.labels(cluster=self._cluster, action="give_up").inc()
        self._events.publish("cluster_gave_up", cluster=self._cluster, reason=why)
        log.error("cluster_gave_up", cluster=self._cluster, reason=why)

    # ------------------------------------------------------------------ actions

    def _action(self, action: str, reason: str) -> None:
        self._last_action = {"action": action, "reason": reason, "time": round(time.time(), 3),
                             "result": "running"}
        self._metrics.cluster_actions.labels(cluster=self._cluster, action=action).inc()
        self._events.publish("cluster_action", cluster=self._cluster, action=action, reason=reason)

    def _done(self) -> None:
        if self._last_action is not None:
            self._last_action["result"] = "ok"

    async def _create(self, p: ClusterPlan, *, recreate: bool) -> None:
        if recreate:
            log.warning("cluster_recreate", cluster=self._cluster, reason=p.reason)
            self._action("recreate", p.reason)
            self._set_state("creating", f"recreating: {p.reason}")
            await self._kind.delete_cluster(self._cluster, kubeconfig=self.kubeconfig)
            self._recreations += 1
            self._metrics.cluster_recreations.labels(cluster=self._cluster).inc()
        else:
            log.info("cluster_create", cluster=self._cluster, reason=p.reason)
            self._action("create", p.reason)
            self._set_state("creating", f"creating: {p.reason}")
        self._wired = False
        self._exported = False
        await self._kind.create_cluster(self._cluster, config=self._kc.config, kubeconfig=self.kubeconfig)
        self._exported = True  # kind create writes the kubeconfig
        self._api_down_since = None
        nodes = await self._docker.list_nodes(self._cluster)
        self._nodes = tuple(nodes)
        self._known = {}
        self._remember(tuple(nodes))
        self._done()

    async def _start_nodes(self, p: ClusterPlan) -> None:
        log.info("cluster_start_nodes", cluster=self._cluster, nodes=list(p.nodes), reason=p.reason)
        self._action("start", p.reason)
        self._set_state("starting", f"starting: {p.reason}")
        by_name = {n.name: n for n in self._nodes}
        for name in p.nodes:
            node = by_name.get(name)
            if node is not None:
                await self._docker.start(node)
        self._exported = False
        self._api_down_since = None
        # the API server's host port is chosen anew when a node starts: re-export
        await self._export("after starting node(s) " + ", ".join(p.nodes))
        self._done()

    async def _export(self, reason: str) -> None:
        self._metrics.cluster_actions.labels(cluster=self._cluster, action="export_kubeconfig").inc()
        log.info("cluster_export_kubeconfig", cluster=self._cluster, kubeconfig=str(self.kubeconfig),
                 reason=reason)
        await self._kind.export_kubeconfig(self._cluster, kubeconfig=self.kubeconfig)
        self._exported = True

    async def _bring_up(self, wire_reason: str | None) -> None:
        """Wait (≤ ready_timeout) for every node to run and `/readyz` to answer; wire when asked."""
        deadline = self._clock() + self._kc.ready_timeout
        while True:
            self._nodes = tuple(await self._docker.list_nodes(self._cluster))
            running = bool(self._nodes) and all(n.running for n in self._nodes)
            if running:
                ok, why = await self._check_api()
                self._api_ready, self._api_error = ok, why
                if ok:
                    break
            else:
                why = "node(s) not running: " + ", ".join(n.describe() for n in self._nodes if not n.running)
            if self._clock() >= deadline:
                raise KubeError(f"cluster {self._cluster} not ready within {self._kc.ready_timeout:g}s: {why}")
            self._set_state("starting", f"waiting for the cluster: {why}")
            await asyncio.sleep(min(_FAST_POLL, max(0.05, deadline - self._clock())))
        if wire_reason is not None:
            await self._wire(wire_reason)

    # ------------------------------------------------------------------ wiring

    async def _wire(self, reason: str) -> None:
        self._action("wire", reason)
        self._wiring = {}
        await self._ensure_registry()
        self._wiring["hosts_toml"] = await self._write_hosts_toml()
        api = await self._kube_open(self.kubeconfig, self.context)
        try:
            applier = Applier(api)
            cm = registry_configmap(self._kc.registry_host, self._kc.registry_endpoint)
            try:
                await applier.apply(cm)
            except KubeError as exc:
                self._wiring["configmap"] = f"failed: {exc}"
                raise WiringError("configmap", str(exc)) from None
            self._wiring["configmap"] = f"applied {describe(cm)}"
            self._wiring["ingress"] = await self._deploy_ingress(applier)
        finally:
            await api.close()
        self._wired = True
        self._done()
        self._events.publish("cluster_wired", cluster=self._cluster, wiring=dict(self._wiring))
        log.info("cluster_wired", cluster=self._cluster, **self._wiring)

    async def _ensure_registry(self) -> None:
        reg = self._kc.registry_container
        if reg is None:
            self._wiring["registry_network"] = "no registry container configured"
            return
        try:
            nets = await self._docker.networks_of(reg)
            if nets is None:
                self._wiring["registry_network"] = f"registry container {reg} not found (retrying)"
                return
            if KIND_NETWORK in nets:
                self._wiring["registry_network"] = f"{reg} is on the {KIND_NETWORK} network"
                return
            connected = await self._docker.connect(KIND_NETWORK, reg)
        except NodeDockerError as exc:
            self._wiring["registry_network"] = f"failed: {exc} (retrying)"
            log.warning("cluster_registry_connect_failed", cluster=self._cluster, error=str(exc))
            return
        self._wiring["registry_network"] = f"{reg} is on the {KIND_NETWORK} network"
        if connected:
            self._metrics.cluster_actions.labels(cluster=self._cluster, action="connect_registry").inc()
            self._events.publish("cluster_action", cluster=self._cluster, action="connect_registry",
                                 reason=f"{reg} was not on the {KIND_NETWORK} network")
            log.info("cluster_registry_connected", cluster=self._cluster, container=reg)

    async def _write_hosts_toml(self) -> str:
        try:
            path = hosts_toml_path(self._kc.registry_host)
            data = hosts_toml(self._kc.registry_host, self._kc.registry_endpoint).encode()
        except ValueError as exc:
            raise WiringError("hosts_toml", str(exc)) from None
        written: list[str] = []
        for node in self._nodes:
            try:
                await self._docker.write_file(node.name, path, data)
            except NodeDockerError as exc:
                raise WiringError("hosts_toml", str(exc)) from None
            written.append(node.name)
        return f"{path} in {', '.join(written) or 'no node'}"

    async def _deploy_ingress(self, applier: Applier) -> str:
        source = self._kc.ingress_manifest.strip()
        if not source:
            return "disabled (kind.ingress_manifest is empty)"
        try:
            text = await load_manifest(source, base=self._config.path.parent, timeout=60.0)
            objs = parse_manifest(text, source=source)
        except ManifestError as exc:
            raise WiringError("ingress", str(exc)) from None
        if self._tls is not None:
            try:
                secret = secret_object(ingress_leaf(self._tls))
            except (OSError, ValueError) as exc:
                raise WiringError("ingress", f"no default certificate for the ingress: {exc}") from None
            objs = with_default_certificate(objs, SECRET_REF)
            at = sum(1 for o in objs if o.get("kind") in ("Namespace", "CustomResourceDefinition"))
            objs.insert(at, secret)  # after its Namespace, before the controller that reads it
            meta = secret["metadata"]
            self._wiring["ingress_tls"] = (f"Secret {SECRET_REF} for *.{self._tls.ca.domain} "
                                           f"(until {meta['annotations']['maculad/not-after'][:10]})")
        try:
            await applier.apply_all(objs)
            deployments = [o for o in objs if o.get("kind") == "Deployment"]
            self._set_state("starting", f"waiting for the ingress controller ({len(deployments)} Deployment(s))")
            await applier.wait_available(deployments, timeout=self._kc.ready_timeout)
        except KubeError as exc:
            raise WiringError("ingress", str(exc)) from None
        return f"applied {len(objs)} object(s) from {source}; Deployments available"

    # ------------------------------------------------------------------ state, metrics, memory

    def _dry_run(self, p: ClusterPlan) -> None:
        key = (p.action, p.reason)
        if key == self._last_plan_key:
            return
        self._last_plan_key = key
        entry = {"action": p.action, "reason": p.reason, "nodes": list(p.nodes), "time": round(time.time(), 3)}
        self._plans.append(entry)
        self._events.publish("cluster_dry_run", cluster=self._cluster, action=p.action, reason=p.reason)
        log.info("cluster_dry_run", cluster=self._cluster, would=p.action, reason=p.reason)

    def _set_state(self, state: ClusterState, reason: str, *, publish: bool = True) -> None:
        changed = state != self._state
        self._state = state
        self._reason = reason
        for s in CLUSTER_STATES:
            self._metrics.cluster_state.labels(cluster=self._cluster, state=s).set(1 if s == state else 0)
        self._metrics.cluster_ready.labels(cluster=self._cluster).set(1 if state == "ready" else 0)
        if changed and publish:
            self._events.publish("cluster_state", cluster=self._cluster, state=state, reason=reason)
            log.info("cluster_state", cluster=self._cluster, state=state, reason=reason)

    def _remember(self, nodes: tuple[Node, ...]) -> None:
        known = {**self._known, **{n.name: n.id for n in nodes}}
        if known == self._known:
            return
        self._known = known
        if self._kc.dry_run:
            return  # dry-run writes nothing, not even its own memory
        try:
            atomic_write(self._state_file,
                         json.dumps({"cluster": self._cluster, "nodes": known}, sort_keys=True).encode())
        except OSError as exc:
            log.warning("cluster_state_not_saved", file=str(self._state_file), error=str(exc))

    def _load_known(self) -> dict[str, str]:
        try:
            data: Any = json.loads(self._state_file.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            log.warning("cluster_state_unreadable", file=str(self._state_file), error=str(exc))
            return {}
        nodes = data.get("nodes") if isinstance(data, Mapping) else None
        if not isinstance(nodes, Mapping):
            return {}
        return {k: v for k, v in nodes.items()
                if isinstance(k, str) and isinstance(v, str) and k.startswith(self._cluster + "-")}
