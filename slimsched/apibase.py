"""What every route module of the REST API shares: its context, its answers, its request parsing.

The API is split by role (schedules, schedule actions, runs, operations); this module is the
common ground they all import and that imports none of them, so the split has no cycle. Handlers
are thin: parse and validate the request (``jobconfig``, ``cronplan``), read the clock and make
ids (the proposer's job, never ``apply``'s), submit one command through Raft and map its result
to a status. A write is answered only after its command is committed and applied on this node,
so a read on the same node right after sees it. Every error is ``{"Error": code, "Message":
sentence}`` with its status (``errors_middleware``); nothing reaches the client as a 500 with a
traceback.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web

from slimsched import ids, jobconfig, jobnames, paging
from slimsched.access import AccessPolicy
from slimsched.errors import ApiError, BadRequest, Conflict, Forbidden, NotFound
from slimsched.jsonfields import Note
from slimsched.kube import KubeClient
from slimsched.metrics import Metrics
from slimsched.model import Visibility
from slimsched.raft import RaftNode
from slimsched.statemachine import Result, encode_command

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


def json_reply(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        body=orjson.dumps(data), status=status, content_type="application/json", headers=headers
    )


def error_response(err: ApiError) -> web.Response:
    headers = {"Retry-After": str(err.retry_after)} if err.retry_after is not None else None
    return json_reply({"Error": err.code, "Message": err.message}, err.status, headers)


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


def adjusted(request: web.Request, notes: list[Note]) -> None:
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


async def add_warnings(request: web.Request, response: web.StreamResponse) -> None:
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
        adjusted(request, [lowered])
    return name


def path_id(request: web.Request) -> str:
    value = request.match_info["id"]
    if not _ID.match(value):
        raise NotFound("not_found", f"no item with id {value!r}")
    return value


async def read_body(request: web.Request, *, empty_ok: bool) -> Any:
    raw = await request.read()
    if not raw.strip():
        if empty_ok:
            return {}
        raise BadRequest("invalid_json", "the request body is empty; a JSON object is expected")
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as e:
        raise BadRequest("invalid_json", f"the request body is not valid JSON: {e}") from e


async def in_cluster(request: web.Request) -> bool:
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
    if await in_cluster(request):
        return
    raise Forbidden(
        "private_job", f"job {name!r} is Private: it accepts requests only from inside the cluster"
    )


async def visible_job(request: web.Request) -> tuple[ApiContext, str]:
    """The context and the job name of a /job or /job-schedules request, once the caller may see it."""
    name = _job_name(request)
    await _check_visibility(request, name)
    return request.app[CTX], name


def raise_for(result: Result) -> Result:
    if result.ok:
        return result
    status = {"not_found": NotFound, "conflict": Conflict, "duplicate": Conflict, "invalid": BadRequest}
    raise status.get(result.code, BadRequest)(result.code, result.message)


async def submit(ctx: ApiContext, kind: str, **fields: Any) -> Result:
    return raise_for(await ctx.raft.submit(encode_command(kind, rid=ctx.new_id(), **fields)))


def paged(
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
