"""Changes to the machine as plans: `Action`s decided by pure planners, run by one executor.

`maculactl trust` and `maculactl service` plan with pure functions of what they found on the
machine (their `Facts`), so a plan can be printed (`--dry-run`), tested without touching the
system, and undone by planning the reverse. `execute` is the only place that performs them:
`write` (atomically, `fsutil.atomic_write`), `remove`, `mkdir`, `rmdir` (only when empty) and
`run` (a command; with `path`, the directory the command creates its files in is made first).
Standard library only: maculactl imports it.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from maculad.core.fsutil import atomic_write

Kind = Literal["write", "remove", "run", "mkdir", "rmdir"]


class ActionError(Exception):
    """An action failed; the message names it and says why."""


@dataclass(frozen=True, slots=True)
class Action:
    kind: Kind
    #: the part of the system it touches (trust: the store; service: unit, config, users)
    store: str
    what: str
    path: Path | None = None
    argv: tuple[str, ...] = ()
    #: `run` actions whose failure is acceptable (e.g. deleting a nickname that is not there).
    may_fail: bool = False
    #: `write`: the bytes and the file mode
    content: bytes | None = None
    mode: int = 0o644


@dataclass(frozen=True, slots=True)
class Result:
    action: Action
    done: bool
    detail: str = ""


def execute(actions: Sequence[Action], *, dry_run: bool, env: Mapping[str, str] | None = None) -> list[Result]:
    """Perform `actions` in order (nothing with `dry_run`); ActionError at the first failure."""
    results: list[Result] = []
    for act in actions:
        if dry_run:
            results.append(Result(act, False, "dry run"))
            continue
        try:
            results.append(_perform(act, env))
        except OSError as exc:
            raise ActionError(f"{act.kind} {act.path or act.what}: {exc.strerror or exc}") from None
    return results


def _perform(act: Action, env: Mapping[str, str] | None) -> Result:
    if act.kind == "write":
        assert act.path is not None and act.content is not None
        atomic_write(act.path, act.content, act.mode)
    elif act.kind == "remove":
        assert act.path is not None
        act.path.unlink(missing_ok=True)
    elif act.kind == "mkdir":
        assert act.path is not None
        act.path.mkdir(mode=0o755, exist_ok=True)
    elif act.kind == "rmdir":
        assert act.path is not None
        try:
            act.path.rmdir()
        except FileNotFoundError:
            return Result(act, False, "absent")
        except OSError:
            if act.path.is_dir() and any(act.path.iterdir()):
                return Result(act, False, "not empty: left in place")
            raise
    else:
        if act.path is not None:
            act.path.mkdir(parents=True, exist_ok=True)
        p = subprocess.run(list(act.argv), capture_output=True, text=True, check=False,
                           env=dict(env) if env is not None else None)
        if p.returncode != 0:
            if act.may_fail:
                return Result(act, False, "not present")
            raise ActionError(f"{' '.join(act.argv)} failed ({p.returncode}): "
                              f"{(p.stderr or p.stdout).strip()[:300]}")
    return Result(act, True)


def present(path: Path) -> bool:
    """Whether anything (a file, a directory, a dangling link) is at `path`."""
    return os.path.lexists(path)
