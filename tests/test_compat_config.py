"""SlimFaas compatibility of configuration, overrides and names, over a real 3-node cluster.

Every case comes from SlimFaas's own material (SlimPlanet/SlimFaas, named in each case) and is
sent as a SlimFaas user sends it, to a cluster of 3 slimsched processes (Raft over TCP on
127.0.0.1) dispatching to the Kubernetes API emulator; the Job manifest the emulator received is
then checked field by field. Where slimsched adjusts a request, the answer carries a
``Warning: 299 - "..."`` header and /metrics counts it; strict mode refuses instead.

The cluster runs SlimFaas's demo ConfigMap (demo/deployment-slimfaas.yml) verbatim except for one
added entry: the configuration of SlimFaas's JobConfigurationTests, with its unknown keys
(``Name``, ``Something``), a mixed-case key and a ``_`` in the name, given an image.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import re
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp import ClientSession
from aiohttp.test_utils import TestServer
from hypothesis import given, settings
from hypothesis import strategies as st

from slimsched.api import create_app
from slimsched.emulator import Emulator, EmulatorThread
from slimsched.jobmanifest import LABEL_JOB_NAME, build_job_manifest, kube_job_name
from slimsched.localcluster import LocalCluster
from slimsched.model import JobSpec, Run, RunStatus
from slimsched.raft import RaftNode
from tests.conftest import ApiHarness, ManualClock, api_context
from tests.helpers import wait_until
from tests.slimfaas_demo import DEMO_CRONJOB

# SlimFaas: demo/deployment-slimfaas.yml, the SlimFaas__JobsConfiguration of its ConfigMap, as
# written there (indentation included).
DEMO_CONFIGMAP = """    {
      "Configurations": {
        "fibonacci": {
          "Image": "axaguildev/fibonacci-batch:latest",
          "ImagesWhitelist": [],
          "Resources": {
            "Requests": {
              "cpu": "400m",
              "memory": "400Mi"
            },
            "Limits": {
              "cpu": "400m",
              "memory": "400Mi"
            }
          },
          "DependsOn": ["fibonacci1"],
          "Environments": [
            { "Name": "SLIMFAAS_WS_URL",          "Value": "ws://slimfaas.slimfaas-demo.svc.cluster.local:5003/ws" },
            { "Name": "SLIMFAAS_FUNCTION_NAME",    "Value": "fibonacci-batch-ws" },
            { "Name": "SLIMFAAS_SUBSCRIBE_EVENTS", "Value": "Public:fibo-public" }
          ],
          "BackoffLimit": 1,
          "Visibility": "Public",
          "NumberParallelJob": 2,
          "TtlSecondsAfterFinished": 2,
          "RestartPolicy": "Never"
        }
      },
    "Schedules": {
      "fibonacci": [
        {
            "Schedule": "0 0 * * *",
            "Args": ["42", "43"]
        }]
      }
    }
