"""Plain-dict encodings of the model, shared by commands, snapshots, backups and the API.

Keys are the PascalCase names of the SlimFaas API, so a stored schedule reads like the request
that created it. Decoders trust their input's shape only as far as ``apply`` does: a malformed
value raises ``ValueError``/``KeyError``/``TypeError``, which the state machine turns into an
error result. Validation of user input with good messages lives in ``jobconfig``.
"""

from __future__ import annotations

import sys
from typing import Any

import orjson

from slimsched import cronplan
from slimsched.model import (
    ConcurrencyPolicy,
    EnvVar,
    JobOverrides,
    JobSpec,
    KeyRef,
    ResourceFieldRef,
    Resources,
    RestartPolicy,
    Run,
    RunStatus,
    Schedule,
    TickOutcome,
    TickRecord,
    Volume,
    VolumeKind,
    VolumeMount,
)

Json = dict[str, Any]


def _drop_none(d: Json) -> Json:
    return {k: v for k, v in d.items() if v is not None}


def key_ref_to_dict(ref: KeyRef) -> Json:
    return {"Name": ref.name, "Key": ref.key}


def key_ref_from_dict(d: Json) -> KeyRef:
    return KeyRef(name=_str(d["Name"]), key=_str(d["Key"]))


def env_to_dict(env: EnvVar) -> Json:
    rf = env.resource_field_ref
    return _drop_none(
        {
            "Name": env.name,
            "Value": env.value,
            "SecretKeyRef": key_ref_to_dict(env.secret_key_ref) if env.secret_key_ref else None,
            "ConfigMapKeyRef": key_ref_to_dict(env.config_map_key_ref) if env.config_map_key_ref else None,
            "FieldRef": {"FieldPath": env.field_path} if env.field_path is not None else None,
            "ResourceFieldRef": _drop_none(
                {"Resource": rf.resource, "ContainerName": rf.container_name, "Divisor": rf.divisor}
            )
            if rf
            else None,
        }
    )


def env_from_dict(d: Json) -> EnvVar:
    rf = d.get("ResourceFieldRef")
    field_ref = d.get("FieldRef")
    return EnvVar(
        name=_str(d["Name"]),
        value=_opt_str(d.get("Value")),
        secret_key_ref=key_ref_from_dict(d["SecretKeyRef"]) if d.get("SecretKeyRef") else None,
        config_map_key_ref=key_ref_from_dict(d["ConfigMapKeyRef"]) if d.get("ConfigMapKeyRef") else None,
        field_path=_str(field_ref["FieldPath"]) if field_ref else None,
        resource_field_ref=ResourceFieldRef(
            resource=_str(rf["Resource"]),
            container_name=_opt_str(rf.get("ContainerName")),
            divisor=_opt_str(rf.get("Divisor")),
        )
        if rf
        else None,
    )


def resources_to_dict(r: Resources) -> Json:
    return {"Requests": dict(r.requests), "Limits": dict(r.limits)}


def resources_from_dict(d: Json) -> Resources:
    return Resources(requests=_str_map(d.get("Requests") or {}), limits=_str_map(d.get("Limits") or {}))


_SOURCE_KEY = {
    VolumeKind.PERSISTENT_VOLUME_CLAIM: "ClaimName",
    VolumeKind.CONFIG_MAP: "Name",
    VolumeKind.SECRET: "SecretName",
}


def volume_to_dict(v: Volume) -> Json:
    """``{"Name": ..., kind: {...}}``, the kind's key holding only its own fields."""
    if v.kind is VolumeKind.EMPTY_DIR:
        source: Json = _drop_none({"Medium": v.medium, "SizeLimit": v.size_limit})
    else:
        source = {_SOURCE_KEY[v.kind]: v.source}
        if v.kind is VolumeKind.PERSISTENT_VOLUME_CLAIM:
            source["ReadOnly"] = v.read_only
    return {"Name": v.name, v.kind.value: source}


