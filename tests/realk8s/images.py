"""What a container of a given image does, on the emulator and on the real control plane alike.

realk8s has no container runtime: its fake kubelet reads what a pod's container does from pod
annotations (``realk8s.io/exit-code``, ``realk8s.io/run-seconds``, ``realk8s.io/logs``).
slimsched writes no such annotations (SlimFaas has no pod annotations), so a mutating admission
webhook, served here over HTTPS on 127.0.0.1 and called by the real kube-apiserver, adds them to
the pods of slimsched's Jobs according to their image: the real job controller creates the pod,
the real apiserver admits it, and the image decides its fate, as ``Emulator.set_image_behaviour``
does on the emulator.
"""

from __future__ import annotations

import base64
import http.server
import os
import ssl
import subprocess
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from tests.realk8s.kubeadmin import KubeAdmin, KubeAdminError, wait

ANNOTATION = "realk8s.io/"
WEBHOOK_NAME = "slimsched-test-images"
# Only the pods of slimsched's Jobs (their template carries this label) are shown to the webhook.
MANAGED_SELECTOR = {"app.kubernetes.io/managed-by": "slimsched"}


@dataclass(frozen=True)
class ImageScript:
    """A container's life: it prints ``log`` when it starts, runs ``run_seconds``, exits 0 or not."""

    fail: bool = False
    run_seconds: float = 1.0
    log: tuple[str, ...] | None = None

    def annotations(self) -> dict[str, str]:
        out = {
            ANNOTATION + "exit-code": "3" if self.fail else "0",
            ANNOTATION + "run-seconds": str(self.run_seconds),
        }
        if self.log is not None:
            out[ANNOTATION + "logs"] = "".join(line + "\n" for line in self.log)
        return out


def _patch(pod: Mapping[str, Any], annotations: Mapping[str, str]) -> list[dict[str, Any]]:
    """The JSON patch that adds ``annotations`` to ``pod``."""
    if not (pod.get("metadata") or {}).get("annotations"):
        return [{"op": "add", "path": "/metadata/annotations", "value": dict(annotations)}]
    return [
        {"op": "add", "path": "/metadata/annotations/" + k.replace("~", "~0").replace("/", "~1"), "value": v}
        for k, v in annotations.items()
    ]


class ImageWebhook:
    """The admission webhook, its certificate, and the image table it serves from."""

    def __init__(self, workdir: str) -> None:
        self.scripts: dict[str, ImageScript] = {}
        self._lock = threading.Lock()
        cert, key = os.path.join(workdir, "webhook.crt"), os.path.join(workdir, "webhook.key")
        subprocess.run(
            [
                "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                "-keyout", key, "-out", cert,
            ],
            check=True,
            capture_output=True,
            timeout=60,
        )  # fmt: skip
        with open(cert, "rb") as f:
            self.ca_bundle = base64.b64encode(f.read()).decode()
        webhook = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                review = orjson.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)))
                request = review["request"]
                answer: dict[str, Any] = {"uid": request["uid"], "allowed": True}
                pod = request.get("object") or {}
                containers = (pod.get("spec") or {}).get("containers") or [{}]
                with webhook._lock:
                    script = webhook.scripts.get(str(containers[0].get("image")))
                if script is not None:
                    answer["patchType"] = "JSONPatch"
                    answer["patch"] = base64.b64encode(
                        orjson.dumps(_patch(pod, script.annotations()))
                    ).decode()
                body = orjson.dumps(
                    {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "response": answer}
                )
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert, key)
        self._server.socket = context.wrap_socket(self._server.socket, server_side=True)
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, name="image-webhook", daemon=True)
        self._thread.start()

    def set(self, image: str, script: ImageScript) -> None:
        with self._lock:
            self.scripts[image] = script

    def register(self, admin: KubeAdmin, timeout: float = 30.0) -> None:
        """Register with the API server and wait until it calls us (its webhook list is a cache)."""
        config = {
            "apiVersion": "admissionregistration.k8s.io/v1",
            "kind": "MutatingWebhookConfiguration",
            "metadata": {"name": WEBHOOK_NAME},
            "webhooks": [
                {
                    "name": "images.slimsched.test",
                    "clientConfig": {
                        "url": f"https://127.0.0.1:{self.port}/mutate",
                        "caBundle": self.ca_bundle,
                    },
                    "rules": [
                        {
                            "operations": ["CREATE"],
                            "apiGroups": [""],
                            "apiVersions": ["v1"],
                            "resources": ["pods"],
                        }
                    ],
                    "objectSelector": {"matchLabels": MANAGED_SELECTOR},
                    "sideEffects": "None",
                    "admissionReviewVersions": ["v1"],
                    "failurePolicy": "Fail",
                    "timeoutSeconds": 10,
                }
            ],
        }
        path = "/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations"
        try:
            admin.create(path, config)
        except KubeAdminError as e:
            if e.status != 409:
                raise
            admin.delete(f"{path}/{WEBHOOK_NAME}")
            admin.create(path, config)
        probe_image = "slimsched-test/webhook-probe:1"
        self.set(probe_image, ImageScript(run_seconds=7.0))
        probe = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"generateName": "webhook-probe-", "labels": MANAGED_SELECTOR},
            "spec": {"containers": [{"name": "c", "image": probe_image}]},
        }

        def mutated() -> bool:
            pod = admin.call("POST", "/api/v1/namespaces/default/pods", probe, query={"dryRun": "All"})
            return (pod["metadata"].get("annotations") or {}).get(ANNOTATION + "run-seconds") == "7.0"

        wait(mutated, timeout, "the API server to call the image webhook")

    def unregister(self, admin: KubeAdmin) -> None:
        admin.delete(f"/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations/{WEBHOOK_NAME}")

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
