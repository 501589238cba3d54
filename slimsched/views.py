"""How the replicated state reads in the REST API: SlimFaas's fields first, in SlimFaas's units
and order, then ours. Pure: no I/O, no clock (``now_s`` is a parameter).

SlimFaas's units (read from its source): run timestamps are .NET ``DateTime.Ticks``
(``JobService.cs``, ``KubernetesService.Jobs.cs``), -1 before the event; a schedule's
``NextExecutionTimestamp`` in ``GET /jobs/status`` is Unix seconds (``Cron.cs``). Our richer data
rides in additional fields: ISO 8601 times, ``EndTimestamp``, ``Reason``, ``ScheduleId``...
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

from slimsched import codec, cronplan
from slimsched.jobconfig import JobConfig
from slimsched.model import Resources, Run, RunStatus, Schedule
from slimsched.paging import Key


def iso(epoch_s: int | None) -> str | None:
    if epoch_s is None:
        return None
    return datetime.fromtimestamp(epoch_s, tz=UTC).isoformat().replace("+00:00", "Z")


def iso_ms(epoch_ms: int | None) -> str | None:
    if epoch_ms is None:
        return None
    return (
        datetime.fromtimestamp(epoch_ms / 1000, tz=UTC)
        .isoformat(timespec="milliseconds")
        .replace("+00:00", "Z")
    )


def next_fire_of(s: Schedule, last_fired: int | None, now_s: int) -> int | None:
    if s.paused:
        return None
    try:
        return cronplan.next_fire(s.cron, s.time_zone, max(now_s, last_fired or 0))
    except ValueError:
        return None


def schedule_view(s: Schedule, last_fired: int | None, now_s: int) -> dict[str, Any]:
    """SlimFaas's ListScheduleJob fields (Image "" and DependsOn [] when the schedule sets none,
    as ScheduleJobService.cs lists them), then ours."""
    next_fire = next_fire_of(s, last_fired, now_s)
    overrides = codec.overrides_to_dict(s.overrides)
    return {
        "Id": s.id,
        "Name": s.job_name,
        "Schedule": s.cron,
        "Args": overrides.pop("Args", []),
        "Image": overrides.pop("Image", ""),
        "DependsOn": overrides.pop("DependsOn", []),
        **overrides,
        "Source": s.source,
        "TimeZone": s.time_zone,
        "ConcurrencyPolicy": s.concurrency_policy.value,
        "StartingDeadlineSeconds": s.starting_deadline_seconds,
        "Paused": s.paused,
        "LastFiredTime": iso(last_fired),
        "NextFireTime": iso(next_fire),
    }


def schedule_key(s: Schedule) -> Key:
    return (s.created_at_ms, s.id)


def ticks_or_minus_one(epoch_ms: int | None) -> int:
    return -1 if epoch_ms is None else codec.dotnet_ticks(epoch_ms)


def run_view(r: Run, position: int) -> dict[str, Any]:
    """SlimFaas's JobListResult fields (timestamps in .NET ticks, -1 when not yet), then ours:
    EndTimestamp (ticks too), the same three times in ISO 8601, ScheduleId and Reason."""
    return {
        "Id": r.id,
        "Name": r.kube_name,
        "Status": _status(r),
        "PositionInQueue": position,
        "InQueueTimestamp": codec.dotnet_ticks(r.queued_at_ms),
        "StartTimestamp": ticks_or_minus_one(r.started_at_ms),
        "EndTimestamp": ticks_or_minus_one(r.finished_at_ms),
        "InQueueTime": iso_ms(r.queued_at_ms),
        "StartTime": iso_ms(r.started_at_ms),
        "EndTime": iso_ms(r.finished_at_ms),
        "ScheduleId": r.schedule_id,
        "Reason": r.reason,
    }


def started_key(r: Run) -> Key:
    return (0, -r.queued_at_ms, r.id)


def ordered_runs(runs: list[Run], queue: list[Run]) -> list[Run]:
    """SlimFaas's order (JobService.ListJobAsync): runs that left the queue newest first, then
    the queue in its order."""
    started = sorted((r for r in runs if r.status is not RunStatus.QUEUED), key=started_key)
    return [*started, *queue]


def run_views(runs: list[Run], queue: list[Run]) -> list[dict[str, Any]]:
    at = positions(queue)
    return [run_view(r, at.get(r.id, -1)) for r in ordered_runs(runs, queue)]


def resources_or_none(r: Resources) -> dict[str, Any] | None:
    return codec.resources_to_dict(r) if (r.requests or r.limits) else None


def scheduled_info(sc: Schedule, last_fired: int | None, now_s: int) -> dict[str, Any]:
    """SlimFaas's ScheduledJobInfo, then ours (Source, Paused, TimeZone, NextFireTime)."""
    nxt = next_fire_of(sc, last_fired, now_s)
    o = sc.overrides
    return {
        "Id": sc.id,
        "Schedule": sc.cron,
        "Image": o.image or "",
        "NextExecutionTimestamp": nxt,
        "Resources": codec.resources_to_dict(o.resources) if o.resources is not None else None,
        "DependsOn": list(o.depends_on) if o.depends_on is not None else None,
        "Source": sc.source,
        "Paused": sc.paused,
        "TimeZone": sc.time_zone,
        "NextFireTime": iso(nxt),
    }


def _status(r: Run) -> str:
    return (RunStatus.PENDING if r.status is RunStatus.DISPATCHING else r.status).value


def job_status(
    name: str,
    conf: JobConfig,
    schedules: Iterable[tuple[Schedule, int | None]],
    active: Iterable[Run],
    now_s: int,
) -> dict[str, Any]:
    """One JobConfigurationStatus of SlimFaas's ``GET /jobs/status`` (JobStatus.cs)."""
    return {
        "Name": name,
        "Visibility": conf.visibility.value,
        "Image": conf.image,
        "ImagesWhitelist": list(conf.images_whitelist),
        "NumberParallelJob": conf.number_parallel_job,
        "Resources": resources_or_none(conf.resources),
        "DependsOn": list(conf.depends_on),
        "Schedules": [
            scheduled_info(sc, last, now_s)
            for sc, last in sorted(schedules, key=lambda p: schedule_key(p[0]))
        ],
        "RunningJobs": [
            {
                "Name": r.kube_name,
                "Status": _status(r),
                "ElementId": r.id,
                "InQueueTimestamp": codec.dotnet_ticks(r.queued_at_ms),
                "StartTimestamp": ticks_or_minus_one(r.started_at_ms),
            }
            for r in sorted(active, key=started_key)
        ],
    }


def positions(queue: Iterable[Run]) -> Mapping[str, int]:
    """Each queued run's PositionInQueue (1-based, as docs/jobs.md says)."""
    return {r.id: i for i, r in enumerate(queue, start=1)}