def volume_from_dict(d: Json) -> Volume:
    kinds = [kind for kind in VolumeKind if kind.value in d]
    if len(kinds) != 1 or len(d) != 2:
        raise ValueError(f"a volume needs Name and exactly one of {', '.join(VolumeKind)}")
    [kind] = kinds
    source = d[kind.value]
    if not isinstance(source, dict):
        raise ValueError(f"expected an object for {kind.value}, got {type(source).__name__}")
    if kind is VolumeKind.EMPTY_DIR:
        return Volume(
            name=_str(d["Name"]),
            kind=kind,
            medium=_opt_str(source.get("Medium")),
            size_limit=_opt_str(source.get("SizeLimit")),
        )
    claim = kind is VolumeKind.PERSISTENT_VOLUME_CLAIM
    return Volume(
        name=_str(d["Name"]),
        kind=kind,
        source=_str(source[_SOURCE_KEY[kind]]),
        read_only=_bool(source.get("ReadOnly", False)) if claim else False,
    )


def volume_mount_to_dict(m: VolumeMount) -> Json:
    return _drop_none(
        {"Name": m.name, "MountPath": m.mount_path, "ReadOnly": m.read_only, "SubPath": m.sub_path}
    )


def volume_mount_from_dict(d: Json) -> VolumeMount:
    return VolumeMount(
        name=_str(d["Name"]),
        mount_path=_str(d["MountPath"]),
        read_only=_bool(d.get("ReadOnly", False)),
        sub_path=_opt_str(d.get("SubPath")),
    )


def overrides_to_dict(o: JobOverrides) -> Json:
    # Field by field rather than _drop_none over a full dict: 4x faster on the usual overrides
    # (one or two fields set), and every Raft snapshot encodes one per schedule.
    d: Json = {}
    if o.image is not None:
        d["Image"] = o.image
    if o.args is not None:
        d["Args"] = list(o.args)
    if o.command is not None:
        d["Command"] = list(o.command)
    if o.depends_on is not None:
        d["DependsOn"] = list(o.depends_on)
    if o.resources is not None:
        d["Resources"] = resources_to_dict(o.resources)
    if o.environments is not None:
        d["Environments"] = [env_to_dict(e) for e in o.environments]
    if o.backoff_limit is not None:
        d["BackoffLimit"] = o.backoff_limit
    if o.ttl_seconds_after_finished is not None:
        d["TtlSecondsAfterFinished"] = o.ttl_seconds_after_finished
    if o.restart_policy is not None:
        d["RestartPolicy"] = o.restart_policy.value
    if o.active_deadline_seconds is not None:
        d["ActiveDeadlineSeconds"] = o.active_deadline_seconds
    if o.parallelism is not None:
        d["Parallelism"] = o.parallelism
    if o.completions is not None:
        d["Completions"] = o.completions
    if o.volume_mounts is not None:
        d["VolumeMounts"] = [volume_mount_to_dict(m) for m in o.volume_mounts]
    return d


def overrides_from_dict(d: Json) -> JobOverrides:
    return JobOverrides(
        image=_opt_str(d.get("Image")),
        args=_opt_strs(d.get("Args")),
        command=_opt_strs(d.get("Command")),
        depends_on=_opt_strs(d.get("DependsOn")),
        resources=resources_from_dict(d["Resources"]) if d.get("Resources") is not None else None,
        environments=tuple(env_from_dict(e) for e in d["Environments"])
        if d.get("Environments") is not None
        else None,
        backoff_limit=_opt_int(d.get("BackoffLimit")),
        ttl_seconds_after_finished=_opt_int(d.get("TtlSecondsAfterFinished")),
        restart_policy=RestartPolicy(d["RestartPolicy"]) if d.get("RestartPolicy") is not None else None,
        active_deadline_seconds=_opt_int(d.get("ActiveDeadlineSeconds")),
        parallelism=_opt_int(d.get("Parallelism")),
        completions=_opt_int(d.get("Completions")),
        volume_mounts=tuple(volume_mount_from_dict(m) for m in _list(d["VolumeMounts"]))
        if d.get("VolumeMounts") is not None
        else None,
    )


