"""The one Docker engine client: the `DockerAPI` protocol and `AiodockerAPI`, its adapter.

Everything maculad asks of the engine goes through `AiodockerAPI`, the only
module importing aiodocker. The inventory and the container supervisor see it
through `DockerAPI` (version, list, inspect, events, networks, start/stop/restart); the
kind cluster supervisor through `NodeDocker` (`adapters.docker.nodes`), a thin
view over the same client that adds the raw list, unpause, network connect and
archive upload calls below. Failures are mapped onto three exceptions:
`DockerUnavailable` (no engine at the endpoint: connection refused, socket
missing, timed out), `ContainerNotFound` (404) and `DockerAPIError` (any other
answer the engine refused, with its message).

The endpoint comes from `docker.host` in the config, else `DOCKER_HOST`, else
the default socket. The client is built without touching the socket, so a
missing engine is an error of the first call, never of start-up.
"""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import AsyncExitStack
from typing import Any, NoReturn, Protocol

from urllib.parse import quote

import aiodocker
import aiohttp

from maculad.adapters.docker.model import ContainerEvent, ContainerInfo, parse_event, parse_inspect

DEFAULT_SOCKET = "unix:///var/run/docker.sock"

#: Container events maculad reacts to (exec_* fire on every health check and are left out).
WATCHED_ACTIONS: tuple[str, ...] = (
    "create", "start", "restart", "die", "stop", "kill", "destroy", "health_status", "rename",
    "pause", "unpause", "oom", "update",
)


class DockerUnavailable(Exception):
    """The engine cannot be reached at the endpoint."""


class ContainerNotFound(Exception):
    """The container does not exist (any more)."""


class DockerAPIError(Exception):
    """The engine answered, but refused the request."""

    def __init__(self, status: int, message: str) -> None:
        self.status = status
        self.message = message
        super().__init__(f"Docker engine answered {status}: {message}")


class EventStream(Protocol):
    def __aiter__(self) -> AsyncIterator[ContainerEvent]: ...

    async def close(self) -> None: ...


class DockerAPI(Protocol):
    endpoint: str

    async def version(self) -> Mapping[str, Any]:
        """The engine's version answer; raises `DockerUnavailable` when there is no engine."""

    async def list_ids(self, *, labels: Sequence[str] = ()) -> list[str]:
        """Ids of every container (running or not), optionally filtered by label (`key` or `key=value`)."""

    async def inspect(self, container_id: str) -> ContainerInfo:
        """One container; raises `ContainerNotFound`."""

    async def events(self, *, labels: Sequence[str] = ()) -> EventStream:
        """Open the container event stream; returns once the engine accepted it."""

    async def networks(self) -> list[Any]:
        """The engine's networks (`GET /networks`), as the engine answered them."""

    async def start(self, container_id: str) -> None: ...

    async def stop(self, container_id: str, *, timeout: int | None = None) -> None:
        """Stop (SIGTERM, then SIGKILL after `timeout` s; None: the container's own stop timeout)."""

    async def restart(self, container_id: str, *, timeout: int | None = None) -> None: ...

    async def close(self) -> None: ...


def resolve_endpoint(configured: str | None) -> str:
    """`docker.host` from the config, else DOCKER_HOST, else the default unix socket."""
    ep = configured or os.environ.get("DOCKER_HOST") or DEFAULT_SOCKET
    if ep.startswith("/"):
        ep = "unix://" + ep
    return ep


def _filters(labels: Sequence[str], **more: Sequence[str]) -> str:
    f: dict[str, list[str]] = {k: list(v) for k, v in more.items() if v}
    if labels:
        f["label"] = list(labels)
    return json.dumps(f)


class _AiodockerEvents:
    def __init__(self, stack: AsyncExitStack, response: aiohttp.ClientResponse) -> None:
        self._stack = stack
        self._response = response

    async def __aiter__(self) -> AsyncIterator[ContainerEvent]:
        while True:
            try:
                line = await self._response.content.readline()
            except (aiohttp.ClientError, OSError) as exc:
                raise DockerUnavailable(f"event stream broke: {exc}") from exc
            if not line:
                return  # the engine closed the stream (it stopped or restarts)
            try:
                data = json.loads(line)
            except ValueError:
                continue
            if isinstance(data, dict):
                ev = parse_event(data)
                if ev is not None:
                    yield ev

    async def close(self) -> None:
        self._response.close()
        await self._stack.aclose()


