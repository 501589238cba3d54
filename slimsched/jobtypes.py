"""The job configuration's values: what a job runs by default and the most it may ask for.

Plain frozen dataclasses shared by the configuration reader (``jobconfig``), the override rules
(``overrides``) and CronJob discovery (``catalog``). Defaults are SlimFaas's (its
``SlimfaasJob`` record): BackoffLimit 1, Private, one parallel job, TtlSecondsAfterFinished 60,
RestartPolicy Never.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from slimsched.jsonfields import Note
from slimsched.model import (
    ConcurrencyPolicy,
    EnvVar,
    JobOverrides,
    Resources,
    RestartPolicy,
    Schedule,
    Visibility,
    Volume,
    VolumeMount,
)

DEFAULT_JOB = "Default"
SLIMFAAS_TTL_SECONDS = 60
"""SlimFaas's ``TtlSecondsAfterFinished`` when nothing sets one (its records' default)."""


@dataclass(frozen=True)
class JobConfig:
    """One entry of ``Configurations``: what a job runs by default and the most it may ask for.

    ``images_whitelist`` holds shell-style wildcard patterns (``*``, ``?``, ``[abc]``, matched
    case-sensitively against the whole image reference; ``*`` also matches ``/`` and ``:``).
    ``ttl_seconds_after_finished`` is SlimFaas's 60 unless set (``None``: Jobs are kept until
    deleted); a request overrides it freely. ``active_deadline_seconds``, ``parallelism`` and
    ``completions`` are ceilings for a request (``None`` deadline: no ceiling).
    ``volume_mounts`` are both the mounts a run gets by default and the only ones a request may
    ask for; each names one of ``volumes``.
    """

    image: str = ""
    images_whitelist: tuple[str, ...] = ()
    resources: Resources = field(default_factory=Resources)
    depends_on: tuple[str, ...] = ()
    environments: tuple[EnvVar, ...] = ()
    backoff_limit: int = 1
    visibility: Visibility = Visibility.PRIVATE
    number_parallel_job: int = 1
    ttl_seconds_after_finished: int | None = SLIMFAAS_TTL_SECONDS
    restart_policy: RestartPolicy = RestartPolicy.NEVER
    active_deadline_seconds: int | None = None
    command: tuple[str, ...] = ()
    parallelism: int = 1
    completions: int = 1
    volumes: tuple[Volume, ...] = ()
    volume_mounts: tuple[VolumeMount, ...] = ()


_DEFAULT_RESOURCES = {"cpu": "100m", "memory": "100Mi"}

BUILTIN_DEFAULT = JobConfig(
    resources=Resources(requests=dict(_DEFAULT_RESOURCES), limits=dict(_DEFAULT_RESOURCES))
)
"""SlimFaas's built-in ``Default``: no image, empty whitelist, 100m CPU / 100Mi memory, Private.

With no image and an empty whitelist it admits no image at all, so an unknown job name cannot
run anything until the operator configures a ``Default`` with an ``Image`` or an
``ImagesWhitelist``: see ``merge`` for the image rule.
"""


@dataclass(frozen=True)
class ScheduleRequest:
    """A schedule as posted to ``/job-schedules/{name}`` or listed under ``Schedules``.

    ``schedule`` is the cron expression exactly as given; the cron module validates it.
    """

    schedule: str
    time_zone: str = "UTC"
    concurrency_policy: ConcurrencyPolicy = ConcurrencyPolicy.ALLOW
    starting_deadline_seconds: int | None = None
    paused: bool = False
    overrides: JobOverrides = field(default_factory=JobOverrides)

    def to_schedule(self, *, id: str, job_name: str, created_at_ms: int, source: str = "api") -> Schedule:
        """The schedule this request declares (its cron expression trimmed)."""
        return Schedule(
            id=id,
            job_name=job_name,
            cron=self.schedule.strip(),
            overrides=self.overrides,
            time_zone=self.time_zone,
            concurrency_policy=self.concurrency_policy,
            starting_deadline_seconds=self.starting_deadline_seconds,
            paused=self.paused,
            created_at_ms=created_at_ms,
            source=source,
        )


def _builtin_configurations() -> dict[str, JobConfig]:
    return {DEFAULT_JOB: BUILTIN_DEFAULT}


@dataclass(frozen=True)
class JobsConfiguration:
    """The whole configuration: jobs by name (always including ``Default``) and their schedules.

    ``notes`` are what reading it adjusted (keys ignored, names lowercased, schedules capped),
    logged once and listed in /status; ``from_cronjobs`` names the jobs a CronJob declared.
    """

    configurations: Mapping[str, JobConfig] = field(default_factory=_builtin_configurations)
    schedules: Mapping[str, tuple[ScheduleRequest, ...]] = field(default_factory=dict)
    notes: tuple[Note, ...] = ()
    from_cronjobs: frozenset[str] = frozenset()

    def job(self, name: str) -> JobConfig:
        """The configuration of job ``name``, or ``Default`` for a name the configuration lacks."""
        config = self.configurations.get(name)
        if config is None:
            config = self.configurations.get(DEFAULT_JOB, BUILTIN_DEFAULT)
        return config


def visibility_of(config: JobsConfiguration, name: str) -> Visibility:
    """Whether job ``name`` (or ``Default`` standing in for it) accepts calls from outside."""
    return config.job(name).visibility
