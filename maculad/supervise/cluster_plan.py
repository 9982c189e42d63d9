"""What the cluster needs next, decided from one observation (pure).

The supervisor observes (kind's cluster list, the node containers, `/readyz`),
then asks `plan()` for the single next step; it never patches state by hand.
The rules, in order:

1. The node containers cannot be listed → `blind` (do nothing, report it).
2. No node containers → `create` (when kind still lists the name, the cluster
   is a husk and is `recreate`d so kind's create does not refuse).
3. A node container seen before is gone, or one is `dead` → `recreate` when
   `kind.recreate` allows it, else `hold` (degraded, reason given).
4. A node container is stopped (exited, created, paused) → `start` it.
5. A node container is restarting or being removed → `wait` for Docker.
6. Every node runs but `/readyz` does not answer: re-export the kubeconfig
   once (`export_kubeconfig`, the API server's host port may have moved),
   then `wait`; only after `ready_timeout` of silence → `recreate`/`hold`.
7. Otherwise the cluster is healthy → `none`. A healthy cluster is never
   recreated by the loop: every recreate reason names the broken part.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from maculad.adapters.docker.nodes import Node

ClusterState = Literal["absent", "creating", "starting", "ready", "degraded", "failed"]
CLUSTER_STATES: tuple[ClusterState, ...] = ("absent", "creating", "starting", "ready", "degraded", "failed")

PlanAction = Literal["none", "wait", "create", "recreate", "start", "export_kubeconfig", "hold", "blind"]

_STOPPED = frozenset({"exited", "created", "paused"})
_TRANSIENT = frozenset({"restarting", "removing"})


@dataclass(frozen=True, slots=True)
class Observation:
    nodes: tuple[Node, ...] = ()
    listed: bool | None = None
    """Whether `kind get clusters` lists the cluster (None: kind could not be asked)."""
    docker_error: str = ""
    kind_error: str = ""
    api_ready: bool | None = None
    """None when not asked (some node does not run)."""
    api_error: str = ""


@dataclass(frozen=True, slots=True)
class PlanContext:
    known_nodes: frozenset[str] = frozenset()
    recreate_allowed: bool = True
    exported: bool = False
    """The kubeconfig was exported since the nodes last (re)started or maculad started."""
    api_down_for: float = 0.0
    """Seconds `/readyz` has failed while every node ran."""
    ready_timeout: float = 300.0


@dataclass(frozen=True, slots=True)
class ClusterPlan:
    action: PlanAction
    reason: str = ""
    nodes: tuple[str, ...] = ()


_STATE_FOR: dict[PlanAction, ClusterState] = {
    "none": "ready",
    "wait": "starting",
    "export_kubeconfig": "starting",
    "create": "absent",
    "recreate": "degraded",
    "start": "degraded",
    "hold": "degraded",
    "blind": "degraded",
}


def state_for(plan: ClusterPlan) -> ClusterState:
    """The state a plan reports before anything is done about it."""
    return _STATE_FOR[plan.action]


def _names(nodes: tuple[Node, ...] | list[Node]) -> str:
    return ", ".join(n.describe() for n in nodes)


def _recreate(reason: str, ctx: PlanContext) -> ClusterPlan:
    if ctx.recreate_allowed:
        return ClusterPlan("recreate", reason)
    return ClusterPlan("hold", f"{reason}; not recreating it because kind.recreate = false")


def plan(cluster: str, obs: Observation, ctx: PlanContext) -> ClusterPlan:
    if obs.docker_error:
        return ClusterPlan("blind", f"cannot list the node containers of {cluster}: {obs.docker_error}")
    nodes = obs.nodes
    if not nodes:
        if obs.listed:
            return ClusterPlan("recreate", f"kind lists {cluster} but it has no node containers")
        if ctx.known_nodes:
            gone = ", ".join(sorted(ctx.known_nodes))
            return ClusterPlan("create", f"cluster {cluster} is gone (its node containers {gone} were removed)")
        return ClusterPlan("create", f"cluster {cluster} does not exist")
    names = {n.name for n in nodes}
    missing = sorted(ctx.known_nodes - names)
    if missing:
        return _recreate(f"node container(s) gone: {', '.join(missing)}", ctx)
    dead = [n for n in nodes if n.state == "dead"]
    if dead:
        return _recreate(f"node container(s) dead: {_names(dead)}", ctx)
    stopped = [n for n in nodes if n.state in _STOPPED]
    if stopped:
        return ClusterPlan("start", f"node container(s) stopped: {_names(stopped)}", tuple(n.name for n in stopped))
    busy = [n for n in nodes if not n.running]
    if busy:
        if all(n.state in _TRANSIENT for n in busy):
            return ClusterPlan("wait", f"waiting for Docker: {_names(busy)}")
        return ClusterPlan("hold", f"node container(s) in an unexpected state: {_names(busy)}")
    if obs.api_ready:
        return ClusterPlan("none")
    why = obs.api_error or "no answer"
    if not ctx.exported:
        return ClusterPlan("export_kubeconfig", f"the API server does not answer ({why}); re-exporting the kubeconfig")
    if ctx.api_down_for >= ctx.ready_timeout:
        return _recreate(f"the API server has not been ready for {ctx.api_down_for:.0f}s "
                         f"although every node runs ({why})", ctx)
    return ClusterPlan("wait", f"waiting for the API server ({why})")
