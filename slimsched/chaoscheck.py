"""What ``slimsched chaos`` clients were told, what the nodes hold at the end, and the checker.

Why a module of its own: ``check`` and ``unexercised`` are pure (no I/O, no clock): they compare
the client log with the nodes' snapshots and the emulator's Job creations. Kept apart from the
harness that gathers those inputs, the rules can be read, and tested, without a cluster.
"""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from slimsched.chaosplan import FaultRecord
from slimsched.cronplan import MAX_MISSED_RECORDED
from slimsched.jobmanifest import kube_job_name
from slimsched.statemachine import LEDGER_PER_SCHEDULE

EVERY_SECOND = "* * * * * *"


@dataclass(frozen=True)
class Answer:
    status: int | None  # None: no answer (timeout, reset after sending)
    body: Any
    sent: bool = True  # False: the connection was refused, the request never left

    @property
    def acked(self) -> bool:
        return self.status is not None and 200 <= self.status < 300

    @property
    def unknown(self) -> bool:
        """The request may or may not have taken effect."""
        return self.sent and (self.status is None or self.status >= 500)


@dataclass
class OpCounts:
    attempted: int = 0
    acked: int = 0
    rejected: int = 0
    unknown: int = 0
    unreachable: int = 0


@dataclass(frozen=True)
class CreatedSchedule:
    job: str
    cron: str
    acked_at: float


@dataclass(frozen=True)
class DeletedSchedule:
    job: str
    acked_at: float
    how: str  # "204", or "404 after an unknown attempt"


@dataclass(frozen=True)
class AckedTrigger:
    job: str
    acked_at: float


@dataclass
class ClientLog:
    created: dict[str, CreatedSchedule] = field(default_factory=dict)
    deleted: dict[str, DeletedSchedule] = field(default_factory=dict)
    delete_unknown: set[str] = field(default_factory=set)
    triggers: dict[str, AckedTrigger] = field(default_factory=dict)
    job_names: set[str] = field(default_factory=set)
    ledger_polls: dict[str, list[list[dict[str, Any]]]] = field(default_factory=dict)
    lost_at_delete: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    ops: dict[str, OpCounts] = field(default_factory=dict)

    def count(self, op: str, answer: Answer) -> None:
        c = self.ops.setdefault(op, OpCounts())
        c.attempted += 1
        if not answer.sent:
            c.unreachable += 1
        elif answer.acked:
            c.acked += 1
        elif answer.unknown:
            c.unknown += 1
        else:
            c.rejected += 1


# --- what the cluster holds at the end, and the invariant checker -----------------------------


@dataclass
class NodeSnapshot:
    index: int
    schedules: dict[str, dict[str, Any]] = field(default_factory=dict)  # by schedule id
    runs: dict[str, dict[str, Any]] = field(default_factory=dict)  # by run id (with "Job")
    ledgers: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # by schedule id
    state_hash: str | None = None


@dataclass(frozen=True)
class Violation:
    kind: str
    detail: str


@dataclass
class TickStats:
    fired: int = 0
    missed: int = 0
    skipped: int = 0
    catch_up: int = 0  # ticks fired in one FireTick with older ticks recorded missed (an outage)


def _tick_of(run_id: str) -> int | None:
    _, _, tail = run_id.rpartition("-")
    return int(tail) if tail.isdigit() else None


def _ledger_gap_explained(
    gap_end: int, records: list[dict[str, Any]], polls: list[list[dict[str, Any]]]
) -> bool:
    """A gap before tick ``gap_end`` the design allows: the ledger's own bound, not a lost tick.

    Either a poll returned a full ledger starting at ``gap_end`` (older records were dropped
    before we read them), or ``gap_end`` belongs to a catch-up batch that listed only the newest
    MAX_MISSED_RECORDED missed ticks of a long outage.
    """
    for poll in polls:
        if len(poll) >= LEDGER_PER_SCHEDULE and min(int(r["Tick"]) for r in poll) == gap_end:
            return True
    at = [r["RecordedAt"] for r in records if int(r["Tick"]) == gap_end]
    batch = [r for r in records if at and r["RecordedAt"] == at[0]]
    return len(batch) >= MAX_MISSED_RECORDED + 1


