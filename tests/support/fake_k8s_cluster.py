"""The fake API server of `fake_k8s`, grown into what the kind supervisor talks to.

`FakeClusterAPI` adds the resource types an ingress controller manifest holds
(Deployments, Services, ServiceAccounts, RBAC, Jobs, webhooks, ...) and a
tiny Deployment controller: every Deployment written (created, replaced,
patched or server-side applied) gets the status a real controller would write
once its pods are ready — `observedGeneration`, `availableReplicas` and an
`Available=True` condition — unless `deployments_become_available` is False,
in which case the Deployment stays unavailable (for timeout tests).
`applied_by(manager)` lists which objects a field manager applied.
"""

from __future__ import annotations

import copy
from typing import Any

from tests.support.fake_k8s import FakeKubeAPI, ResourceType

Obj = dict[str, Any]

DEPLOYMENTS = ResourceType("apps", "v1", "deployments", "Deployment", True)
SERVICES = ResourceType("", "v1", "services", "Service", True)
EXTRA_TYPES = (
    DEPLOYMENTS,
    SERVICES,
    ResourceType("", "v1", "serviceaccounts", "ServiceAccount", True),
    ResourceType("", "v1", "secrets", "Secret", True),
    ResourceType("rbac.authorization.k8s.io", "v1", "roles", "Role", True),
    ResourceType("rbac.authorization.k8s.io", "v1", "rolebindings", "RoleBinding", True),
    ResourceType("rbac.authorization.k8s.io", "v1", "clusterroles", "ClusterRole", False),
    ResourceType("rbac.authorization.k8s.io", "v1", "clusterrolebindings", "ClusterRoleBinding", False),
    ResourceType("batch", "v1", "jobs", "Job", True),
    ResourceType("admissionregistration.k8s.io", "v1", "validatingwebhookconfigurations",
                 "ValidatingWebhookConfiguration", False),
)


class FakeClusterAPI(FakeKubeAPI):
    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        self.deployments_become_available = True
        for rt in EXTRA_TYPES:
            self.add_resource(rt)

    def _controller(self, rtype: ResourceType, obj: Obj) -> Obj:
        if rtype != DEPLOYMENTS or not self.deployments_become_available:
            return obj
        obj = copy.deepcopy(obj)
        spec = obj.get("spec") or {}
        replicas = spec.get("replicas", 1) if isinstance(spec, dict) else 1
        gen = (obj.get("metadata") or {}).get("generation", 1)
        obj["status"] = {
            "observedGeneration": gen,
            "replicas": replicas,
            "readyReplicas": replicas,
            "availableReplicas": replicas,
            "updatedReplicas": replicas,
            "conditions": [{"type": "Available", "status": "True", "reason": "MinimumReplicasAvailable",
                            "message": "Deployment has minimum availability."}],
        }
        return obj

    def _commit_create(self, rtype: ResourceType, obj: Obj) -> Obj:
        created = super()._commit_create(rtype, obj)
        if rtype == DEPLOYMENTS and self.deployments_become_available:
            return self._commit_update(rtype, self._controller(rtype, created))
        return created

    def _commit_update(self, rtype: ResourceType, obj: Obj) -> Obj:
        updated = super()._commit_update(rtype, obj)
        if rtype == DEPLOYMENTS and self.deployments_become_available:
            status = updated.get("status") or {}
            if status.get("observedGeneration") != updated["metadata"].get("generation"):
                return super()._commit_update(rtype, self._controller(rtype, updated))
        return updated

    def make_available(self) -> None:
        """Turn the controller on and mark every stored Deployment available."""
        self.deployments_become_available = True
        for d in self.items(DEPLOYMENTS):
            super()._commit_update(DEPLOYMENTS, self._controller(DEPLOYMENTS, d))

    def applied_paths(self) -> list[str]:
        """Paths of every server-side apply request received (PATCH with a fieldManager)."""
        return [r.path for r in self.requests if r.method == "PATCH" and "fieldManager" in r.query]
