"""The routes of runs: submit a run (POST /job), list and cancel runs, read a run's log, the job
catalog (GET /jobs) and SlimFaas's GET /jobs/status.

Split out of ``slimsched.api`` so that each module owns one role: everything here reads or
changes runs of jobs, or lists the jobs that own them.
"""

from __future__ import annotations

import bisect
import logging
from typing import Any

from aiohttp import web

from slimsched import codec, jobconfig, paging, views
from slimsched.apibase import (
    CTX,
    adjusted,
    in_cluster,
    json_reply,
    paged,
    path_id,
    read_body,
    submit,
    visible_job,
)
from slimsched.errors import ApiError, BadRequest, Conflict, KubeError, NotFound, Unavailable
from slimsched.jobmanifest import kube_job_name, run_selector
from slimsched.jsonfields import collecting
from slimsched.model import Run, RunStatus, Schedule, Visibility
from slimsched.statemachine import State

log = logging.getLogger(__name__)


# -- the job catalog (for the web view and the CLI client) --------------------------------------


async def list_all_jobs(request: web.Request) -> web.Response:
    """Every job known: configured, discovered, or holding runs or schedules, with its counts.

    A Private job seen from outside the cluster is listed by name and visibility only, with
    ``Accessible`` false: its routes answer 403 to that caller, as they do everywhere else.
    """
    ctx = request.app[CTX]
    inside = await in_cluster(request)

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
    return json_reply(out)


# -- runs ----------------------------------------------------------------------------------------


async def post_job(request: web.Request) -> web.Response:
    ctx, name = await visible_job(request)
    body = await read_body(request, empty_ok=True)
    with collecting() as notes:
        spec = jobconfig.merge(ctx.jobs.job(name), jobconfig.parse_overrides(body))
    adjusted(request, notes)
    run_id = ctx.new_id()
    # The command straight from its parts (no Run built here): the merged spec stays in it, so
    # that every node records what this node decided, whatever its own jobs configuration.
    run = codec.queued_run_command(run_id, name, spec, ctx.now_ms(), kube_job_name(name, run_id))
    await submit(ctx, "enqueue_run", run=run)
    return json_reply({"Id": run_id}, 202)


async def list_jobs(request: web.Request) -> web.Response:
    """The job's runs in SlimFaas's order, optionally paged (``?limit``, ``?continue``).

    A page token names the last run served: its place among the runs that left the queue
    (newest first), or its id in the queue; a queued run that left the queue meanwhile resumes
    the next page at the head of the queue, so nothing still queued is skipped.
    """
    ctx, name = await visible_job(request)
    scope = f"runs/{name}"
    req = paging.parse(request.query, scope)
    runs, queue = ctx.raft.read(lambda s: (s.runs_of(name), s.queue_of(name)))
    if not req.paged:
        return json_reply(views.run_views(runs, queue))
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
    page, headers = paged(ordered, keys, start, req, scope, request)
    at = views.positions(queue)
    return json_reply([views.run_view(r, at.get(r.id, -1)) for r in page], headers=headers)


async def delete_job(request: web.Request) -> web.Response:
    ctx, name = await visible_job(request)
    result = await submit(ctx, "cancel_run", job_name=name, run_id=path_id(request), at=ctx.now_ms())
    value = result.value or {}
    return json_reply(
        {"Id": value.get("Id"), "Status": RunStatus.CANCELED.value, "Name": value.get("KubeName")}
    )


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
    ctx, name = await visible_job(request)
    run_id = path_id(request)
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
    inside = await in_cluster(request)
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
    return json_reply([views.job_status(n, jobs.configurations[n], *found[n], now_s) for n in names])