def spec_to_dict(s: JobSpec) -> Json:
    """Every field of the spec, as snapshots, fingerprints and the API encode it.

    Field by field rather than ``_drop_none`` over a full dict (the same keys in the same order,
    so the same bytes): every Raft snapshot and fingerprint encodes one spec per run. Volumes and
    VolumeMounts are left out when empty, so that a spec without them encodes exactly as before
    they existed (and the state fingerprint of older runs does not move).
    """
    r = s.resources
    d: Json = {
        "Image": s.image,
        "Args": list(s.args),
        "Command": list(s.command),
        "DependsOn": list(s.depends_on),
        "Resources": {"Requests": dict(r.requests), "Limits": dict(r.limits)},
        "Environments": [env_to_dict(e) for e in s.environments],
        "BackoffLimit": s.backoff_limit,
    }
    if s.ttl_seconds_after_finished is not None:
        d["TtlSecondsAfterFinished"] = s.ttl_seconds_after_finished
    d["RestartPolicy"] = s.restart_policy.value
    if s.active_deadline_seconds is not None:
        d["ActiveDeadlineSeconds"] = s.active_deadline_seconds
    d["Parallelism"] = s.parallelism
    d["Completions"] = s.completions
    if s.volumes:
        d["Volumes"] = [volume_to_dict(v) for v in s.volumes]
    if s.volume_mounts:
        d["VolumeMounts"] = [volume_mount_to_dict(m) for m in s.volume_mounts]
    return d


def spec_to_command(s: JobSpec) -> Json:
    """The spec for a Raft command: ``spec_to_dict`` without the fields at ``spec_from_dict``'s
    defaults, which every release fills in again (they have been defaults since the first one),
    so it decodes to an equal spec on any node. Snapshots keep ``spec_to_dict``: a new encoding
    there would change the fingerprints nodes of mixed releases compare.
    """
    d: Json = {"Image": s.image}
    if s.args:
        d["Args"] = list(s.args)
    if s.command:
        d["Command"] = list(s.command)
    if s.depends_on:
        d["DependsOn"] = list(s.depends_on)
    r = s.resources
    if r.requests or r.limits:
        d["Resources"] = {"Requests": dict(r.requests), "Limits": dict(r.limits)}
    if s.environments:
        d["Environments"] = [env_to_dict(e) for e in s.environments]
    if s.backoff_limit != 1:
        d["BackoffLimit"] = s.backoff_limit
    if s.ttl_seconds_after_finished is not None:
        d["TtlSecondsAfterFinished"] = s.ttl_seconds_after_finished
    if s.restart_policy is not RestartPolicy.NEVER:
        d["RestartPolicy"] = s.restart_policy.value
    if s.active_deadline_seconds is not None:
        d["ActiveDeadlineSeconds"] = s.active_deadline_seconds
    if s.parallelism != 1:
        d["Parallelism"] = s.parallelism
    if s.completions != 1:
        d["Completions"] = s.completions
    if s.volumes:
        d["Volumes"] = [volume_to_dict(v) for v in s.volumes]
    if s.volume_mounts:
        d["VolumeMounts"] = [volume_mount_to_dict(m) for m in s.volume_mounts]
    return d


def spec_from_dict(d: Json) -> JobSpec:
    return JobSpec(
        image=_str(d["Image"]),
        args=_strs(d.get("Args", [])),
        command=_strs(d.get("Command", [])),
        depends_on=_strs(d.get("DependsOn", [])),
        resources=resources_from_dict(d.get("Resources") or {}),
        environments=tuple(env_from_dict(e) for e in d.get("Environments", [])),
        backoff_limit=_int(d.get("BackoffLimit", 1)),
        ttl_seconds_after_finished=_opt_int(d.get("TtlSecondsAfterFinished")),
        restart_policy=RestartPolicy(d.get("RestartPolicy", "Never")),
        active_deadline_seconds=_opt_int(d.get("ActiveDeadlineSeconds")),
        parallelism=_int(d.get("Parallelism", 1)),
        completions=_int(d.get("Completions", 1)),
        volumes=tuple(volume_from_dict(v) for v in _list(d.get("Volumes", []))),
        volume_mounts=tuple(volume_mount_from_dict(m) for m in _list(d.get("VolumeMounts", []))),
    )


# A 6-field expression is stored with this marker: the earlier release read the sixth field as
# seconds LAST and wrote no marker, so a stored 6-field expression without it (Raft log,
# snapshot, backup file) is rewritten to the seconds-first form with the same meaning.
CRON_SECONDS_KEY = "CronSeconds"
CRON_SECONDS_FIRST = "first"


