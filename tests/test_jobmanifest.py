"""Job names, manifests and status derivation: the pure half of dispatching exactly once."""

from __future__ import annotations

import re
from dataclasses import replace
from typing import Any

import kubernetes_validate
import pytest

from slimsched.jobmanifest import (
    LABEL_JOB_NAME,
    LABEL_MANAGED_BY,
    LABEL_RAFT_INDEX,
    LABEL_RAFT_TERM,
    LABEL_RUN_ID,
    LABEL_SCHEDULE_ID,
    build_job_manifest,
    is_dns1123_label,
    is_label_value,
    kube_job_name,
    label_value,
    run_selector,
    run_status_from_job,
)
from slimsched.model import (
    EnvVar,
    JobSpec,
    KeyRef,
    ResourceFieldRef,
    Resources,
    RestartPolicy,
    Run,
    RunStatus,
    Volume,
    VolumeKind,
    VolumeMount,
)

DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")


def _run(**spec_changes: Any) -> Run:
    spec = replace(JobSpec(image="registry/fibonacci:1.2"), **spec_changes)
    return Run(
        id="run-0001",
        job_name="fibonacci",
        spec=spec,
        status=RunStatus.DISPATCHING,
        queued_at_ms=1_700_000_000_000,
        kube_name=kube_job_name("fibonacci", "run-0001"),
    )


# --- names -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "job_name",
    [
        "fibonacci",
        "a",
        "x" * 40,
        "x" * 200,
        "Upper_Case.Name",
        "---",
        "",
        "-leading-and-trailing-",
        "ünïcödé job",
        "a" * 51 + "-" + "b" * 20,
    ],
)
def test_kube_job_name_is_a_dns1123_label(job_name: str) -> None:
    name = kube_job_name(job_name, "some-run")
    assert len(name) <= 63
    assert DNS_LABEL.fullmatch(name), name
    assert is_dns1123_label(name)


def test_kube_job_name_keeps_a_valid_job_name_and_appends_a_hash() -> None:
    name = kube_job_name("fibonacci", "run-1")
    assert re.fullmatch(r"fibonacci-[0-9a-f]{10}", name)
    assert kube_job_name("x" * 40, "r").startswith("x" * 40 + "-")


def test_kube_job_name_is_deterministic_and_distinct_per_run() -> None:
    ids = [f"sched-42-{tick}" for tick in range(1_700_000_000, 1_700_002_000)]
    names = [kube_job_name("nightly", i) for i in ids]
    assert names == [kube_job_name("nightly", i) for i in ids]
    assert len(set(names)) == len(ids)


@pytest.mark.parametrize(
    ("value", "kept"),
    [
        ("run-0001", True),
        ("0f8fad5b-d9cb-469f-a165-70867728950e", True),
        ("A.b_c-9", True),
        ("x" * 63, True),
        ("x" * 64, False),
        ("-starts-with-dash", False),
        ("has space", False),
        ("sched:1700000000", False),
        ("", True),
    ],
)
def test_label_value(value: str, kept: bool) -> None:
    out = label_value(value)
    assert is_label_value(out)
    assert (out == value) is kept
    assert label_value(value) == out


def test_distinct_unsafe_values_hash_to_distinct_labels() -> None:
    assert label_value("a:1") != label_value("a:2")


# --- manifest ----------------------------------------------------------------------------------


def test_manifest_metadata_labels_and_annotations() -> None:
    run = _run()
    manifest = build_job_manifest(run, namespace="jobs", raft_term=7, raft_index=1234, schedule_id="sched-9")
    meta = manifest["metadata"]
    assert manifest["apiVersion"] == "batch/v1"
    assert manifest["kind"] == "Job"
    assert meta["name"] == run.kube_name
    assert meta["namespace"] == "jobs"
    assert meta["labels"] == {
        LABEL_MANAGED_BY: "slimsched",
        LABEL_JOB_NAME: "fibonacci",
        LABEL_RUN_ID: "run-0001",
        LABEL_SCHEDULE_ID: "sched-9",
        LABEL_RAFT_TERM: "7",
        LABEL_RAFT_INDEX: "1234",
    }
    assert meta["annotations"]["slimsched/run-id"] == "run-0001"
    assert meta["annotations"]["slimsched/schedule-id"] == "sched-9"
    template_labels = manifest["spec"]["template"]["metadata"]["labels"]
    assert template_labels[LABEL_JOB_NAME] == "fibonacci"
    assert template_labels[LABEL_RUN_ID] == "run-0001"
    assert run_selector(run.id) == f"{LABEL_RUN_ID}=run-0001"


def test_manifest_hashes_a_run_id_that_is_not_label_safe_but_annotates_it_in_full() -> None:
    run = replace(_run(), id="sched:9@1700000000", schedule_id="sched:9", tick=1_700_000_000)
    manifest = build_job_manifest(run, namespace="default", raft_term=1, raft_index=2, schedule_id=None)
    meta = manifest["metadata"]
    assert meta["labels"][LABEL_RUN_ID] == label_value(run.id) != run.id
    assert meta["labels"][LABEL_SCHEDULE_ID] == label_value("sched:9")
    assert meta["annotations"]["slimsched/run-id"] == run.id
    assert meta["annotations"]["slimsched/tick"] == "1700000000"
    assert run_selector(run.id) == f"{LABEL_RUN_ID}={label_value(run.id)}"