def check(
    log: ClientLog,
    snapshots: Sequence[NodeSnapshot],
    creations: Sequence[tuple[str, str]],
    notes: Sequence[Violation] = (),
    jobs_by_run: Mapping[str, Sequence[str]] | None = None,
    cold_starts: Sequence[tuple[float, float]] = (),
    old_jobs: frozenset[str] = frozenset(),
) -> tuple[list[Violation], TickStats]:
    """Compare what clients were told with what every node and the emulator hold.

    - every acknowledged (2xx) schedule create and trigger is on every node (by id), unless the
      schedule was deleted since; an acknowledged delete did not come back;
    - every acknowledged trigger produced exactly one Job; no Job name was created twice; every
      Job belongs to a run of the replicated state;
    - cron ticks (from the ledgers read during the run and at the end, and the runs): each tick
      is recorded once; every fired tick has its run ``{schedule}-{tick}`` and exactly one Job
      ``kube_job_name(job, run id)``; a missed or skipped tick has none; every second of an
      every-second schedule, from its creation on, is in the ledger (only the ledger's own
      bounds may hide one); no tick fired after the schedule's delete was acknowledged;
    - every node holds the same state (StateHash).

    A cold start (``cold_starts``: when the ledgers were last read before it, and when the
    cluster was stopped) restores schedules and their last fired ticks only, not runs or ledgers
    (backup/RUNBOOK.md): a trigger or tick from before it needs at most one Job instead of
    exactly one and no run, the Jobs created before it (``old_jobs``) need no run, and the ticks
    fired between that last read and the stop are in no ledger any more.

    ``creations`` is the emulator's log of Job create attempts as (name, outcome);
    ``jobs_by_run`` the names of the Jobs Kubernetes holds by their run-id label, so a run
    dispatched twice is seen whatever its Jobs are named. Pure: the harness gathers the inputs
    once the cluster is healed and quiescent.
    """
    out: list[Violation] = list(notes)
    stats = TickStats()
    era = max((stopped for _, stopped in cold_starts), default=float("-inf"))  # runs and ledgers begin again

    def wiped_with_a_ledger(first: int, last: int) -> bool:
        return any(read - 2 <= first and last <= stopped + 1 for read, stopped in cold_starts)

    created = Counter(name for name, outcome in creations if outcome == "created")

    # Acknowledged schedule writes, on every node.
    for sid in log.lost_at_delete:
        out.append(Violation("acked-write-lost", f"acknowledged schedule {sid} was not found when deleted"))
    for snap in snapshots:
        for sid, c in log.created.items():
            if sid in log.deleted or sid in log.delete_unknown or sid in log.lost_at_delete:
                continue
            if sid not in snap.schedules:
                out.append(
                    Violation(
                        "acked-write-lost",
                        f"schedule {sid} ({c.job}) acknowledged, missing on node {snap.index}",
                    )
                )
        for sid, d in log.deleted.items():
            if sid in snap.schedules:
                out.append(
                    Violation(
                        "delete-came-back",
                        f"schedule {sid} ({d.job}) deleted ({d.how}), back on node {snap.index}",
                    )
                )
        for rid, t in log.triggers.items():
            if rid not in snap.runs and t.acked_at >= era:
                out.append(
                    Violation(
                        "acked-write-lost", f"run {rid} ({t.job}) acknowledged, missing on node {snap.index}"
                    )
                )

    # Kubernetes Jobs: one per acknowledged trigger, one per run, no name twice, none unexplained.
    for rid, t in log.triggers.items():
        n = created[kube_job_name(t.job, rid)]
        if n != 1 and not (t.acked_at < era and n == 0):
            out.append(
                Violation("trigger-not-one-job", f"acknowledged trigger {rid} ({t.job}) produced {n} Jobs")
            )
    for name, n in created.items():
        if n > 1:
            out.append(Violation("job-created-twice", f"Job {name} was created {n} times"))
    for rid, names in sorted((jobs_by_run or {}).items()):
        if len(set(names)) > 1:
            out.append(
                Violation("run-dispatched-twice", f"run {rid} has {len(set(names))} Jobs: {sorted(names)}")
            )
    runs: dict[str, dict[str, Any]] = {}
    for snap in snapshots:
        for rid, run in snap.runs.items():
            runs.setdefault(rid, run)
    run_names = {str(r["Name"]) for r in runs.values()}
    for name in sorted(set(created) - run_names - old_jobs):
        out.append(Violation("phantom-job", f"Job {name} matches no run of the replicated state"))

    # Cron ticks: the ledgers (polled during the run and at the end) against runs and Jobs.
    cron_runs: dict[str, dict[int, dict[str, Any]]] = {}
    for rid, run in runs.items():
        owner = run.get("ScheduleId")
        tick = _tick_of(rid)
        if owner and tick is not None:
            cron_runs.setdefault(str(owner), {})[tick] = run
    sids = set(cron_runs) | set(log.ledger_polls) | {s for snap in snapshots for s in snap.ledgers}
    for sid in sorted(sids):
        polls = [
            *log.ledger_polls.get(sid, []),
            *(snap.ledgers[sid] for snap in snapshots if sid in snap.ledgers),
        ]
        distinct: dict[tuple[Any, ...], dict[str, Any]] = {}
        for poll in polls:
            for r in poll:
                key = (r["Tick"], r["Outcome"], r["RecordedAt"], r.get("RunId"))
                distinct.setdefault(key, r)
        by_tick: dict[int, list[dict[str, Any]]] = {}
        for r in distinct.values():
            by_tick.setdefault(int(r["Tick"]), []).append(r)
        in_one_read = Counter[int]()  # the same tick twice in one ledger read
        for poll in polls:
            for tick, n in Counter(int(r["Tick"]) for r in poll).items():
                in_one_read[tick] = max(in_one_read[tick], n)
        fired_runs = cron_runs.get(sid, {})
        job = next((str(r["Job"]) for r in fired_runs.values()), None)
        if job is None and sid in log.created:
            job = log.created[sid].job
        stats.fired += len(fired_runs)
        by_recorded_at: dict[Any, set[str]] = {}
        for r in distinct.values():
            by_recorded_at.setdefault(r["RecordedAt"], set()).add(str(r["Outcome"]))
        stats.catch_up += sum(1 for outcomes in by_recorded_at.values() if {"fired", "missed"} <= outcomes)
        fired_ticks = set(fired_runs)
        for tick, records in sorted(by_tick.items()):
            outcomes = sorted(str(r["Outcome"]) for r in records)
            if len(records) > 1 or in_one_read[tick] > 1:
                out.append(Violation("tick-handled-twice", f"schedule {sid} tick {tick}: {outcomes}"))
            if "fired" in outcomes:
                fired_ticks.add(tick)
                if tick not in fired_runs and tick >= era:
                    out.append(
                        Violation("fired-tick-without-run", f"schedule {sid} tick {tick} fired, no run")
                    )
            else:
                stats.missed += outcomes.count("missed")
                stats.skipped += outcomes.count("skipped")
                if tick in fired_runs or (job is not None and created[kube_job_name(job, f"{sid}-{tick}")]):
                    out.append(
                        Violation("unfired-tick-ran", f"schedule {sid} tick {tick} is {outcomes}, yet ran")
                    )
        ticks = sorted(by_tick)
        every_second = log.created.get(sid, CreatedSchedule("", EVERY_SECOND, 0)).cron == EVERY_SECOND
        if every_second and ticks:
            merged = list(distinct.values())
            # The first tick after the schedule's creation (stamped before its acknowledgement)
            # is in the ledger, fired or missed: a new schedule loses no tick either.
            acked = log.created.get(sid)
            head = int(acked.acked_at) + 1 if acked is not None else None
            if (
                head is not None
                and ticks[0] > head
                and not _ledger_gap_explained(ticks[0], merged, polls)
                and not wiped_with_a_ledger(head, ticks[0] - 1)
            ):
                out.append(
                    Violation("tick-lost", f"schedule {sid}: ticks {head}..{ticks[0] - 1} are in no ledger")
                )
            for prev, nxt in itertools.pairwise(ticks):
                if (
                    nxt != prev + 1
                    and not _ledger_gap_explained(nxt, merged, polls)
                    and not wiped_with_a_ledger(prev + 1, nxt - 1)
                ):
                    out.append(
                        Violation(
                            "tick-lost", f"schedule {sid}: ticks {prev + 1}..{nxt - 1} are in no ledger"
                        )
                    )
            for tick in sorted(fired_runs):
                if ticks[0] <= tick <= ticks[-1] and tick not in by_tick:
                    out.append(
                        Violation("tick-unrecorded", f"schedule {sid} tick {tick} ran, not in the ledger")
                    )
        for tick in sorted(fired_ticks):
            n = created[kube_job_name(job, f"{sid}-{tick}")] if job is not None else 0
            if n != 1 and not (tick < era and n == 0):
                out.append(Violation("tick-not-one-job", f"schedule {sid} tick {tick} produced {n} Jobs"))
        deleted = log.deleted.get(sid)
        if deleted is not None:
            late = [t for t, r in fired_runs.items() if int(r["InQueueTimestamp"]) > deleted.acked_at * 1000]
            if late:
                out.append(
                    Violation("fired-after-delete", f"schedule {sid} fired ticks {late[:3]} after its delete")
                )

    # Every node converged on one state.
    hashes = {snap.state_hash for snap in snapshots}
    if len(hashes) != 1 or None in hashes:
        shown = {snap.index: (snap.state_hash or "none")[:12] for snap in snapshots}
        out.append(Violation("diverged", f"nodes did not converge on one state hash: {shown}"))
    out.extend(Violation("unexpected-answer", u) for u in log.unexpected)
    return out, stats