def schedule_to_dict(s: Schedule) -> Json:
    d: Json = {
        "Id": s.id,
        "Name": s.job_name,
        "Schedule": s.cron,
        "TimeZone": s.time_zone,
        "ConcurrencyPolicy": s.concurrency_policy.value,
        "StartingDeadlineSeconds": s.starting_deadline_seconds,
        "Paused": s.paused,
        "CreatedAt": s.created_at_ms,
        "Source": s.source,
        "Overrides": overrides_to_dict(s.overrides),
    }
    # count() first: most expressions have 5 fields and single spaces, and every snapshot
    # encodes every schedule.
    if s.cron.count(" ") >= 5 and cronplan.has_seconds(s.cron):
        d[CRON_SECONDS_KEY] = CRON_SECONDS_FIRST
    return d


def _stored_cron(d: Json) -> str:
    cron = _str(d["Schedule"])
    if cronplan.has_seconds(cron) and d.get(CRON_SECONDS_KEY) != CRON_SECONDS_FIRST:
        return cronplan.from_seconds_last(cron)
    return cron


def schedule_from_dict(d: Json) -> Schedule:
    return Schedule(
        id=_str(d["Id"]),
        # Interned: 100,000 schedules share a few job names, zones and expressions (one copy each).
        job_name=sys.intern(_str(d["Name"])),
        cron=sys.intern(_stored_cron(d)),
        time_zone=sys.intern(_str(d.get("TimeZone", "UTC"))),
        concurrency_policy=ConcurrencyPolicy(d.get("ConcurrencyPolicy", "Allow")),
        starting_deadline_seconds=_opt_int(d.get("StartingDeadlineSeconds")),
        paused=_bool(d.get("Paused", False)),
        created_at_ms=_int(d.get("CreatedAt", 0)),
        source=sys.intern(_str(d.get("Source", "api"))),
        overrides=overrides_from_dict(d.get("Overrides") or {}),
    )


def run_to_dict(r: Run) -> Json:
    """Every field of the run (None left out), as snapshots and fingerprints encode it; field by
    field for speed, in the order ``_drop_none`` over the full dict gave (the same bytes)."""
    d: Json = {
        "Id": r.id,
        "JobName": r.job_name,
        "Spec": spec_to_dict(r.spec),
        "Status": r.status.value,
        "QueuedAt": r.queued_at_ms,
        "KubeName": r.kube_name,
    }
    if r.started_at_ms is not None:
        d["StartedAt"] = r.started_at_ms
    if r.finished_at_ms is not None:
        d["FinishedAt"] = r.finished_at_ms
    if r.schedule_id is not None:
        d["ScheduleId"] = r.schedule_id
    if r.tick is not None:
        d["Tick"] = r.tick
    if r.reason is not None:
        d["Reason"] = r.reason
    if r.dispatch_term is not None:
        d["DispatchTerm"] = r.dispatch_term
    if r.dispatch_index is not None:
        d["DispatchIndex"] = r.dispatch_index
    return d


_QUEUED = RunStatus.QUEUED.value


def queued_run_command(run_id: str, job_name: str, spec: JobSpec, queued_at_ms: int, kube_name: str) -> Json:
    """A new Queued run as ``enqueue_run`` carries it: what ``run_from_dict`` decodes to the
    same Run as ``run_to_dict`` of it, the spec with its defaults left out (``spec_to_command``).

    Built straight from its parts: the handler of POST /job needs no Run of its own, and the
    command is a third smaller for the Raft thread to encrypt, send and every node to decode.
    """
    return {
        "Id": run_id,
        "JobName": job_name,
        "Spec": spec_to_command(spec),
        "Status": _QUEUED,
        "QueuedAt": queued_at_ms,
        "KubeName": kube_name,
    }


# Decoded specs by their JSON: the runs of one job mostly carry the same spec (a schedule's
# every tick, a job triggered with the same body), and decoding one took ~7 us of the ~10 us a
# run's decoding costs, in the Raft thread of every node. Equal JSON decodes to equal specs, and
# a JobSpec is a frozen value (its Resources maps are only ever copied), so runs may share one.
# Cleared when full rather than LRU: a miss costs one decoding, and the bound is what matters.
_SPEC_MEMO: dict[bytes, JobSpec] = {}
SPEC_MEMO_SIZE = 512


