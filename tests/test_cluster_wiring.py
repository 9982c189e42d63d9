"""Post-creation wiring: hosts.toml, the KEP-1755 ConfigMap, manifest parsing and the
server-side applier against the fake API server (real HTTP, real kubernetes-asyncio client)."""

from __future__ import annotations

import asyncio
import tomllib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import yaml
from aiohttp import web

from maculad.supervise.cluster_wiring import hosts_toml, hosts_toml_path, registry_configmap
from maculad.adapters.kube.apply import (
    Applier,
    ManifestError,
    builtin_resource,
    deployment_available,
    load_manifest,
    parse_manifest,
    resource_path,
)
from maculad.adapters.kube.client import KubeError, KubeSession, api_ready
from tests.support.cluster_env import INGRESS_MANIFEST
from tests.support.fake_k8s import CONFIGMAPS, ResourceType
from tests.support.fake_k8s_cluster import DEPLOYMENTS, SERVICES, FakeClusterAPI

# --------------------------------------------------------------------------- pure


def test_hosts_toml_is_valid_toml_for_containerd() -> None:
    text = hosts_toml("registry.macula.local:5001", "http://macula-registry:5000")
    doc = tomllib.loads(text)
    assert doc == {"host": {"http://macula-registry:5000": {"capabilities": ["pull", "resolve"]}}}
    assert hosts_toml_path("registry.macula.local:5001") == \
        "/etc/containerd/certs.d/registry.macula.local:5001/hosts.toml"


@pytest.mark.parametrize("host", ["../etc", "a/b", "", "reg istry", "x:port"])
def test_registry_host_must_be_a_host(host: str) -> None:
    with pytest.raises(ValueError):
        hosts_toml_path(host)


@pytest.mark.parametrize("endpoint", ["macula-registry:5000", "ftp://x", "http://", 'http://a"b'])
def test_registry_endpoint_must_be_http(endpoint: str) -> None:
    with pytest.raises(ValueError):
        hosts_toml("registry.macula.local:5001", endpoint)


def test_registry_configmap_follows_kep_1755() -> None:
    cm = registry_configmap("registry.macula.local:5001", "http://macula-registry:5000")
    assert cm["metadata"]["namespace"] == "kube-public"
    assert cm["metadata"]["name"] == "local-registry-hosting"
    doc = yaml.safe_load(cm["data"]["localRegistryHosting.v1"])
    assert doc["host"] == "registry.macula.local:5001"
    assert doc["hostFromClusterNetwork"] == "macula-registry:5000"
    assert doc["help"] == "https://kind.sigs.k8s.io/docs/user/local-registry/"


def test_parse_manifest_orders_namespaces_first_and_expands_lists() -> None:
    text = INGRESS_MANIFEST + "---\n---\napiVersion: v1\nkind: List\nitems:\n" \
        "  - {apiVersion: v1, kind: ConfigMap, metadata: {name: a, namespace: ingress-nginx}}\n"
    objs = parse_manifest(text, source="m.yaml")
    assert [o["kind"] for o in objs] == ["Namespace", "Deployment", "Service", "ConfigMap"]


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("a: [", "not valid YAML"),
        ("- 1\n- 2\n", "not a mapping"),
        ("kind: Service\nmetadata: {name: x}\n", "no valid apiVersion"),
        ("apiVersion: v1\nmetadata: {name: x}\n", "no kind"),
        ("apiVersion: v1\nkind: Service\nmetadata: {}\n", "no metadata.name"),
        ("apiVersion: v1\nkind: Service\nmetadata: {name: x, namespace: 5}\n", "non-string namespace"),
        ("", "holds no objects"),
        ("---\n# only a comment\n", "holds no objects"),
    ],
)
def test_parse_manifest_errors_name_the_document(text: str, why: str) -> None:
    with pytest.raises(ManifestError, match=why) as info:
        parse_manifest(text, source="m.yaml")
    assert str(info.value).startswith("m.yaml: ")


def test_resource_paths() -> None:
    dep = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "c", "namespace": "ingress-nginx"}}
    res = builtin_resource("apps/v1", "Deployment")
    assert res is not None
    assert resource_path(dep, res) == "/apis/apps/v1/namespaces/ingress-nginx/deployments/c"
    ns = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "ingress-nginx"}}
    nres = builtin_resource("v1", "Namespace")
    assert nres is not None and resource_path(ns, nres) == "/api/v1/namespaces/ingress-nginx"
    cr = builtin_resource("rbac.authorization.k8s.io/v1", "ClusterRole")
    assert cr is not None and not cr.namespaced
    svc = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "s"}}
    sres = builtin_resource("v1", "Service")
    assert sres is not None and resource_path(svc, sres) == "/api/v1/namespaces/default/services/s"
    assert builtin_resource("example.com/v1", "Widget") is None