def test_manifest_without_schedule_has_no_schedule_label() -> None:
    manifest = build_job_manifest(_run(), namespace="default", raft_term=1, raft_index=2, schedule_id=None)
    assert LABEL_SCHEDULE_ID not in manifest["metadata"]["labels"]
    assert "slimsched/schedule-id" not in manifest["metadata"]["annotations"]


def test_manifest_spec_and_container() -> None:
    run = _run(
        args=("--n", "42"),
        command=("/bin/fib",),
        resources=Resources(requests={"cpu": "100m", "memory": "100Mi"}, limits={"memory": "200Mi"}),
        backoff_limit=3,
        ttl_seconds_after_finished=60,
        restart_policy=RestartPolicy.ON_FAILURE,
        active_deadline_seconds=600,
        parallelism=2,
        completions=4,
        environments=(
            EnvVar("PLAIN", value="1"),
            EnvVar("EMPTY"),
            EnvVar("SECRET", secret_key_ref=KeyRef("db", "password")),
            EnvVar("CONFIG", config_map_key_ref=KeyRef("settings", "level")),
            EnvVar("POD", field_path="metadata.name"),
            EnvVar("CPU", resource_field_ref=ResourceFieldRef("limits.cpu", "fibonacci", "1m")),
            EnvVar("MEM", resource_field_ref=ResourceFieldRef("requests.memory")),
        ),
    )
    spec = build_job_manifest(run, namespace="default", raft_term=1, raft_index=2, schedule_id=None)["spec"]
    assert spec["backoffLimit"] == 3
    assert spec["ttlSecondsAfterFinished"] == 60
    assert spec["activeDeadlineSeconds"] == 600
    assert spec["parallelism"] == 2
    assert spec["completions"] == 4
    pod = spec["template"]["spec"]
    assert pod["restartPolicy"] == "OnFailure"
    [container] = pod["containers"]
    assert container["name"] == "fibonacci"
    assert container["image"] == "registry/fibonacci:1.2"
    assert container["args"] == ["--n", "42"]
    assert container["command"] == ["/bin/fib"]
    assert container["resources"] == {
        "requests": {"cpu": "100m", "memory": "100Mi"},
        "limits": {"memory": "200Mi"},
    }
    assert container["env"] == [
        {"name": "PLAIN", "value": "1"},
        {"name": "EMPTY"},
        {"name": "SECRET", "valueFrom": {"secretKeyRef": {"name": "db", "key": "password"}}},
        {"name": "CONFIG", "valueFrom": {"configMapKeyRef": {"name": "settings", "key": "level"}}},
        {"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        {
            "name": "CPU",
            "valueFrom": {
                "resourceFieldRef": {"resource": "limits.cpu", "containerName": "fibonacci", "divisor": "1m"}
            },
        },
        {"name": "MEM", "valueFrom": {"resourceFieldRef": {"resource": "requests.memory"}}},
    ]


def test_manifest_omits_what_is_not_set() -> None:
    manifest = build_job_manifest(_run(), namespace="default", raft_term=1, raft_index=2, schedule_id=None)
    spec = manifest["spec"]
    assert "ttlSecondsAfterFinished" not in spec
    assert "activeDeadlineSeconds" not in spec
    [container] = spec["template"]["spec"]["containers"]
    assert set(container) == {"name", "image"}
    assert spec["template"]["spec"]["restartPolicy"] == "Never"
    assert "volumes" not in spec["template"]["spec"]


@pytest.mark.parametrize(
    "run",
    [
        _run(),
        _run(
            args=("a",),
            command=("sh", "-c"),
            environments=(EnvVar("S", secret_key_ref=KeyRef("s", "k")),),
            resources=Resources(requests={"cpu": "1"}, limits={"cpu": "2"}),
            ttl_seconds_after_finished=0,
            active_deadline_seconds=1,
        ),
        replace(_run(), id="weird id/with:chars", job_name="Weird_Name", schedule_id="s:1"),
        _run(
            volumes=(
                Volume("data", VolumeKind.PERSISTENT_VOLUME_CLAIM, source="fib-data", read_only=True),
                Volume("settings", VolumeKind.CONFIG_MAP, source="fib-settings"),
                Volume("creds", VolumeKind.SECRET, source="fib-creds"),
                Volume("scratch", VolumeKind.EMPTY_DIR, medium="Memory", size_limit="64Mi"),
                Volume("disk", VolumeKind.EMPTY_DIR),
            ),
            volume_mounts=(
                VolumeMount("data", "/data", read_only=True, sub_path="in"),
                VolumeMount("settings", "/etc/fib", read_only=True),
                VolumeMount("creds", "/creds"),
                VolumeMount("scratch", "/tmp"),
                VolumeMount("disk", "/disk"),
            ),
        ),
    ],
)
def test_manifest_passes_the_kubernetes_schema(run: Run) -> None:
    manifest = build_job_manifest(run, namespace="default", raft_term=3, raft_index=99, schedule_id=None)
    kubernetes_validate.validate(manifest, "1.30", strict=True)


