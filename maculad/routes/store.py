"""Persisted IP allocations: `state_dir/allocations.json`, written atomically.

The file is written with a temp file in the same directory, fsync, rename and
a directory fsync, so a `kill -9` or power cut leaves either the old or the new
mapping, never a torn one. A file that cannot be parsed is moved aside (never
silently overwritten) and allocation starts fresh.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import structlog

from maculad.core.fsutil import atomic_write

log = structlog.get_logger("maculad.routes.store")


class AllocationStore:
    """Loads and saves the name → IP mapping of the pool."""

    def __init__(self, *, state_dir: Path) -> None:
        self.path = state_dir / "allocations.json"

    def load(self) -> dict[str, str]:
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return {}
        try:
            doc = json.loads(raw)
            allocs = doc["allocations"]
            if not isinstance(allocs, dict) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in allocs.items()
            ):
                raise ValueError("allocations is not a mapping of names to IPs")
            return dict(allocs)
        except (ValueError, KeyError, TypeError) as exc:
            aside = self.path.with_name(f"{self.path.name}.corrupt-{int(time.time())}")
            os.replace(self.path, aside)
            log.error("allocations_unreadable", path=str(self.path), moved_to=str(aside), error=str(exc))
            return {}

    def save(self, allocations: dict[str, str]) -> None:
        doc = {"version": 1, "allocations": dict(sorted(allocations.items()))}
        atomic_write(self.path, json.dumps(doc, indent=1).encode() + b"\n")