"""  # noqa: E501 (the demo's own line)

# SlimFaas: tests/SlimFaas.Tests/Jobs/JobConfigurationTests.cs::
# Constructeur_JsonValide_SansClefDefault_DoitAjouterUneConfigurationParDefaut ("MaFunction", with
# the keys Name and Something SlimFaas does not know), renamed with a '_' and given an image.
EXTRA_ENTRY = """
        "Ma_Function": {
            "Name": "MaFunction",
            "Something": ["arg1", "arg2"],
            "Image": "registry.local/ma-function:1",
            "Visibility": "Public",
            "Resources": {
                "Limits": { "cpu": "200m", "memory": "256Mi" },
                "Requests": { "cpu": "50m",  "memory": "64Mi" }
            }
        },"""

CONFIGURATION = DEMO_CONFIGMAP.replace('"Configurations": {', '"Configurations": {' + EXTRA_ENTRY, 1)

DEMO_ENV = [
    {"name": "SLIMFAAS_WS_URL", "value": "ws://slimfaas.slimfaas-demo.svc.cluster.local:5003/ws"},
    {"name": "SLIMFAAS_FUNCTION_NAME", "value": "fibonacci-batch-ws"},
    {"name": "SLIMFAAS_SUBSCRIBE_EVENTS", "value": "Public:fibo-public"},
]
DEMO_RESOURCES = {
    "requests": {"cpu": "400m", "memory": "400Mi"},
    "limits": {"cpu": "400m", "memory": "400Mi"},
}


def call(url: str, method: str = "GET", body: Any = None) -> tuple[int, list[str], Any]:
    """Status, Warning headers and decoded JSON body of one request (any status)."""
    data = orjson.dumps(body) if body is not None else None
    req = urllib.request.Request(url, data=data, method=method)
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            status, headers, raw = resp.status, resp.headers, resp.read()
    except urllib.error.HTTPError as e:
        status, headers, raw = e.code, e.headers, e.read()
    return status, headers.get_all("Warning") or [], orjson.loads(raw) if raw else None


class Compat:
    def __init__(self, cluster: LocalCluster, emulator: EmulatorThread, kube_url: str) -> None:
        self.cluster = cluster
        self.emulator = emulator
        self.kube_url = kube_url

    def url(self, i: int = 0) -> str:
        return self.cluster.nodes[i].url

    def jobs(self) -> list[dict[str, Any]]:
        with urllib.request.urlopen(f"{self.kube_url}/apis/batch/v1/namespaces/default/jobs", timeout=5) as r:
            items: list[dict[str, Any]] = orjson.loads(r.read())["items"]
            return items

    def job_of_run(self, job_name: str, run_id: str) -> dict[str, Any]:
        """The Job manifest Kubernetes received for one run (waited for)."""
        found: list[dict[str, Any]] = []

        def created() -> bool:
            status, _, runs = call(f"{self.url(1)}/job/{job_name}")
            assert status == 200, runs
            names = [r["Name"] for r in runs if r["Id"] == run_id]
            found[:] = [j for j in self.jobs() if j["metadata"]["name"] in names]
            return bool(found)

        wait_until(created, 20, f"the Job of run {run_id}")
        return found[0]


def _ready_deployment(e: Emulator, *, name: str) -> None:
    e.set_workload("deployment", name, replicas=1, ready_replicas=1)


@pytest.fixture(scope="module")
def compat(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Compat]:
    emulator = EmulatorThread(pending_seconds=0.1, run_seconds=0.3)
    with emulator as url:
        for name in ("fibonacci1", "fibonacci2"):  # the demo's DependsOn, ready
            emulator.call(functools.partial(_ready_deployment, name=name))
        emulator.call(lambda e: e.put_cronjob("fibonacci5", copy.deepcopy(DEMO_CRONJOB)))
        # The demo CronJob again, its schedule every second so that it fires within the test.
        every_second = copy.deepcopy(DEMO_CRONJOB)
        every_second["metadata"]["annotations"]["SlimFaas/Schedules"] = (
            '[{"Schedule":"* * * * * *","Args":["39"]}]'
        )
        emulator.call(lambda e: e.put_cronjob("fibonacci6", every_second))
        tmp: Path = tmp_path_factory.mktemp("compat-config")
        cluster = LocalCluster.create(
            3,
            str(tmp),
            env={
                "SlimFaas__JobsConfiguration": CONFIGURATION,  # SlimFaas's variable, as in the demo
                "SLIMSCHED_KUBE_URL": url,
                "SLIMSCHED_CRONJOB_REFRESH_SECONDS": "0.3",
            },
        )
        cluster.start()
        try:
            cluster.wait_ready(timeout=30)
            yield Compat(cluster, emulator, url)
        finally:
            cluster.stop()


def _container(job: dict[str, Any]) -> dict[str, Any]:
    [container] = job["spec"]["template"]["spec"]["containers"]
    return dict(container)


def test_dotnet_create_job_record_with_its_defaults_is_accepted(compat: Compat) -> None:
    """SlimFaas: src/SlimFaas/Kubernetes/Models/CreateJob.cs (record CreateJob, serialized by its
    CreateJobSerializerContext: WhenWritingNull, so every default but the null ones is sent),
    against demo/deployment-slimfaas.yml (TtlSecondsAfterFinished 2). docs/jobs.md calls
    BackoffLimit, TtlSecondsAfterFinished and RestartPolicy plain overrides: the Job gets 60."""
    body = {
        "Args": ["42"],
        "Image": "",
        "BackoffLimit": 1,
        "TtlSecondsAfterFinished": 60,
        "RestartPolicy": "Never",
    }
    status, warnings, answer = call(f"{compat.url(0)}/job/fibonacci", "POST", body)
    assert (status, warnings) == (202, []), answer
    job = compat.job_of_run("fibonacci", answer["Id"])
    spec = job["spec"]
    assert (spec["ttlSecondsAfterFinished"], spec["backoffLimit"]) == (60, 1)
    assert spec["template"]["spec"]["restartPolicy"] == "Never"
    container = _container(job)
    assert container["image"] == "axaguildev/fibonacci-batch:latest"
    assert container["args"] == ["42"]
    assert container["env"] == DEMO_ENV
    assert container["resources"] == DEMO_RESOURCES
    assert "command" not in container and "volumeMounts" not in container


def test_documented_override_example_merges_with_the_configuration(compat: Compat) -> None:
    """SlimFaas: docs/jobs.md 3.1 'Example 2' (without its Image, which the demo's empty
    ImagesWhitelist refuses in SlimFaas too): Resources replace key by key within the limits,
    Environments [] keeps the configured ones, TTL 100 overrides the configured 2."""
    body = {
        "Args": ["42", "43"],
        "DependsOn": ["fibonacci2"],
        "Resources": {
            "Requests": {"cpu": "200m", "memory": "200Mi"},
            "Limits": {"cpu": "200m", "memory": "200Mi"},
        },
        "Environments": [],
        "BackoffLimit": 1,
        "TtlSecondsAfterFinished": 100,
        "RestartPolicy": "Never",
    }
    status, warnings, answer = call(f"{compat.url(2)}/job/fibonacci", "POST", body)
    assert (status, warnings) == (202, []), answer
    job = compat.job_of_run("fibonacci", answer["Id"])
    container = _container(job)
    assert container["resources"] == {
        "requests": {"cpu": "200m", "memory": "200Mi"},
        "limits": {"cpu": "200m", "memory": "200Mi"},
    }
    assert container["env"] == DEMO_ENV
    assert container["args"] == ["42", "43"]
    assert job["spec"]["ttlSecondsAfterFinished"] == 100


def test_resources_over_the_configuration_are_capped_with_a_warning(compat: Compat) -> None:
    """SlimFaas: src/SlimFaas/Kubernetes/JobResourceValidator.cs and
    tests/SlimFaas.Tests/Jobs/JobResourceValidatorTests.cs::
    ValidateResources_ShouldUseDefaultValues_WhenRequestedValuesExceedLimits: over the
    configuration means the configured value, a key it lacks is dropped. Unknown body fields are
    ignored (System.Text.Json)."""
    body = {
        "Args": ["7"],
        "Resources": {
            "Requests": {"cpu": "2", "memory": "100Mi"},
            "Limits": {"memory": "1Gi", "nvidia.com/gpu": "1"},
        },
        "Priority": "high",
    }
    status, warnings, answer = call(f"{compat.url(1)}/job/fibonacci", "POST", body)
    assert status == 202, answer
    assert len(warnings) == 4, warnings
    assert all(re.fullmatch(r'299 - "[ -~]+"', w) for w in warnings), warnings
    joined = "\n".join(warnings)
    for fragment in (
        "Resources.Requests.cpu: 2 capped to the 400m",
        "Resources.Limits.memory: 1Gi capped to the 400Mi",
        "Resources.Limits.nvidia.com/gpu: ignored",
        "Priority: unknown field, ignored",
    ):
        assert fragment in joined
    job = compat.job_of_run("fibonacci", answer["Id"])
    assert _container(job)["resources"] == {
        "requests": {"cpu": "400m", "memory": "100Mi"},
        "limits": {"cpu": "400m", "memory": "400Mi"},
    }
    with urllib.request.urlopen(f"{compat.url(1)}/metrics", timeout=5) as r:
        metrics = r.read().decode()
    counted = dict(re.findall(r'slimsched_request_adjustments_total\{code="(\w+)"\} ([0-9.]+)', metrics))
    assert float(counted["resource_capped"]) >= 2 and float(counted["unknown_field"]) >= 1, counted


def test_job_names_are_lowercased_as_slimfaas(compat: Compat) -> None:
    """SlimFaas: src/SlimFaas/Endpoints/JobEndpoints.cs::CreateJob (functionName.ToLowerInvariant(),
    then [a-z0-9_-]): /job/Fibonacci is job fibonacci."""
    status, warnings, answer = call(f"{compat.url(0)}/job/Fibonacci", "POST", {"Args": ["1"]})
    assert status == 202, answer
    assert warnings == ["299 - \"Job name 'Fibonacci' read as 'fibonacci', as SlimFaas does.\""]
    job = compat.job_of_run("fibonacci", answer["Id"])
    assert job["metadata"]["labels"][LABEL_JOB_NAME] == "fibonacci"
    listed: list[tuple[int, list[str], Any]] = []

    def seen_on_another_node() -> bool:
        listed[:] = [call(f"{compat.url(2)}/job/FIBONACCI")]
        status, _, runs = listed[0]
        return status == 200 and answer["Id"] in {r["Id"] for r in runs}

    wait_until(seen_on_another_node, 10, "the run listed on another node")
    assert len(listed[0][1]) == 1


def test_names_with_underscore_and_configuration_keys_slimfaas_ignores(compat: Compat) -> None:
    """SlimFaas: src/SlimFaas/Endpoints/JobScheduleEndpoints.cs (names [a-z0-9_-]) and
    tests/SlimFaas.Tests/Jobs/JobConfigurationTests.cs (the entry with Name and Something):
    the node started, the keys are listed in /status, and the Kubernetes names derived from
    'ma_function' are valid DNS-1123 names while the label keeps the job's own name."""
    status, warnings, answer = call(f"{compat.url(1)}/job/Ma_Function", "POST", {"Args": ["x"]})
    assert status == 202 and len(warnings) == 1, (answer, warnings)
    job = compat.job_of_run("ma_function", answer["Id"])
    name = job["metadata"]["name"]
    assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", name) and len(name) <= 63, name
    assert name.startswith("ma-function-")
    assert _container(job)["name"] == "ma-function"
    assert _container(job)["image"] == "registry.local/ma-function:1"
    assert _container(job)["resources"] == {
        "requests": {"cpu": "50m", "memory": "64Mi"},
        "limits": {"cpu": "200m", "memory": "256Mi"},
    }
    assert job["metadata"]["labels"][LABEL_JOB_NAME] == "ma_function"
    assert job["spec"]["ttlSecondsAfterFinished"] == 60  # SlimfaasJob's default
    status, _, cluster = call(f"{compat.url(2)}/status")
    assert status == 200
    assert cluster["ConfigurationNotes"] == [
        "Configurations.Ma_Function: job name read as 'ma_function'.",
        "Configurations.Ma_Function.Name: unknown field, ignored.",
        "Configurations.Ma_Function.Something: unknown field, ignored.",
    ]
    status, warnings, answer = call(
        f"{compat.url(0)}/job-schedules/ma_function", "POST", {"Schedule": "0 0 * * *"}
    )
    assert (status, warnings) == (201, []), answer


