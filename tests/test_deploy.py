"""The deployment artefacts in deploy/ are valid and agree with each other and with the code.

Why: a manifest typo (a wrong port name, an env var the code never reads, a probe on a route that
does not exist, a Secret key nobody defines) is only found by a real cluster, late and painfully.
These checks run offline in well under a second: every Kubernetes object is validated against
the official OpenAPI schemas shipped inside ``kubernetes_validate`` (strict: unknown fields are
errors), then the cross-references a schema cannot see are checked by hand.
"""

from __future__ import annotations

import fnmatch
import json
import re
import shutil
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from slimsched.localcluster import NODE_PYTHON_FLAGS
from slimsched.settings import ENV_VARS

Obj = dict[str, Any]

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
REPO = DEPLOY.parent
K8S_VERSION = "1.30"  # the oldest Kubernetes we claim; kubernetes_validate ships its schemas
KUSTOMIZATION = "kustomization.yaml"
COMPOSE = "docker-compose.yaml"
APP_LABELS = {"app.kubernetes.io/name": "slimsched"}
RAFT_PORT = 3262
HTTP_PORT = 5000
UID = 10001


def _load(path: Path) -> list[Obj]:
    with path.open(encoding="utf-8") as f:
        return [doc for doc in yaml.safe_load_all(f) if doc is not None]


YAML_FILES = sorted(p.name for p in DEPLOY.iterdir() if p.suffix in (".yaml", ".yml"))
MANIFEST_FILES = [n for n in YAML_FILES if n not in (KUSTOMIZATION, COMPOSE)]
OBJECTS: list[tuple[str, Obj]] = [(name, obj) for name in MANIFEST_FILES for obj in _load(DEPLOY / name)]


def _one(kind: str, name: str | None = None) -> Obj:
    found = [o for _, o in OBJECTS if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)]
    assert len(found) == 1, f"expected exactly one {kind} {name or ''} in deploy/, found {len(found)}"
    return found[0]


def _statefulset() -> Obj:
    return _one("StatefulSet", "slimsched")


def _pod_spec() -> Obj:
    spec: Obj = _statefulset()["spec"]["template"]["spec"]
    return spec


def _container() -> Obj:
    containers = _pod_spec()["containers"]
    assert len(containers) == 1
    c: Obj = containers[0]
    return c


def _env() -> dict[str, Obj]:
    entries = _container()["env"]
    names = [e["name"] for e in entries]
    assert len(names) == len(set(names)), f"duplicate env names: {names}"
    return {e["name"]: e for e in entries}


def _env_value(name: str) -> str:
    value: str = _env()[name]["value"]
    return value


def _container_port(name_or_number: str | int) -> int:
    for p in _container()["ports"]:
        if name_or_number in (p["name"], p["containerPort"]):
            port: int = p["containerPort"]
            return port
    raise AssertionError(f"no container port {name_or_number!r} in the StatefulSet")


def _service_ports(name: str) -> dict[str, Obj]:
    return {p["name"]: p for p in _one("Service", name)["spec"]["ports"]}


