"""kubernetes-asyncio `ApiClient` construction from a kubeconfig, and `/readyz`.

One place builds clients so the Ingress provider and the kind cluster
supervisor read kubeconfigs the same way: a path and an optional context
(`None` → the file's current-context), `persist_config=False` (maculad never
writes the user's kubeconfig). Every way loading can fail — a missing file, bad
YAML, an unknown context, a broken certificate — becomes one `KubeClientError`
with a readable reason, so callers log it and retry instead of crashing.

The client is built fresh on each (re)connect: a recreated kind cluster comes
back with a new port and new certificates in the same file.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp
import structlog

if TYPE_CHECKING:  # kubernetes-asyncio is ~60 MB of modules: loaded only once [kubernetes] is on
    from kubernetes_asyncio.client import ApiClient

log = structlog.get_logger("maculad.adapters.kube")


class KubeClientError(Exception):
    """The kubeconfig cannot give a usable client (reason in the message)."""


async def new_api_client(*, kubeconfig: Path, context: str | None) -> ApiClient:
    """An `ApiClient` for `context` of `kubeconfig`; the caller closes it (`close_api_client`)."""
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


async def raw_get(api: ApiClient, path: str, *, timeout: float, query: list[tuple[str, Any]] | None = None
                  ) -> aiohttp.ClientResponse:
    """GET `path` with the client's auth; the caller reads and releases the response."""
    resp: aiohttp.ClientResponse = await api.call_api(
        path, "GET", query_params=query or [], auth_settings=["BearerToken"], _preload_content=False,
        _request_timeout=aiohttp.ClientTimeout(total=timeout),
    )
    return resp


async def readyz(api: ApiClient, *, timeout: float = 5.0) -> bool:
    """True when the API server answers `GET /readyz` with 200 `ok`; False on any error."""
    try:
        resp = await raw_get(api, "/readyz", timeout=timeout)
        try:
            body = await resp.read()
            return resp.status == 200 and body.strip() == b"ok"
        finally:
            resp.release()
    except Exception as exc:  # any failure means "not ready"
        log.debug("kube_readyz_failed", error=f"{type(exc).__name__}: {exc}")
        return False
