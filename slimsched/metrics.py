"""Prometheus metrics of one node (prometheus-client), in a registry of the node's own.

A registry per node, not the library's global one, so several nodes can live in one process
(tests, benchmarks) without mixing their figures.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENESS_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


@dataclass
class Metrics:
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        r = self.registry
        self.ticks = Counter(
            "slimsched_ticks",
            "Cron ticks handled by this node as leader, by outcome",
            ["outcome"],
            registry=r,
        )
        self.lateness = Histogram(
            "slimsched_fire_lateness_seconds",
            "Time from a tick's scheduled time to its FireTick being committed",
            buckets=LATENESS_BUCKETS,
            registry=r,
        )
        self.dispatch_lateness = Histogram(
            "slimsched_dispatch_lateness_seconds",
            "Time from a cron tick's scheduled time to its Kubernetes Job being created",
            buckets=LATENESS_BUCKETS,
            registry=r,
        )
        self.dispatched = Counter("slimsched_jobs_dispatched", "Kubernetes Jobs created", registry=r)
        self.claimed_at_fire = Counter(
            "slimsched_runs_claimed_at_fire",
            "Cron runs whose FireTick also started their dispatch (one commit instead of two)",
            registry=r,
        )
        self.reconciled = Counter(
            "slimsched_runs_reconciled",
            "Runs found in Dispatching without their Job, whose Job a leader created again, by when "
            "(term-start: the reconcile right after a new leader's barrier; poll: a later one)",
            ["phase"],
            registry=r,
        )
        self.jobs_already_existed = Counter(
            "slimsched_jobs_already_existed",
            "Job creates answered 409 AlreadyExists, counted as done (an earlier attempt created it)",
            registry=r,
        )
        self.dispatch_errors = Counter(
            "slimsched_dispatch_errors", "Failed attempts to create or inspect Kubernetes Jobs", registry=r
        )
        self.adjustments = Counter(
            "slimsched_request_adjustments",
            "Requests adjusted as SlimFaas adjusts them (each also a Warning header), by kind",
            ["code"],
            registry=r,
        )
        self.queue_depth = Gauge("slimsched_queue_depth", "Runs waiting in the queue", registry=r)
        self.active_runs = Gauge("slimsched_active_runs", "Runs dispatched and not finished", registry=r)
        self.schedules = Gauge("slimsched_schedules", "Schedules in the replicated state", registry=r)
        self.is_leader = Gauge("slimsched_raft_is_leader", "1 if this node is the Raft leader", registry=r)
        self.term = Gauge("slimsched_raft_term", "Current Raft term", registry=r)
        self.commit_index = Gauge("slimsched_raft_commit_index", "Raft commit index", registry=r)
        self.applied_index = Gauge("slimsched_raft_applied_index", "Raft last applied index", registry=r)

        # Issue 16: the Raft port and the HTTP port under strangers and floods.
        self.raft_listener_up = Gauge(
            "slimsched_raft_listener_up",
            "1 while the Raft listening socket accepts connections; 0: the node is out of the cluster",
            registry=r,
        )
        self.raft_frames_refused = Gauge(
            "slimsched_raft_frames_refused",
            "Raft connections dropped since start for announcing a frame beyond the cap",
            registry=r,
        )
        self.raft_accept_failures = Gauge(
            "slimsched_raft_accept_failures",
            "Raft connections not accepted since start for lack of file descriptors",
            registry=r,
        )
        self.raft_unidentified_dropped = Gauge(
            "slimsched_raft_unidentified_dropped",
            "Raft connections dropped since start before identifying a peer (too many, or too slow)",
            registry=r,
        )
        self.raft_resent_entries = Gauge(
            "slimsched_raft_resent_entries",
            "Entries already applied here that the leader sent again unchanged (benign), since start",
            registry=r,
        )
        self.raft_divergences = Gauge(
            "slimsched_raft_divergences",
            "Entries applied here then replaced by a different term or command since start: alarm",
            registry=r,
        )
        self.http_connections_refused = Counter(
            "slimsched_http_connections_refused",
            "HTTP connections answered 503 and closed at once: the node's connection cap was reached",
            registry=r,
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)