def test_demo_configmap_schedule_is_declared(compat: Compat) -> None:
    """SlimFaas: demo/deployment-slimfaas.yml, its Schedules entry for fibonacci."""

    def listed() -> list[dict[str, Any]]:
        status, _, body = call(f"{compat.url(2)}/job-schedules/fibonacci")
        assert status == 200, body
        return list(body)

    wait_until(lambda: len(listed()) == 1, 15, "the declared schedule")
    [schedule] = listed()
    assert (schedule["Schedule"], schedule["Args"]) == ("0 0 * * *", ["42", "43"])


def test_demo_cronjob_schedules_annotation(compat: Compat) -> None:
    """SlimFaas: demo/deployment-cron.yaml and docs/jobs.md 2.3.1: the SlimFaas/Schedules
    annotation declares '*/2 * * * *' with Args ["39"]; the suspended CronJob's own '0 0 * * *'
    does not fire. Its copy with '* * * * * *' fires, and its Job is the CronJob's template."""

    def listed(job: str) -> list[dict[str, Any]]:
        status, _, body = call(f"{compat.url(0)}/job-schedules/{job}")
        assert status == 200, body
        return list(body)

    wait_until(lambda: len(listed("fibonacci5")) == 1, 15, "the CronJob's schedule")
    [schedule] = listed("fibonacci5")
    assert (schedule["Schedule"], schedule["Args"]) == ("*/2 * * * *", ["39"])
    next_fire = schedule["NextFireTime"]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d[02468]:00Z", next_fire), next_fire

    def fired() -> list[dict[str, Any]]:
        return [j for j in compat.jobs() if j["metadata"]["labels"].get(LABEL_JOB_NAME) == "fibonacci6"]

    wait_until(lambda: bool(fired()), 20, "a Job of the every-second copy")
    job = fired()[0]
    container = _container(job)
    assert (container["image"], container["args"]) == ("axaguildev/fibonacci-batch:latest", ["39"])
    assert container["resources"] == DEMO_RESOURCES
    spec = job["spec"]
    assert (spec["backoffLimit"], spec["ttlSecondsAfterFinished"]) == (1, 60)
    assert spec["template"]["spec"]["restartPolicy"] == "Never"
    assert not [j for j in compat.jobs() if j["metadata"]["labels"].get(LABEL_JOB_NAME) == "fibonacci5"]


