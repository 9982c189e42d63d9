"""The fake API server speaks what kubernetes-asyncio (the reference client, a test dependency only)
expects, and `maculad.adapters.kube.client` reaches it from real kubeconfig files (or explains why
it cannot)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from kubernetes_asyncio import client as k8s
from kubernetes_asyncio.client.exceptions import ApiException
from kubernetes_asyncio.watch import Watch

from maculad.adapters.kube.client import KubeClientError, KubeSession, api_ready
from tests.support.k8s_reference import api_client
from tests.support.fake_k8s import CONFIGMAPS, INGRESSES, FakeKubeAPI


@pytest.fixture
async def fake() -> AsyncIterator[FakeKubeAPI]:
    api = FakeKubeAPI(bookmark_interval=0.2)
    await api.start()
    try:
        yield api
    finally:
        await api.stop()


@pytest.fixture
async def api(fake: FakeKubeAPI, tmp_path: Path) -> AsyncIterator[k8s.ApiClient]:
    async with api_client(kubeconfig=fake.write_kubeconfig(tmp_path / "kubeconfig"), context="fake") as c:
        yield c


def ingress_model(ns: str, name: str, *hosts: str) -> k8s.V1Ingress:
    return k8s.V1Ingress(
        metadata=k8s.V1ObjectMeta(name=name, namespace=ns),
        spec=k8s.V1IngressSpec(rules=[k8s.V1IngressRule(host=h, http=k8s.V1HTTPIngressRuleValue(paths=[
            k8s.V1HTTPIngressPath(path="/", path_type="Prefix", backend=k8s.V1IngressBackend(
                service=k8s.V1IngressServiceBackend(name="web", port=k8s.V1ServiceBackendPort(number=80))))]))
            for h in hosts]),
    )


async def readyz(kubeconfig: Path, context: str | None = None, *, timeout: float = 5.0) -> bool:
    """maculad's own readiness check, through a fresh session for the kubeconfig."""
    session = KubeSession.for_context(kubeconfig, context)
    try:
        ready, _why = await api_ready(session, timeout=timeout)
    finally:
        await session.close()
    return ready


async def test_discovery_version_and_readyz(fake: FakeKubeAPI, api: k8s.ApiClient, tmp_path: Path) -> None:
    kc = tmp_path / "kubeconfig"  # the one the `api` fixture wrote
    version = await k8s.VersionApi(api).get_code()
    assert version.git_version.startswith("v1.")
    groups = await k8s.ApisApi(api).get_api_versions()
    assert "networking.k8s.io" in [g.name for g in groups.groups]
    resources = await k8s.NetworkingV1Api(api).get_api_resources()
    assert "ingresses" in [r.name for r in resources.resources]
    core = await k8s.CoreApi(api).get_api_versions()
    assert core.versions == ["v1"]
    assert await readyz(kc) is True
    await fake.outage("503")
    assert await readyz(kc) is False
    await fake.recover()
    assert await readyz(kc) is True
    await fake.outage("refuse")
    assert await readyz(kc, timeout=2) is False
    await fake.recover()
    assert await readyz(kc) is True


async def test_ingress_crud_and_status_errors(fake: FakeKubeAPI, api: k8s.ApiClient, tmp_path: Path) -> None:
    net = k8s.NetworkingV1Api(api)
    created = await net.create_namespaced_ingress("default", ingress_model("default", "web", "web.macula.local"))
    assert created.metadata.uid and created.metadata.resource_version
    with pytest.raises(ApiException) as exc:
        await net.create_namespaced_ingress("default", ingress_model("default", "web", "web.macula.local"))
    assert exc.value.status == 409 and json.loads(exc.value.body)["reason"] == "AlreadyExists"
    with pytest.raises(ApiException) as exc:
        await net.create_namespaced_ingress("nowhere", ingress_model("nowhere", "web", "w.macula.local"))
    assert exc.value.status == 404

    stale = created.metadata.resource_version
    created.spec.rules[0].host = "web2.macula.local"
    replaced = await net.replace_namespaced_ingress("web", "default", created)
    assert replaced.spec.rules[0].host == "web2.macula.local"
    assert int(replaced.metadata.resource_version) > int(stale)
    assert replaced.metadata.generation == 2
    created.metadata.resource_version = stale
    with pytest.raises(ApiException) as exc:
        await net.replace_namespaced_ingress("web", "default", created)
    assert exc.value.status == 409 and json.loads(exc.value.body)["reason"] == "Conflict"

    got = await net.read_namespaced_ingress("web", "default")
    assert got.spec.rules[0].host == "web2.macula.local"
    status = await net.delete_namespaced_ingress("web", "default")
    assert status.status == "Success"
    with pytest.raises(ApiException) as exc:
        await net.read_namespaced_ingress("web", "default")
    assert exc.value.status == 404

    fake.token = "another-token"
    with pytest.raises(ApiException) as exc:
        await net.list_ingress_for_all_namespaces()
    assert exc.value.status == 401


