"""Persisted IP allocations: `state_dir/allocations.json`, written atomically.

The file is written with a temp file in the same directory, fsync, rename and
a directory fsync, so a `kill -9` or power cut leaves either the old or the new
mapping, never a torn one. A file that cannot be parsed is moved aside (never
silently overwritten) and allocation starts fresh. A file that cannot be read
or written at all (a directory in its place, a full disk) is a `StateError`
naming the path and the reason.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import structlog

from maculad.core.fsutil import StateError, atomic_write, state_error

log = structlog.get_logger("maculad.routes.store")


class AllocationStore:
    """Loads and saves the name → IP mapping of the pool."""

    def __init__(self, *, state_dir: Path) -> None:
        self.path = state_dir / "allocations.json"

    def load(self) -> dict[str, str]:
        """The saved mapping ({} when there is none); StateError when it cannot be read."""
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return {}
        except IsADirectoryError:
            raise StateError(self.path, "is a directory, not the allocations file") from None
        except OSError as exc:
            raise state_error(self.path, exc) from None
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
            try:
                os.replace(self.path, aside)
            except OSError as err:
                raise StateError(self.path, f"is unreadable ({exc}) and cannot be moved aside: "
                                            f"{err.strerror or err}") from None
            log.error("allocations_unreadable", path=str(self.path), moved_to=str(aside), error=str(exc))
            return {}

    def save(self, allocations: dict[str, str]) -> None:
        """Write the mapping atomically; StateError (the old file intact) when it cannot be written."""
        doc = {"version": 1, "allocations": dict(sorted(allocations.items()))}
        try:
            atomic_write(self.path, json.dumps(doc, indent=1).encode() + b"\n")
        except IsADirectoryError:
            raise StateError(self.path, "is a directory, not the allocations file") from None
        except OSError as exc:
            raise state_error(self.path, exc) from None
