"""What ``slimsched chaos`` breaks and when: the fault kinds, their timings and the timetable.

Why a module of its own: the kinds, how long each is held and the shuffled timetable are a plan
with no I/O. The harness carries it out, the report counts it and the checker judges the point
faults against it, so it sits below all three and imports none of them.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum


class FaultKind(StrEnum):
    KILL_LEADER = "kill-leader"
    KILL_FOLLOWER = "kill-follower"
    PAUSE_LEADER = "pause-leader"
    RESTART_KEEP = "restart-keep"
    RESTART_WIPE = "restart-wipe"
    PARTITION_LEADER = "partition-leader"
    PARTITION_FOLLOWER = "partition-follower"
    PARTITION_LINK = "partition-link"
    # The leader is killed and the node elected after it dies at a named point of the protocol
    # (slimsched.crashpoints): a run left in Dispatching, a Job whose status was not committed.
    CRASH_POINT = "crash-point"
    # As crash-point, but the node elected stops (SIGSTOP) at the point and is continued once
    # another leader took over: a deposed leader that wakes up mid-dispatch, believing it leads.
    STOP_POINT = "stop-point"
    # The leader's HTTP port gets more incomplete requests than its connection cap (issue 16):
    # it must keep leading, its Raft port must keep accepting, the load must go on elsewhere.
    SLOW_CLIENT_FLOOD = "slow-client-flood"
    # Every node SIGKILLed at once, then started again in order (data kept); or all but one, the
    # last started a few seconds later. (slimsched.chaosbackup covers the backup kinds below.)
    RESTART_ALL = "restart-all"
    RESTART_ALL_LATE = "restart-all-late"
    # One bit flipped in a node's backup file while it runs: set aside, never rotated to .prev.
    DAMAGE_BACKUP = "damage-backup"
    # Load paused, every node stopped, the leader's backup volume and every node's Raft data
    # wiped, every node started: the cluster must restore the best backup left on another node.
    COLD_START_WIPED_LEADER_BACKUP = "cold-start-wiped-leader-backup"


# The point faults restart every node once or twice each (10-40 s under load): asked for by name.
POINT_KINDS = frozenset({FaultKind.CRASH_POINT, FaultKind.STOP_POINT})
# The backup kinds need backup volumes (and a cold start wipes the runs): asked for by name too.
BACKUP_KINDS = frozenset(
    {
        FaultKind.RESTART_ALL,
        FaultKind.RESTART_ALL_LATE,
        FaultKind.DAMAGE_BACKUP,
        FaultKind.COLD_START_WIPED_LEADER_BACKUP,
    }
)
ALL_KINDS: tuple[FaultKind, ...] = tuple(k for k in FaultKind if k not in POINT_KINDS | BACKUP_KINDS)
BACKUP_INTERVAL_SECONDS = 1.0  # the nodes' backup interval when a backup kind is asked for
LATE_START_SECONDS = 3.0  # restart-all-late: how much later the last node starts
RESTORE_WAIT_SECONDS = 60.0  # a cold start: for the restore to land (the leader waits 15 s for reports)

# How long a fault lasts before it is reverted. A pause or a partition outlasts the election
# timeout (0.4-1.0 s) and the leader fallback timeout (2.5 s), so that a new leader is elected
# while the old one still believes it leads.
HOLD_SECONDS: Mapping[FaultKind, float] = {
    FaultKind.KILL_LEADER: 1.5,
    FaultKind.KILL_FOLLOWER: 1.5,
    FaultKind.PAUSE_LEADER: 3.0,
    FaultKind.RESTART_KEEP: 0.0,
    FaultKind.RESTART_WIPE: 0.5,
    FaultKind.PARTITION_LEADER: 3.0,
    FaultKind.PARTITION_FOLLOWER: 3.0,
    FaultKind.PARTITION_LINK: 3.0,
    FaultKind.CRASH_POINT: 1.5,
    FaultKind.STOP_POINT: 3.0,
    FaultKind.SLOW_CLIENT_FLOOD: 3.0,
    FaultKind.RESTART_ALL: 1.0,
    FaultKind.RESTART_ALL_LATE: 1.0,
    FaultKind.DAMAGE_BACKUP: 0.0,
    FaultKind.COLD_START_WIPED_LEADER_BACKUP: 1.0,
}
# Above a node's default cap of open HTTP connections (1000), so that the refusal path runs too.
FLOOD_CONNECTIONS = 1100
# Where the crash-point and stop-point faults stop the leader (picked in turn, at random).
POINT_FAULT_POINTS: tuple[str, ...] = ("fire-committed", "dispatch-committed", "job-created", "fire-applied")
STOP_FAULT_POINTS: tuple[str, ...] = ("fire-committed", "dispatch-committed")
POINT_WAIT_SECONDS = 30.0  # for the armed leader to reach its point (elections are slow under load)
# What the nodes count of the paths a chaos run exists to exercise (summed over every process).
EXERCISED_SAMPLES: Mapping[str, str] = {
    "reconciled at term start": 'slimsched_runs_reconciled_total{phase="term-start"}',
    "reconciled by a poll": 'slimsched_runs_reconciled_total{phase="poll"}',
    "409 taken as created": "slimsched_jobs_already_existed_total",
}


@dataclass(frozen=True)
class PlannedFault:
    at: float  # seconds after the load starts
    kind: FaultKind


def plan_timetable(
    duration: float, interval: float, kinds: Sequence[FaultKind], rng: random.Random
) -> list[PlannedFault]:
    """A fault every ``interval`` s; kinds in shuffled rounds, so each kind comes once per round."""
    out: list[PlannedFault] = []
    order: list[FaultKind] = []
    at = interval
    limit = 100_000
    while at + HOLD_SECONDS[FaultKind.PAUSE_LEADER] <= duration and len(out) < limit:
        if not order:
            order = list(kinds)
            rng.shuffle(order)
        out.append(PlannedFault(round(at, 3), order.pop()))
        at += interval
    return out


@dataclass
class FaultRecord:
    kind: FaultKind
    target: int
    target_was_leader: bool
    started_at: float  # wall clock (time.time), comparable with the nodes' timestamps
    offset: float  # seconds after the load started
    old_term: int
    reverted_after: float | None = None
    new_leader_after: float | None = None
    first_tick_after: float | None = None
    recovered_after: float | None = None
    point: str | None = None  # crash-point and stop-point faults: where the leader was stopped
    point_reached: bool = False

    @property
    def leader_fault(self) -> bool:
        return self.target_was_leader