def test_deployment_available() -> None:
    ok = {"metadata": {"generation": 2}, "spec": {"replicas": 1},
          "status": {"observedGeneration": 2, "conditions": [{"type": "Available", "status": "True"}]}}
    assert deployment_available(ok) == (True, "")
    no = {"status": {"conditions": [{"type": "Available", "status": "False", "message": "0/1 ready"}]}}
    assert deployment_available(no) == (False, "0/1 ready")
    assert deployment_available({"spec": {"replicas": 2}, "status": {"availableReplicas": 1,
                                                                      "observedGeneration": 1}})[0] is False
    assert deployment_available({"metadata": {"generation": 3}, "spec": {"replicas": 1},
                                 "status": {"observedGeneration": 2, "availableReplicas": 1}})[0] is False
    assert deployment_available({"metadata": {"generation": 1}, "spec": {"replicas": 1},
                                 "status": {"observedGeneration": 1, "availableReplicas": 1}}) == (True, "")
    assert deployment_available({"status": "garbage"}) == (False, "malformed object")
    assert deployment_available({})[0] is False


# --------------------------------------------------------------------------- manifests from files and URLs


async def test_load_manifest_from_path_file_url_and_http(tmp_path: Path) -> None:
    (tmp_path / "m.yaml").write_text(INGRESS_MANIFEST)
    assert await load_manifest("m.yaml", base=tmp_path, timeout=5) == INGRESS_MANIFEST
    assert await load_manifest(f"file://{tmp_path / 'm.yaml'}", base=Path("/"), timeout=5) == INGRESS_MANIFEST
    with pytest.raises(ManifestError, match="cannot read"):
        await load_manifest("missing.yaml", base=tmp_path, timeout=5)
    with pytest.raises(ManifestError, match="unsupported URL scheme"):
        await load_manifest("ftp://example/x.yaml", base=tmp_path, timeout=5)

    async def serve(request: web.Request) -> web.Response:
        if request.path == "/deploy.yaml":
            return web.Response(text=INGRESS_MANIFEST)
        if request.path == "/releases/latest/deploy.yaml":  # as release download URLs do
            raise web.HTTPFound("/deploy.yaml")
        if request.path == "/loop":
            raise web.HTTPFound("/loop")
        return web.Response(status=404)

    app = web.Application()
    app.router.add_get("/{tail:.*}", serve)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        assert await load_manifest(f"http://127.0.0.1:{port}/deploy.yaml", base=tmp_path, timeout=5) == \
            INGRESS_MANIFEST
        assert await load_manifest(f"http://127.0.0.1:{port}/releases/latest/deploy.yaml", base=tmp_path,
                                   timeout=5) == INGRESS_MANIFEST
        with pytest.raises(ManifestError, match="HTTP 404"):
            await load_manifest(f"http://127.0.0.1:{port}/nope.yaml", base=tmp_path, timeout=5)
        with pytest.raises(ManifestError, match="more than 5 redirects"):
            await load_manifest(f"http://127.0.0.1:{port}/loop", base=tmp_path, timeout=5)
    finally:
        await runner.cleanup()
    with pytest.raises(ManifestError, match="cannot fetch"):
        await load_manifest(f"http://127.0.0.1:{port}/deploy.yaml", base=tmp_path, timeout=5)


# --------------------------------------------------------------------------- the applier, over HTTP


@pytest.fixture
async def fake() -> AsyncIterator[FakeClusterAPI]:
    async with FakeClusterAPI() as api:
        yield api


@pytest.fixture
async def session(fake: FakeClusterAPI, tmp_path: Path) -> AsyncIterator[KubeSession]:
    kc = fake.write_kubeconfig(tmp_path / "kubeconfig", context="kind-test")
    s = await KubeSession.open(kc, "kind-test")
    try:
        yield s
    finally:
        await s.close()


async def test_readyz(fake: FakeClusterAPI, session: KubeSession) -> None:
    assert await api_ready(session) == (True, "")
    await fake.outage("503")
    ok, why = await api_ready(session)
    assert not ok and "503" in why
    await fake.recover()
    await fake.outage("refuse")
    ok, why = await api_ready(session, timeout=2)
    assert not ok and why
    await fake.recover()


