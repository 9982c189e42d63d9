"""The one Docker engine client: the `DockerAPI` protocol and `EngineAPI`, its adapter.

Everything maculad asks of the engine goes through `EngineAPI`, which speaks the
engine's HTTP API over the adapters' one HTTP client (`adapters.http`). The
inventory and the container supervisor see it through `DockerAPI` (version,
list, inspect, events, networks, start/stop/restart); the kind cluster
supervisor through `NodeDocker` (`adapters.docker.nodes`), a thin view over the
same client that adds the raw list, unpause, network connect and archive upload
calls below. Failures are mapped onto three exceptions: `DockerUnavailable` (no
engine at the endpoint: connection refused, socket missing, timed out, a broken
or malformed answer), `ContainerNotFound` (404) and `DockerAPIError` (any other
4xx/5xx, with the engine's `message`).

The endpoint comes from `docker.host` in the config, else `DOCKER_HOST`, else
the default socket; a tcp:// endpoint uses TLS as the docker CLI does
(`DOCKER_TLS_VERIFY`: verify against `DOCKER_CERT_PATH`/ca.pem; `DOCKER_TLS`:
encrypt only; cert.pem/key.pem there as the client certificate). Versioned
calls go to `/v{ApiVersion}` from one `GET /version` per client, asked again
after the engine was unavailable (it may have been upgraded meanwhile). The
client is built without touching the socket, so a missing engine is an error
of the first call, never of start-up.
"""

from __future__ import annotations

import json
import os
import ssl
from collections.abc import AsyncIterator, Mapping, Sequence
from pathlib import Path
from typing import Any, NoReturn, Protocol
from urllib.parse import quote

from maculad.adapters.docker.model import ContainerEvent, ContainerInfo, parse_event, parse_inspect
from maculad.adapters.http import Endpoint, HTTPClient, HTTPUnavailable, Response, Stream

DEFAULT_SOCKET = "unix:///var/run/docker.sock"
#: the longest event line read from the engine (an event is a few KiB)
MAX_EVENT_LINE = 1024 * 1024

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


def tls_context(env: Mapping[str, str]) -> ssl.SSLContext | None:
    """The TLS context for a tcp:// engine, as the docker CLI builds it from the environment; None: plain.

    ValueError names the file that is missing or unusable.
    """
    verify = bool(env.get("DOCKER_TLS_VERIFY"))
    if not verify and not env.get("DOCKER_TLS"):
        return None
    certs = Path(env.get("DOCKER_CERT_PATH") or Path(env.get("HOME") or Path.home()) / ".docker")
    ca, cert, key = certs / "ca.pem", certs / "cert.pem", certs / "key.pem"
    try:
        if verify:
            ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(ca))
        else:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        if cert.exists() and key.exists():
            ctx.load_cert_chain(str(cert), str(key))
    except (OSError, ssl.SSLError) as exc:
        raise ValueError(f"the Docker TLS files in {certs} (DOCKER_CERT_PATH) are not usable: {exc}") from None
    return ctx


def engine_client(endpoint: str, *, timeout: float, env: Mapping[str, str]) -> HTTPClient:
    """The HTTP client for `endpoint` (unix://, tcp:// with the docker CLI's TLS variables, http(s)://)."""
    ctx = tls_context(env) if not endpoint.startswith("unix:") else None
    default_port = 2376 if ctx is not None else 2375
    ep = Endpoint.parse(endpoint, default_port=default_port)
    if ctx is not None and ep.scheme == "http":
        ep = Endpoint("https", ep.host, ep.port, "")
    return HTTPClient(ep, ssl=ctx if ep.scheme == "https" else None, timeout=timeout, connect_timeout=5.0)


def _filters(labels: Sequence[str], **more: Sequence[str]) -> str:
    f: dict[str, list[str]] = {k: list(v) for k, v in more.items() if v}
    if labels:
        f["label"] = list(labels)
    return json.dumps(f)


def _engine_message(resp: Response) -> str:
    """The engine's `{"message": ...}`, else the start of the body as text."""
    try:
        data = resp.json()
    except ValueError:
        data = None
    if isinstance(data, dict) and isinstance(data.get("message"), str):
        return str(data["message"])
    return resp.body[:500].decode("utf-8", "replace").strip() or f"HTTP {resp.status} {resp.reason}"


