"""The jobs configuration (SlimFaas's ``JobsConfiguration`` format), read as SlimFaas reads it.

The configuration is the operator's fence around what API callers may run: which images, how
much CPU and memory, how many parallel runs. ``parse_jobs_configuration`` reads
``{"Configurations": {...}, "Schedules": {...}}``:

- keys SlimFaas does not know are ignored (SlimFaas's own tests configure jobs with ``Name``
  and ``Something`` keys), each recorded as a note: logged once at start, listed in /status;
- job keys are case-insensitive: lowercased (``MaFunction`` is job ``mafunction``), as SlimFaas
  looks them up; ``Default`` in any case replaces the built-in entry and keeps its 100m/100Mi
  resources when it sets none. A key that can never be a job name (``[a-z0-9_-]``, at most 40
  characters) is ignored with a note, since no request can reach it; two keys that lowercase to
  the same name are an error;
- a wrong type, a malformed quantity, a limit below its request, an unknown visibility, a
  schedule whose image the job does not allow: errors that stop the start-up (``ConfigError``
  naming the path), where SlimFaas logs the error and runs without any configuration.

Everything here is pure: no I/O, no clock. This module also re-exports the override rules
(``overrides``) and the shared types (``jobtypes``) under their historical names.
"""

from __future__ import annotations

import json

from slimsched.errors import ConfigError
from slimsched.jobnames import MAX_JOB_NAME_LENGTH, is_job_name, job_name_rule, normalize_job_name
from slimsched.jobparts import ENV_ALIASES as _ENV_ALIASES
from slimsched.jobparts import ENV_FIELDS as _ENV_FIELDS
from slimsched.jobparts import (
    check_mounts_declared,
    object_names,
    read_environments,
    read_resources,
    read_volume_mounts,
    read_volumes,
)
from slimsched.jobtypes import (
    BUILTIN_DEFAULT,
    DEFAULT_JOB,
    SLIMFAAS_TTL_SECONDS,
    JobConfig,
    JobsConfiguration,
    ScheduleRequest,
    visibility_of,
)
from slimsched.jsonfields import (
    INT64_MAX,
    Invalid,
    Note,
    Reader,
    as_object,
    as_str,
    as_strs,
    collecting,
    describe,
    fail,
    fields,
    join,
    note,
    or_default,
)
from slimsched.model import Resources, RestartPolicy, Visibility
from slimsched.overrides import OVERRIDE_FIELDS as _OVERRIDE_FIELDS
from slimsched.overrides import SCHEDULE_FIELDS as _SCHEDULE_FIELDS
from slimsched.overrides import (
    merge,
    merge_or_invalid,
    parse_overrides,
    parse_schedule_request,
    read_schedule_request,
)
from slimsched.quantities import parse_quantity

__all__ = [
    "BUILTIN_DEFAULT",
    "DEFAULT_JOB",
    "MAX_JOB_NAME_LENGTH",
    "_ENV_ALIASES",
    "_ENV_FIELDS",
    "_OVERRIDE_FIELDS",
    "_SCHEDULE_FIELDS",
    "JobConfig",
    "JobsConfiguration",
    "Note",
    "ScheduleRequest",
    "check_limits_cover_requests",
    "collecting",
    "is_job_name",
    "merge",
    "parse_jobs_configuration",
    "parse_overrides",
    "parse_schedule_request",
    "read_job_config",
    "visibility_of",
]

JOB_FIELDS = (
    "Image",
    "ImagesWhitelist",
    "Resources",
    "DependsOn",
    "Environments",
    "BackoffLimit",
    "Visibility",
    "NumberParallelJob",
    "TtlSecondsAfterFinished",
    "RestartPolicy",
    "ActiveDeadlineSeconds",
    "Command",
    "Parallelism",
    "Completions",
    "Volumes",
    "VolumeMounts",
)


def read_job_config(value: object, path: str, *, default_resources: Resources) -> JobConfig:
    """One ``Configurations`` entry; raises ``jsonfields.Invalid``."""
    r = Reader(fields(as_object(value, path), JOB_FIELDS, path), path)
    resources = or_default(r.get("Resources", read_resources), default_resources)
    check_limits_cover_requests(resources, r.at("Resources"))
    volumes = or_default(r.get("Volumes", read_volumes), ())
    volume_mounts = or_default(r.get("VolumeMounts", read_volume_mounts), ())
    check_mounts_declared(volume_mounts, volumes, r.at("VolumeMounts"))
    return JobConfig(
        image=or_default(r.get("Image", as_str), ""),
        images_whitelist=or_default(r.get("ImagesWhitelist", as_strs), ()),
        resources=resources,
        depends_on=or_default(r.get("DependsOn", object_names), ()),
        environments=or_default(r.get("Environments", read_environments), ()),
        backoff_limit=or_default(r.integer("BackoffLimit", minimum=0), 1),
        visibility=or_default(r.choice("Visibility", Visibility), Visibility.PRIVATE),
        number_parallel_job=or_default(r.integer("NumberParallelJob", minimum=1), 1),
        ttl_seconds_after_finished=or_default(
            r.integer("TtlSecondsAfterFinished", minimum=0), SLIMFAAS_TTL_SECONDS
        ),
        restart_policy=or_default(r.choice("RestartPolicy", RestartPolicy), RestartPolicy.NEVER),
        active_deadline_seconds=r.integer("ActiveDeadlineSeconds", minimum=1, maximum=INT64_MAX),
        command=or_default(r.get("Command", as_strs), ()),
        parallelism=or_default(r.integer("Parallelism", minimum=1), 1),
        completions=or_default(r.integer("Completions", minimum=1), 1),
        volumes=volumes,
        volume_mounts=volume_mounts,
    )


