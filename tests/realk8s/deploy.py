"""deploy/ on a real API server: its RBAC created for real, the rest checked by a server-side dry run.

slimsched then runs with the token of deploy/serviceaccount.yaml's ServiceAccount, bound by
deploy/rolebinding.yaml to deploy/role.yaml, and nothing else: the permissions we ship are proven
sufficient by the acceptance cases themselves.
"""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import yaml

from tests.realk8s.kubeadmin import Credentials, KubeAdmin, wait

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
CREATED = ("ServiceAccount", "Role", "RoleBinding")
# Where each kind of deploy/ lives; a kind not here fails the case (a new manifest must be added).
PATHS = {
    "ServiceAccount": "/api/v1/namespaces/{ns}/serviceaccounts",
    "Role": "/apis/rbac.authorization.k8s.io/v1/namespaces/{ns}/roles",
    "RoleBinding": "/apis/rbac.authorization.k8s.io/v1/namespaces/{ns}/rolebindings",
    "ConfigMap": "/api/v1/namespaces/{ns}/configmaps",
    "Secret": "/api/v1/namespaces/{ns}/secrets",
    "Service": "/api/v1/namespaces/{ns}/services",
    "StatefulSet": "/apis/apps/v1/namespaces/{ns}/statefulsets",
    "NetworkPolicy": "/apis/networking.k8s.io/v1/namespaces/{ns}/networkpolicies",
}
# Kubernetes 1.20 serves PodDisruptionBudget as policy/v1beta1 only (policy/v1 is 1.21+): pdb.yaml
# is checked by the offline schema validation of tests/test_deploy.py, not here.
NOT_SERVED_BY_1_20 = {("PodDisruptionBudget", "policy/v1")}


def manifests() -> list[dict[str, Any]]:
    """deploy/'s resources, in kustomization.yaml's order."""
    kustomization = yaml.safe_load((DEPLOY / "kustomization.yaml").read_text())
    out: list[dict[str, Any]] = []
    for name in kustomization["resources"]:
        out.extend(doc for doc in yaml.safe_load_all((DEPLOY / name).read_text()) if doc)
    return out


def apply(admin: KubeAdmin, namespace: str) -> list[str]:
    """Create the RBAC objects in ``namespace``, dry-run the others; what was done, one line each."""
    done = []
    for obj in manifests():
        kind, version = obj["kind"], obj["apiVersion"]
        if (kind, version) in NOT_SERVED_BY_1_20:
            done.append(f"skipped {kind} {version}")
            continue
        obj = {**obj, "metadata": {**obj["metadata"], "namespace": namespace}}
        if kind == "RoleBinding":  # what kustomize's namespace transformer does
            obj["subjects"] = [{**s, "namespace": namespace} for s in obj["subjects"]]
        if kind == "StatefulSet":
            # persistentVolumeClaimRetentionPolicy is 1.23+: 1.20 would drop it without a word.
            obj["spec"] = {
                k: v for k, v in obj["spec"].items() if k != "persistentVolumeClaimRetentionPolicy"
            }
        path = PATHS[kind].format(ns=namespace)
        if kind in CREATED:
            admin.create(path, obj)
            done.append(f"created {kind} {obj['metadata']['name']}")
        else:
            admin.call("POST", path, obj, query={"dryRun": "All"})
            done.append(f"dry-run {kind} {obj['metadata']['name']}")
    return done


def service_account_credentials(
    admin: KubeAdmin, namespace: str, name: str, timeout: float = 60.0
) -> Credentials:
    """The token the token controller made for the ServiceAccount (Kubernetes 1.20: a Secret)."""
    account = wait(
        lambda: (admin.get(f"/api/v1/namespaces/{namespace}/serviceaccounts/{name}") or {}).get("secrets"),
        timeout,
        f"a token for ServiceAccount {name}",
    )
    secret = admin.call("GET", f"/api/v1/namespaces/{namespace}/secrets/{account[0]['name']}")
    token = base64.b64decode(secret["data"]["token"]).decode()
    return Credentials(server=admin.credentials.server, token=token, ca_pem=admin.credentials.ca_pem)
