"""The cluster ingress's default certificate as a Kubernetes Secret (pure).

ingress-nginx serves every Ingress host through one controller, so one leaf for
`*.<domain>` and `<domain>` is right there (unlike the relay's shared
addresses, where per-name leaves keep browsers from coalescing connections).
The controller runs with `--default-ssl-certificate=ingress-nginx/maculad-default-tls`
(see `maculad.supervise.cluster_wiring.with_default_certificate`), so an Ingress
without its own `tls:` secret is still trusted.
"""

from __future__ import annotations

import base64
from typing import Any

from maculad.pki.leaves import Leaf, LeafStore

NAMESPACE = "ingress-nginx"
NAME = "maculad-default-tls"
REF = f"{NAMESPACE}/{NAME}"

_CERT = b"-----BEGIN CERTIFICATE-----"


def ingress_leaf(store: LeafStore) -> Leaf:
    domain = store.ca.domain
    return store.get((f"*.{domain}", domain))


def secret_object(leaf: Leaf) -> dict[str, Any]:
    """The `kubernetes.io/tls` Secret holding `leaf` (its file: key, then certificate)."""
    raw = leaf.path.read_bytes()
    at = raw.index(_CERT)
    key, cert = raw[:at], raw[at:]
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "kubernetes.io/tls",
        "metadata": {
            "name": NAME,
            "namespace": NAMESPACE,
            "labels": {"app.kubernetes.io/managed-by": "maculad"},
            "annotations": {"maculad/leaf-sha256": leaf.fingerprint, "maculad/not-after": leaf.not_after.isoformat()},
        },
        "data": {
            "tls.crt": base64.b64encode(cert).decode("ascii"),
            "tls.key": base64.b64encode(key).decode("ascii"),
        },
    }