# Crash points after which the next leader must re-create a Job (job-created leaves the Job).
RECONCILING_POINTS = frozenset({"fire-committed", "dispatch-committed", "fire-applied"})


def unexercised(faults: Sequence[FaultRecord], exercised: Mapping[str, int]) -> list[Violation]:
    """The paths this run's faults must have taken, and did not: a run proves nothing about a
    rule whose path it never took. ``exercised`` holds the nodes' counters, the emulator's 409s
    ("create answered 409") and the ledgers' catch-up firings ("catch-up firings")."""
    out: list[Violation] = []
    for f in faults:
        if f.point is not None and not f.point_reached:
            out.append(Violation("path-not-exercised", f"{f.kind.value}: no node reached {f.point}"))
    points = [f for f in faults if f.point is not None and f.point_reached]
    reconciled = exercised.get("reconciled at term start", 0) + exercised.get("reconciled by a poll", 0)
    if any(f.point in RECONCILING_POINTS for f in points) and reconciled == 0:
        out.append(
            Violation("path-not-exercised", "a leader died before a create, yet nothing was reconciled")
        )
    # A stop-point is not required to produce a 409: a deposed leader cancels its work when it
    # learns it lost the term, before its create goes out; a 409 needs a create already on the
    # wire when the leader lost it, a window no point in the leader opens. 409s are counted.
    if points and exercised.get("catch-up firings", 0) == 0:
        out.append(Violation("path-not-exercised", "leaders died mid-protocol, yet no tick was fired late"))
    return out
