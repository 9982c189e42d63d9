"""What every provider shares: the `Provider` protocol, how one is started, the port-map builder.

A provider turns one source (config file, Docker labels, Kubernetes
Ingresses) into a *complete* list of `RouteSpec`s and hands it to the route
table with `table.update(source, specs)`. The pure part (`… → specs`) lives
beside a thin loop that only reads the source's adapter and calls it again on
every change. A provider is started the same way wherever it runs: its `run`
is a task in the daemon's task list (app/daemon.py); once that is cancelled,
`close` releases what it subscribed to. Stopping a provider never clears its
routes.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Protocol

from maculad.core.net import Backend
from maculad.routes.model import PortMap


class Provider(Protocol):
    @property
    def name(self) -> str:
        """The route source it publishes as ("config", "docker", "kubernetes")."""

    async def run(self) -> None:
        """Watch the source forever, publishing complete snapshots; raise only on a bug."""

    def close(self) -> None:
        """After `run` was cancelled: release subscriptions (routes stay in the table)."""

    def status(self) -> Mapping[str, object]:
        """A JSON-able summary for `maculactl status` (each provider's TypedDict is its exact shape)."""



def port_maps(
    *,
    http_port: int,
    https_port: int,
    http: Backend | None = None,
    https: Backend | None = None,
    tcp: Iterable[tuple[int, Backend]] = (),
    udp: Iterable[tuple[int, Backend]] = (),
) -> tuple[PortMap, ...]:
    """The front ports of one route, sorted, in the table's vocabulary."""
    out: list[PortMap] = []
    if http is not None:
        out.append(PortMap("tcp", http_port, http))
    if https is not None:
        out.append(PortMap("tcp", https_port, https))
    out.extend(PortMap("tcp", p, b) for p, b in tcp)
    out.extend(PortMap("udp", p, b) for p, b in udp)
    return tuple(sorted(out))