async def test_open_with_a_bad_kubeconfig(tmp_path: Path, fake: FakeClusterAPI) -> None:
    with pytest.raises(KubeError, match="does not exist"):
        await KubeSession.open(tmp_path / "nope", "kind-x")
    kc = fake.write_kubeconfig(tmp_path / "kc", context="kind-a")
    with pytest.raises(KubeError):
        await KubeSession.open(kc, "kind-other")


async def test_apply_configmap_is_server_side_and_idempotent(fake: FakeClusterAPI, session: KubeSession) -> None:
    applier = Applier(session)
    cm = registry_configmap("registry.macula.local:5001", "http://macula-registry:5000")
    first = await applier.apply(cm)
    assert first["metadata"]["namespace"] == "kube-public"
    rv = fake.get(CONFIGMAPS, "kube-public", "local-registry-hosting")["metadata"]["resourceVersion"]  # type: ignore[index]
    await applier.apply(cm)  # the same again: no new version
    again = fake.get(CONFIGMAPS, "kube-public", "local-registry-hosting")
    assert again is not None and again["metadata"]["resourceVersion"] == rv
    patches = [r for r in fake.requests if r.method == "PATCH"]
    assert len(patches) == 2
    assert all(r.query.get("fieldManager") == "maculad" and r.query.get("force") == "true" for r in patches)


async def test_apply_manifest_and_wait_for_the_deployment(fake: FakeClusterAPI, session: KubeSession) -> None:
    applier = Applier(session)
    objs = parse_manifest(INGRESS_MANIFEST)
    done = await applier.apply_all(objs)
    assert done == ["Namespace/ingress-nginx", "Deployment/ingress-nginx/ingress-nginx-controller",
                    "Service/ingress-nginx/ingress-nginx-controller"]
    assert fake.get(SERVICES, "ingress-nginx", "ingress-nginx-controller") is not None
    await applier.wait_available([o for o in objs if o["kind"] == "Deployment"], timeout=5, interval=0.05)


async def test_wait_times_out_naming_the_deployment(fake: FakeClusterAPI, session: KubeSession) -> None:
    fake.deployments_become_available = False
    applier = Applier(session)
    objs = parse_manifest(INGRESS_MANIFEST)
    await applier.apply_all(objs)
    deps = [o for o in objs if o["kind"] == "Deployment"]
    with pytest.raises(KubeError, match="ingress-nginx-controller"):
        await applier.wait_available(deps, timeout=0.3, interval=0.05)
    path = "/apis/apps/v1/namespaces/ingress-nginx/deployments/ingress-nginx-controller"

    def polls() -> int:
        return sum(1 for r in fake.requests if r.method == "GET" and r.path == path)

    before = polls()
    waiting = asyncio.create_task(applier.wait_available(deps, timeout=10, interval=0.05))
    deadline = asyncio.get_running_loop().time() + 10
    while polls() < before + 3:  # it read the unavailable Deployment three times and keeps waiting
        assert not waiting.done(), "wait_available ended while the Deployment was unavailable"
        assert asyncio.get_running_loop().time() < deadline, "wait_available did not poll"
        await asyncio.sleep(0.01)
    assert not waiting.done()
    fake.make_available()
    await asyncio.wait_for(waiting, 10)
    dep = fake.get(DEPLOYMENTS, "ingress-nginx", "ingress-nginx-controller")
    assert dep is not None and deployment_available(dep)[0]


async def test_apply_errors_are_clear(fake: FakeClusterAPI, session: KubeSession) -> None:
    applier = Applier(session)
    svc = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "s", "namespace": "nope"}, "spec": {}}
    with pytest.raises(KubeError, match=r"apply Service/nope/s: 404 NotFound: namespaces \"nope\" not found"):
        await applier.apply(svc)
    widget = {"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w"}}
    with pytest.raises(KubeError, match=r"discovery of example\.com/v1: 404"):
        await applier.apply(widget)


async def test_unknown_kinds_are_found_by_discovery(fake: FakeClusterAPI, session: KubeSession) -> None:
    fake.add_resource(ResourceType("example.com", "v1", "widgets", "Widget", True))
    applier = Applier(session)
    w = {"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w"}, "spec": {"size": 3}}
    await applier.apply(w)
    assert [r.path for r in fake.requests if r.method == "PATCH"] == \
        ["/apis/example.com/v1/namespaces/default/widgets/w"]
    got = await applier.get(w)
    assert got is not None and got["spec"] == {"size": 3}
    with pytest.raises(KubeError, match="does not serve Gadget"):
        await applier.apply({"apiVersion": "example.com/v1", "kind": "Gadget", "metadata": {"name": "g"}})