class _EngineEvents:
    def __init__(self, api: EngineAPI, stream: Stream) -> None:
        self._api = api
        self._stream = stream

    async def __aiter__(self) -> AsyncIterator[ContainerEvent]:
        try:
            async for line in self._stream.lines(max_line=MAX_EVENT_LINE):
                try:
                    data = json.loads(line)
                except ValueError:
                    continue
                if isinstance(data, dict):
                    ev = parse_event(data)
                    if ev is not None:
                        yield ev
        except HTTPUnavailable as exc:
            self._api._forget_version()
            raise DockerUnavailable(f"the event stream from {self._api.endpoint} broke: {exc.cause}") from None
        # the body ended: the engine closed the stream (it stopped or restarts)

    async def close(self) -> None:
        await self._stream.close()


class EngineAPI:
    """`DockerAPI` over the engine's HTTP API; one HTTP client (a small keep-alive pool) per instance."""

    def __init__(self, *, endpoint: str, request_timeout: float = 30.0, env: Mapping[str, str] | None = None) -> None:
        self.endpoint = endpoint
        self._timeout = request_timeout
        self._env = env
        self._client: HTTPClient | None = None
        self._prefix: str | None = None  # "/v1.47": from GET /version

    def _http(self) -> HTTPClient:
        if self._client is None:
            try:
                self._client = engine_client(self.endpoint, timeout=self._timeout,
                                             env=os.environ if self._env is None else self._env)
            except ValueError as exc:
                raise DockerUnavailable(f"bad Docker endpoint {self.endpoint!r}: {exc}") from exc
        return self._client

    def _forget_version(self) -> None:
        self._prefix = None

    async def _versioned(self, path: str) -> str:
        if self._prefix is None:
            data = await self._call("version", versioned=False)
            api_version = data.get("ApiVersion") if isinstance(data, dict) else None
            if not isinstance(api_version, str) or not api_version:
                raise DockerAPIError(0, "version: the engine named no ApiVersion")
            self._prefix = f"/v{quote(api_version, safe='.')}"
        return f"{self._prefix}/{path}"

    def _unavailable(self, exc: HTTPUnavailable) -> NoReturn:
        self._forget_version()  # the engine may come back as another version
        raise DockerUnavailable(f"Docker engine at {self.endpoint} did not answer: {exc.cause}") from None

    async def _call(self, path: str, *, method: str = "GET", params: dict[str, str] | None = None,
                    versioned: bool = True, timeout: float | None = None, data: bytes | None = None,
                    headers: Mapping[str, str] | None = None) -> Any:
        client = self._http()
        target = await self._versioned(path) if versioned else f"/{path}"
        try:
            resp = await client.request(method, target, params=params, headers=headers, body=data, timeout=timeout)
        except HTTPUnavailable as exc:
            self._unavailable(exc)
        if resp.status >= 400:
            self._raise(resp.status, _engine_message(resp))
        if not resp.body:
            return None
        try:
            return resp.json()
        except ValueError:
            return None

    @staticmethod
    def _raise(status: int, msg: str) -> NoReturn:
        if status == 404:
            raise ContainerNotFound(msg)
        raise DockerAPIError(status, msg)

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
        client = self._http()
        params = {"filters": _filters(labels, type=["container"], event=WATCHED_ACTIONS)}
        target = await self._versioned("events")
        try:
            stream = await client.stream("GET", target, params=params)
        except HTTPUnavailable as exc:
            self._unavailable(exc)
        if stream.status >= 400:
            try:
                body = await stream.read()
            except HTTPUnavailable as exc:
                self._unavailable(exc)
            finally:
                await stream.close()
            self._raise(stream.status, _engine_message(Response(stream.status, stream.reason, stream.headers, body)))
        return _EngineEvents(self, stream)

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
                         data=json.dumps({"Container": container}).encode(),
                         headers={"Content-Type": "application/json"})

    async def put_archive(self, container: str, path: str, archive: bytes) -> None:
        """Extract a tar `archive` at `path` inside `container`."""
        await self._call(f"containers/{quote(container, safe='')}/archive", method="PUT", params={"path": path},
                         data=archive, headers={"Content-Type": "application/x-tar"})

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.close()
