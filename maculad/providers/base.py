"""What every provider shares: the `Provider` protocol and the port-map builder.

A provider turns one source (config file, Docker labels, Kubernetes
Ingresses) into a *complete* list of `RouteSpec`s and hands it to the route
table with `table.update(source, specs)`. The pure part (`… → specs`) lives
beside a thin I/O loop that only fetches and calls it again on every change.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol

from maculad.routes.model import PortMap
from maculad.core.net import Backend


class Provider(Protocol):
    name: str

    async def run(self) -> None:
        """Watch the source forever, publishing complete snapshots; raise only on a bug."""


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
