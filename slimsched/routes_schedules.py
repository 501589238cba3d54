"""The routes of stored schedules: create, list, pause or resume, delete, and their tick ledger.

Split out of ``slimsched.api`` so that each module owns one role; the schedule actions (trigger,
backfill, next fire times) live in ``slimsched.routes_actions``.
"""

from __future__ import annotations

import bisect
from typing import Any

from aiohttp import web

from slimsched import codec, cronplan, jobconfig, paging, views
from slimsched.apibase import ApiContext, adjusted, json_reply, paged, path_id, read_body, submit, visible_job
from slimsched.errors import BadRequest, NotFound
from slimsched.jsonfields import collecting
from slimsched.model import Schedule
from slimsched.statemachine import State

# -- schedules -----------------------------------------------------------------------------------


async def post_schedule(request: web.Request) -> web.Response:
    ctx, name = await visible_job(request)
    body = await read_body(request, empty_ok=False)
    with collecting() as notes:
        req = jobconfig.parse_schedule_request(body)
        cronplan.validate(req.schedule, req.time_zone)
        jobconfig.merge(ctx.jobs.job(name), req.overrides)  # validated now, merged again at each tick
    adjusted(request, notes)
    schedule = req.to_schedule(id=ctx.new_id(), job_name=name, created_at_ms=ctx.now_ms())
    await submit(ctx, "create_schedule", schedule=codec.schedule_to_dict(schedule))
    return json_reply({"Id": schedule.id}, 201)


async def list_schedules(request: web.Request) -> web.Response:
    """The job's schedules in creation order (as SlimFaas's hash set lists them), optionally paged."""
    ctx, name = await visible_job(request)
    req = paging.parse(request.query, f"schedules/{name}")
    now_s = int(ctx.clock())

    def view(state: State) -> list[tuple[Schedule, int | None]]:
        return [(s, state.last_fired.get(s.id)) for s in state.schedules_of(name)]

    found = ctx.raft.read(view)
    if not req.paged:
        found.sort(key=lambda pair: views.schedule_key(pair[0]))
        return json_reply([views.schedule_view(s, last, now_s) for s, last in found])
    found.sort(key=lambda pair: views.schedule_key(pair[0]))
    keys = [views.schedule_key(s) for s, _ in found]
    start = 0 if req.after is None else bisect.bisect_right(keys, paging.expect(req.after, (int, str)))
    page, headers = paged(found, keys, start, req, f"schedules/{name}", request)
    return json_reply([views.schedule_view(s, last, now_s) for s, last in page], headers=headers)


def _declared_refusal(ctx: ApiContext, name: str, schedule_id: str, verb: str) -> None:
    """SlimFaas answers 404 for a schedule of the configuration (it is not in its API store);
    we say why: the configuration owns it."""
    s = ctx.raft.read(lambda state: state.schedules.get(schedule_id))
    if s is None or s.job_name != name or s.source == "api":
        return
    where = (
        "a CronJob's SlimFaas/Schedules annotation or spec"
        if s.source == "cronjob"
        else ("the Schedules of the job configuration (SlimFaas__JobsConfiguration)")
    )
    raise NotFound(
        "declared_schedule",
        f"schedule {schedule_id} of job {name} is declared by {where}; it cannot be {verb} through "
        "the API: change the configuration instead",
    )


async def delete_schedule(request: web.Request) -> web.Response:
    ctx, name = await visible_job(request)
    schedule_id = path_id(request)
    _declared_refusal(ctx, name, schedule_id, "deleted")
    await submit(ctx, "delete_schedule", job_name=name, schedule_id=schedule_id)
    return web.Response(status=204)


async def patch_schedule(request: web.Request) -> web.Response:
    ctx, name = await visible_job(request)
    schedule_id = path_id(request)
    body = await read_body(request, empty_ok=False)
    if not isinstance(body, dict):
        raise BadRequest("invalid_body", "the request body must be a JSON object")
    unknown = sorted(set(body) - {"Paused"})
    if unknown:
        raise BadRequest("unknown_field", f"unknown field {unknown[0]!r}; only 'Paused' can be changed")
    paused = body.get("Paused")
    if not isinstance(paused, bool):
        raise BadRequest("invalid_field", "Paused must be true or false")
    _declared_refusal(ctx, name, schedule_id, "paused or resumed")
    await submit(ctx, "set_paused", job_name=name, schedule_id=schedule_id, paused=paused, at=ctx.now_ms())
    now_s = int(ctx.clock())

    def view(state: State) -> dict[str, Any] | None:
        s = state.schedules.get(schedule_id)
        return views.schedule_view(s, state.last_fired.get(s.id), now_s) if s else None

    found = ctx.raft.read(view)
    if found is None:
        raise NotFound("not_found", f"no schedule {schedule_id} for job {name}")
    return json_reply(found)


async def schedule_ticks(request: web.Request) -> web.Response:
    ctx, name = await visible_job(request)
    schedule_id = path_id(request)

    def view(state: State) -> list[dict[str, Any]] | None:
        s = state.schedules.get(schedule_id)
        if s is None or s.job_name != name:
            return None
        return [
            {**codec.tick_to_dict(t), "TickTime": views.iso(t.tick)}
            for t in state.ledger.get(schedule_id, ())
        ]

    ticks = ctx.raft.read(view)
    if ticks is None:
        raise NotFound("not_found", f"no schedule {schedule_id} for job {name}")
    return json_reply(ticks)
