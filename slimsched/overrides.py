"""Triggers and schedules: reading a request's overrides, and merging them with a job's configuration.

``merge`` is the one place that decides what a run executes, identically for ``POST /job``, a
``POST /job-schedules`` schedule and a ``Schedules`` entry of the configuration, by the rules of
SlimFaas's documentation (docs/jobs.md, "Defining Jobs via Configuration" and "Triggering a
Job"); where the documentation is silent, by SlimFaas's code:

- BackoffLimit, TtlSecondsAfterFinished and RestartPolicy are plain overrides (the docs call them
  "Optional override ... Defaults to the job configuration value"), so the .NET ``CreateJob``
  record sent with its defaults (TTL 60) runs with TTL 60 whatever the configuration says.
- Args come from the request; DependsOn and Command replace the configured ones; Environments
  merge by name, the request winning (configured order first, then new names).
- Resources merge key by key and cannot exceed the configuration: as SlimFaas's
  ``JobResourceValidator`` does, a request above the configured request (or limit) gets the
  configured value, and a resource the configuration does not name is dropped. A limit that ends
  below its request lowers the request to it (Kubernetes would refuse the Job). Each of these is
  a note (a ``Warning`` header; a 400 in strict mode), never silent.
- Image: the configured one, or one matching ``ImagesWhitelist`` (a security refusal).
- Our own additions (ActiveDeadlineSeconds, Parallelism, Completions) may not exceed the
  configuration: capped, with a note. VolumeMounts only pick among the configured mounts.

Pure: no I/O, no clock.
"""

from __future__ import annotations

from collections.abc import Mapping
from fnmatch import fnmatchcase
from typing import TypeVar

from slimsched.errors import BadRequest
from slimsched.jobparts import (
    check_env_var,
    check_volume_mounts,
    object_names,
    read_environments,
    read_resources,
    read_volume_mounts,
    undeclared_volume,
)
from slimsched.jobtypes import JobConfig, ScheduleRequest
from slimsched.jsonfields import (
    INT64_MAX,
    Invalid,
    Reader,
    as_bool,
    as_quantity,
    as_str,
    as_strs,
    check_range,
    describe,
    fail,
    fields,
    join,
    note,
    or_default,
)
from slimsched.model import (
    ConcurrencyPolicy,
    EnvVar,
    JobOverrides,
    JobSpec,
    Resources,
    RestartPolicy,
    Volume,
    VolumeMount,
)
from slimsched.quantities import parse_quantity

OVERRIDE_FIELDS = (
    "Image",
    "Args",
    "Command",
    "DependsOn",
    "Resources",
    "Environments",
    "BackoffLimit",
    "TtlSecondsAfterFinished",
    "RestartPolicy",
    "ActiveDeadlineSeconds",
    "Parallelism",
    "Completions",
    "VolumeMounts",
    "Volumes",
)
_N = TypeVar("_N", int, int | None)

SCHEDULE_FIELDS = ("Schedule", "TimeZone", "ConcurrencyPolicy", "StartingDeadlineSeconds", "Paused")


def _body(body: object, where: str) -> dict[str, object]:
    if not isinstance(body, dict):
        fail("invalid_body", where, f"the request body must be a JSON object, not {describe(body)}")
    return body


def _overrides(given: Mapping[str, object], where: str) -> JobOverrides:
    r = Reader(given, where)
    if "Volumes" in given:
        fail(
            "volume_not_allowed",
            r.at("Volumes"),
            "a request cannot define volumes; list in VolumeMounts the mounts of the job configuration "
            "it wants, and the Job gets the configured volumes they use",
        )
    return JobOverrides(
        # An empty Image means "as configured", as in SlimFaas where "" is the default.
        image=r.get("Image", as_str) or None,
        args=r.get("Args", as_strs),
        command=r.get("Command", as_strs),
        depends_on=r.get("DependsOn", object_names),
        resources=r.get("Resources", read_resources),
        environments=r.get("Environments", read_environments),
        backoff_limit=r.integer("BackoffLimit", minimum=0),
        ttl_seconds_after_finished=r.integer("TtlSecondsAfterFinished", minimum=0),
        restart_policy=r.choice("RestartPolicy", RestartPolicy),
        active_deadline_seconds=r.integer("ActiveDeadlineSeconds", minimum=1, maximum=INT64_MAX),
        parallelism=r.integer("Parallelism", minimum=1),
        completions=r.integer("Completions", minimum=1),
        volume_mounts=r.get("VolumeMounts", read_volume_mounts),
    )


def parse_overrides(body: object, *, where: str = "") -> JobOverrides:
    """Read the body of ``POST /job/{name}``; ``where`` prefixes the field paths in messages.

    Unknown fields are ignored with a note (``jsonfields.collecting``). Raises ``BadRequest``
    with the code ``invalid_body``, ``duplicate_field`` (one field under two inexact
    spellings), ``missing_field``, ``invalid_field`` or ``invalid_quantity``, or
    ``volume_not_allowed`` for a ``Volumes`` field (only the configuration defines volumes).
    Whether the values are allowed for the job is ``merge``'s business.
    """
    try:
        return _overrides(fields(_body(body, where), OVERRIDE_FIELDS, where), where)
    except Invalid as e:
        raise BadRequest(e.code, e.message) from None