def _memo_spec(d: Any) -> JobSpec:
    try:
        key = orjson.dumps(d)
    except (orjson.JSONEncodeError, TypeError):
        return spec_from_dict(d)  # not JSON-shaped: spec_from_dict says why, as before
    spec = _SPEC_MEMO.get(key)
    if spec is None:
        spec = spec_from_dict(d)  # a malformed spec raises here and is not remembered
        if len(_SPEC_MEMO) >= SPEC_MEMO_SIZE:
            _SPEC_MEMO.clear()
        _SPEC_MEMO[key] = spec
    return spec


def run_from_dict(d: Json) -> Run:
    return Run(
        id=_str(d["Id"]),
        job_name=_str(d["JobName"]),
        spec=_memo_spec(d["Spec"]),
        status=RunStatus(d["Status"]),
        queued_at_ms=_int(d["QueuedAt"]),
        kube_name=_str(d["KubeName"]),
        started_at_ms=_opt_int(d.get("StartedAt")),
        finished_at_ms=_opt_int(d.get("FinishedAt")),
        schedule_id=_opt_str(d.get("ScheduleId")),
        tick=_opt_int(d.get("Tick")),
        reason=_opt_str(d.get("Reason")),
        dispatch_term=_opt_int(d.get("DispatchTerm")),
        dispatch_index=_opt_int(d.get("DispatchIndex")),
    )


def tick_to_dict(t: TickRecord) -> Json:
    return _drop_none(
        {
            "Tick": t.tick,
            "Outcome": t.outcome.value,
            "RecordedAt": t.recorded_at_ms,
            "RunId": t.run_id,
            "LatenessMs": t.lateness_ms,
            "Reason": t.reason,
        }
    )


def tick_from_dict(d: Json) -> TickRecord:
    return TickRecord(
        tick=_int(d["Tick"]),
        outcome=TickOutcome(d["Outcome"]),
        recorded_at_ms=_int(d["RecordedAt"]),
        run_id=_opt_str(d.get("RunId")),
        lateness_ms=_opt_int(d.get("LatenessMs")),
        reason=_opt_str(d.get("Reason")),
    )


# -- strict scalar readers: a wrong type is a ValueError, never a silent coercion --------------


def _str(v: Any) -> str:
    if not isinstance(v, str):
        raise ValueError(f"expected a string, got {type(v).__name__}")
    return v


def _opt_str(v: Any) -> str | None:
    return None if v is None else _str(v)


def _int(v: Any) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        raise ValueError(f"expected an integer, got {type(v).__name__}")
    return v


def _opt_int(v: Any) -> int | None:
    return None if v is None else _int(v)


def _bool(v: Any) -> bool:
    if not isinstance(v, bool):
        raise ValueError(f"expected a boolean, got {type(v).__name__}")
    return v


def _list(v: Any) -> list[Any]:
    if not isinstance(v, list | tuple):
        raise ValueError(f"expected a list, got {type(v).__name__}")
    return list(v)


def _strs(v: Any) -> tuple[str, ...]:
    if not isinstance(v, list | tuple):
        raise ValueError(f"expected a list of strings, got {type(v).__name__}")
    return tuple(_str(x) for x in v)


def _opt_strs(v: Any) -> tuple[str, ...] | None:
    return None if v is None else _strs(v)


def _str_map(v: Any) -> dict[str, str]:
    if not isinstance(v, dict):
        raise ValueError(f"expected an object, got {type(v).__name__}")
    return {_str(k): _str(x) for k, x in v.items()}


# -- SlimFaas's timestamp unit ---------------------------------------------------------------------

# .NET DateTime ticks (100 ns since 0001-01-01 UTC) at the Unix epoch. SlimFaas stamps runs with
# DateTime.UtcNow.Ticks (JobService.cs, KubernetesService.Jobs.cs) and serves them as such.
DOTNET_TICKS_AT_EPOCH = 621_355_968_000_000_000


def dotnet_ticks(epoch_ms: int) -> int:
    """Milliseconds since the Unix epoch as .NET ``DateTime.Ticks``, SlimFaas's timestamp unit."""
    return DOTNET_TICKS_AT_EPOCH + epoch_ms * 10_000


def epoch_ms_of_dotnet_ticks(ticks: int) -> int:
    return (ticks - DOTNET_TICKS_AT_EPOCH) // 10_000