async def test_list_pages_share_one_resource_version(fake: FakeKubeAPI, api: k8s.ApiClient) -> None:
    for i in range(7):
        fake.create_ingress(f"ns{i % 2}", f"i{i}", [f"i{i}.macula.local"])
    net = k8s.NetworkingV1Api(api)
    names: list[str] = []
    page = await net.list_ingress_for_all_namespaces(limit=3)
    rv = page.metadata.resource_version
    while True:
        names += [i.metadata.name for i in page.items]
        if not page.metadata._continue:
            break
        fake.create_ingress("ns0", f"late{len(names)}", ["late.macula.local"])  # not in this list
        page = await net.list_ingress_for_all_namespaces(limit=3, _continue=page.metadata._continue)
        assert page.metadata.resource_version == rv
    assert sorted(names) == [f"i{i}" for i in range(7)]
    only_ns1 = await net.list_namespaced_ingress("ns1")
    assert sorted(i.metadata.name for i in only_ns1.items) == ["i1", "i3", "i5"]

    # a continue token from before a compaction is gone
    page = await net.list_ingress_for_all_namespaces(limit=2)
    fake.create_ingress("ns0", "after", ["after.macula.local"])
    fake.compact()
    with pytest.raises(ApiException) as exc:
        await net.list_ingress_for_all_namespaces(limit=2, _continue=page.metadata._continue)
    assert exc.value.status == 410


async def test_watch_stream_events_bookmarks_and_timeout(fake: FakeKubeAPI, api: k8s.ApiClient) -> None:
    net = k8s.NetworkingV1Api(api)
    fake.create_ingress("a", "before", ["before.macula.local"])
    listed = await net.list_ingress_for_all_namespaces()
    rv = listed.metadata.resource_version

    async def changes() -> None:
        await asyncio.sleep(0.3)
        fake.create_ingress("a", "x", ["x.macula.local"])
        fake.set_ingress_hosts("a", "x", ["y.macula.local"])
        fake.delete_ingress("a", "x")

    seen: list[tuple[str, str]] = []
    task = asyncio.create_task(changes())
    w = Watch()
    async with w:
        async for ev in w.stream(net.list_ingress_for_all_namespaces, resource_version=rv,
                                 allow_watch_bookmarks=True, timeout_seconds=2):
            name = ev["raw_object"]["metadata"].get("name", "")
            seen.append((ev["type"], name))
    await task
    kinds = [t for t, _ in seen]
    assert [s for s in seen if s[0] != "BOOKMARK"] == [("ADDED", "x"), ("MODIFIED", "x"), ("DELETED", "x")]
    assert "BOOKMARK" in kinds  # the stream ended by itself after timeoutSeconds
    assert isinstance(w.resource_version, str) and int(w.resource_version) >= fake.resource_version - 1


async def test_watch_without_version_starts_with_synthetic_added(fake: FakeKubeAPI, api: k8s.ApiClient) -> None:
    fake.create_ingress("a", "one", ["one.macula.local"])
    fake.create_ingress("b", "two", ["two.macula.local"])
    net = k8s.NetworkingV1Api(api)
    got: list[str] = []
    async with Watch() as w:
        async for ev in w.stream(net.list_namespaced_ingress, "b", timeout_seconds=1):
            got.append(f'{ev["type"]} {ev["object"].metadata.name}')
    assert got == ["ADDED two"]


async def test_stale_version_gives_410_which_kubernetes_asyncio_watch_raises(
    fake: FakeKubeAPI, api: k8s.ApiClient,
) -> None:
    fake.create_ingress("a", "one", ["one.macula.local"])
    old = str(fake.resource_version)
    fake.create_ingress("a", "two", ["two.macula.local"])
    fake.compact()
    net = k8s.NetworkingV1Api(api)
    # the raw wire answer: 200 and one ERROR event
    resp = await net.list_ingress_for_all_namespaces(watch=True, resource_version=old, _preload_content=False)
    lines = (await resp.read()).splitlines()
    resp.release()
    event = json.loads(lines[0])
    assert resp.status == 200 and len(lines) == 1
    assert event["type"] == "ERROR"
    assert event["object"]["code"] == 410 and event["object"]["reason"] == "Expired"
    # kubernetes-asyncio's Watch retries once with the same version, then raises
    before = fake.count_requests("ingresses", watch=True)
    with pytest.raises(ApiException) as exc:
        async with Watch() as w:
            async for _ in w.stream(net.list_ingress_for_all_namespaces, resource_version=old):
                pass
    assert exc.value.status == 410
    assert fake.count_requests("ingresses", watch=True) - before == 2