# --- every object is valid Kubernetes, checked offline ------------------------------------------


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Make any attempt to reach the network fail, to prove the schema validation is offline."""

    def refuse(*_args: object, **_kwargs: object) -> None:
        raise AssertionError("schema validation tried to use the network")

    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)
    yield


@pytest.mark.usefixtures("no_network")
@pytest.mark.parametrize(
    ("filename", "obj"), OBJECTS, ids=[f"{n}:{o['kind']}/{o['metadata']['name']}" for n, o in OBJECTS]
)
def test_object_is_valid_kubernetes(filename: str, obj: Obj) -> None:
    try:
        validated = kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
    except kubernetes_validate.ValidationError as e:
        path = ".".join(str(p) for p in e.path)
        pytest.fail(f"{filename}: {obj['kind']}/{obj['metadata']['name']} at {path}: {e.message}")
    assert validated == K8S_VERSION


@pytest.mark.usefixtures("no_network")
def test_validation_is_strict() -> None:
    """Guard against a silently permissive check: a misspelt field must fail validation."""
    bad = json.loads(json.dumps(_statefulset()))
    bad["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {"httpGet": {"path": "/ready"}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, K8S_VERSION, strict=True)


def test_expected_objects_and_nothing_cluster_wide() -> None:
    kinds = sorted(o["kind"] for _, o in OBJECTS)
    assert kinds == sorted(
        [
            "ConfigMap",
            "NetworkPolicy",
            "PodDisruptionBudget",
            "Role",
            "RoleBinding",
            "Secret",
            "Service",
            "Service",
            "ServiceAccount",
            "StatefulSet",
        ]
    )
    for _, o in OBJECTS:
        assert "namespace" not in o["metadata"], "the namespace comes from kustomization.yaml"


def test_consistent_labels_and_selectors() -> None:
    for filename, o in OBJECTS:
        assert APP_LABELS.items() <= o["metadata"].get("labels", {}).items(), filename
    sts = _statefulset()["spec"]
    pod_labels = sts["template"]["metadata"]["labels"]
    selectors = [
        sts["selector"]["matchLabels"],
        _one("Service", "slimsched")["spec"]["selector"],
        _one("Service", "slimsched-raft")["spec"]["selector"],
        _one("PodDisruptionBudget")["spec"]["selector"]["matchLabels"],
        _one("NetworkPolicy")["spec"]["podSelector"]["matchLabels"],
    ]
    for selector in selectors:
        assert selector == APP_LABELS
        assert selector.items() <= pod_labels.items()


# --- kustomization -------------------------------------------------------------------------------


def test_kustomization_lists_every_manifest_and_only_existing_ones() -> None:
    (k,) = _load(DEPLOY / KUSTOMIZATION)
    assert k["kind"] == "Kustomization"
    resources = k["resources"]
    assert len(resources) == len(set(resources)), "duplicate resources"
    missing = [r for r in resources if not (DEPLOY / r).is_file()]
    assert not missing, f"kustomization lists files that do not exist: {missing}"
    assert set(resources) == set(MANIFEST_FILES)


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl (with built-in kustomize) not installed")
def test_kustomize_build_sets_the_namespace_everywhere() -> None:
    out = subprocess.run(
        ["kubectl", "kustomize", str(DEPLOY)], check=True, capture_output=True, text=True, timeout=60
    ).stdout
    built = [o for o in yaml.safe_load_all(out) if o]
    (k,) = _load(DEPLOY / KUSTOMIZATION)
    assert len(built) == len(OBJECTS)
    assert {o["metadata"]["namespace"] for o in built} == {k["namespace"]}
    (binding,) = [o for o in built if o["kind"] == "RoleBinding"]
    assert {s["namespace"] for s in binding["subjects"]} == {k["namespace"]}


# --- RBAC ----------------------------------------------------------------------------------------

EXPECTED_RULES = {
    ("batch", "jobs"): {"create", "get", "list", "watch", "delete"},
    ("", "pods"): {"get", "list", "watch"},
    ("", "pods/log"): {"get"},
    ("apps", "deployments"): {"get", "list"},
    ("apps", "statefulsets"): {"get", "list"},
    ("batch", "cronjobs"): {"get", "list", "watch"},
}


def test_role_grants_exactly_the_needed_verbs_in_the_namespace() -> None:
    granted: dict[tuple[str, str], set[str]] = {}
    for rule in _one("Role", "slimsched")["rules"]:
        assert set(rule) <= {"apiGroups", "resources", "verbs"}, "no resourceNames/nonResourceURLs"
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                granted.setdefault((group, resource), set()).update(rule["verbs"])
    assert granted == EXPECTED_RULES
    assert not any("*" in key or "*" in verbs for key, verbs in granted.items())


def test_rolebinding_binds_the_role_to_the_pods_service_account() -> None:
    binding = _one("RoleBinding")
    (k,) = _load(DEPLOY / KUSTOMIZATION)
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "Role",
        "name": _one("Role")["metadata"]["name"],
    }
    sa = _one("ServiceAccount")["metadata"]["name"]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": sa, "namespace": k["namespace"]}]
    assert _pod_spec()["serviceAccountName"] == sa


# --- StatefulSet, Services, ports ------------------------------------------------------------------


def test_services_and_ports_match() -> None:
    raft = _one("Service", "slimsched-raft")["spec"]
    assert raft["clusterIP"] == "None"
    assert raft["publishNotReadyAddresses"] is True
    raft_ports = _service_ports("slimsched-raft")
    assert set(raft_ports) == {"raft"}
    assert raft_ports["raft"]["port"] == RAFT_PORT
    assert _container_port(raft_ports["raft"]["targetPort"]) == RAFT_PORT
    http_ports = _service_ports("slimsched")
    assert set(http_ports) == {"http"}
    assert http_ports["http"]["port"] == HTTP_PORT
    assert _container_port(http_ports["http"]["targetPort"]) == HTTP_PORT
    assert _container_port("raft") == RAFT_PORT
    assert _container_port("http") == HTTP_PORT


def test_statefulset_shape_and_peer_discovery_env() -> None:
    sts = _statefulset()["spec"]
    assert sts["serviceName"] == "slimsched-raft"
    assert sts["podManagementPolicy"] == "Parallel"
    assert sts["replicas"] == 3
    assert int(_env_value("SLIMSCHED_REPLICAS")) == sts["replicas"]
    assert _env_value("SLIMSCHED_RAFT_SERVICE") == sts["serviceName"]
    assert int(_env_value("SLIMSCHED_RAFT_PORT")) == _container_port("raft")
    assert int(_env_value("SLIMSCHED_HTTP_PORT")) == _container_port("http")
    field_refs = {
        name: e["valueFrom"]["fieldRef"]["fieldPath"]
        for name, e in _env().items()
        if "fieldRef" in e.get("valueFrom", {})
    }
    assert field_refs == {
        "SLIMSCHED_POD_NAME": "metadata.name",
        "SLIMSCHED_POD_IP": "status.podIP",
        "SLIMSCHED_NAMESPACE": "metadata.namespace",
    }
    assert _pod_spec()["terminationGracePeriodSeconds"] == 30


def test_statefulset_env_names_are_read_by_the_code() -> None:
    names = set(_env())
    assert names <= ENV_VARS, f"set but never read: {sorted(names - ENV_VARS)}"
    assert "envFrom" not in _container(), "envFrom would hide which names are set"


def test_volume_mounts_name_volumes_and_data_and_backup_are_apart() -> None:
    templates = {t["metadata"]["name"] for t in _statefulset()["spec"]["volumeClaimTemplates"]}
    volumes = {v["name"]: v for v in _pod_spec()["volumes"]}
    assert templates == {"raft-data", "backup"}
    assert not templates & set(volumes)
    mounts = {m["name"]: m["mountPath"] for m in _container()["volumeMounts"]}
    assert set(mounts) == templates | set(volumes)
    assert len(set(mounts.values())) == len(mounts)
    data, backup = Path(mounts["raft-data"]), Path(mounts["backup"])
    assert data != backup and data not in backup.parents and backup not in data.parents
    assert str(data) == _env_value("SLIMSCHED_DATA_DIR")
    assert str(backup) == _env_value("SLIMSCHED_BACKUP_DIR")
    assert mounts["tmp"] == "/tmp" and "emptyDir" in volumes["tmp"], "read-only root fs needs a /tmp"


def test_pod_is_locked_down() -> None:
    pod, c = _pod_spec()["securityContext"], _container()["securityContext"]
    assert pod["runAsNonRoot"] is True and pod["runAsUser"] == UID and "fsGroup" in pod
    assert pod["seccompProfile"] == {"type": "RuntimeDefault"}
    assert c["runAsNonRoot"] is True and c["runAsUser"] == UID
    assert c["readOnlyRootFilesystem"] is True
    assert c["allowPrivilegeEscalation"] is False
    assert c["capabilities"] == {"drop": ["ALL"]}
    resources = _container()["resources"]
    assert {"cpu", "memory"} <= set(resources["requests"])
    assert "memory" in resources["limits"]


def test_probes_use_health_and_ready_on_the_http_port() -> None:
    c = _container()
    assert c["livenessProbe"]["httpGet"]["path"] == "/health"
    assert c["readinessProbe"]["httpGet"]["path"] == "/ready"
    for probe in ("livenessProbe", "readinessProbe"):
        assert _container_port(c[probe]["httpGet"]["port"]) == HTTP_PORT


def test_probe_paths_are_real_routes() -> None:
    api = pytest.importorskip("slimsched.api", reason="slimsched.api not written yet")
    routes = getattr(api, "ROUTES", None)
    assert routes, "slimsched.api.ROUTES, the (method, path, handler) table create_app registers, is gone"
    get_paths = {path for method, path, _handler in routes if method == "GET"}
    c = _container()
    for probe in ("livenessProbe", "readinessProbe"):
        assert c[probe]["httpGet"]["path"] in get_paths, f"{probe} path is not a GET route of the API"


def test_key_refs_name_objects_and_keys_defined_in_deploy() -> None:
    defined: dict[tuple[str, str], set[str]] = {}
    for _, o in OBJECTS:
        if o["kind"] in ("ConfigMap", "Secret"):
            keys = set(o.get("data", {})) | set(o.get("stringData", {}))
            defined[(o["kind"], o["metadata"]["name"])] = keys
    refs = 0
    for name, e in _env().items():
        for ref_field, kind in (("configMapKeyRef", "ConfigMap"), ("secretKeyRef", "Secret")):
            ref = e.get("valueFrom", {}).get(ref_field)
            if ref is None:
                continue
            refs += 1
            assert (kind, ref["name"]) in defined, f"{name}: no {kind} {ref['name']} in deploy/"
            assert ref["key"] in defined[(kind, ref["name"])], (
                f"{name}: {kind} {ref['name']} lacks {ref['key']}"
            )
            assert not ref.get("optional", False), f"{name} must not silently default"
    assert refs == 2
    assert _env()["SLIMSCHED_RAFT_PASSWORD"]["valueFrom"]["secretKeyRef"]["key"] == "SLIMSCHED_RAFT_PASSWORD"
    assert "configMapKeyRef" in _env()["SLIMSCHED_JOBS_CONFIGURATION"]["valueFrom"]


def test_example_jobs_configuration_is_slimfaas_format() -> None:
    from slimsched.cronplan import validate

    raw = _one("ConfigMap")["data"]["SLIMSCHED_JOBS_CONFIGURATION"]
    config = json.loads(raw)
    assert set(config) == {"Configurations", "Schedules"}
    fib = config["Configurations"]["fibonacci"]
    assert {"Image", "ImagesWhitelist", "Resources", "NumberParallelJob", "Visibility"} <= set(fib)
    assert fib["Visibility"] == "Public"
    assert set(fib["Resources"]) == {"Requests", "Limits"}
    assert any(fnmatch.fnmatchcase(fib["Image"], pattern) for pattern in fib["ImagesWhitelist"])
    assert set(config["Schedules"]) <= set(config["Configurations"])
    (schedule,) = config["Schedules"]["fibonacci"]
    validate(schedule["Schedule"])


def test_network_policy_admits_only_slimsched_pods_to_raft() -> None:
    spec = _one("NetworkPolicy")["spec"]
    assert spec["policyTypes"] == ["Ingress"]
    raft_open, http_open = False, False
    for rule in spec["ingress"]:
        ports = {p["port"] for p in rule.get("ports", [])}
        assert ports, "a rule without ports opens every port"
        if RAFT_PORT in ports or "raft" in ports:
            assert rule.get("from") == [{"podSelector": {"matchLabels": APP_LABELS}}]
            raft_open = True
        if HTTP_PORT in ports and "from" not in rule:
            http_open = True
    assert raft_open and http_open


def test_pdb_keeps_a_raft_majority() -> None:
    spec = _one("PodDisruptionBudget")["spec"]
    assert spec == {"maxUnavailable": 1, "selector": {"matchLabels": APP_LABELS}}
    replicas = _statefulset()["spec"]["replicas"]
    assert replicas - spec["maxUnavailable"] > replicas // 2


# --- docker-compose --------------------------------------------------------------------------------


def _compose_env(service: Obj) -> dict[str, str]:
    env = service.get("environment", {})
    if isinstance(env, list):
        return dict(item.split("=", 1) for item in env)
    return {k: str(v) for k, v in env.items()}


def test_compose_cluster_is_consistent() -> None:
    (compose,) = _load(DEPLOY / COMPOSE)
    services: dict[str, Obj] = compose["services"]
    assert len(services) == 3
    addresses: list[str] = []
    peer_lists: set[tuple[str, ...]] = set()
    volumes_used: list[str] = []
    host_ports: list[int] = []
    for name, svc in services.items():
        env = _compose_env(svc)
        assert set(env) <= ENV_VARS, f"{name} sets names the code never reads: {sorted(set(env) - ENV_VARS)}"
        assert (REPO / svc["build"]["dockerfile"]).resolve() == DEPLOY / "Dockerfile"
        assert (DEPLOY / svc["build"]["context"]).resolve() == REPO
        addresses.append(env["SLIMSCHED_RAFT_ADDRESS"])
        peers = tuple(p.strip() for p in env["SLIMSCHED_PEERS"].split(","))
        assert env["SLIMSCHED_RAFT_ADDRESS"] in peers
        peer_lists.add(peers)
        (port,) = svc["ports"]
        host, container = port.split(":")
        assert container == str(HTTP_PORT)
        host_ports.append(int(host))
        mounts = dict(reversed(v.split(":", 1)) for v in svc["volumes"])
        assert set(mounts) == {env["SLIMSCHED_DATA_DIR"], env["SLIMSCHED_BACKUP_DIR"]}
        volumes_used.extend(mounts.values())
    assert len(peer_lists) == 1 and set(addresses) == set(next(iter(peer_lists)))
    assert sorted(host_ports) == [5001, 5002, 5003]
    assert len(volumes_used) == len(set(volumes_used)) == 6, "each node has its own two volumes"
    assert set(volumes_used) == set(compose["volumes"])


# --- Dockerfile --------------------------------------------------------------------------------------


def _dockerfile() -> dict[str, list[str]]:
    """Instruction -> the arguments of each of its occurrences, in order (continuations joined)."""
    text = (DEPLOY / "Dockerfile").read_text(encoding="utf-8").replace("\\\n", " ")
    out: dict[str, list[str]] = {}
    for line in text.splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            instruction, _, rest = line.strip().partition(" ")
            out.setdefault(instruction.upper(), []).append(rest.strip())
    return out


def test_dockerfile_matches_the_manifests() -> None:
    steps = _dockerfile()

    def get(instruction: str) -> list[str]:
        return steps.get(instruction, [])

    assert get("FROM") == ["python:3.11-slim"]
    assert get("USER") == [f"{UID}:{UID}"]
    assert sorted(int(p) for rest in get("EXPOSE") for p in rest.split()) == [RAFT_PORT, HTTP_PORT]
    assert [json.loads(e) for e in get("ENTRYPOINT")] == [["slimsched", "serve"]]
    assert any("pip install --no-cache-dir ." in r for r in get("RUN"))
    env_names = {m for rest in get("ENV") for m in re.findall(r"(\w+)=", rest)}
    # the image and `slimsched local` run nodes at the same optimization level, with its bytecode
    # compiled at build time (the container writes none)
    assert any("PYTHONOPTIMIZE=2" in rest.split() for rest in get("ENV"))
    assert NODE_PYTHON_FLAGS == ("-OO",)
    assert any("compileall" in r and "-o 2" in r for r in get("RUN"))
    assert {n for n in env_names if n.startswith(("SLIMSCHED_", "SlimData", "SlimFaas"))} <= ENV_VARS
    # what the image copies exists and is let through by the build-context filter
    ignore = (DEPLOY / "Dockerfile.dockerignore").read_text(encoding="utf-8").splitlines()
    allowed = {line[1:].rstrip("/") for line in ignore if line.startswith("!")}
    for rest in get("COPY"):
        *sources, _dest = rest.split()
        for source in sources:
            assert (REPO / source).exists(), source
            assert source.rstrip("/") in allowed, f"{source} is excluded by Dockerfile.dockerignore"
