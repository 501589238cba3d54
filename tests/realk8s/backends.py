"""One interface over the two Kubernetes API servers the tests run against: the emulator and a real one.

Every contract case takes a ``Backend`` and must pass on both; what differs (how a test tells
a container what to do, how a Deployment's pods become ready, how a CronJob is stored) is behind
these few methods, so the emulator cannot drift from the real server unnoticed.
"""

from __future__ import annotations

import itertools
import os
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from typing import Any, Protocol

import orjson

from slimsched.emulator import EmulatorThread
from slimsched.jobtimeline import Mode
from slimsched.kube import KubeClient
from tests.realk8s.images import ImageScript, ImageWebhook
from tests.realk8s.kubeadmin import Credentials, KubeAdmin, wait

_namespaces = itertools.count(1)


class Backend(Protocol):
    name: str
    namespace: str

    def client(self, call_threads: int = 8) -> KubeClient:
        """A new KubeClient of the namespace (the caller closes it)."""
        ...

    def node_env(self) -> dict[str, str]:
        """The environment that makes ``slimsched serve`` dispatch into the namespace."""
        ...

    def image(self, image: str, script: ImageScript) -> None:
        """What the containers of Jobs created from now on with ``image`` do."""
        ...

    def deployment(self, name: str, *, replicas: int, ready: bool) -> None:
        """Create or update a Deployment; ``ready``: its pods run and are ready, else they cannot."""
        ...

    def cronjob(self, name: str, obj: Mapping[str, Any]) -> None:
        """Create a CronJob (``obj``: metadata and spec) in whatever batch version the server has."""
        ...

    def raw(self, method: str, path: str, headers: Mapping[str, str]) -> tuple[int, bytes, str]:
        """One request as the namespace's client would send it: (status, body, Content-Type)."""
        ...

    def jobs(self, label_selector: str) -> list[dict[str, Any]]:
        """The namespace's Jobs, read by the test itself (not through KubeClient)."""
        ...


class EmulatorBackend:
    name = "emulator"

    def __init__(self, emulator: EmulatorThread, namespace: str = "default") -> None:
        self.emulator = emulator
        self.namespace = namespace
        assert emulator.url is not None
        self.url = emulator.url

    def client(self, call_threads: int = 8) -> KubeClient:
        return KubeClient.from_url(self.url, self.namespace, call_threads)

    def node_env(self) -> dict[str, str]:
        return {
            "SLIMSCHED_KUBE_MODE": "url",
            "SLIMSCHED_KUBE_URL": self.url,
            "SLIMSCHED_NAMESPACE": self.namespace,
        }

    def image(self, image: str, script: ImageScript) -> None:
        mode = Mode.FAIL if script.fail else Mode.SUCCEED
        self.emulator.call(
            lambda e: e.set_image_behaviour(
                image, mode, pending_seconds=0.1, run_seconds=script.run_seconds, log=script.log
            )
        )

    def deployment(self, name: str, *, replicas: int, ready: bool) -> None:
        ns = self.namespace
        self.emulator.call(
            lambda e: e.set_workload(
                "deployment", name, replicas=replicas, ready_replicas=replicas if ready else 0, namespace=ns
            )
        )

    def cronjob(self, name: str, obj: Mapping[str, Any]) -> None:
        ns = self.namespace
        self.emulator.call(lambda e: e.put_cronjob(name, obj, namespace=ns))

    def raw(self, method: str, path: str, headers: Mapping[str, str]) -> tuple[int, bytes, str]:
        req = urllib.request.Request(self.url + path, method=method, headers=dict(headers))
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                return resp.status, resp.read(), resp.headers.get("Content-Type", "")
        except urllib.error.HTTPError as e:
            return e.code, e.read(), e.headers.get("Content-Type", "")

    def jobs(self, label_selector: str) -> list[dict[str, Any]]:
        query = urllib.parse.urlencode({"labelSelector": label_selector})
        status, body, _ = self.raw("GET", f"/apis/batch/v1/namespaces/{self.namespace}/jobs?{query}", {})
        assert status == 200, body
        return list(orjson.loads(body)["items"])


