"""The `kind` command line behind a small `KindCLI` protocol.

kind has no API: every operation is a run of the binary. `KindBinary` runs it
with `asyncio.create_subprocess_exec` (no shell, arguments as a list), bounds
each run with a timeout (killing the process when it is exceeded) and turns
every way a run can go wrong into one `KindError` subclass that carries the
command, the exit code and kind's own message, so status and logs read
"kind create cluster: node(s) already exist for a cluster with the name
"macula-dev" (exit 1)" rather than a traceback.

What kind prints is parsed by pure functions (`parse_clusters`,
`error_message`, `classify`) tested without a binary. kind logs its progress
and its "ERROR: ..." lines on stderr; only `get clusters` writes data to
stdout, one name per line ("No kind clusters found." goes to stderr).
"""

from __future__ import annotations

import asyncio
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

_NAME = re.compile(r"^[a-z0-9.-]+$")  # kind's own rule
_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


class KindError(Exception):
    """A kind run that did not succeed: which command, exit code, and kind's message."""

    def __init__(self, command: str, message: str, *, exit_code: int | None = None, stderr: str = "") -> None:
        self.command = command
        self.message = message
        self.exit_code = exit_code
        self.stderr = stderr
        suffix = f" (exit {exit_code})" if exit_code is not None else ""
        super().__init__(f"{command}: {message}{suffix}")


class KindNotFound(KindError):
    """The binary does not exist or cannot be executed."""


class KindTimeout(KindError):
    """The run took longer than its timeout and was killed."""


class ClusterExists(KindError):
    """`create cluster` for a name whose node containers already exist."""


class ClusterNotFound(KindError):
    """An operation on a cluster that has no control-plane node."""


class KindDockerUnavailable(KindError):
    """kind could not talk to the container runtime."""


class KindCLI(Protocol):
    async def get_clusters(self) -> list[str]:
        """Names of the clusters kind knows (from the node containers' labels)."""

    async def create_cluster(self, name: str, *, config: Path | None, kubeconfig: Path | None) -> None:
        """`kind create cluster --name NAME [--config FILE] [--kubeconfig FILE]`."""

    async def delete_cluster(self, name: str, *, kubeconfig: Path | None) -> None:
        """`kind delete cluster --name NAME`: removes the node containers (no error when absent)."""

    async def export_kubeconfig(self, name: str, *, kubeconfig: Path | None) -> None:
        """`kind export kubeconfig --name NAME`: rewrites the cluster's context (the API port may move)."""


# --------------------------------------------------------------------------- pure parsing


def validate_name(name: str) -> str:
    """kind cluster names become container and DNS names: lower-case letters, digits, '-' and '.'."""
    if not _NAME.match(name):
        raise ValueError(f"{name!r} is not a valid kind cluster name (lower-case letters, digits, '-', '.')")
    return name


def parse_clusters(stdout: str) -> list[str]:
    """`kind get clusters` output → names (kind prints one per line; blank lines and notices dropped)."""
    out: list[str] = []
    for raw in stdout.splitlines():
        line = _ANSI.sub("", raw).strip()
        if not line or " " in line or line.lower().startswith("no kind clusters"):
            continue
        if line not in out:
            out.append(line)
    return out


def error_message(stderr: str, stdout: str = "") -> str:
    """kind's own message: its `ERROR: ...` line if it printed one, else the last non-empty line."""
    lines = [_ANSI.sub("", ln).strip() for ln in (stderr + "\n" + stdout).splitlines()]
    lines = [ln for ln in lines if ln]
    for ln in lines:
        if ln.startswith("ERROR:"):
            msg = ln[len("ERROR:"):].strip()
            if msg:
                return msg
    if lines:
        return lines[-1][:500]
    return "no output"


