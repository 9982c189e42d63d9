"""Crash-safe file writes, shared by the state store and the resolver wiring.

`StateError` is how state problems travel: the path and the reason in one line
(`state_dir/allocations.json: No space left on device`), never a bare OSError or
a traceback; `state_error(path, exc)` builds one from an OSError.
Standard library only: `maculactl` imports it and must start without the
daemon's dependencies.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


class StateError(Exception):
    """A state file or directory that cannot be read or written: which path, and why."""

    def __init__(self, path: Path, reason: str) -> None:
        self.path = path
        self.reason = reason
        super().__init__(f"{path}: {reason}")


def state_error(path: Path, exc: OSError) -> StateError:
    """The StateError for `exc`, met reading or writing `path`."""
    if isinstance(exc, NotADirectoryError | FileExistsError) and exc.filename:
        return StateError(path, f"{exc.filename} is not a directory")
    return StateError(path, exc.strerror or str(exc))


def atomic_write(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Write `data` to `path` so readers see the old or the new content, never a mix."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    dfd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)
