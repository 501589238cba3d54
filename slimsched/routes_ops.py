"""The operations routes: health and readiness probes, cluster status, Prometheus metrics and the
OpenAPI document.

Split out of ``slimsched.api`` so that each module owns one role: these routes serve Kubernetes
and operators, not API clients, and read the node's Raft status rather than stored jobs.
"""

from __future__ import annotations

import functools
import importlib.resources
from typing import Any

from aiohttp import web

from slimsched import views
from slimsched.apibase import CTX, ApiContext, json_reply
from slimsched.errors import Unavailable
from slimsched.statemachine import fingerprint

# -- operations ----------------------------------------------------------------------------------


async def health(request: web.Request) -> web.Response:
    _require_raft_listener(request.app[CTX])
    return json_reply({"Status": "Healthy"})


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
    return json_reply({"Status": "Ready", "Leader": status.leader})


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
    return json_reply(body)


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
