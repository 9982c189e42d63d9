"""kubernetes-asyncio's own client for a kubeconfig: the reference client the tests drive clusters with
(and check the fake API server against). A test dependency only; maculad itself speaks HTTP to the API
server through `maculad.adapters.kube.client`."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from kubernetes_asyncio import client as k8s
from kubernetes_asyncio.config import load_kube_config


@asynccontextmanager
async def api_client(*, kubeconfig: Path, context: str | None) -> AsyncIterator[k8s.ApiClient]:
    configuration = k8s.Configuration()
    await load_kube_config(config_file=str(kubeconfig), context=context, client_configuration=configuration,
                           persist_config=False)
    api = k8s.ApiClient(configuration=configuration)
    try:
        yield api
    finally:
        await api.close()