def check_limits_cover_requests(resources: Resources, path: str) -> None:
    for name in resources.requests.keys() & resources.limits.keys():
        request, limit = resources.requests[name], resources.limits[name]
        if parse_quantity(limit) < parse_quantity(request):
            fail(
                "limit_below_request",
                join(path, f"Limits.{name}"),
                f"the limit {limit} is below the request {request}; a limit must be at least the request",
            )


def _job_key(key: str, path: str, seen: dict[str, str]) -> str | None:
    """The job name a configuration key declares, or None (with a note) when no request can reach it."""
    name = normalize_job_name(key)
    if name == DEFAULT_JOB.lower():
        name = DEFAULT_JOB
    elif not is_job_name(name):
        note("invalid_job_name", path, f"{describe(key)} is not a job name ({job_name_rule()}), ignored")
        return None
    if name in seen:
        fail(
            "duplicate_field", path, f"names the same job as {seen[name]!r} (job names are case-insensitive)"
        )
    seen[name] = key
    if name != key and name != DEFAULT_JOB:
        note("name_lowercased", path, f"job name read as {name!r}")
    return name


def _configurations(value: object) -> dict[str, JobConfig]:
    out: dict[str, JobConfig] = {DEFAULT_JOB: BUILTIN_DEFAULT}
    seen: dict[str, str] = {}
    for key, entry in as_object(value, "Configurations").items():
        path = join("Configurations", key)
        name = _job_key(key, path, seen)
        if name is None:
            continue
        default = BUILTIN_DEFAULT.resources if name == DEFAULT_JOB else Resources()
        out[name] = read_job_config(entry, path, default_resources=default)
    return out


def _schedules(value: object, jobs: JobsConfiguration) -> dict[str, tuple[ScheduleRequest, ...]]:
    out: dict[str, tuple[ScheduleRequest, ...]] = {}
    seen: dict[str, str] = {}
    for key, entries in as_object(value, "Schedules").items():
        path = join("Schedules", key)
        name = _job_key(key, path, seen)
        if name is None:
            continue
        if not isinstance(entries, list):
            fail("invalid_field", path, f"expected a list of schedules, got {describe(entries)}")
        requests = []
        for i, entry in enumerate(entries):
            where = f"{path}[{i}]"
            request = read_schedule_request(entry, where)
            with collecting() as merged:
                try:
                    merge_or_invalid(jobs.job(name), request.overrides)
                except Invalid as e:
                    raise Invalid(e.code, join(where, e.path), e.detail) from None
            for adjusted in merged:
                note(adjusted.code, join(where, adjusted.path), adjusted.detail)
            requests.append(request)
        out[name] = tuple(requests)
    return out


def _reject_duplicate_keys(pairs: list[tuple[str, object]]) -> dict[str, object]:
    out: dict[str, object] = {}
    for key, value in pairs:
        if key in out:
            raise ConfigError(f"The jobs configuration gives the key {key!r} twice in one object.")
        out[key] = value
    return out


def parse_jobs_configuration(text: str | None) -> JobsConfiguration:
    """Parse ``{"Configurations": {...}, "Schedules": {...}}``; no text means only ``Default``.

    Every ``Schedules`` entry is merged with its job's configuration here, so a schedule that
    could never run (an image the job does not allow) stops the start-up instead of failing at
    every tick; what merging adjusts (a resource capped) becomes a note. Raises ``ConfigError``
    naming the path of the first problem.
    """
    if text is None or not text.strip():
        return JobsConfiguration()
    try:
        data = json.loads(text, object_pairs_hook=_reject_duplicate_keys)
    except json.JSONDecodeError as e:
        raise ConfigError(
            f"The jobs configuration is not valid JSON: {e.msg} at line {e.lineno}, column {e.colno}."
        ) from e
    with collecting() as notes:
        try:
            if not isinstance(data, dict):
                fail(
                    "invalid_body", "", f"the jobs configuration must be a JSON object, not {describe(data)}"
                )
            given = fields(data, ("Configurations", "Schedules"), "")
            configurations = _configurations(given.get("Configurations", {}))
            jobs = JobsConfiguration(configurations=configurations)
            schedules = _schedules(given.get("Schedules", {}), jobs)
        except Invalid as e:
            raise ConfigError(e.message) from None
    return JobsConfiguration(configurations=configurations, schedules=schedules, notes=tuple(notes))
