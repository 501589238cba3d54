"""What a run looks like as a Kubernetes batch/v1 Job, and what a Job's state means for a run.

Pure functions (no I/O, no client library) so that the exactly-once rules can be tested with
tables: the Job name is a deterministic function of the run id (a second create of the same run
hits HTTP 409 instead of starting a second Job), and the labels carry the job name, run id,
schedule id and the Raft term/index of the dispatch, a fencing token that makes a stale
dispatch visible. The output is the camelCase JSON the Kubernetes API speaks.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from slimsched.model import EnvVar, Resources, Run, RunStatus, Volume, VolumeKind, VolumeMount

MANAGED_BY = "slimsched"
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
LABEL_JOB_NAME = "slimsched/job-name"
LABEL_RUN_ID = "slimsched/run-id"
LABEL_SCHEDULE_ID = "slimsched/schedule-id"
LABEL_RAFT_TERM = "slimsched/raft-term"
LABEL_RAFT_INDEX = "slimsched/raft-index"
ANNOTATION_RUN_ID = "slimsched/run-id"
ANNOTATION_JOB_NAME = "slimsched/job-name"
ANNOTATION_SCHEDULE_ID = "slimsched/schedule-id"
ANNOTATION_TICK = "slimsched/tick"

MAX_NAME = 63
NAME_HASH_CHARS = 10

_DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
_LABEL_VALUE = re.compile(r"(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?")
_NOT_DNS = re.compile(r"[^a-z0-9-]+")

# Waiting reasons every healthy container goes through; any other one is worth reporting.
_ROUTINE_WAITING = frozenset({"ContainerCreating", "PodInitializing"})
_IMAGE_PULL_WAITING = frozenset({"ImagePullBackOff", "ErrImagePull"})


def is_dns1123_label(value: str) -> bool:
    return len(value) <= MAX_NAME and _DNS_LABEL.fullmatch(value) is not None


def is_label_value(value: str) -> bool:
    return len(value) <= MAX_NAME and _LABEL_VALUE.fullmatch(value) is not None


def label_value(value: str) -> str:
    """``value`` itself when Kubernetes accepts it as a label value, else a stable hash of it."""
    if is_label_value(value):
        return value
    return "sha256-" + hashlib.sha256(value.encode()).hexdigest()[:52]


def _dns_label_prefix(text: str, max_len: int) -> str:
    cleaned = _NOT_DNS.sub("-", text.lower())[:max_len].strip("-")
    return cleaned or "job"


def kube_job_name(job_name: str, run_id: str) -> str:
    """The Job name of a run: ``{job_name}-{10 hex of sha256(run_id)}``, a DNS-1123 label."""
    suffix = hashlib.sha256(run_id.encode()).hexdigest()[:NAME_HASH_CHARS]
    prefix = _dns_label_prefix(job_name, MAX_NAME - 1 - NAME_HASH_CHARS)
    return f"{prefix}-{suffix}"


def run_selector(run_id: str) -> str:
    """The label selector of the Job (and its pods) of one run."""
    return f"{LABEL_RUN_ID}={label_value(run_id)}"


def runs_selector(run_ids: Iterable[str]) -> str:
    """The set-based label selector of the Jobs (and their pods) of several runs."""
    return f"{LABEL_RUN_ID} in ({','.join(label_value(i) for i in run_ids)})"


def _env_var(env: EnvVar) -> dict[str, Any]:
    out: dict[str, Any] = {"name": env.name}
    if env.secret_key_ref is not None:
        out["valueFrom"] = {"secretKeyRef": {"name": env.secret_key_ref.name, "key": env.secret_key_ref.key}}
    elif env.config_map_key_ref is not None:
        ref = env.config_map_key_ref
        out["valueFrom"] = {"configMapKeyRef": {"name": ref.name, "key": ref.key}}
    elif env.field_path is not None:
        out["valueFrom"] = {"fieldRef": {"fieldPath": env.field_path}}
    elif env.resource_field_ref is not None:
        rf = env.resource_field_ref
        resource: dict[str, str] = {"resource": rf.resource}
        if rf.container_name is not None:
            resource["containerName"] = rf.container_name
        if rf.divisor is not None:
            resource["divisor"] = rf.divisor
        out["valueFrom"] = {"resourceFieldRef": resource}
    elif env.value is not None:
        out["value"] = env.value
    return out


def _resources(resources: Resources) -> dict[str, dict[str, str]]:
    out: dict[str, dict[str, str]] = {}
    if resources.requests:
        out["requests"] = dict(resources.requests)
    if resources.limits:
        out["limits"] = dict(resources.limits)
    return out


def _volume(volume: Volume) -> dict[str, Any]:
    source: dict[str, Any]
    if volume.kind is VolumeKind.PERSISTENT_VOLUME_CLAIM:
        source = {"claimName": volume.source}
        if volume.read_only:
            source["readOnly"] = True
        return {"name": volume.name, "persistentVolumeClaim": source}
    if volume.kind is VolumeKind.CONFIG_MAP:
        return {"name": volume.name, "configMap": {"name": volume.source}}
    if volume.kind is VolumeKind.SECRET:
        return {"name": volume.name, "secret": {"secretName": volume.source}}
    source = {}
    if volume.medium:
        source["medium"] = volume.medium
    if volume.size_limit is not None:
        source["sizeLimit"] = volume.size_limit
    return {"name": volume.name, "emptyDir": source}


def _volume_mount(mount: VolumeMount) -> dict[str, Any]:
    out: dict[str, Any] = {"name": mount.name, "mountPath": mount.mount_path}
    if mount.read_only:
        out["readOnly"] = True
    if mount.sub_path:
        out["subPath"] = mount.sub_path
    return out


def build_job_manifest(
    run: Run, *, namespace: str, raft_term: int, raft_index: int, schedule_id: str | None
) -> dict[str, Any]:
    """The batch/v1 Job of ``run``, named ``run.kube_name``.

    ``schedule_id`` falls back to ``run.schedule_id`` when not given.
    """
    spec = run.spec
    schedule = schedule_id if schedule_id is not None else run.schedule_id
    run_labels = {
        LABEL_MANAGED_BY: MANAGED_BY,
        LABEL_JOB_NAME: label_value(run.job_name),
        LABEL_RUN_ID: label_value(run.id),
    }
    labels = {**run_labels, LABEL_RAFT_TERM: str(raft_term), LABEL_RAFT_INDEX: str(raft_index)}
    annotations = {ANNOTATION_RUN_ID: run.id, ANNOTATION_JOB_NAME: run.job_name}
    if schedule is not None:
        labels[LABEL_SCHEDULE_ID] = label_value(schedule)
        annotations[ANNOTATION_SCHEDULE_ID] = schedule
    if run.tick is not None:
        annotations[ANNOTATION_TICK] = str(run.tick)

    container: dict[str, Any] = {"name": _dns_label_prefix(run.job_name, MAX_NAME), "image": spec.image}
    if spec.command:
        container["command"] = list(spec.command)
    if spec.args:
        container["args"] = list(spec.args)
    if spec.environments:
        container["env"] = [_env_var(e) for e in spec.environments]
    resources = _resources(spec.resources)
    if resources:
        container["resources"] = resources
    if spec.volume_mounts:
        container["volumeMounts"] = [_volume_mount(m) for m in spec.volume_mounts]
    pod_spec: dict[str, Any] = {"restartPolicy": spec.restart_policy.value, "containers": [container]}
    if spec.volumes:
        pod_spec["volumes"] = [_volume(v) for v in spec.volumes]

    job_spec: dict[str, Any] = {
        "backoffLimit": spec.backoff_limit,
        "parallelism": spec.parallelism,
        "completions": spec.completions,
        "template": {
            "metadata": {"labels": dict(run_labels), "annotations": {ANNOTATION_RUN_ID: run.id}},
            "spec": pod_spec,
        },
    }
    if spec.ttl_seconds_after_finished is not None:
        job_spec["ttlSecondsAfterFinished"] = spec.ttl_seconds_after_finished
    if spec.active_deadline_seconds is not None:
        job_spec["activeDeadlineSeconds"] = spec.active_deadline_seconds

    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": run.kube_name,
            "namespace": namespace,
            "labels": labels,
            "annotations": annotations,
        },
        "spec": job_spec,
    }


def _true_condition(job: Mapping[str, Any], types: Iterable[str]) -> Mapping[str, Any] | None:
    wanted = set(types)
    conditions: list[Mapping[str, Any]] = (job.get("status") or {}).get("conditions") or []
    for cond in conditions:
        if cond.get("type") in wanted and cond.get("status") == "True":
            return cond
    return None


def _container_states(pod: Mapping[str, Any]) -> Iterable[Mapping[str, Any]]:
    status = pod.get("status") or {}
    for key in ("initContainerStatuses", "containerStatuses"):
        for cs in status.get(key) or ():
            yield cs.get("state") or {}


def _waiting_reasons(pod: Mapping[str, Any]) -> list[str]:
    return [str(s["waiting"].get("reason")) for s in _container_states(pod) if s.get("waiting")]


def _pending_reason(pods: Sequence[Mapping[str, Any]]) -> str | None:
    for pod in pods:
        for reason in _waiting_reasons(pod):
            if reason not in _ROUTINE_WAITING:
                return reason
        for cond in (pod.get("status") or {}).get("conditions") or ():
            if cond.get("type") == "PodScheduled" and cond.get("status") == "False":
                return str(cond.get("reason") or "Unschedulable")
    return None


def run_status_from_job(
    job: Mapping[str, Any], pods: Sequence[Mapping[str, Any]]
) -> tuple[RunStatus, str | None]:
    """The run status a Job and its pods show, with a reason when there is one to tell.

    The Job's conditions decide the end (FailureTarget and SuccessCriteriaMet already fix the
    outcome while the last pods terminate); before that, a running pod makes the run Running,
    an image that cannot be pulled makes it ImagePullBackOff, and anything else is Pending.
    """
    failed = _true_condition(job, ("Failed", "FailureTarget"))
    if failed is not None:
        return RunStatus.FAILED, str(failed.get("reason") or "Failed")
    if _true_condition(job, ("Complete", "SuccessCriteriaMet")) is not None:
        return RunStatus.SUCCEEDED, None

    live = [p for p in pods if (p.get("status") or {}).get("phase") not in ("Failed",)]
    status = job.get("status") or {}
    if (status.get("ready") or 0) > 0 or any(
        (p.get("status") or {}).get("phase") in ("Running", "Succeeded") for p in live
    ):
        return RunStatus.RUNNING, None
    for pod in live:
        for reason in _waiting_reasons(pod):
            if reason in _IMAGE_PULL_WAITING:
                return RunStatus.IMAGE_PULL_BACK_OFF, reason
    if (job.get("spec") or {}).get("suspend") is True:
        return RunStatus.PENDING, "Suspended"
    return RunStatus.PENDING, _pending_reason(live)