# -- strict mode (one node in process, the real API over HTTP) -------------------------------------


@pytest.fixture
async def strict_api(raft: RaftNode) -> AsyncIterator[ApiHarness]:
    clock = ManualClock()
    server = TestServer(create_app(api_context(raft, clock, strict=True)), host="127.0.0.1")
    await server.start_server()
    try:
        async with ClientSession() as session:
            yield ApiHarness(str(server.make_url("")).rstrip("/"), session, raft, clock)
    finally:
        await server.close()


@pytest.mark.parametrize(
    ("path", "body", "code"),
    [
        ("/job/fibonacci", {"Resources": {"Requests": {"cpu": "2"}}}, "resource_capped"),
        ("/job/fibonacci", {"Resources": {"Requests": {"gpu": "1"}}}, "resource_ignored"),
        ("/job/fibonacci", {"Args": [], "Priority": 1}, "unknown_field"),
        ("/job/Fibonacci", {}, "name_lowercased"),
        ("/job-schedules/fibonacci", {"Schedule": "@daily", "Bogus": 1}, "unknown_field"),
    ],
)
async def test_strict_mode_refuses_every_adjustment(
    strict_api: ApiHarness, path: str, body: Any, code: str
) -> None:
    """SLIMSCHED_STRICT: what would be a Warning is a 400 with the adjustment's code; nothing stored."""
    status, answer = await strict_api.call("POST", path, body)
    assert (status, answer["Error"]) == (400, code), answer
    assert "strict mode" in answer["Message"]
    assert (await strict_api.call("GET", "/job/fibonacci"))[1] == []
    assert (await strict_api.call("GET", "/job-schedules/fibonacci"))[1] == []
    status, answer = await strict_api.call("POST", "/job/fibonacci", {"Args": ["1"]})
    assert status == 202, answer