def read_schedule_request(body: object, where: str) -> ScheduleRequest:
    """``parse_schedule_request`` raising ``jsonfields.Invalid`` (for the configuration reader)."""
    given = fields(_body(body, where), OVERRIDE_FIELDS + SCHEDULE_FIELDS, where)
    r = Reader(given, where)
    schedule = r.get("Schedule", as_str)
    if schedule is None:
        fail("missing_field", r.at("Schedule"), 'required: a cron expression such as "0 0 * * *"')
    return ScheduleRequest(
        schedule=schedule,
        time_zone=or_default(r.get("TimeZone", as_str), "UTC"),
        concurrency_policy=or_default(
            r.choice("ConcurrencyPolicy", ConcurrencyPolicy), ConcurrencyPolicy.ALLOW
        ),
        starting_deadline_seconds=r.integer("StartingDeadlineSeconds", minimum=0, maximum=INT64_MAX),
        paused=or_default(r.get("Paused", as_bool), False),
        overrides=_overrides(given, where),
    )


def parse_schedule_request(body: object, *, where: str = "") -> ScheduleRequest:
    """Read the body of ``POST /job-schedules/{name}`` or one ``Schedules`` entry.

    The body is a trigger body plus ``Schedule`` (required), ``TimeZone``,
    ``ConcurrencyPolicy``, ``StartingDeadlineSeconds`` and ``Paused``; the cron expression and
    the time zone are only type-checked here. Raises ``BadRequest`` with the codes of
    ``parse_overrides``.
    """
    try:
        return read_schedule_request(body, where)
    except Invalid as e:
        raise BadRequest(e.code, e.message) from None


# -- merging ---------------------------------------------------------------------------------------


def merge(config: JobConfig, overrides: JobOverrides) -> JobSpec:
    """Apply a trigger's or a schedule's ``overrides`` to ``config``: the spec one run executes.

    The rules are the module's. A refusal is a ``BadRequest``: [image_required] (no configured
    image and none asked for), [image_not_allowed], [volume_not_allowed], [invalid_field] or
    [invalid_quantity] (for stored overrides that never went through ``parse_overrides``). Every
    adjustment is a note for the innermost ``jsonfields.collecting()``: [resource_capped],
    [resource_ignored], [request_lowered] (a request lowered to its limit), [capped]
    (ActiveDeadlineSeconds, Parallelism, Completions).
    """
    try:
        return merge_or_invalid(config, overrides)
    except Invalid as e:
        raise BadRequest(e.code, e.message) from None


def merge_or_invalid(config: JobConfig, overrides: JobOverrides) -> JobSpec:
    """``merge`` raising ``jsonfields.Invalid`` (for the configuration reader)."""
    volumes, volume_mounts = _merge_volumes(config, overrides.volume_mounts)
    return JobSpec(
        image=_merge_image(config, overrides.image),
        args=overrides.args if overrides.args is not None else (),
        command=overrides.command if overrides.command is not None else config.command,
        depends_on=overrides.depends_on if overrides.depends_on is not None else config.depends_on,
        resources=_merge_resources(config.resources, overrides.resources),
        environments=_merge_environments(config.environments, overrides.environments),
        backoff_limit=_plain("BackoffLimit", overrides.backoff_limit, config.backoff_limit),
        ttl_seconds_after_finished=_plain(
            "TtlSecondsAfterFinished", overrides.ttl_seconds_after_finished, config.ttl_seconds_after_finished
        ),
        restart_policy=overrides.restart_policy or config.restart_policy,
        active_deadline_seconds=_capped_optional(
            "ActiveDeadlineSeconds", config.active_deadline_seconds, overrides.active_deadline_seconds
        ),
        parallelism=_capped("Parallelism", config.parallelism, overrides.parallelism),
        completions=_capped("Completions", config.completions, overrides.completions),
        volumes=volumes,
        volume_mounts=volume_mounts,
    )


def _merge_image(config: JobConfig, image: str | None) -> str:
    if not image:
        if not config.image:
            fail("image_required", "Image", "this job has no configured image, so the request must name one")
        return config.image
    if image == config.image or any(fnmatchcase(image, pattern) for pattern in config.images_whitelist):
        return image
    if config.images_whitelist:
        allowed = ", ".join(
            repr(p) for p in ((config.image,) if config.image else ()) + config.images_whitelist
        )
        fail("image_not_allowed", "Image", f"{image!r} is not allowed for this job; allowed: {allowed}")
    if config.image:
        fail(
            "image_not_allowed",
            "Image",
            f"{image!r} is not allowed for this job, which has no ImagesWhitelist: only its configured "
            f"image {config.image!r} may run",
        )
    fail(
        "image_not_allowed",
        "Image",
        f"{image!r} is not allowed: this job's configuration has neither an Image nor an ImagesWhitelist, "
        "so it admits no image",
    )


