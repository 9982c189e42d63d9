"""What a kind cluster needs after every (re)creation (pure builders).

The containerd `hosts.toml` that sends pulls of the registry's host name to
the registry container on the `kind` network, the KEP-1755
`kube-public/local-registry-hosting` ConfigMap, and the ingress-nginx manifest
with maculad's default certificate. The calls that put them in
place are the adapters' (`adapters.docker.nodes`, `adapters.kube.apply`).
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import urlsplit

import yaml

REGISTRY_CONFIGMAP = ("kube-public", "local-registry-hosting")
CERTS_DIR = "/etc/containerd/certs.d"
KIND_REGISTRY_HELP = "https://kind.sigs.k8s.io/docs/user/local-registry/"

_HOST = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?(:[0-9]{1,5})?$|^\[[0-9A-Fa-f:.]+\](:[0-9]{1,5})?$")


class WiringError(Exception):
    """A wiring step that failed, with the step's name for status."""

    def __init__(self, step: str, message: str) -> None:
        self.step = step
        self.message = message
        super().__init__(f"{step}: {message}")


def check_registry_host(host: str) -> str:
    """`registry.macula.local:5001` → itself; anything that cannot be a directory name is refused."""
    if not _HOST.match(host):
        raise ValueError(f"{host!r} is not a registry host[:port]")
    return host


def hosts_toml_path(registry_host: str) -> str:
    return f"{CERTS_DIR}/{check_registry_host(registry_host)}/hosts.toml"


def hosts_toml(registry_host: str, endpoint: str) -> str:
    """containerd's registry host config: pulls of `registry_host/...` go to `endpoint`."""
    check_registry_host(registry_host)
    parts = urlsplit(endpoint)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"{endpoint!r} is not an http(s)://host:port registry endpoint")
    if any(c in endpoint for c in "\"\\\n\r"):
        raise ValueError(f"{endpoint!r} contains characters that cannot go into hosts.toml")
    return (
        f"# Written by maculad: pulls of {registry_host}/... go to the registry container\n"
        f"# on the kind network. Rewritten after every cluster (re)creation.\n"
        f"[host.\"{endpoint}\"]\n"
        f"  capabilities = [\"pull\", \"resolve\"]\n"
    )


def registry_configmap(registry_host: str, endpoint: str) -> dict[str, Any]:
    """KEP-1755's `kube-public/local-registry-hosting` ConfigMap, so tools find the local registry."""
    check_registry_host(registry_host)
    in_cluster = urlsplit(endpoint).netloc or endpoint
    doc = {
        "host": registry_host,
        "hostFromContainerRuntime": registry_host,
        "hostFromClusterNetwork": in_cluster,
        "help": KIND_REGISTRY_HELP,
    }
    ns, name = REGISTRY_CONFIGMAP
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": name, "namespace": ns, "labels": {"app.kubernetes.io/managed-by": "maculad"}},
        "data": {"localRegistryHosting.v1": yaml.safe_dump(doc, sort_keys=False)},
    }


def with_default_certificate(objs: list[dict[str, Any]], ref: str) -> list[dict[str, Any]]:
    """The objects with `--default-ssl-certificate=<ref>` on every ingress-nginx controller container
    (a container whose args start with the `/nginx-ingress-controller` binary); an existing flag is replaced.
    Copies what it changes; the input is not modified."""
    import copy

    flag = "--default-ssl-certificate"
    out: list[dict[str, Any]] = []
    for obj in objs:
        if obj.get("kind") in ("Deployment", "DaemonSet"):
            containers = (((obj.get("spec") or {}).get("template") or {}).get("spec") or {}).get("containers")
            if isinstance(containers, list) and any(_is_controller(c) for c in containers):
                obj = copy.deepcopy(obj)
                for c in obj["spec"]["template"]["spec"]["containers"]:
                    if _is_controller(c):
                        c["args"] = [a for a in c["args"] if not str(a).startswith(flag + "=")] + [f"{flag}={ref}"]
        out.append(obj)
    return out


def _is_controller(container: Any) -> bool:
    args = container.get("args") if isinstance(container, dict) else None
    return isinstance(args, list) and bool(args) and str(args[0]).endswith("nginx-ingress-controller")