# -- Kubernetes names derived from SlimFaas job names (pure) -----------------------------------------

_DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
_LABEL_VALUE = re.compile(r"(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?")


@settings(max_examples=300, deadline=None)
@given(
    job_name=st.from_regex(r"[a-z0-9_-]{1,40}", fullmatch=True),
    schedule_id=st.from_regex(r"[a-z0-9-]{1,40}", fullmatch=True),
    tick=st.integers(0, 2**40),
)
def test_every_slimfaas_job_name_gives_valid_kubernetes_names(
    job_name: str, schedule_id: str, tick: int
) -> None:
    """SlimFaas accepts [a-z0-9_-] (src/SlimFaas/Endpoints/JobEndpoints.cs::FunctionNamePattern) and
    builds '{name}-slimfaas-job-...' Job and container names Kubernetes refuses for '_' or a
    leading '-'. Here the Job name, the container name and the labels are valid whatever the job
    name, and derived only from (schedule, tick) / the run id, so a second create is a 409."""
    run_id = f"{schedule_id}-{tick}"
    run = Run(
        id=run_id,
        job_name=job_name,
        spec=JobSpec(image="i"),
        status=RunStatus.QUEUED,
        queued_at_ms=0,
        kube_name=kube_job_name(job_name, run_id),
        schedule_id=schedule_id,
        tick=tick,
    )
    manifest = build_job_manifest(run, namespace="default", raft_term=1, raft_index=2, schedule_id=None)
    name = manifest["metadata"]["name"]
    assert len(name) <= 63 and _DNS_LABEL.fullmatch(name), name
    assert name == kube_job_name(job_name, run_id)  # deterministic
    assert name.endswith("-" + hashlib.sha256(run_id.encode()).hexdigest()[:10])
    container = manifest["spec"]["template"]["spec"]["containers"][0]["name"]
    assert len(container) <= 63 and _DNS_LABEL.fullmatch(container), container
    for labels in (manifest["metadata"]["labels"], manifest["spec"]["template"]["metadata"]["labels"]):
        assert all(len(v) <= 63 and _LABEL_VALUE.fullmatch(v) for v in labels.values()), labels
    assert manifest["metadata"]["annotations"]["slimsched/job-name"] == job_name  # the name itself
