"""The REST API (aiohttp), SlimFaas "Jobs & Cron Schedules" compatible, PascalCase JSON.

This module is the route table (``ROUTES``) and ``create_app``; the handlers live in one module
per role (``routes_schedules``, ``routes_actions``, ``routes_runs``, ``routes_ops``) on the
common ground of ``apibase``. It re-exports the names callers import from ``slimsched.api``.
"""

from __future__ import annotations

from aiohttp import web

from slimsched import ui
from slimsched.apibase import CTX, ApiContext, Route, add_warnings, errors_middleware
from slimsched.routes_actions import backfill_schedule, schedule_next, schedule_preview, trigger_schedule
from slimsched.routes_ops import cluster_status, health, metrics, openapi_document, ready
from slimsched.routes_runs import delete_job, job_logs, jobs_status, list_all_jobs, list_jobs, post_job
from slimsched.routes_schedules import (
    delete_schedule,
    list_schedules,
    patch_schedule,
    post_schedule,
    schedule_ticks,
)

__all__ = ["CTX", "ROUTES", "ApiContext", "Route", "create_app", "errors_middleware"]


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
    app.on_response_prepare.append(add_warnings)
    for method, path, handler in (*ROUTES, *ctx.extra_routes):
        app.router.add_route(method, path, handler)
    return app