# --- status ------------------------------------------------------------------------------------


def _job(*conditions: tuple[str, str, str | None], **status: Any) -> dict[str, Any]:
    conds = [{"type": t, "status": s, **({"reason": r} if r else {})} for t, s, r in conditions]
    if conds:
        status["conditions"] = conds
    return {"metadata": {"name": "j"}, "spec": {}, "status": status}


def _pod(phase: str, *waiting: str, scheduled: bool = True) -> dict[str, Any]:
    statuses = [{"name": "c", "state": {"waiting": {"reason": w}}} for w in waiting]
    if not waiting and phase == "Running":
        statuses = [{"name": "c", "state": {"running": {"startedAt": "2024-01-01T00:00:00Z"}}}]
    conditions = [] if scheduled else [{"type": "PodScheduled", "status": "False", "reason": "Unschedulable"}]
    return {"status": {"phase": phase, "containerStatuses": statuses, "conditions": conditions}}


STATUS_TABLE: list[tuple[str, dict[str, Any], list[dict[str, Any]], RunStatus, str | None]] = [
    ("fresh job, no pod yet", _job(), [], RunStatus.PENDING, None),
    ("pod creating", _job(active=1), [_pod("Pending", "ContainerCreating")], RunStatus.PENDING, None),
    ("unschedulable", _job(active=1), [_pod("Pending", scheduled=False)], RunStatus.PENDING, "Unschedulable"),
    (
        "missing secret",
        _job(active=1),
        [_pod("Pending", "CreateContainerConfigError")],
        RunStatus.PENDING,
        "CreateContainerConfigError",
    ),
    (
        "image pull backoff",
        _job(active=1),
        [_pod("Pending", "ImagePullBackOff")],
        RunStatus.IMAGE_PULL_BACK_OFF,
        "ImagePullBackOff",
    ),
    (
        "err image pull",
        _job(active=1),
        [_pod("Pending", "ErrImagePull")],
        RunStatus.IMAGE_PULL_BACK_OFF,
        "ErrImagePull",
    ),
    ("running pod", _job(active=1), [_pod("Running")], RunStatus.RUNNING, None),
    ("ready count without pods listed", _job(active=1, ready=1), [], RunStatus.RUNNING, None),
    (
        "one of two pods running, other pulling",
        _job(active=2),
        [_pod("Pending", "ImagePullBackOff"), _pod("Running")],
        RunStatus.RUNNING,
        None,
    ),
    ("pod done, job not yet", _job(active=0), [_pod("Succeeded")], RunStatus.RUNNING, None),
    (
        "failed pod, retry pending",
        _job(active=1, failed=1),
        [_pod("Failed"), _pod("Pending", "ContainerCreating")],
        RunStatus.PENDING,
        None,
    ),
    (
        "complete",
        _job(("Complete", "True", None), succeeded=1),
        [_pod("Succeeded")],
        RunStatus.SUCCEEDED,
        None,
    ),
    (
        "success criteria met",
        _job(("SuccessCriteriaMet", "True", "CompletionsReached")),
        [_pod("Running")],
        RunStatus.SUCCEEDED,
        None,
    ),
    (
        "backoff limit",
        _job(("Failed", "True", "BackoffLimitExceeded"), failed=2),
        [_pod("Failed")],
        RunStatus.FAILED,
        "BackoffLimitExceeded",
    ),
    ("deadline", _job(("Failed", "True", "DeadlineExceeded")), [], RunStatus.FAILED, "DeadlineExceeded"),
    (
        "deadline while pulling",
        _job(("FailureTarget", "True", "DeadlineExceeded")),
        [_pod("Pending", "ImagePullBackOff")],
        RunStatus.FAILED,
        "DeadlineExceeded",
    ),
    (
        "condition not true yet",
        _job(("Failed", "False", "BackoffLimitExceeded"), active=1),
        [_pod("Running")],
        RunStatus.RUNNING,
        None,
    ),
    ("suspended", {"spec": {"suspend": True}, "status": {}}, [], RunStatus.PENDING, "Suspended"),
    ("no status at all", {"metadata": {"name": "j"}}, [], RunStatus.PENDING, None),
]


@pytest.mark.parametrize(
    ("case", "job", "pods", "status", "reason"), STATUS_TABLE, ids=[c[0] for c in STATUS_TABLE]
)
def test_run_status_from_job(
    case: str, job: dict[str, Any], pods: list[dict[str, Any]], status: RunStatus, reason: str | None
) -> None:
    assert run_status_from_job(job, pods) == (status, reason)
