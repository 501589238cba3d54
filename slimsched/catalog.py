"""Where jobs and declared schedules come from, besides the API. Pure: documents in, values out.

Two sources declare jobs: the configuration (``SLIMSCHED_JOBS_CONFIGURATION``) and CronJobs
annotated ``SlimFaas/Job: "true"`` with ``spec.suspend: true``, mapped as SlimFaas maps them
(annotations ``SlimFaas/JobImagesWhitelist``, ``SlimFaas/DefaultVisibility``,
``SlimFaas/NumberParallelJob``, ``SlimFaas/DependsOn``; the first container's image, resources
and env; the pod's restartPolicy; the Job's backoffLimit and ttlSecondsAfterFinished). The
configuration wins when both name the same job.

Declared schedules (``Schedules`` of the configuration, and the ``spec.schedule`` of a
discovered CronJob) get ids derived from their content, so every leader computes the same ids
and re-declaring a schedule is a no-op. The leader adds the missing ones and removes declared
ones that are no longer declared; schedules created through the API are never touched.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from slimsched import codec, cronplan
from slimsched.errors import ApiError
from slimsched.jobconfig import JobConfig, JobsConfiguration, ScheduleRequest, is_job_name
from slimsched.model import (
    ConcurrencyPolicy,
    EnvVar,
    KeyRef,
    ResourceFieldRef,
    Resources,
    RestartPolicy,
    Schedule,
    Visibility,
)

log = logging.getLogger(__name__)

DECLARED_SOURCES = frozenset({"config", "cronjob"})
ANNOTATION_JOB = "SlimFaas/Job"


@dataclass(frozen=True)
class DiscoveredJob:
    name: str
    config: JobConfig
    schedule: ScheduleRequest | None


def _csv(value: str | None) -> tuple[str, ...]:
    return tuple(x.strip() for x in (value or "").split(",") if x.strip())


def _env(entry: Mapping[str, Any]) -> EnvVar:
    source = entry.get("valueFrom") or {}
    secret = source.get("secretKeyRef")
    config_map = source.get("configMapKeyRef")
    field_ref = source.get("fieldRef")
    resource = source.get("resourceFieldRef")
    return EnvVar(
        name=str(entry["name"]),
        value=None if source else str(entry.get("value", "")),
        secret_key_ref=KeyRef(str(secret["name"]), str(secret["key"])) if secret else None,
        config_map_key_ref=KeyRef(str(config_map["name"]), str(config_map["key"])) if config_map else None,
        field_path=str(field_ref["fieldPath"]) if field_ref else None,
        resource_field_ref=ResourceFieldRef(
            resource=str(resource["resource"]),
            container_name=resource.get("containerName"),
            divisor=None if resource.get("divisor") is None else str(resource["divisor"]),
        )
        if resource
        else None,
    )


def cronjob_job(cronjob: Mapping[str, Any]) -> DiscoveredJob | None:
    """The job a CronJob declares, or None if it is not a suspended ``SlimFaas/Job`` CronJob.

    Raises ``ValueError`` (with the reason) for an annotated CronJob that cannot be mapped.
    """
    meta = cronjob.get("metadata") or {}
    annotations = meta.get("annotations") or {}
    spec = cronjob.get("spec") or {}
    if str(annotations.get(ANNOTATION_JOB, "")).lower() != "true" or spec.get("suspend") is not True:
        return None
    name = str(meta.get("name", ""))
    if not is_job_name(name):
        raise ValueError(f"CronJob name {name!r} is not a DNS-1123 label of at most 40 characters")
    job_spec = ((spec.get("jobTemplate") or {}).get("spec")) or {}
    pod_spec = ((job_spec.get("template") or {}).get("spec")) or {}
    containers = pod_spec.get("containers") or []
    if not containers:
        raise ValueError(f"CronJob {name} has no container")
    container = containers[0]
    resources = container.get("resources") or {}
    try:
        parallel = int(annotations.get("SlimFaas/NumberParallelJob", "1"))
        config = JobConfig(
            image=str(container.get("image", "")),
            images_whitelist=_csv(annotations.get("SlimFaas/JobImagesWhitelist")),
            resources=Resources(
                requests={str(k): str(v) for k, v in (resources.get("requests") or {}).items()},
                limits={str(k): str(v) for k, v in (resources.get("limits") or {}).items()},
            ),
            depends_on=_csv(annotations.get("SlimFaas/DependsOn")),
            environments=tuple(_env(e) for e in container.get("env") or []),
            backoff_limit=int(job_spec.get("backoffLimit", 1)),
            visibility=Visibility(annotations.get("SlimFaas/DefaultVisibility", "Private")),
            number_parallel_job=max(1, parallel),
            ttl_seconds_after_finished=job_spec.get("ttlSecondsAfterFinished"),
            restart_policy=RestartPolicy(pod_spec.get("restartPolicy", "Never")),
            active_deadline_seconds=job_spec.get("activeDeadlineSeconds"),
            command=tuple(str(c) for c in container.get("command") or []),
        )
    except (ValueError, TypeError, KeyError) as e:
        raise ValueError(f"CronJob {name} cannot be mapped to a job: {e}") from e
    schedule = None
    if spec.get("schedule"):
        schedule = ScheduleRequest(
            schedule=str(spec["schedule"]),
            time_zone=str(spec.get("timeZone") or "UTC"),
            concurrency_policy=ConcurrencyPolicy(spec.get("concurrencyPolicy", "Allow")),
            starting_deadline_seconds=_opt_deadline(spec.get("startingDeadlineSeconds")),
        )
    return DiscoveredJob(name=name, config=config, schedule=schedule)


def _opt_deadline(value: Any) -> int | None:
    """A CronJob's ``startingDeadlineSeconds``; absent means no deadline, as in Kubernetes."""
    return None if value is None else int(value)


def combine(base: JobsConfiguration, cronjobs: Iterable[Mapping[str, Any]]) -> JobsConfiguration:
    """The configuration plus the jobs CronJobs declare (the configuration wins on a clash)."""
    configurations = dict(base.configurations)
    schedules = dict(base.schedules)
    for cronjob in cronjobs:
        try:
            found = cronjob_job(cronjob)
        except ValueError as e:
            log.warning("%s", e)
            continue
        if found is None or found.name in base.configurations:
            continue
        configurations[found.name] = found.config
        if found.schedule is not None:
            schedules[found.name] = (found.schedule,)
    return JobsConfiguration(configurations=configurations, schedules=schedules)


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
                ],
                option=orjson.OPT_SORT_KEYS,
            )
            sid = f"{source}-{hashlib.sha256(content).hexdigest()[:20]}"
            out.append(req.to_schedule(id=sid, job_name=job_name, created_at_ms=now_ms, source=source))
    return out