def _merge_quantities(
    kind: str, configured: Mapping[str, str], requested: Mapping[str, str]
) -> dict[str, str]:
    out = dict(configured)
    for name, text in requested.items():
        path = f"Resources.{kind}.{name}"
        amount = as_quantity(text, path)
        bound = configured.get(name)
        if bound is None:
            note(
                "resource_ignored",
                path,
                f"ignored: the job configuration sets no {name!r} in {kind}, so a request cannot ask for one",
            )
        elif amount > parse_quantity(bound):
            note("resource_capped", path, f"{text} capped to the {bound} the job configuration allows")
        else:
            out[name] = text
    return out


def _merge_resources(config: Resources, requested: Resources | None) -> Resources:
    if requested is None:
        return Resources(requests=dict(config.requests), limits=dict(config.limits))
    requests = _merge_quantities("Requests", config.requests, requested.requests)
    limits = _merge_quantities("Limits", config.limits, requested.limits)
    for name in sorted(requests.keys() & limits.keys()):
        if parse_quantity(limits[name]) < parse_quantity(requests[name]):
            note(
                "request_lowered",
                f"Resources.Requests.{name}",
                f"{requests[name]} lowered to the limit {limits[name]}: a request cannot exceed its limit",
            )
            requests[name] = limits[name]
    return Resources(requests=requests, limits=limits)


def _merge_environments(
    config: tuple[EnvVar, ...], requested: tuple[EnvVar, ...] | None
) -> tuple[EnvVar, ...]:
    if requested is None:
        return config
    merged = {env.name: env for env in config}
    for i, env in enumerate(requested):
        check_env_var(env, f"Environments[{i}]")
        merged[env.name] = env  # an existing name keeps its configured position
    return tuple(merged.values())


def _plain(name: str, requested: int | None, configured: _N) -> int | _N:
    if requested is None:
        return configured
    check_range(requested, name, minimum=0)
    return requested


def _capped(name: str, configured: int, requested: int | None) -> int:
    if requested is None:
        return configured
    check_range(requested, name, minimum=1)
    if requested > configured:
        note("capped", name, f"{requested} capped to the {configured} the job configuration allows")
        return configured
    return requested


def _capped_optional(name: str, configured: int | None, requested: int | None) -> int | None:
    if requested is None:
        return configured
    check_range(requested, name, minimum=1, maximum=INT64_MAX)
    if configured is not None and requested > configured:
        note("capped", name, f"{requested} capped to the {configured} the job configuration allows")
        return configured
    return requested


def _merge_volumes(
    config: JobConfig, requested: tuple[VolumeMount, ...] | None
) -> tuple[tuple[Volume, ...], tuple[VolumeMount, ...]]:
    mounts = config.volume_mounts
    if requested is not None:
        check_volume_mounts(requested, "VolumeMounts")
        for i, mount in enumerate(requested):
            _check_mount_allowed(config, mount, f"VolumeMounts[{i}]")
        mounts = requested
    used = {mount.name for mount in mounts}
    return tuple(volume for volume in config.volumes if volume.name in used), mounts


def _check_mount_allowed(config: JobConfig, mount: VolumeMount, path: str) -> None:
    candidates = [m for m in config.volume_mounts if m.name == mount.name]
    if not candidates:
        if all(volume.name != mount.name for volume in config.volumes):
            fail("volume_not_allowed", join(path, "Name"), undeclared_volume(mount.name, config.volumes))
        fail(
            "volume_not_allowed",
            join(path, "Name"),
            f"the job configuration mounts volume {mount.name!r} nowhere, so a request cannot mount it",
        )
    declared = next((m for m in candidates if m.mount_path == mount.mount_path), None)
    if declared is None:
        allowed = ", ".join(repr(m.mount_path) for m in candidates)
        fail(
            "volume_not_allowed",
            join(path, "MountPath"),
            f"volume {mount.name!r} may not be mounted at {mount.mount_path!r}; the job configuration "
            f"mounts it at {allowed}",
        )
    if declared.read_only and not mount.read_only:
        fail(
            "volume_not_allowed",
            join(path, "ReadOnly"),
            f"the job configuration mounts {mount.name!r} at {mount.mount_path!r} read-only; a request may "
            "make a mount read-only, never writable, so set ReadOnly to true",
        )
    if declared.sub_path is not None and mount.sub_path != declared.sub_path:
        fail(
            "volume_not_allowed",
            join(path, "SubPath"),
            f"the job configuration mounts only {declared.sub_path!r} of {mount.name!r} at "
            f"{mount.mount_path!r}, so SubPath must be {declared.sub_path!r}",
        )