class AiodockerAPI:
    """`DockerAPI` over aiodocker; one HTTP client per instance."""

    def __init__(self, *, endpoint: str, request_timeout: float = 30.0) -> None:
        self.endpoint = endpoint
        self._timeout = aiohttp.ClientTimeout(total=request_timeout, connect=5.0)
        self._client: aiodocker.Docker | None = None

    def _docker(self) -> aiodocker.Docker:
        if self._client is None:
            try:
                self._client = aiodocker.Docker(url=self.endpoint, timeout=self._timeout)
            except ValueError as exc:
                raise DockerUnavailable(f"bad Docker endpoint {self.endpoint!r}: {exc}") from exc
        return self._client

    async def _call(self, path: str, *, method: str = "GET", params: dict[str, Any] | None = None,
                    versioned: bool = True, timeout: float | None = None, data: Any = None,
                    headers: Mapping[str, str] | None = None) -> Any:
        docker = self._docker()
        kw: dict[str, Any] = {}
        if data is not None:
            kw["data"] = data
        if headers is not None:
            kw["headers"] = headers
        if timeout is not None:
            kw["timeout"] = aiohttp.ClientTimeout(total=timeout, connect=5.0)
        try:
            async with docker._query(path, method=method, params=params, versioned_api=versioned,
                                     **kw) as resp:
                body = await resp.read()
        except aiodocker.DockerError as exc:
            self._raise(exc)
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            raise DockerUnavailable(f"Docker engine at {self.endpoint} did not answer: "
                                    f"{type(exc).__name__}: {exc}") from exc
        if not body:
            return None
        try:
            return json.loads(body)
        except ValueError:
            return None

    def _raise(self, exc: aiodocker.DockerError) -> NoReturn:
        status = int(exc.status)
        msg = str(exc.message)
        if status == 900:
            raise DockerUnavailable(msg) from exc
        if status == 404:
            raise ContainerNotFound(msg) from exc
        raise DockerAPIError(status, msg) from exc

    async def version(self) -> Mapping[str, Any]:
        data = await self._call("version", versioned=False, timeout=10.0)
        if not isinstance(data, dict):
            raise DockerAPIError(0, "version: unexpected answer")
        return data

    async def list_ids(self, *, labels: Sequence[str] = ()) -> list[str]:
        data = await self._call("containers/json", params={"all": "1", "filters": _filters(labels)})
        if not isinstance(data, list):
            raise DockerAPIError(0, "containers/json: unexpected answer")
        return [c["Id"] for c in data if isinstance(c, dict) and isinstance(c.get("Id"), str)]

    async def inspect(self, container_id: str) -> ContainerInfo:
        data = await self._call(f"containers/{container_id}/json")
        if not isinstance(data, dict):
            raise DockerAPIError(0, f"inspect {container_id}: unexpected answer")
        return parse_inspect(data)

    async def events(self, *, labels: Sequence[str] = ()) -> EventStream:
        docker = self._docker()
        stack = AsyncExitStack()
        params = {"filters": _filters(labels, type=["container"], event=WATCHED_ACTIONS)}
        try:
            resp = await stack.enter_async_context(docker._query(
                "events", params=params, timeout=aiohttp.ClientTimeout(total=None, sock_read=None, connect=5.0),
            ))
        except aiodocker.DockerError as exc:
            await stack.aclose()
            self._raise(exc)
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            await stack.aclose()
            raise DockerUnavailable(f"Docker engine at {self.endpoint}: {type(exc).__name__}: {exc}") from exc
        return _AiodockerEvents(stack, resp)

    async def networks(self) -> list[Any]:
        data = await self._call("networks")
        if not isinstance(data, list):
            raise DockerAPIError(0, "networks: unexpected answer")
        return data

    async def start(self, container_id: str) -> None:
        await self._call(f"containers/{container_id}/start", method="POST")

    async def stop(self, container_id: str, *, timeout: int | None = None) -> None:
        params = {"t": str(timeout)} if timeout is not None else None
        await self._call(f"containers/{container_id}/stop", method="POST", params=params,
                         timeout=(timeout or 120) + 30.0)

    async def restart(self, container_id: str, *, timeout: int | None = None) -> None:
        params = {"t": str(timeout)} if timeout is not None else None
        await self._call(f"containers/{container_id}/restart", method="POST", params=params,
                         timeout=(timeout or 120) + 30.0)

    # -- the calls `adapters.docker.nodes` builds the kind node view from

    async def list_raw(self, *, labels: Sequence[str] = ()) -> list[dict[str, Any]]:
        """`GET /containers/json?all=1` entries (the list shape, not inspect's), filtered by label."""
        data = await self._call("containers/json", params={"all": "1", "filters": _filters(labels)})
        if not isinstance(data, list):
            raise DockerAPIError(0, "containers/json: unexpected answer")
        return [c for c in data if isinstance(c, dict)]

    async def inspect_raw(self, container: str) -> dict[str, Any]:
        """The inspect document of a container (by id or name); raises `ContainerNotFound`."""
        data = await self._call(f"containers/{quote(container, safe='')}/json")
        if not isinstance(data, dict):
            raise DockerAPIError(0, f"inspect {container}: unexpected answer")
        return data

    async def unpause(self, container_id: str) -> None:
        await self._call(f"containers/{container_id}/unpause", method="POST")

    async def network_connect(self, network: str, container: str) -> None:
        await self._call(f"networks/{quote(network, safe='')}/connect", method="POST",
                         data=json.dumps({"Container": container}), headers={"Content-Type": "application/json"})

    async def put_archive(self, container: str, path: str, archive: bytes) -> None:
        """Extract a tar `archive` at `path` inside `container`."""
        await self._call(f"containers/{quote(container, safe='')}/archive", method="PUT", params={"path": path},
                         data=archive, headers={"Content-Type": "application/x-tar"})

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.close()
