"""Where jobs and declared schedules come from, besides the API. Pure: documents in, values out.

Two sources declare jobs: the configuration (``SLIMSCHED_JOBS_CONFIGURATION``) and CronJobs
annotated ``SlimFaas/Job: "true"`` with ``spec.suspend: true``, read as SlimFaas's
``KubernetesService.ExtractJobConfigurations`` reads them (docs/jobs.md, section 2.3):

- annotations ``SlimFaas/JobImagesWhitelist`` and ``SlimFaas/DependsOn`` (comma-separated),
  ``SlimFaas/DefaultVisibility`` (Public or Private, any case), ``SlimFaas/NumberParallelJob``
  (an integer; anything else counts as 1, with a note, as SlimFaas's ``TryParse`` does) and
  ``SlimFaas/Schedules`` (a JSON array of schedule entries, each inheriting what it omits from
  the CronJob; an annotation that does not parse is ignored with a note and the job kept);
- the first container's image, command, env and resources (SlimFaas's 100m CPU / 100Mi memory
  when the container sets no resources at all); the pod's restartPolicy (default Never); the
  Job's backoffLimit (default 1), ttlSecondsAfterFinished (default 60) and activeDeadlineSeconds.

The CronJob's own ``spec.schedule`` is not a schedule: the CronJob is suspended, and SlimFaas
fires only what ``SlimFaas/Schedules`` declares. A CronJob wins over a configuration entry of the
same name, and its schedules replace the configured ones of that name, as SlimFaas's
``JobConfiguration.MergeJobConfigurations`` merges them; a CronJob named ``default`` is ignored.

Declared schedules (``Schedules`` of the configuration, and those of a CronJob's annotation) get
ids derived from their content, so every leader computes the same ids and re-declaring a
schedule is a no-op. The leader adds the missing ones and removes declared ones that are no
longer declared; schedules created through the API are never touched.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from slimsched import codec, cronplan
from slimsched.errors import ApiError
from slimsched.jobnames import is_job_name, job_name_rule, normalize_job_name
from slimsched.jobtypes import (
    DEFAULT_JOB,
    SLIMFAAS_TTL_SECONDS,
    JobConfig,
    JobsConfiguration,
    ScheduleRequest,
)
from slimsched.jsonfields import Invalid, Note, collecting, describe, note
from slimsched.model import EnvVar, KeyRef, ResourceFieldRef, Resources, RestartPolicy, Schedule, Visibility
from slimsched.overrides import read_schedule_request

log = logging.getLogger(__name__)

DECLARED_SOURCES = frozenset({"config", "cronjob"})
ANNOTATION_JOB = "SlimFaas/Job"
ANNOTATION_IMAGES_WHITELIST = "SlimFaas/JobImagesWhitelist"
ANNOTATION_VISIBILITY = "SlimFaas/DefaultVisibility"
ANNOTATION_PARALLEL = "SlimFaas/NumberParallelJob"
ANNOTATION_DEPENDS_ON = "SlimFaas/DependsOn"
ANNOTATION_SCHEDULES = "SlimFaas/Schedules"

_SLIMFAAS_RESOURCES = {"cpu": "100m", "memory": "100Mi"}


# -- the part of a CronJob that is read ----------------------------------------------------------
# pydantic, because a Kubernetes object has fixed camelCase names, optional nested parts at every
# level and many fields this reader does not need: a declared model says what is read, ignores
# the rest, and its ValidationError names the location of a wrong type for the log.


class _Kube(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class _KeySelector(_Kube):
    name: str = ""
    key: str


class _FieldSelector(_Kube):
    field_path: str = Field(alias="fieldPath")


class _ResourceSelector(_Kube):
    resource: str
    container_name: str | None = Field(default=None, alias="containerName")
    divisor: str | int | float | None = None


class _EnvSource(_Kube):
    secret_key_ref: _KeySelector | None = Field(default=None, alias="secretKeyRef")
    config_map_key_ref: _KeySelector | None = Field(default=None, alias="configMapKeyRef")
    field_ref: _FieldSelector | None = Field(default=None, alias="fieldRef")
    resource_field_ref: _ResourceSelector | None = Field(default=None, alias="resourceFieldRef")


class _Env(_Kube):
    name: str
    value: str | None = None
    value_from: _EnvSource | None = Field(default=None, alias="valueFrom")


class _Requirements(_Kube):
    requests: dict[str, str | int | float] | None = None
    limits: dict[str, str | int | float] | None = None


class _Container(_Kube):
    image: str = ""
    command: list[str] | None = None
    env: list[_Env] | None = None
    resources: _Requirements | None = None


class _PodSpec(_Kube):
    containers: list[_Container] = []
    restart_policy: str | None = Field(default=None, alias="restartPolicy")


class _PodTemplate(_Kube):
    spec: _PodSpec = _PodSpec()


class _JobSpec(_Kube):
    backoff_limit: int | None = Field(default=None, alias="backoffLimit", ge=0)
    ttl_seconds_after_finished: int | None = Field(default=None, alias="ttlSecondsAfterFinished", ge=0)
    active_deadline_seconds: int | None = Field(default=None, alias="activeDeadlineSeconds", ge=1)
    template: _PodTemplate = _PodTemplate()


class _JobTemplate(_Kube):
    spec: _JobSpec = _JobSpec()


class _CronJobSpec(_Kube):
    suspend: bool | None = None
    job_template: _JobTemplate = Field(default=_JobTemplate(), alias="jobTemplate")


class _Meta(_Kube):
    name: str = ""
    annotations: dict[str, str] | None = None


class _CronJob(_Kube):
    metadata: _Meta = _Meta()
    spec: _CronJobSpec = _CronJobSpec()


@dataclass(frozen=True)
class DiscoveredJob:
    name: str
    config: JobConfig
    schedules: tuple[ScheduleRequest, ...]


def _csv(value: str | None) -> tuple[str, ...]:
    return tuple(x.strip() for x in (value or "").split(",") if x.strip())


def _env(entry: _Env) -> EnvVar:
    source = entry.value_from
    if source is None:
        return EnvVar(name=entry.name, value=entry.value or "")
    secret, config_map, field_ref, resource = (
        source.secret_key_ref,
        source.config_map_key_ref,
        source.field_ref,
        source.resource_field_ref,
    )
    return EnvVar(
        name=entry.name,
        secret_key_ref=KeyRef(secret.name, secret.key) if secret else None,
        config_map_key_ref=KeyRef(config_map.name, config_map.key) if config_map else None,
        field_path=field_ref.field_path if field_ref else None,
        resource_field_ref=ResourceFieldRef(
            resource=resource.resource,
            container_name=resource.container_name,
            divisor=None if resource.divisor is None else str(resource.divisor),
        )
        if resource
        else None,
    )


def _quantities(values: Mapping[str, str | int | float] | None) -> dict[str, str]:
    return {str(k): str(v) for k, v in (values or {}).items()}


def _resources(container: _Container) -> Resources:
    r = container.resources
    if r is None or (r.requests is None and r.limits is None):
        # SlimFaas's defaults. With requests but no limits, SlimFaas would add 100m/100Mi limits
        # that Kubernetes refuses below a larger request: those runs get no limits here instead.
        return Resources(requests=dict(_SLIMFAAS_RESOURCES), limits=dict(_SLIMFAAS_RESOURCES))
    return Resources(requests=_quantities(r.requests), limits=_quantities(r.limits))


def _visibility(raw: str | None, name: str) -> Visibility:
    if raw is None or not raw.strip():
        return Visibility.PRIVATE
    for member in Visibility:
        if member.value.lower() == raw.strip().lower():
            return member
    raise ValueError(f"CronJob {name}: {ANNOTATION_VISIBILITY} must be Public or Private, not {raw!r}")


def _parallel(raw: str | None, where: str) -> int:
    if raw is None or not raw.strip():
        return 1
    try:
        value = int(raw.strip())
    except ValueError:
        note("invalid_annotation", where, f"{describe(raw)} is not an integer, 1 is used as SlimFaas does")
        return 1
    return max(1, value)


def _schedules(raw: str | None, where: str) -> tuple[ScheduleRequest, ...]:
    if raw is None or not raw.strip():
        return ()
    try:
        entries = json.loads(raw)
    except json.JSONDecodeError as e:
        note("invalid_annotation", where, f"not valid JSON ({e.msg}), ignored as SlimFaas does")
        return ()
    if not isinstance(entries, list):
        note(
            "invalid_annotation",
            where,
            f"expected a JSON array of schedules, got {describe(entries)}, ignored",
        )
        return ()
    try:
        return tuple(read_schedule_request(entry, f"{where}[{i}]") for i, entry in enumerate(entries))
    except Invalid as e:
        note("invalid_annotation", where, f"ignored as SlimFaas ignores it: {e.message}")
        return ()


def cronjob_job(cronjob: Mapping[str, Any]) -> DiscoveredJob | None:
    """The job a CronJob declares, or None if it is not a suspended ``SlimFaas/Job`` CronJob.

    Raises ``ValueError`` (with the reason) for an annotated CronJob that cannot be mapped.
    What it reads differently from what is written becomes a note (``jsonfields.collecting``).
    """
    try:
        cj = _CronJob.model_validate(cronjob)
    except ValidationError as e:
        name = (cronjob.get("metadata") or {}).get("name", "?") if isinstance(cronjob, Mapping) else "?"
        first = e.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        raise ValueError(f"CronJob {name} cannot be mapped to a job: {where}: {first['msg']}") from None
    annotations = cj.metadata.annotations or {}
    if annotations.get(ANNOTATION_JOB, "").strip().lower() != "true":
        return None
    name = normalize_job_name(cj.metadata.name)
    if cj.spec.suspend is not True:
        note("cronjob_ignored", f"CronJob {name}", "not suspended, so not a SlimFaas job (as in SlimFaas)")
        return None
    if name == DEFAULT_JOB.lower():
        raise ValueError("CronJob default cannot replace the Default job configuration (SlimFaas skips it)")
    if not is_job_name(name):
        raise ValueError(f"CronJob name {name!r} is not a job name ({job_name_rule()})")
    job = cj.spec.job_template.spec
    pod = job.template.spec
    if not pod.containers:
        raise ValueError(f"CronJob {name} has no container")
    container = pod.containers[0]
    try:
        restart_policy = RestartPolicy(pod.restart_policy or RestartPolicy.NEVER.value)
    except ValueError:
        raise ValueError(
            f"CronJob {name}: restartPolicy {pod.restart_policy!r} is not Never or OnFailure"
        ) from None
    where = f"CronJob {name}"
    config = JobConfig(
        image=container.image,
        images_whitelist=_csv(annotations.get(ANNOTATION_IMAGES_WHITELIST)),
        resources=_resources(container),
        depends_on=_csv(annotations.get(ANNOTATION_DEPENDS_ON)),
        environments=tuple(_env(e) for e in container.env or ()),
        backoff_limit=1 if job.backoff_limit is None else job.backoff_limit,
        visibility=_visibility(annotations.get(ANNOTATION_VISIBILITY), name),
        number_parallel_job=_parallel(annotations.get(ANNOTATION_PARALLEL), f"{where}.{ANNOTATION_PARALLEL}"),
        ttl_seconds_after_finished=(
            SLIMFAAS_TTL_SECONDS if job.ttl_seconds_after_finished is None else job.ttl_seconds_after_finished
        ),
        restart_policy=restart_policy,
        active_deadline_seconds=job.active_deadline_seconds,
        command=tuple(container.command or ()),
    )
    schedules = _schedules(annotations.get(ANNOTATION_SCHEDULES), f"{where}.{ANNOTATION_SCHEDULES}")
    return DiscoveredJob(name=name, config=config, schedules=schedules)


def combine(base: JobsConfiguration, cronjobs: Iterable[Mapping[str, Any]]) -> JobsConfiguration:
    """The configuration plus the jobs CronJobs declare (a CronJob wins on a clash, as in SlimFaas)."""
    configurations = dict(base.configurations)
    schedules = dict(base.schedules)
    found_names: set[str] = set()
    with collecting() as notes:
        for cronjob in cronjobs:
            try:
                found = cronjob_job(cronjob)
            except ValueError as e:
                note("cronjob_ignored", "", str(e))
                continue
            if found is None:
                continue
            configurations[found.name] = found.config
            found_names.add(found.name)
            if found.schedules:
                schedules[found.name] = found.schedules
    return JobsConfiguration(
        configurations=configurations,
        schedules=schedules,
        notes=base.notes + tuple(dict.fromkeys(notes)),
        from_cronjobs=frozenset(found_names),
    )


def declared_schedules(jobs: JobsConfiguration, *, discovered: frozenset[str], now_ms: int) -> list[Schedule]:
    """The schedules the configuration and the CronJobs declare, with content-derived ids.

    Entries whose cron expression is invalid are skipped with a warning.
    """
    out: list[Schedule] = []
    for job_name, requests in sorted(jobs.schedules.items()):
        source = "cronjob" if job_name in discovered else "config"
        for index, req in enumerate(requests):
            try:
                cronplan.validate(req.schedule, req.time_zone)
            except ApiError as e:
                log.warning("declared schedule %d of %s ignored: %s", index, job_name, e.message)
                continue
            content = orjson.dumps(
                [
                    job_name,
                    index,
                    req.schedule,
                    req.time_zone,
                    req.concurrency_policy.value,
                    req.starting_deadline_seconds,
                    codec.overrides_to_dict(req.overrides),
                    # A 6-field expression is read seconds first now: its id differs from the one
                    # the earlier (seconds-last) release gave it, so the leader replaces a stored
                    # copy of the old meaning with the configuration's. 5 fields: ids unchanged.
                    *([codec.CRON_SECONDS_FIRST] if cronplan.has_seconds(req.schedule) else []),
                ],
                option=orjson.OPT_SORT_KEYS,
            )
            sid = f"{source}-{hashlib.sha256(content).hexdigest()[:20]}"
            out.append(req.to_schedule(id=sid, job_name=job_name, created_at_ms=now_ms, source=source))
    return out


__all__ = ["DECLARED_SOURCES", "DiscoveredJob", "Note", "combine", "cronjob_job", "declared_schedules"]
