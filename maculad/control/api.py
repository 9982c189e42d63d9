"""The daemon's face to the control socket: what `maculactl` can ask and do.

The control server (HTTP on a unix socket, `core.httpserver`) depends only on this
`ControlTarget` protocol; the daemon implements it. Every call returns one of
the shapes in `protocol.py`; actions raise `ControlError` with an HTTP status
and a message a person can act on.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from maculad.control.protocol import (
        ClusterRecreated,
        ClusterStatus,
        DNSLookup,
        Event,
        PowerDNSStatus,
        ReloadAnswer,
        RoutesAnswer,
        ServiceAction,
        ServiceActionAnswer,
        ServiceView,
        Status,
    )


__all__ = ["ControlError", "ControlTarget"]


class ControlError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class ControlTarget(Protocol):
    def status(self) -> Status:
        """Everything at a glance: version, uptime, config, each component's status."""

    def routes(self) -> RoutesAnswer:
        """The route table, its conflicts and the horizons."""

    def services(self) -> list[ServiceView]:
        """Supervised services of the Docker tier (empty when Docker is disabled)."""

    async def service_action(self, service: str, action: ServiceAction) -> ServiceActionAnswer:
        """Start, stop or restart a service. 404 unknown service, 409 Docker disabled/unreachable."""

    def cluster_status(self) -> ClusterStatus:
        """The kind cluster's state (409 when kind management is off)."""

    async def cluster_recreate(self) -> ClusterRecreated:
        """Delete and create the cluster now (409 when kind management is off)."""

    def powerdns_status(self) -> PowerDNSStatus:
        """Connected, last sync, records owned, conflicts (409 when PowerDNS is not enabled)."""

    def dns_lookup(self, name: str) -> DNSLookup:
        """What maculad answers for `name` and which provider owns it."""

    async def reload(self) -> ReloadAnswer:
        """Re-read the config and apply the difference; 400 with the error when it is invalid."""

    def follow_events(self, *, replay: int) -> AsyncIterator[Event]:
        """The event stream (route changes, restarts, give-ups, reloads)."""
