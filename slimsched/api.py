"""The REST API (aiohttp), SlimFaas "Jobs & Cron Schedules" compatible, PascalCase JSON.

Handlers are thin: parse and validate the request (``jobconfig``, ``cronplan``), read the clock
and make ids (the proposer's job, never ``apply``'s), submit one command through Raft and map
its result to a status. A write is answered only after its command is committed and applied on
this node, so a read on the same node right after sees it. Every error is
``{"Error": code, "Message": sentence}`` with its status; nothing reaches the client as a 500
with a traceback.
"""

from __future__ import annotations

import bisect
import functools
import importlib.resources
import logging
import re
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web

from slimsched import actions, codec, cronplan, ids, jobconfig, jobnames, paging, ui, views
from slimsched.access import AccessPolicy
from slimsched.errors import ApiError, BadRequest, Conflict, Forbidden, KubeError, NotFound, Unavailable
from slimsched.jobmanifest import kube_job_name, run_selector
from slimsched.jsonfields import Note, collecting
from slimsched.kube import KubeClient
from slimsched.metrics import Metrics
from slimsched.model import Run, RunStatus, Schedule, Visibility
from slimsched.raft import RaftNode
from slimsched.statemachine import Result, State, encode_command, fingerprint

log = logging.getLogger(__name__)

MAX_JOB_NAME = jobnames.MAX_JOB_NAME_LENGTH
_ID = re.compile(r"^[A-Za-z0-9._-]{1,128}$")


def _no_pod_ips() -> Awaitable[Collection[str]]:
    async def none() -> Collection[str]:
        return ()

    return none()


Route = tuple[str, str, Callable[[web.Request], Awaitable[web.StreamResponse]]]


@dataclass
class ApiContext:
    """What the handlers need; built by the node wiring, replaced by tests as a whole."""

    raft: RaftNode
    jobs: jobconfig.JobsConfiguration
    access: AccessPolicy
    clock: Callable[[], float]
    new_id: Callable[[], str] = field(default=ids.new_id)
    pod_ips: Callable[[], Awaitable[Collection[str]]] = _no_pod_ips
    max_body_bytes: int = 1024 * 1024
    ready_gate: Callable[[], bool] = field(default=lambda: True)
    metrics: Metrics = field(default_factory=Metrics)
    kube: KubeClient | None = None
    extra_routes: tuple[Route, ...] = ()
    strict: bool = False
    """Strict mode (``SLIMSCHED_STRICT``): every adjustment of a request is a 400 instead of a Warning."""

    def now_ms(self) -> int:
        return int(self.clock() * 1000)


CTX: web.AppKey[ApiContext] = web.AppKey("ctx", ApiContext)


def _json(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        body=orjson.dumps(data), status=status, content_type="application/json", headers=headers
    )


def error_response(err: ApiError) -> web.Response:
    headers = {"Retry-After": str(err.retry_after)} if err.retry_after is not None else None
    return _json({"Error": err.code, "Message": err.message}, err.status, headers)


