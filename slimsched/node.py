"""One slimsched node: wires settings, the Raft node, the HTTP API, Kubernetes and the leader loops.

The node owns every background task it starts and stops them within a deadline. Shutdown order
(SIGTERM): readiness fails first, the HTTP server stops taking connections and lets in-flight
requests finish, the leader loops stop, a last backup is written, then the Raft node leaves.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass, field

from aiohttp import web

from slimsched import catalog, crashpoints, heap, ids, jobconfig, state_schedules
from slimsched.access import AccessPolicy
from slimsched.api import ApiContext, create_app
from slimsched.backup import Backups, admin_routes
from slimsched.errors import ConfigError, KubeError
from slimsched.heap import HeapPolicy, HeapSteward
from slimsched.httpguard import GuardedSite, body_deadline_middleware, connection_cap
from slimsched.kube import KubeClient
from slimsched.leader import Leader, LeaderTimings
from slimsched.metrics import Metrics
from slimsched.raft import RaftNode
from slimsched.settings import Settings

log = logging.getLogger(__name__)

SHUTDOWN_GRACE_SECONDS = 10.0
POD_IPS_TTL_SECONDS = 10.0
_SERVICE_ACCOUNT_TOKEN = "/var/run/secrets/kubernetes.io/serviceaccount/token"


def make_kube(settings: Settings) -> KubeClient | None:
    """The Kubernetes client ``settings.kube_mode`` asks for; None means "do not dispatch"."""
    mode = settings.kube_mode
    if mode == "auto":
        if settings.kube_url:
            mode = "url"
        elif os.path.exists(_SERVICE_ACCOUNT_TOKEN):
            mode = "incluster"
        elif settings.kubeconfig or os.path.exists(os.path.expanduser("~/.kube/config")):
            mode = "kubeconfig"
        else:
            mode = "none"
    if mode == "none":
        log.warning("no Kubernetes API configured: schedules fire and runs queue, but nothing is dispatched")
        return None
    if mode == "url":
        if not settings.kube_url:
            raise ConfigError("SLIMSCHED_KUBE_MODE=url needs SLIMSCHED_KUBE_URL")
        return KubeClient.from_url(settings.kube_url, settings.namespace)
    if mode == "incluster":
        return KubeClient.in_cluster(settings.namespace)
    if mode == "kubeconfig":
        return KubeClient.from_kubeconfig(settings.kubeconfig, settings.namespace)
    raise ConfigError(f"SLIMSCHED_KUBE_MODE must be auto, none, url, incluster or kubeconfig, not {mode!r}")


@dataclass
class Node:
    settings: Settings
    jobs: jobconfig.JobsConfiguration
    clock: Callable[[], float] = time.time
    leader_timings: LeaderTimings = field(default_factory=LeaderTimings)
    heap_policy: HeapPolicy = field(default_factory=HeapPolicy)
    raft: RaftNode = field(init=False)
    metrics: Metrics = field(init=False)
    kube: KubeClient | None = field(init=False)
    leader: Leader = field(init=False)
    _runner: web.AppRunner | None = field(default=None, init=False)
    _ctx: ApiContext | None = field(default=None, init=False)
    _discovery: asyncio.Task[None] | None = field(default=None, init=False)
    _heap: asyncio.Task[None] | None = field(default=None, init=False)
    _hello: asyncio.Task[None] | None = field(default=None, init=False)
    _pod_ips_cache: tuple[float, frozenset[str]] = field(default=(-1e9, frozenset()), init=False)
    _accepting: bool = field(default=True, init=False)
    backups: Backups | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        for note in self.jobs.notes:
            log.warning("jobs configuration: %s", note.message)
        self.metrics = Metrics()
        self.kube = make_kube(self.settings)
        self.raft = RaftNode(self.settings)
        self.leader = Leader(
            raft=self.raft,
            jobs=self.jobs,
            kube=self.kube,
            metrics=self.metrics,
            clock=self.clock,
            namespace=self.settings.namespace,
            timings=self.leader_timings,
            new_id=ids.new_id,
        )
        self.raft.set_hooks(on_role_change=self.leader.on_role_change, on_applied=self.leader.on_applied)
        transport = self.raft.transport
        self.metrics.raft_listener_up.set_function(lambda: 0.0 if transport.listener_lost else 1.0)
        self.metrics.raft_frames_refused.set_function(lambda: float(transport.frames_refused))
        self.metrics.raft_accept_failures.set_function(lambda: float(transport.accept_failures))
        self.metrics.raft_unidentified_dropped.set_function(lambda: float(transport.unidentified_dropped))
        self.metrics.raft_resent_entries.set_function(lambda: float(transport.resent_entries))
        self.metrics.raft_divergences.set_function(lambda: float(transport.divergences))
        if self.settings.backup_dir:
            self.backups = Backups(
                raft=self.raft,
                backup_dir=self.settings.backup_dir,
                node_id=self.settings.node_id,
                interval_seconds=self.settings.backup_interval_seconds,
                registry=self.metrics.registry,
                clock=self.clock,
            )
            self.leader.restore_hook = self.backups.restore_if_cold_start

    @property
    def http_url(self) -> str:
        host = "127.0.0.1" if self.settings.http_host in ("0.0.0.0", "::") else self.settings.http_host
        return f"http://{host}:{self.settings.http_port}"

    async def start(self) -> None:
        s = self.settings
        state_schedules.BREAK_FIRE_DEDUP = s.test_break_fire_dedup  # test only; see settings
        crashpoints.arm(
            s.test_crash_at, s.test_breaks, s.test_stop_at, s.test_stall_elected_seconds
        )  # test only; see settings
        loop = asyncio.get_running_loop()
        self.leader.attach(loop)
        await loop.run_in_executor(None, self.raft.start)
        self._hello = loop.create_task(self.raft.announce_level(), name="raft-hello")
        ctx = ApiContext(
            raft=self.raft,
            jobs=self.jobs,
            access=AccessPolicy.build(s.trusted_cidrs, s.trusted_proxies),
            clock=self.clock,
            max_body_bytes=s.max_body_bytes,
            ready_gate=lambda: self._accepting,
            metrics=self.metrics,
            pod_ips=self._pod_ips,
            kube=self.kube,
            strict=s.strict,
        )
        ctx.extra_routes = admin_routes(self.raft, ctx.access, backups=self.backups)  # POST /admin/...
        self._ctx = ctx
        if self.kube is not None:
            self._discovery = loop.create_task(self._discover_cronjobs(), name="cronjob-discovery")
        app = create_app(ctx)
        # Outermost: it sees the JSON answer to a body timeout, and closes that connection.
        app.middlewares.insert(0, body_deadline_middleware(s.http_body_timeout_seconds))
        self._runner = web.AppRunner(
            app,
            access_log=None,
            shutdown_timeout=SHUTDOWN_GRACE_SECONDS,
            handle_signals=False,
            keepalive_timeout=s.http_header_timeout_seconds,  # also bounds an incomplete request
        )
        await self._runner.setup()
        cap = connection_cap(s.max_http_connections)
        await GuardedSite(
            self._runner,
            s.http_host,
            s.http_port,
            max_connections=cap,
            on_refused=self.metrics.http_connections_refused.inc,
        ).start()
        log.info(
            "node %s serving HTTP on %s:%s (at most %d connections)", s.node_id, s.http_host, s.http_port, cap
        )
        if self.backups is not None:
            self.backups.start()  # task "backup"; stopped (after a last pass) in stop()
        # Imports, the snapshot just loaded and the journal replayed are long-lived: frozen now.
        steward = HeapSteward(self.heap_policy, loop.time())
        steward.step(loop.time())
        self._heap = loop.create_task(steward.run(loop.time), name="heap")

    async def _pod_ips(self) -> Collection[str]:
        """IPs of the namespace's pods (callers that count as in-cluster), cached for 10 s."""
        if self.kube is None:
            return ()
        now = asyncio.get_running_loop().time()
        fetched_at, ips = self._pod_ips_cache
        if now - fetched_at < POD_IPS_TTL_SECONDS:
            return ips
        try:
            pods = await self.kube.list_pods("")
        except KubeError as e:
            log.warning("listing pods for the Private check failed: %s", e)
            return ips
        ips = frozenset(ip for p in pods if (ip := (p.get("status") or {}).get("podIP")))
        self._pod_ips_cache = (now, ips)
        return ips

    async def _discover_cronjobs(self) -> None:
        """Every node maps annotated CronJobs to jobs, so any node validates requests for them."""
        assert self.kube is not None
        current: jobconfig.JobsConfiguration | None = None
        while True:
            try:
                combined = catalog.combine(self.jobs, await self.kube.list_cronjobs())
            except KubeError as e:
                log.warning("listing CronJobs failed: %s", e)
            else:
                if combined != current:
                    for note in set(combined.notes) - set(current.notes if current else self.jobs.notes):
                        log.warning("CronJob discovery: %s", note.message)
                    current = combined
                    discovered = combined.from_cronjobs
                    if self._ctx is not None:
                        self._ctx.jobs = combined
                    self.leader.jobs_changed(combined, discovered)
                    log.info("job catalog updated: %d jobs from CronJobs", len(discovered))
            await asyncio.sleep(self.settings.cronjob_refresh_seconds)

    async def _hand_over_leadership(self, within: float = 1.5) -> None:
        """A leader that leaves asks a follower to take over at once (bounded wait)."""
        if not self.raft.status().is_leader:
            return
        self.raft.step_down()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(within):
                await self.leader.not_leading.wait()

    async def stop(self) -> None:
        self._accepting = False
        if self._runner is not None:
            await self._runner.cleanup()  # in-flight requests finish; their commits complete
            self._runner = None
        await self.leader.stop()
        await self._hand_over_leadership()
        if self.backups is not None:
            await self.backups.stop()
        if self._heap is not None:
            self._heap.cancel()
            await asyncio.wait({self._heap}, timeout=SHUTDOWN_GRACE_SECONDS)
            self._heap = None
            heap.unfreeze()  # a node embedded in a longer-lived process leaves nothing frozen
        for task in (self._hello, self._discovery):
            if task is not None:
                task.cancel()
                await asyncio.wait({task}, timeout=SHUTDOWN_GRACE_SECONDS)
        self._hello = self._discovery = None
        await asyncio.get_running_loop().run_in_executor(None, self.raft.stop)
        if self.kube is not None:
            await self.kube.close()
        log.info("node %s stopped", self.settings.node_id)