async def test_cut_stream_mid_event_breaks_the_client_read(fake: FakeKubeAPI, api: k8s.ApiClient) -> None:
    net = k8s.NetworkingV1Api(api)
    resp = await net.list_ingress_for_all_namespaces(watch=True, resource_version=str(fake.resource_version),
                                                     _preload_content=False)
    for _ in range(100):
        if fake.watch_count:
            break
        await asyncio.sleep(0.01)
    assert fake.cut_streams(mid_event=True) == 1
    with pytest.raises(aiohttp.ClientPayloadError):
        await resp.content.read()
    resp.release()


async def test_configmap_server_side_apply(fake: FakeKubeAPI, api: k8s.ApiClient) -> None:
    core = k8s.CoreV1Api(api)
    body: dict[str, Any] = {"apiVersion": "v1", "kind": "ConfigMap",
                            "metadata": {"name": "local-registry-hosting", "namespace": "kube-public"},
                            "data": {"a": "1", "b": "2"}}
    cm = await core.patch_namespaced_config_map("local-registry-hosting", "kube-public", body,
                                                field_manager="maculad", _content_type="application/apply-patch+yaml")
    assert cm.data == {"a": "1", "b": "2"}
    rv1 = cm.metadata.resource_version
    # the same apply again changes nothing
    cm = await core.patch_namespaced_config_map("local-registry-hosting", "kube-public", body,
                                                field_manager="maculad", _content_type="application/apply-patch+yaml")
    assert cm.metadata.resource_version == rv1
    # a field another manager set stays; a field this manager dropped goes
    await core.patch_namespaced_config_map("local-registry-hosting", "kube-public", {"data": {"other": "x"}},
                                           _content_type="application/merge-patch+json")
    body["data"] = {"a": "3"}
    cm = await core.patch_namespaced_config_map("local-registry-hosting", "kube-public", body,
                                                field_manager="maculad", _content_type="application/apply-patch+yaml")
    assert cm.data == {"a": "3", "other": "x"}
    stored = fake.get(CONFIGMAPS, "kube-public", "local-registry-hosting")
    assert stored is not None and stored["data"] == {"a": "3", "other": "x"}
    with pytest.raises(ApiException) as exc:
        await core.patch_namespaced_config_map("local-registry-hosting", "kube-public", body,
                                               _content_type="application/apply-patch+yaml")
    assert exc.value.status == 422


async def test_tls_kubeconfig_with_inline_ca_and_insecure(tmp_path: Path) -> None:
    async with FakeKubeAPI(tls=True) as fake:
        fake.create(INGRESSES, FakeKubeAPI.ingress_object("a", "s", ["s.macula.local"]))
        for insecure in (False, True):
            kc = fake.write_kubeconfig(tmp_path / f"kc-{insecure}", insecure=insecure)
            assert await readyz(kc)
            async with api_client(kubeconfig=kc, context=None) as api:
                listed = await k8s.NetworkingV1Api(api).list_ingress_for_all_namespaces()
                assert [i.metadata.name for i in listed.items] == ["s"]


async def test_kubeconfig_problems_are_clear_errors(fake: FakeKubeAPI, tmp_path: Path) -> None:
    with pytest.raises(KubeClientError, match="does not exist"):
        KubeSession.for_context(tmp_path / "missing", None)
    kc = fake.write_kubeconfig(tmp_path / "kubeconfig")
    with pytest.raises(KubeClientError, match="no context named 'no-such-context'"):
        KubeSession.for_context(kc, "no-such-context")
    bad = tmp_path / "bad"
    bad.write_text("{ this is: [not yaml")
    with pytest.raises(KubeClientError, match="not YAML"):
        KubeSession.for_context(bad, None)
    empty = tmp_path / "empty"
    empty.write_text("")
    with pytest.raises(KubeClientError, match="not a kubeconfig"):
        KubeSession.for_context(empty, None)


async def test_selectors_and_namespaces(fake: FakeKubeAPI, api: k8s.ApiClient) -> None:
    core = k8s.CoreV1Api(api)
    for name, labels in (("a", {"app": "x", "tier": "web"}), ("b", {"app": "y"}), ("c", {})):
        fake.create(CONFIGMAPS, {"metadata": {"name": name, "namespace": "kube-system", "labels": labels}})

    async def names(**kw: Any) -> list[str]:
        got = await core.list_namespaced_config_map("kube-system", **kw)
        return sorted(i.metadata.name for i in got.items)

    assert await names(label_selector="app=x") == ["a"]
    assert await names(label_selector="app!=x") == ["b", "c"]
    assert await names(label_selector="app") == ["a", "b"]
    assert await names(label_selector="!app") == ["c"]
    assert await names(label_selector="app=x,tier=web") == ["a"]
    assert await names(field_selector="metadata.name=b") == ["b"]
    with pytest.raises(ApiException) as exc:
        await names(field_selector="spec.nodeName=x")
    assert exc.value.status == 400
    # deleting a namespace deletes what is in it, with DELETED events on watches
    fake.create_ingress("doomed", "i", ["i.macula.local"])
    await core.delete_namespace("doomed")
    assert fake.items(INGRESSES, "doomed") == []
