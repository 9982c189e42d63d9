"""The one Kubernetes client: kubeconfig → `ApiClient`, the `KubeTransport` over it, `/readyz`.

One place builds clients so the Ingress watch (`adapters.kube.ingresses`), the
apply of manifests (`adapters.kube.apply`) and the kind cluster supervisor read
kubeconfigs the same way: a path and an optional context
(`None` → the file's current-context), `persist_config=False` (maculad never
writes the user's kubeconfig). Every way loading can fail — a missing file, bad
YAML, an unknown context, a broken certificate — becomes one `KubeClientError`
with a readable reason, so callers log it and retry instead of crashing.

The client is built fresh on each (re)connect: a recreated kind cluster comes
back with a new port and new certificates in the same file. `KubeSession` is
the `KubeTransport` (method, path, query, body → status and decoded body)
that apply and the readiness check (`api_ready`, the one `/readyz` test) use.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol


import structlog

if TYPE_CHECKING:  # kubernetes-asyncio is ~60 MB of modules: loaded only once [kubernetes] is on
    from kubernetes_asyncio.client import ApiClient

log = structlog.get_logger("maculad.adapters.kube")


class KubeClientError(Exception):
    """The kubeconfig cannot give a usable client (reason in the message)."""


async def new_api_client(*, kubeconfig: Path, context: str | None) -> ApiClient:
    """An `ApiClient` for `context` of `kubeconfig`; the caller closes it (`close_api_client`)."""
    # kubernetes-asyncio is imported here, not at the top: a daemon with [kubernetes] and [kind]
    # off never loads it.
    from kubernetes_asyncio.client import ApiClient, Configuration
    from kubernetes_asyncio.config import ConfigException, load_kube_config

    path = Path(kubeconfig).expanduser()
    if not path.is_file():
        raise KubeClientError(f"kubeconfig {path} does not exist")
    configuration = Configuration()
    try:
        await load_kube_config(
            config_file=str(path), context=context, client_configuration=configuration, persist_config=False
        )
    except ConfigException as exc:
        raise KubeClientError(f"kubeconfig {path}: {exc}") from None
    except (AssertionError, KeyError, TypeError, ValueError, OSError) as exc:
        what = f"context {context!r}" if context else "its current context"
        raise KubeClientError(f"kubeconfig {path}: cannot load {what}: {type(exc).__name__}: {exc}") from None
    except Exception as exc:  # YAML errors and whatever else the loader lets through
        raise KubeClientError(f"kubeconfig {path}: {type(exc).__name__}: {exc}") from None
    try:
        return ApiClient(configuration=configuration)
    except (OSError, ValueError) as exc:  # e.g. an unreadable client certificate
        raise KubeClientError(f"kubeconfig {path}: {type(exc).__name__}: {exc}") from None


async def close_api_client(api: ApiClient) -> None:
    try:
        await api.close()
    except Exception:  # closing must never fail a shutdown
        log.debug("kube_client_close_failed", exc_info=True)


@asynccontextmanager
async def api_client(*, kubeconfig: Path, context: str | None) -> AsyncIterator[ApiClient]:
    api = await new_api_client(kubeconfig=kubeconfig, context=context)
    try:
        yield api
    finally:
        await close_api_client(api)


def object_key(obj: Any) -> tuple[str, str] | None:
    """(namespace, name) of a raw object, or None when it has no usable metadata."""
    if not isinstance(obj, Mapping):
        return None
    md = obj.get("metadata")
    if not isinstance(md, Mapping):
        return None
    name, ns = md.get("name"), md.get("namespace", "default")
    if not isinstance(name, str) or not name or not isinstance(ns, str) or not ns:
        return None
    return ns, name


class KubeError(Exception):
    """The API server could not be reached or refused a request."""

    def __init__(self, message: str, *, status: int | None = None, reason: str = "") -> None:
        self.status = status
        self.reason = reason
        super().__init__(message)


class KubeTransport(Protocol):
    async def request(
        self, method: str, path: str, *, query: Mapping[str, str] | None = None,
        body: Any = None, content_type: str = "application/json", timeout: float = 30.0,
    ) -> tuple[int, Any]:
        """One API call: (HTTP status, body decoded as JSON when it is JSON, else text)."""

    async def close(self) -> None: ...


class KubeSession:
    """`KubeTransport` over kubernetes-asyncio's ApiClient for one kubeconfig context."""

    def __init__(self, client: Any) -> None:
        self._client = client

    @classmethod
    async def open(cls, kubeconfig: Path, context: str | None) -> KubeSession:
        """A session for `context` of `kubeconfig`, built the same way as the Ingress provider's."""
        try:
            client = await new_api_client(kubeconfig=kubeconfig, context=context)
        except KubeClientError as exc:
            raise KubeError(str(exc)) from None
        return cls(client)

    async def request(
        self, method: str, path: str, *, query: Mapping[str, str] | None = None,
        body: Any = None, content_type: str = "application/json", timeout: float = 30.0,
    ) -> tuple[int, Any]:
        import aiohttp

        try:
            resp = await self._client.call_api(
                path, method,
                query_params=list((query or {}).items()),
                header_params={"Content-Type": content_type, "Accept": "application/json"},
                body=body,
                auth_settings=["BearerToken"],
                _preload_content=False,
                _request_timeout=timeout,
            )
            try:
                raw = await resp.read()
                status = resp.status
            finally:
                resp.release()
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise KubeError(f"{method} {path}: {type(exc).__name__}: {exc}") from None
        text = raw.decode("utf-8", "replace")
        try:
            return status, json.loads(text)
        except ValueError:
            return status, text

    async def close(self) -> None:
        await close_api_client(self._client)


def status_message(status: int, body: Any) -> str:
    if isinstance(body, Mapping) and body.get("kind") == "Status":
        return f"{status} {body.get('reason', '')}: {body.get('message', '')}".strip()
    text = body if isinstance(body, str) else json.dumps(body)[:300]
    return f"{status}: {text[:300]}"


async def api_ready(api: KubeTransport, *, timeout: float = 5.0) -> tuple[bool, str]:
    """`GET /readyz`: (True, "") when the API server answers 200 `ok`, else (False, why).

    The one readiness check of the API server, for the cluster supervisor and anyone else."""
    try:
        status, body = await api.request("GET", "/readyz", timeout=timeout)
    except KubeError as exc:
        return False, str(exc)
    if status == 200 and isinstance(body, str) and body.strip() == "ok":
        return True, ""
    return False, f"/readyz answered {status_message(status, body)}"


