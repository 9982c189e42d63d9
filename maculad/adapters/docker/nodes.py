"""The Docker side of the kind cluster: its node containers and the registry wiring.

kind nodes are ordinary containers labelled `io.x-k8s.kind.cluster=<name>` and
`io.x-k8s.kind.role=<role>` on the `kind` network. The supervisor needs only a
handful of engine operations, so they sit behind the small `NodeDocker`
protocol; `EngineNodes` implements it over the one Docker client (`api.py`). Engine answers are
turned into frozen `Node` records by the pure `parse_node`, and every engine
error into a `NodeDockerError` naming the operation, so one odd answer never
crashes the reconcile loop.

Files go into a node with `put_archive` of a tar built in memory (`tar_file`)
and extracted at `/`: the tar carries the parent directories, so nothing has
to exist in the node beforehand and no shell is needed.
"""

from __future__ import annotations

import io
import re
import tarfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from maculad.adapters.docker.api import EngineAPI, ContainerNotFound, DockerAPIError, DockerUnavailable

CLUSTER_LABEL = "io.x-k8s.kind.cluster"
ROLE_LABEL = "io.x-k8s.kind.role"
KIND_NETWORK = "kind"

_EXITED = re.compile(r"^Exited \((-?\d+)\)")


class NodeDockerError(Exception):
    """An engine operation that failed: which, on what, and the engine's message."""

    def __init__(self, op: str, target: str, message: str, *, status: int | None = None) -> None:
        self.op = op
        self.target = target
        self.message = message
        self.status = status
        super().__init__(f"docker {op} {target}: {message}")


@dataclass(frozen=True, slots=True)
class Node:
    id: str
    name: str
    role: str
    state: str
    """The engine's state: created, running, paused, restarting, removing, exited, dead."""
    exit_code: int | None = None

    @property
    def running(self) -> bool:
        return self.state == "running"

    def describe(self) -> str:
        if self.state == "exited" and self.exit_code is not None:
            return f"{self.name} (exited {self.exit_code})"
        return f"{self.name} ({self.state})"


def parse_node(entry: Mapping[str, Any]) -> Node | None:
    """One `GET /containers/json` entry → `Node`, or None when it is not a usable record."""
    cid = entry.get("Id")
    if not isinstance(cid, str) or not cid:
        return None
    names = entry.get("Names")
    name = ""
    if isinstance(names, list) and names and isinstance(names[0], str):
        name = names[0].lstrip("/")
    labels = entry.get("Labels")
    if not isinstance(labels, Mapping):
        labels = {}
    role = labels.get(ROLE_LABEL, "")
    state = entry.get("State")
    if isinstance(state, Mapping):  # the inspect shape
        state = state.get("Status")
    if not isinstance(state, str) or not state:
        state = "unknown"
    exit_code: int | None = None
    status = entry.get("Status")
    if isinstance(status, str):
        m = _EXITED.match(status)
        if m:
            exit_code = int(m.group(1))
    return Node(id=cid, name=name or cid[:12], role=role if isinstance(role, str) else "",
                state=state.lower(), exit_code=exit_code)


def tar_file(path: str, data: bytes, *, mode: int = 0o644) -> bytes:
    """A tar holding `path` (absolute) and its parent directories, to extract at `/`."""
    if not path.startswith("/") or ".." in path.split("/"):
        raise ValueError(f"{path!r} is not an absolute path without '..'")
    parts = [p for p in path.strip("/").split("/") if p]
    if not parts:
        raise ValueError(f"{path!r} names no file")
    buf = io.BytesIO()
    now = int(time.time())
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for i in range(1, len(parts)):
            d = tarfile.TarInfo("/".join(parts[:i]))
            d.type = tarfile.DIRTYPE
            d.mode = 0o755
            d.mtime = now
            tar.addfile(d)
        f = tarfile.TarInfo("/".join(parts))
        f.size = len(data)
        f.mode = mode
        f.mtime = now
        tar.addfile(f, io.BytesIO(data))
    return buf.getvalue()


class NodeDocker(Protocol):
    async def list_nodes(self, cluster: str) -> list[Node]:
        """Every container (running or not) labelled as a node of `cluster`."""

    async def start(self, node: Node) -> None:
        """Start (or unpause) a node container."""

    async def networks_of(self, container: str) -> set[str] | None:
        """The networks `container` is attached to; None when it does not exist."""

    async def connect(self, network: str, container: str) -> bool:
        """Attach `container` to `network`: True when attached now, False when it already was."""

    async def write_file(self, container: str, path: str, data: bytes) -> None:
        """Create or replace the file `path` (and its directories) inside `container`."""

    async def close(self) -> None: ...


class EngineNodes:
    """`NodeDocker` over the one Docker client (`EngineAPI`); every engine error → `NodeDockerError`."""

    def __init__(self, *, api: EngineAPI, owns_api: bool = True) -> None:
        self._api = api
        self._owns_api = owns_api

    async def list_nodes(self, cluster: str) -> list[Node]:
        try:
            raw = await self._api.list_raw(labels=[f"{CLUSTER_LABEL}={cluster}"])
        except ENGINE_ERRORS as exc:
            raise _wrap("list", f"nodes of {cluster}", exc) from None
        nodes = [parse_node(c) for c in raw]
        return sorted((n for n in nodes if n is not None), key=lambda n: n.name)

    async def start(self, node: Node) -> None:
        try:
            if node.state == "paused":
                await self._api.unpause(node.id)
            else:
                await self._api.start(node.id)
        except ENGINE_ERRORS as exc:
            raise _wrap("start", node.name, exc) from None

    async def networks_of(self, container: str) -> set[str] | None:
        try:
            info = await self._api.inspect_raw(container)
        except ContainerNotFound:
            return None
        except ENGINE_ERRORS as exc:
            raise _wrap("inspect", container, exc) from None
        nets = (info.get("NetworkSettings") or {}).get("Networks") or {}
        return set(nets) if isinstance(nets, Mapping) else set()

    async def connect(self, network: str, container: str) -> bool:
        try:
            await self._api.network_connect(network, container)
        except ENGINE_ERRORS as exc:
            msg = _message(exc)
            if "already exists" in msg or "already attached" in msg or "already connected" in msg:
                return False
            raise _wrap("network connect", f"{container} to {network}", exc) from None
        return True

    async def write_file(self, container: str, path: str, data: bytes) -> None:
        archive = tar_file(path, data)
        try:
            await self._api.put_archive(container, "/", archive)
        except ENGINE_ERRORS as exc:
            raise _wrap("put_archive", f"{container}:{path}", exc) from None

    async def close(self) -> None:
        if self._owns_api:
            await self._api.close()


ENGINE_ERRORS = (DockerUnavailable, ContainerNotFound, DockerAPIError)


def _message(exc: Exception) -> str:
    if isinstance(exc, DockerAPIError):
        return exc.message
    return str(exc) or type(exc).__name__


def _wrap(op: str, target: str, exc: Exception) -> NodeDockerError:
    status = exc.status if isinstance(exc, DockerAPIError) else 404 if isinstance(exc, ContainerNotFound) else None
    return NodeDockerError(op, target, _message(exc), status=status)
