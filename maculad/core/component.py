"""The shape every part the daemon composes takes.

A component is built with keyword-only dependencies, started once, asked for
its status by the control API, and stopped once during staged shutdown. Its
long-lived loops are spawned on the daemon's `TaskOwner`, never on their own.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

from maculad.core.tasks import TaskOwner


class Component(Protocol):
    name: str

    async def start(self, owner: TaskOwner) -> None:
        """Bind sockets / open clients and spawn loops on `owner`. Raise to abort start-up."""

    async def stop(self) -> None:
        """Release everything start took; must be safe to call after a failed start."""

    def status(self) -> Mapping[str, object]:
        """A JSON-able summary for `maculactl status` (each component's TypedDict is its exact shape)."""
