"""A blocking JSON client of a real kube-apiserver with the admin credentials of a kubeconfig.

Test-side setup and checks only (namespaces, Deployments, RBAC objects, the webhook that tells
the fake kubelet what a container does, reading Jobs back): slimsched itself always goes through
``slimsched.kube.KubeClient``. Plain ``urllib`` so that what the test checks is not filtered by
the client slimsched uses.
"""

from __future__ import annotations

import base64
import ssl
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import orjson
import yaml


class KubeAdminError(RuntimeError):
    def __init__(self, method: str, path: str, status: int, body: Any) -> None:
        super().__init__(f"{method} {path}: HTTP {status}: {body}")
        self.status = status
        self.body = body


@dataclass(frozen=True)
class Credentials:
    server: str
    token: str
    ca_pem: bytes

    @staticmethod
    def from_kubeconfig(path: str) -> Credentials:
        with open(path, encoding="utf-8") as f:
            config = yaml.safe_load(f)
        contexts = {c["name"]: c["context"] for c in config["contexts"]}
        context = contexts[config["current-context"]]
        cluster = {c["name"]: c["cluster"] for c in config["clusters"]}[context["cluster"]]
        user = {u["name"]: u["user"] for u in config["users"]}[context["user"]]
        return Credentials(
            server=str(cluster["server"]).rstrip("/"),
            token=str(user["token"]),
            ca_pem=base64.b64decode(cluster["certificate-authority-data"]),
        )

    def kubeconfig(self, namespace: str, user: str = "user") -> str:
        """A kubeconfig (YAML text) for these credentials, ``namespace`` as its default."""
        return yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [
                    {
                        "name": "realk8s",
                        "cluster": {
                            "server": self.server,
                            "certificate-authority-data": base64.b64encode(self.ca_pem).decode(),
                        },
                    }
                ],
                "users": [{"name": user, "user": {"token": self.token}}],
                "contexts": [
                    {
                        "name": "realk8s",
                        "context": {"cluster": "realk8s", "user": user, "namespace": namespace},
                    }
                ],
                "current-context": "realk8s",
            }
        )


class KubeAdmin:
    def __init__(self, credentials: Credentials) -> None:
        self.credentials = credentials
        self._ssl = ssl.create_default_context(cadata=credentials.ca_pem.decode())

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        query: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
        content_type: str = "application/json",
        timeout: float = 15.0,
    ) -> tuple[int, bytes, str]:
        """(status, raw body, Content-Type) of one request; error statuses are answers too."""
        url = self.credentials.server + path + ("?" + urllib.parse.urlencode(query) if query else "")
        data = None if body is None else orjson.dumps(body)
        all_headers = {"Authorization": f"Bearer {self.credentials.token}", "Accept": "application/json"}
        if data is not None:
            all_headers["Content-Type"] = content_type
        all_headers.update(headers or {})
        req = urllib.request.Request(url, data=data, method=method, headers=all_headers)
        try:
            with urllib.request.urlopen(req, timeout=timeout, context=self._ssl) as resp:
                return resp.status, resp.read(), resp.headers.get("Content-Type", "")
        except urllib.error.HTTPError as e:
            return e.code, e.read(), e.headers.get("Content-Type", "")

    def call(self, method: str, path: str, body: Any = None, **kw: Any) -> Any:
        """The decoded JSON answer of a 2xx; anything else raises ``KubeAdminError``."""
        status, raw, _ = self.request(method, path, body, **kw)
        decoded = orjson.loads(raw) if raw else None
        if not 200 <= status <= 299:
            raise KubeAdminError(method, path, status, decoded)
        return decoded

    def get(self, path: str, **kw: Any) -> Any | None:
        """The object, or None on 404."""
        try:
            return self.call("GET", path, **kw)
        except KubeAdminError as e:
            if e.status == 404:
                return None
            raise

    def create(self, path: str, obj: Mapping[str, Any]) -> Any:
        return self.call("POST", path, obj)

    def merge_patch(self, path: str, patch: Mapping[str, Any]) -> Any:
        return self.call("PATCH", path, patch, content_type="application/merge-patch+json")

    def delete(self, path: str, query: Mapping[str, str] | None = None) -> bool:
        """False if there was nothing to delete."""
        try:
            self.call("DELETE", path, query=query)
        except KubeAdminError as e:
            if e.status == 404:
                return False
            raise
        return True

    def items(self, path: str, label_selector: str | None = None) -> list[dict[str, Any]]:
        query = {"labelSelector": label_selector} if label_selector else None
        return list(self.call("GET", path, query=query)["items"])

    # --- namespaces ----------------------------------------------------------------------------

    def create_namespace(self, name: str, timeout: float = 60.0) -> None:
        """Create ``name`` and wait until its ``default`` ServiceAccount has a token: before that,
        the ServiceAccount admission plugin refuses the namespace's pods (Kubernetes 1.20)."""
        self.create(
            "/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}
        )
        wait(
            lambda: bool(
                (self.get(f"/api/v1/namespaces/{name}/serviceaccounts/default") or {}).get("secrets")
            ),
            timeout,
            f"the default ServiceAccount of {name} to get its token",
        )

    def delete_namespace(self, name: str) -> None:
        """Delete in the background (the namespace controller finishes it)."""
        self.delete(f"/api/v1/namespaces/{name}")


def wait(cond: Callable[[], Any], timeout: float, what: str, interval: float = 0.1) -> Any:
    """Poll ``cond`` until it returns a true value (returned); fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)