class RealBackend:
    """A namespace of the real control plane (created here, deleted by ``close``)."""

    name = "realk8s"

    def __init__(self, admin: KubeAdmin, webhook: ImageWebhook, workdir: str, prefix: str = "t") -> None:
        self.admin = admin
        self.webhook = webhook
        self.namespace = f"{prefix}-{os.getpid()}-{next(_namespaces)}"
        admin.create_namespace(self.namespace)
        self.kubeconfig = os.path.join(workdir, f"{self.namespace}.kubeconfig")
        self.use_credentials(admin.credentials)

    def use_credentials(self, credentials: Credentials) -> None:
        """The credentials of the clients and nodes made from now on (admin until told otherwise)."""
        with open(self.kubeconfig, "w", encoding="utf-8") as f:
            f.write(credentials.kubeconfig(self.namespace))
        os.chmod(self.kubeconfig, 0o600)
        self.credentials = credentials

    def close(self) -> None:
        self.admin.delete_namespace(self.namespace)

    def client(self, call_threads: int = 8) -> KubeClient:
        return KubeClient.from_kubeconfig(self.kubeconfig, self.namespace, call_threads)

    def node_env(self) -> dict[str, str]:
        return {
            "SLIMSCHED_KUBE_MODE": "kubeconfig",
            "KUBECONFIG": self.kubeconfig,
            "SLIMSCHED_NAMESPACE": self.namespace,
        }

    def image(self, image: str, script: ImageScript) -> None:
        self.webhook.set(image, script)

    def deployment(self, name: str, *, replicas: int, ready: bool) -> None:
        # Pods nobody schedules never get ready: the fake kubelet binds only the default
        # scheduler's pods (and ignores nodeSelector). Returns once the pods exist.
        scheduler = "default-scheduler" if ready else "slimsched-test-nobody"
        path = f"/apis/apps/v1/namespaces/{self.namespace}/deployments"
        if self.admin.get(f"{path}/{name}") is not None:
            patch = {"spec": {"replicas": replicas, "template": {"spec": {"schedulerName": scheduler}}}}
            self.admin.merge_patch(f"{path}/{name}", patch)
        else:
            self.admin.create(
                path,
                {
                    "apiVersion": "apps/v1",
                    "kind": "Deployment",
                    "metadata": {"name": name},
                    "spec": {
                        "replicas": replicas,
                        "selector": {"matchLabels": {"app": name}},
                        "template": {
                            "metadata": {"labels": {"app": name}},
                            "spec": {
                                "schedulerName": scheduler,
                                "containers": [{"name": name, "image": f"slimsched-test/{name}:1"}],
                            },
                        },
                    },
                },
            )
        if not ready:
            pods = f"/api/v1/namespaces/{self.namespace}/pods"
            wait(
                lambda: len(self.admin.items(pods, f"app={name}")) >= replicas,
                30,
                f"the pods of Deployment {name}",
            )

    def cronjob(self, name: str, obj: Mapping[str, Any]) -> None:
        # Kubernetes 1.20 serves CronJob as batch/v1beta1 only.
        version = "v1" if self.admin.get("/apis/batch/v1") and self._serves_v1_cronjob() else "v1beta1"
        body = {
            "apiVersion": f"batch/{version}",
            "kind": "CronJob",
            "metadata": {**(obj.get("metadata") or {}), "name": name},
            "spec": obj.get("spec") or {},
        }
        self.admin.create(f"/apis/batch/{version}/namespaces/{self.namespace}/cronjobs", body)

    def _serves_v1_cronjob(self) -> bool:
        resources = (self.admin.get("/apis/batch/v1") or {}).get("resources") or []
        return any(r.get("name") == "cronjobs" for r in resources)

    def raw(self, method: str, path: str, headers: Mapping[str, str]) -> tuple[int, bytes, str]:
        return KubeAdmin(self.credentials).request(method, path, headers=headers)

    def jobs(self, label_selector: str) -> list[dict[str, Any]]:
        return self.admin.items(f"/apis/batch/v1/namespaces/{self.namespace}/jobs", label_selector)