@web.middleware
async def errors_middleware(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    try:
        return await handler(request)
    except ApiError as e:
        return error_response(e)
    except web.HTTPRequestEntityTooLarge:
        return error_response(
            ApiError(
                413, "body_too_large", f"the request body exceeds {request.app[CTX].max_body_bytes} bytes"
            )
        )
    except web.HTTPException as e:
        if e.status < 400:
            raise
        code = {404: "not_found", 405: "method_not_allowed"}.get(e.status, "http_error")
        message = {
            404: f"no route for {request.method} {request.path}",
            405: f"{request.method} is not allowed on {request.path}",
        }.get(e.status, e.reason)
        resp = error_response(ApiError(e.status, code, message))
        if e.status == 405 and "Allow" in e.headers:
            resp.headers["Allow"] = e.headers["Allow"]
        return resp
    except Exception:
        log.exception("unhandled error on %s %s", request.method, request.path)
        return error_response(ApiError(500, "internal", "an internal error occurred; it has been logged"))


# -- request helpers -----------------------------------------------------------------------------


WARNINGS_KEY: web.RequestKey[list[str]] = web.RequestKey("warnings", list)
_WARN_TEXT_MAX = 512


def warning_header(message: str) -> str:
    """A ``Warning`` value as kube-apiserver writes them: ``299 - "text"``, printable ASCII, escaped."""
    text = "".join(c if " " <= c <= "~" else "?" for c in message)[:_WARN_TEXT_MAX]
    return '299 - "' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _adjusted(request: web.Request, notes: list[Note]) -> None:
    """Report what slimsched changed in this request: Warning headers and /metrics, or a 400 if strict."""
    if not notes:
        return
    ctx = request.app[CTX]
    if ctx.strict:
        raise BadRequest(
            notes[0].code,
            "strict mode refuses a request slimsched would otherwise adjust: "
            + " ".join(n.message for n in notes),
        )
    for n in notes:
        ctx.metrics.adjustments.labels(code=n.code).inc()
    if WARNINGS_KEY not in request:
        request[WARNINGS_KEY] = []
    request[WARNINGS_KEY].extend(n.message for n in notes)


async def _add_warnings(request: web.Request, response: web.StreamResponse) -> None:
    for message in request.get(WARNINGS_KEY, ()):
        response.headers.add("Warning", warning_header(message))


def _job_name(request: web.Request) -> str:
    """The job name of the path, lowercased as SlimFaas does (with a Warning when that changed it)."""
    raw = request.match_info["name"]
    name = jobnames.normalize_job_name(raw)
    if not jobnames.is_job_name(name):
        raise BadRequest("invalid_name", f"job name {raw!r} must be {jobnames.job_name_rule()}")
    if name != raw:
        lowered = Note("name_lowercased", "", f"job name {raw!r} read as {name!r}, as SlimFaas does")
        _adjusted(request, [lowered])
    return name


def _id(request: web.Request) -> str:
    value = request.match_info["id"]
    if not _ID.match(value):
        raise NotFound("not_found", f"no item with id {value!r}")
    return value


async def _body(request: web.Request, *, empty_ok: bool) -> Any:
    raw = await request.read()
    if not raw.strip():
        if empty_ok:
            return {}
        raise BadRequest("invalid_json", "the request body is empty; a JSON object is expected")
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as e:
        raise BadRequest("invalid_json", f"the request body is not valid JSON: {e}") from e


async def _in_cluster(request: web.Request) -> bool:
    """Whether the caller counts as inside the cluster (what Private jobs require)."""
    ctx = request.app[CTX]
    caller = ctx.access.caller(request.remote, request.headers.get("X-Forwarded-For"))
    return ctx.access.in_cluster(caller) or (
        caller is not None and ctx.access.in_cluster(caller, await ctx.pod_ips())
    )


async def _check_visibility(request: web.Request, name: str) -> None:
    ctx = request.app[CTX]
    if jobconfig.visibility_of(ctx.jobs, name) is Visibility.PUBLIC:
        return
    if await _in_cluster(request):
        return
    raise Forbidden(
        "private_job", f"job {name!r} is Private: it accepts requests only from inside the cluster"
    )


async def _visible_job(request: web.Request) -> tuple[ApiContext, str]:
    """The context and the job name of a /job or /job-schedules request, once the caller may see it."""
    name = _job_name(request)
    await _check_visibility(request, name)
    return request.app[CTX], name


def _raise_for(result: Result) -> Result:
    if result.ok:
        return result
    status = {"not_found": NotFound, "conflict": Conflict, "duplicate": Conflict, "invalid": BadRequest}
    raise status.get(result.code, BadRequest)(result.code, result.message)


async def _submit(ctx: ApiContext, kind: str, **fields: Any) -> Result:
    return _raise_for(await ctx.raft.submit(encode_command(kind, rid=ctx.new_id(), **fields)))


def _paged(
    items: list[Any],
    keys: list[paging.Key],
    start: int,
    req: paging.PageRequest,
    scope: str,
    request: web.Request,
) -> tuple[list[Any], dict[str, str] | None]:
    """The page of ``items`` (in list order, ``keys`` their sort keys) from ``start``, with its
    continue headers when more remain (none without ``?limit``: SlimFaas's bare list)."""
    begin, end = paging.window(len(items), start, req.limit)
    if end >= len(items) or end == begin:
        return items[begin:end], None
    token = paging.encode_token(scope, keys[end - 1])
    nxt = request.rel_url.update_query({"limit": str(req.limit), "continue": token})
    return items[begin:end], {
        "X-Continue": token,
        "X-Remaining-Item-Count": str(len(items) - end),
        "Link": f'<{nxt}>; rel="next"',
    }


# -- schedules -----------------------------------------------------------------------------------


async def post_schedule(request: web.Request) -> web.Response:
    ctx, name = await _visible_job(request)
    body = await _body(request, empty_ok=False)
    with collecting() as notes:
        req = jobconfig.parse_schedule_request(body)
        cronplan.validate(req.schedule, req.time_zone)
        jobconfig.merge(ctx.jobs.job(name), req.overrides)  # validated now, merged again at each tick
    _adjusted(request, notes)
    schedule = req.to_schedule(id=ctx.new_id(), job_name=name, created_at_ms=ctx.now_ms())
    await _submit(ctx, "create_schedule", schedule=codec.schedule_to_dict(schedule))
    return _json({"Id": schedule.id}, 201)


async def list_schedules(request: web.Request) -> web.Response:
    """The job's schedules in creation order (as SlimFaas's hash set lists them), optionally paged."""
    ctx, name = await _visible_job(request)
    req = paging.parse(request.query, f"schedules/{name}")
    now_s = int(ctx.clock())

    def view(state: State) -> list[tuple[Schedule, int | None]]:
        return [(s, state.last_fired.get(s.id)) for s in state.schedules_of(name)]

    found = ctx.raft.read(view)
    if not req.paged:
        found.sort(key=lambda pair: views.schedule_key(pair[0]))
        return _json([views.schedule_view(s, last, now_s) for s, last in found])
    found.sort(key=lambda pair: views.schedule_key(pair[0]))
    keys = [views.schedule_key(s) for s, _ in found]
    start = 0 if req.after is None else bisect.bisect_right(keys, paging.expect(req.after, (int, str)))
    page, headers = _paged(found, keys, start, req, f"schedules/{name}", request)
    return _json([views.schedule_view(s, last, now_s) for s, last in page], headers=headers)


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
    ctx, name = await _visible_job(request)
    schedule_id = _id(request)
    _declared_refusal(ctx, name, schedule_id, "deleted")
    await _submit(ctx, "delete_schedule", job_name=name, schedule_id=schedule_id)
    return web.Response(status=204)


async def patch_schedule(request: web.Request) -> web.Response:
    ctx, name = await _visible_job(request)
    schedule_id = _id(request)
    body = await _body(request, empty_ok=False)
    if not isinstance(body, dict):
        raise BadRequest("invalid_body", "the request body must be a JSON object")
    unknown = sorted(set(body) - {"Paused"})
    if unknown:
        raise BadRequest("unknown_field", f"unknown field {unknown[0]!r}; only 'Paused' can be changed")
    paused = body.get("Paused")
    if not isinstance(paused, bool):
        raise BadRequest("invalid_field", "Paused must be true or false")
    _declared_refusal(ctx, name, schedule_id, "paused or resumed")
    await _submit(ctx, "set_paused", job_name=name, schedule_id=schedule_id, paused=paused, at=ctx.now_ms())
    now_s = int(ctx.clock())

    def view(state: State) -> dict[str, Any] | None:
        s = state.schedules.get(schedule_id)
        return views.schedule_view(s, state.last_fired.get(s.id), now_s) if s else None

    found = ctx.raft.read(view)
    if found is None:
        raise NotFound("not_found", f"no schedule {schedule_id} for job {name}")
    return _json(found)


async def schedule_ticks(request: web.Request) -> web.Response:
    ctx, name = await _visible_job(request)
    schedule_id = _id(request)

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
    return _json(ticks)


# -- the job catalog (for the web view and the CLI client) --------------------------------------


async def list_all_jobs(request: web.Request) -> web.Response:
    """Every job known: configured, discovered, or holding runs or schedules, with its counts.

    A Private job seen from outside the cluster is listed by name and visibility only, with
    ``Accessible`` false: its routes answer 403 to that caller, as they do everywhere else.
    """
    ctx = request.app[CTX]
    inside = await _in_cluster(request)

    def read(state: State) -> dict[str, tuple[int, int, int, int]]:
        names = set(state.job_runs) | set(state.job_schedules)
        names |= {n for n in ctx.jobs.configurations if n != jobconfig.DEFAULT_JOB}
        return {
            n: (
                len(state.queued.get(n, {})),
                state.active.get(n, 0),
                len(state.job_runs.get(n, {})),
                len(state.job_schedules.get(n, {})),
            )
            for n in names
        }

    out: list[dict[str, Any]] = []
    for name, (queued, active, runs, schedules) in sorted(ctx.raft.read(read).items()):
        config = ctx.jobs.job(name)
        item: dict[str, Any] = {"Name": name, "Visibility": config.visibility.value}
        if config.visibility is Visibility.PUBLIC or inside:
            item.update(
                Accessible=True,
                Image=config.image,
                NumberParallelJob=config.number_parallel_job,
                Queued=queued,
                Active=active,
                Runs=runs,
                Schedules=schedules,
            )
        else:
            item["Accessible"] = False
        out.append(item)
    return _json(out)


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
        await _submit(ctx, "barrier")
        return ctx.raft.read(lambda st: _schedule_of(st, name, schedule_id))


def _require_level(ctx: ApiContext, kind: str) -> None:
    if not ctx.raft.applied_by_all(kind):
        raise Unavailable(
            "upgrade_in_progress", f"not every node runs a release that applies {kind} yet; retry later", 5
        )


async def trigger_schedule(request: web.Request) -> web.Response:
    """One run of the schedule now, with its overrides; ``RequestId`` makes a retry safe."""
    ctx, name = await _visible_job(request)
    schedule_id = _id(request)
    request_id = actions.parse_trigger(await _body(request, empty_ok=True)) or ctx.new_id()
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
    result = _raise_for(
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
    return _json({"Id": value.get("RunId"), "Duplicate": bool(value.get("Duplicate"))}, 202)


async def backfill_schedule(request: web.Request) -> web.Response:
    """Fire each tick of ``[Start, End]`` once (at most ``MAX_BACKFILL_TICKS``), under a policy."""
    ctx, name = await _visible_job(request)
    schedule_id = _id(request)
    req = actions.parse_backfill(await _body(request, empty_ok=False), int(ctx.clock()))
    _require_level(ctx, "backfill")
    s = await _stored_schedule(ctx, name, schedule_id)
    ticks = actions.ticks_between(s.cron, s.time_zone, req.start, req.end)
    spec = jobconfig.merge(ctx.jobs.job(name), s.overrides)
    rid = f"backfill/{s.id}/{req.request_id or ctx.new_id()}"
    result = _raise_for(
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

    return _json(
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
    ctx, name = await _visible_job(request)
    schedule_id = _id(request)
    count = actions.parse_count(request.query.get("count"))
    s, last = ctx.raft.read(lambda st: (_schedule_of(st, name, schedule_id), st.last_fired.get(schedule_id)))
    after = max(int(ctx.clock()), last or 0)
    ticks = [] if s.paused else actions.next_fires(s.cron, s.time_zone, after, count)
    return _json(
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
    return _json({"Schedule": expr, "TimeZone": time_zone, "NextFireTimes": [actions.iso(t) for t in ticks]})


# -- runs ----------------------------------------------------------------------------------------


async def post_job(request: web.Request) -> web.Response:
    ctx, name = await _visible_job(request)
    body = await _body(request, empty_ok=True)
    with collecting() as notes:
        spec = jobconfig.merge(ctx.jobs.job(name), jobconfig.parse_overrides(body))
    _adjusted(request, notes)
    run_id = ctx.new_id()
    run = Run(
        id=run_id,
        job_name=name,
        spec=spec,
        status=RunStatus.QUEUED,
        queued_at_ms=ctx.now_ms(),
        kube_name=kube_job_name(name, run_id),
    )
    await _submit(ctx, "enqueue_run", run=codec.run_to_dict(run))
    return _json({"Id": run_id}, 202)


async def list_jobs(request: web.Request) -> web.Response:
    """The job's runs in SlimFaas's order, optionally paged (``?limit``, ``?continue``).

    A page token names the last run served: its place among the runs that left the queue
    (newest first), or its id in the queue; a queued run that left the queue meanwhile resumes
    the next page at the head of the queue, so nothing still queued is skipped.
    """
    ctx, name = await _visible_job(request)
    scope = f"runs/{name}"
    req = paging.parse(request.query, scope)
    runs, queue = ctx.raft.read(lambda s: (s.runs_of(name), s.queue_of(name)))
    if not req.paged:
        return _json(views.run_views(runs, queue))
    ordered = views.ordered_runs(runs, queue)
    started = len(ordered) - len(queue)
    keys: list[paging.Key] = [views.started_key(r) for r in ordered[:started]]
    keys += [(1, r.id) for r in queue]
    after = None if req.after is None else paging.expect(req.after, (int, int, str), (int, str))
    if after is None:
        start = 0
    elif len(after) == 2:  # (1, id): a queued run
        start = next((i + 1 for i in range(started, len(ordered)) if keys[i] == after), started)
    else:  # (0, -queued_at_ms, id): a run out of the queue
        start = bisect.bisect_right(keys, after, 0, started)
    page, headers = _paged(ordered, keys, start, req, scope, request)
    at = views.positions(queue)
    return _json([views.run_view(r, at.get(r.id, -1)) for r in page], headers=headers)


async def delete_job(request: web.Request) -> web.Response:
    ctx, name = await _visible_job(request)
    result = await _submit(ctx, "cancel_run", job_name=name, run_id=_id(request), at=ctx.now_ms())
    value = result.value or {}
    return _json({"Id": value.get("Id"), "Status": RunStatus.CANCELED.value, "Name": value.get("KubeName")})


def _query_bool(request: web.Request, name: str) -> bool:
    raw = request.query.get(name, "false").lower()
    if raw not in ("true", "false", "1", "0"):
        raise BadRequest("invalid_query", f"?{name} must be true or false, not {raw!r}")
    return raw in ("true", "1")


def _query_tail(request: web.Request) -> int | None:
    raw = request.query.get("tail")
    if raw is None:
        return None
    if not (raw.isascii() and raw.isdigit()) or len(raw) > 9:  # isdigit() alone admits '²'
        raise BadRequest("invalid_query", f"?tail must be a whole number of lines, not {raw!r}")
    return int(raw)


async def job_logs(request: web.Request) -> web.StreamResponse:
    """The run's pod log: text, ``?tail=N`` last lines, ``?follow=true`` streams until the pod ends."""
    ctx, name = await _visible_job(request)
    run_id = _id(request)
    tail = _query_tail(request)
    follow = _query_bool(request, "follow")
    run = ctx.raft.read(lambda s: s.runs.get(run_id))
    if run is None or run.job_name != name:
        raise NotFound("not_found", f"no run {run_id} for job {name}")
    if run.status in (RunStatus.QUEUED, RunStatus.DISPATCHING) or run.dispatch_term is None:
        raise Conflict("not_started", f"run {run_id} is {run.status.value}: it has no pod (and no log) yet")
    if ctx.kube is None:
        raise Unavailable("no_kubernetes", "this node has no Kubernetes API configured")
    try:
        pods = await ctx.kube.list_pods(run_selector(run.id))
    except KubeError as e:
        raise ApiError(502, "kubernetes_error", f"listing the run's pods failed: {e}") from e
    if not pods:
        raise NotFound("no_pod", f"run {run_id} has no pod any more (its Job may have been cleaned up)")
    pod = max(pods, key=lambda p: str((p.get("metadata") or {}).get("creationTimestamp", "")))
    pod_name = str(pod["metadata"]["name"])
    if not follow:
        try:
            text = await ctx.kube.read_pod_log(pod_name, tail)
        except KubeError as e:
            raise ApiError(502, "kubernetes_error", f"reading the log of pod {pod_name} failed: {e}") from e
        return web.Response(text=text, content_type="text/plain")
    response = web.StreamResponse(headers={"Content-Type": "text/plain; charset=utf-8"})
    await response.prepare(request)
    try:
        async for line in ctx.kube.stream_pod_log(pod_name):
            await response.write(line.encode() + b"\n")
    except KubeError as e:
        # The status line is sent already: ending the stream early is all that is left to do.
        log.warning("following the log of pod %s stopped: %s", pod_name, e)
    await response.write_eof()
    return response


# -- GET /jobs/status (SlimFaas's JobStatusEndpoints.cs, read by its UI's useJobStatus.ts) ---------


async def jobs_status(request: web.Request) -> web.Response:
    """Every configured job (``Default`` included, as SlimFaas lists it) with its schedules and
    the runs it has in Kubernetes, in SlimFaas's JobConfigurationStatus shape: NextExecutionTimestamp
    in Unix seconds (Cron.cs), InQueueTimestamp/StartTimestamp in .NET ticks. Private jobs are
    listed only to callers inside the cluster (SlimFaas lists them to anyone)."""
    ctx = request.app[CTX]
    jobs = ctx.jobs
    inside = await _in_cluster(request)
    names = [n for n, c in jobs.configurations.items() if inside or c.visibility is Visibility.PUBLIC]
    now_s = int(ctx.clock())

    def view(state: State) -> dict[str, tuple[list[tuple[Schedule, int | None]], list[Run]]]:
        return {
            n: (
                [(sc, state.last_fired.get(sc.id)) for sc in state.schedules_of(n)],
                [r for r in state.runs_of(n) if r.status.active],
            )
            for n in names
        }

    found = ctx.raft.read(view)
    return _json([views.job_status(n, jobs.configurations[n], *found[n], now_s) for n in names])


# -- operations ----------------------------------------------------------------------------------


async def health(request: web.Request) -> web.Response:
    _require_raft_listener(request.app[CTX])
    return _json({"Status": "Healthy"})


def _require_raft_listener(ctx: ApiContext) -> None:
    """A node whose Raft listening socket closed is out of the cluster for good: fail the probes
    so that Kubernetes restarts it (issue 16)."""
    lost = ctx.raft.transport.listener_lost
    if lost is not None:
        raise Unavailable(
            "raft_listener_lost", f"this node's Raft listener is closed ({lost}); restart the node"
        )


async def ready(request: web.Request) -> web.Response:
    ctx = request.app[CTX]
    status = ctx.raft.status()
    if not ctx.ready_gate():
        raise Unavailable("shutting_down", "this node is shutting down")
    _require_raft_listener(ctx)
    if not status.ready:
        raise Unavailable(
            "not_ready",
            "this node has no leader yet" if status.leader is None else "this node is still applying the log",
        )
    return _json({"Status": "Ready", "Leader": status.leader})


async def cluster_status(request: web.Request) -> web.Response:
    ctx = request.app[CTX]
    s = ctx.raft.status()
    body: dict[str, Any] = {
        "Node": s.node,
        "Leader": s.leader,
        "IsLeader": s.is_leader,
        "Term": s.term,
        "CommitIndex": s.commit_index,
        "AppliedIndex": s.applied_index,
        "Peers": list(s.peers),
        "ConnectedPeers": list(s.connected_peers),
        "Schedules": ctx.raft.read(lambda st: len(st.schedules)),
        "ConfigurationNotes": [n.message for n in ctx.jobs.notes],
    }
    if s.is_leader:
        body["MatchIndex"] = ctx.raft.match_indexes()
    written = ctx.metrics.registry.get_sample_value("slimsched_backup_last_write_timestamp_seconds")
    if written:  # registered only on a node with a backup volume; 0 until its first write
        body["BackupWrittenAt"] = views.iso(int(written))
    if request.query.get("hash") in ("1", "true"):
        state = ctx.raft.read(lambda st: st.copy())
        body["StateHash"] = fingerprint(state)
    return _json(body)


async def metrics(request: web.Request) -> web.Response:
    ctx = request.app[CTX]
    m = ctx.metrics
    status = ctx.raft.status()
    m.is_leader.set(1 if status.is_leader else 0)
    m.term.set(status.term)
    m.commit_index.set(status.commit_index)
    m.applied_index.set(status.applied_index)
    m.schedules.set(ctx.raft.read(lambda st: len(st.schedules)))
    return web.Response(body=m.render(), content_type="text/plain", charset="utf-8")


@functools.cache
def openapi_json() -> bytes:
    """The OpenAPI document of this API, shipped as package data (``slimsched/openapi.json``)."""
    return importlib.resources.files("slimsched").joinpath("openapi.json").read_bytes()


async def openapi_document(request: web.Request) -> web.Response:
    return web.Response(body=openapi_json(), content_type="application/json")


ROUTES: tuple[Route, ...] = (
    ("POST", "/job-schedules/{name}", post_schedule),
    ("GET", "/job-schedules/{name}", list_schedules),
    ("DELETE", "/job-schedules/{name}/{id}", delete_schedule),
    ("PATCH", "/job-schedules/{name}/{id}", patch_schedule),
    ("GET", "/job-schedules/{name}/{id}/ticks", schedule_ticks),
    ("POST", "/job-schedules/{name}/{id}/trigger", trigger_schedule),
    ("POST", "/job-schedules/{name}/{id}/backfill", backfill_schedule),
    ("GET", "/job-schedules/{name}/{id}/next", schedule_next),
    ("GET", "/schedule-preview", schedule_preview),
    ("GET", "/jobs", list_all_jobs),
    ("GET", "/ui", ui.page),
    ("GET", "/ui/app.js", ui.script),
    ("GET", "/ui/style.css", ui.stylesheet),
    ("POST", "/job/{name}", post_job),
    ("GET", "/job/{name}", list_jobs),
    ("DELETE", "/job/{name}/{id}", delete_job),
    ("GET", "/job/{name}/{id}/logs", job_logs),
    ("GET", "/jobs/status", jobs_status),
    ("GET", "/status-jobs", jobs_status),
    ("GET", "/health", health),
    ("GET", "/ready", ready),
    ("GET", "/status", cluster_status),
    ("GET", "/metrics", metrics),
    ("GET", "/openapi.json", openapi_document),
)


def create_app(ctx: ApiContext) -> web.Application:
    app = web.Application(middlewares=[errors_middleware], client_max_size=ctx.max_body_bytes)
    app[CTX] = ctx
    app.on_response_prepare.append(_add_warnings)
    for method, path, handler in (*ROUTES, *ctx.extra_routes):
        app.router.add_route(method, path, handler)
    return app
