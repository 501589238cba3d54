"""The schedule-action routes: trigger a schedule now, backfill a window, its next fire times, and
a preview of an expression before a schedule exists (the logic is ``slimsched.actions``).

Split out of ``slimsched.api`` so that each module owns one role: these routes act on a schedule
instead of storing it, and they need the upgrade guard (``applied_by_all``) the others do not.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from slimsched import actions, codec, cronplan, jobconfig, views
from slimsched.apibase import CTX, ApiContext, json_reply, path_id, raise_for, read_body, submit, visible_job
from slimsched.errors import BadRequest, NotFound, Unavailable
from slimsched.jobmanifest import kube_job_name
from slimsched.model import Run, RunStatus, Schedule
from slimsched.statemachine import State, encode_command

# -- schedule actions: trigger now, backfill, next fire times (slimsched.actions) ---------------


def _schedule_of(state: State, name: str, schedule_id: str) -> Schedule:
    s = state.schedules.get(schedule_id)
    if s is None or s.job_name != name:
        raise NotFound("not_found", f"no schedule {schedule_id} for job {name}")
    return s


async def _stored_schedule(ctx: ApiContext, name: str, schedule_id: str) -> Schedule:
    """The schedule as this node holds it; when it does not (yet), after a committed barrier.

    An action needs the schedule's content to build its command, so it reads the local state,
    which lags the leader by up to a commit. A schedule acknowledged by another node a moment
    ago may not be applied here yet: a barrier committed through this node is applied after
    everything committed before it, so a second miss is a real 404, never a stale one.
    """
    try:
        return ctx.raft.read(lambda st: _schedule_of(st, name, schedule_id))
    except NotFound:
        await submit(ctx, "barrier")
        return ctx.raft.read(lambda st: _schedule_of(st, name, schedule_id))


def _require_level(ctx: ApiContext, kind: str) -> None:
    if not ctx.raft.applied_by_all(kind):
        raise Unavailable(
            "upgrade_in_progress", f"not every node runs a release that applies {kind} yet; retry later", 5
        )


async def trigger_schedule(request: web.Request) -> web.Response:
    """One run of the schedule now, with its overrides; ``RequestId`` makes a retry safe."""
    ctx, name = await visible_job(request)
    schedule_id = path_id(request)
    request_id = actions.parse_trigger(await read_body(request, empty_ok=True)) or ctx.new_id()
    _require_level(ctx, "trigger_schedule")
    s = await _stored_schedule(ctx, name, schedule_id)
    spec = jobconfig.merge(ctx.jobs.job(name), s.overrides)
    at = ctx.now_ms()
    run_id = actions.manual_run_id(s.id, request_id)
    run = Run(
        id=run_id,
        job_name=name,
        spec=spec,
        status=RunStatus.QUEUED,
        queued_at_ms=at,
        kube_name=kube_job_name(name, run_id),
        schedule_id=s.id,
    )
    result = raise_for(
        await ctx.raft.submit(
            encode_command(
                "trigger_schedule",
                rid=ctx.new_id(),  # the run id, derived from RequestId, dedups a client retry
                job_name=name,
                schedule_id=s.id,
                at=at,
                run=codec.run_to_dict(run),
            )
        )
    )
    value = result.value or {}
    return json_reply({"Id": value.get("RunId"), "Duplicate": bool(value.get("Duplicate"))}, 202)


async def backfill_schedule(request: web.Request) -> web.Response:
    """Fire each tick of ``[Start, End]`` once (at most ``MAX_BACKFILL_TICKS``), under a policy."""
    ctx, name = await visible_job(request)
    schedule_id = path_id(request)
    req = actions.parse_backfill(await read_body(request, empty_ok=False), int(ctx.clock()))
    _require_level(ctx, "backfill")
    s = await _stored_schedule(ctx, name, schedule_id)
    ticks = actions.ticks_between(s.cron, s.time_zone, req.start, req.end)
    spec = jobconfig.merge(ctx.jobs.job(name), s.overrides)
    rid = f"backfill/{s.id}/{req.request_id or ctx.new_id()}"
    result = raise_for(
        await ctx.raft.submit(
            encode_command(
                "backfill",
                rid=rid,
                job_name=name,
                schedule_id=s.id,
                at=ctx.now_ms(),
                policy=(req.policy or s.concurrency_policy).value,
                spec=codec.spec_to_dict(spec),
                ticks=[[t, kube_job_name(name, f"{s.id}-{t}")] for t in ticks],
            )
        )
    )
    value = result.value or {}

    def listed(key: str, with_run: bool = False) -> list[dict[str, Any]]:
        return [
            {"Tick": t, "TickTime": views.iso(t), **({"RunId": f"{s.id}-{t}"} if with_run else {})}
            for t in value.get(key, [])
        ]

    return json_reply(
        {
            "Fired": listed("Fired", with_run=True),
            "Skipped": listed("Skipped"),
            "AlreadyFired": listed("AlreadyFired"),
            "NotYetHandled": listed("NotYetHandled"),
        },
        202,
    )


async def schedule_next(request: web.Request) -> web.Response:
    """The next ``?count`` fire times of a stored schedule (none while it is paused)."""
    ctx, name = await visible_job(request)
    schedule_id = path_id(request)
    count = actions.parse_count(request.query.get("count"))
    s, last = ctx.raft.read(lambda st: (_schedule_of(st, name, schedule_id), st.last_fired.get(schedule_id)))
    after = max(int(ctx.clock()), last or 0)
    ticks = [] if s.paused else actions.next_fires(s.cron, s.time_zone, after, count)
    return json_reply(
        {
            "Id": s.id,
            "Schedule": s.cron,
            "TimeZone": s.time_zone,
            "Paused": s.paused,
            "NextFireTimes": [actions.iso(t) for t in ticks],
        }
    )


async def schedule_preview(request: web.Request) -> web.Response:
    """The next ``?count`` fire times of an expression and time zone, before a schedule exists."""
    ctx = request.app[CTX]
    expr = request.query.get("schedule")
    if expr is None:
        raise BadRequest("invalid_query", "?schedule (a cron expression) is required")
    time_zone = request.query.get("timeZone", "UTC")
    if len(expr) > actions.MAX_EXPRESSION or len(time_zone) > actions.MAX_TIME_ZONE:
        raise BadRequest(
            "invalid_query",
            f"?schedule holds at most {actions.MAX_EXPRESSION} characters, "
            f"?timeZone at most {actions.MAX_TIME_ZONE}",
        )
    count = actions.parse_count(request.query.get("count"))
    cronplan.validate(expr, time_zone)
    ticks = actions.next_fires(expr, time_zone, int(ctx.clock()), count)
    return json_reply(
        {"Schedule": expr, "TimeZone": time_zone, "NextFireTimes": [actions.iso(t) for t in ticks]}
    )