def classify(command: str, exit_code: int, stderr: str, stdout: str = "") -> KindError:
    """A failed run → the `KindError` subclass its message describes."""
    msg = error_message(stderr, stdout)
    low = msg.lower()
    cls: type[KindError] = KindError
    if "already exist for a cluster with the name" in low:
        cls = ClusterExists
    elif "could not locate any control plane nodes" in low or "unknown cluster" in low:
        cls = ClusterNotFound
    elif ("cannot connect to the docker daemon" in low or "is the docker daemon running" in low
          or "failed to list clusters" in low or "failed to list nodes" in low):
        cls = KindDockerUnavailable
    elif exit_code == 126:
        cls = KindNotFound
        msg = f"not executable: {msg}"
    elif exit_code == 127:
        cls = KindNotFound
        msg = f"command not found: {msg}"
    return cls(command, msg, exit_code=exit_code, stderr=stderr)


# --------------------------------------------------------------------------- adapter


@dataclass(frozen=True, slots=True)
class RunResult:
    exit_code: int
    stdout: str
    stderr: str


class KindBinary:
    """`KindCLI` over the real binary. Each operation is one subprocess run."""

    def __init__(
        self,
        *,
        binary: str = "kind",
        timeout: float = 600.0,
        quick_timeout: float = 60.0,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self._binary = binary
        self._timeout = timeout
        self._quick = quick_timeout
        self._env = dict(env) if env is not None else None

    async def get_clusters(self) -> list[str]:
        res = await self._run(["get", "clusters"], timeout=self._quick)
        return parse_clusters(res.stdout)

    async def create_cluster(self, name: str, *, config: Path | None, kubeconfig: Path | None) -> None:
        args = ["create", "cluster", "--name", validate_name(name)]
        if config is not None:
            if not config.is_file():
                raise KindError("kind create cluster", f"config file {config} does not exist")
            args += ["--config", str(config)]
        if kubeconfig is not None:
            _ensure_parent(kubeconfig, "kind create cluster")
            args += ["--kubeconfig", str(kubeconfig)]
        await self._run(args, timeout=self._timeout)

    async def delete_cluster(self, name: str, *, kubeconfig: Path | None) -> None:
        args = ["delete", "cluster", "--name", validate_name(name)]
        if kubeconfig is not None:
            args += ["--kubeconfig", str(kubeconfig)]
        await self._run(args, timeout=self._timeout)

    async def export_kubeconfig(self, name: str, *, kubeconfig: Path | None) -> None:
        args = ["export", "kubeconfig", "--name", validate_name(name)]
        if kubeconfig is not None:
            _ensure_parent(kubeconfig, "kind export kubeconfig")
            args += ["--kubeconfig", str(kubeconfig)]
        await self._run(args, timeout=self._quick)

    async def _run(self, args: Sequence[str], *, timeout: float) -> RunResult:
        command = "kind " + " ".join(args[:2])
        env = None
        if self._env is not None:
            env = {**os.environ, **self._env}
        try:
            proc = await asyncio.create_subprocess_exec(
                self._binary, *args,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                env=env,
            )
        except FileNotFoundError:
            raise KindNotFound(command, f"kind binary {self._binary!r} not found (set kind.binary)") from None
        except PermissionError:
            raise KindNotFound(command, f"kind binary {self._binary!r} is not executable") from None
        except OSError as exc:
            raise KindNotFound(command, f"cannot run {self._binary!r}: {exc.strerror or exc}") from None
        try:
            out_b, err_b = await asyncio.wait_for(proc.communicate(), timeout)
        except TimeoutError:
            _kill(proc)
            await proc.wait()
            raise KindTimeout(command, f"did not finish within {timeout:g}s; killed") from None
        except asyncio.CancelledError:
            _kill(proc)
            await asyncio.shield(proc.wait())
            raise
        stdout = out_b.decode("utf-8", "replace")
        stderr = err_b.decode("utf-8", "replace")
        code = proc.returncode if proc.returncode is not None else -1
        if code != 0:
            if code < 0:
                raise KindError(command, f"killed by signal {-code}: {error_message(stderr, stdout)}",
                                exit_code=code, stderr=stderr)
            raise classify(command, code, stderr, stdout)
        return RunResult(code, stdout, stderr)


def _kill(proc: asyncio.subprocess.Process) -> None:
    try:
        proc.kill()
    except ProcessLookupError:
        pass


def _ensure_parent(path: Path, command: str) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise KindError(command, f"cannot create {path.parent}: {exc.strerror or exc}") from None
