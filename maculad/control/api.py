"""The daemon's face to the control socket: what `maculactl` can ask and do.

The control server (aiohttp on a unix socket) depends only on this
`ControlTarget` protocol; the daemon implements it. Read-only calls return
JSON-able data; actions raise `ControlError` with an HTTP status and a message
a person can act on.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, Literal, Protocol

ServiceAction = Literal["start", "stop", "restart"]


class ControlError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class ControlTarget(Protocol):
    def status(self) -> dict[str, Any]:
        """Everything at a glance: version, uptime, config path, each component's status."""

    def routes(self) -> dict[str, Any]:
        """{"routes": [...], "conflicts": [...], "version": n}."""

    def services(self) -> list[dict[str, Any]]:
        """Supervised services of the Docker tier (empty when Docker is disabled)."""

    async def service_action(self, service: str, action: ServiceAction) -> dict[str, Any]:
        """Start, stop or restart a service. 404 unknown service, 409 Docker disabled/unreachable."""

    def cluster_status(self) -> dict[str, Any]:
        """The kind cluster's state (409 when kind management is off)."""

    async def cluster_recreate(self) -> dict[str, Any]:
        """Delete and create the cluster now (409 when kind management is off)."""

    def powerdns_status(self) -> dict[str, Any]:
        """Connected, last sync, records owned, conflicts (409 when PowerDNS is not enabled)."""

    def dns_lookup(self, name: str) -> dict[str, Any]:
        """What maculad answers for `name` and which provider owns it."""

    async def reload(self) -> dict[str, Any]:
        """Re-read the config and apply the difference; 400 with the error when it is invalid."""

    def follow_events(self, *, replay: int) -> AsyncIterator[dict[str, Any]]:
        """The event stream (route changes, restarts, give-ups, reloads)."""
