"""Named points of the leader's protocol where a test can make the node die, and test-only breaks.

Why: the exactly-once rules exist for states that a random kill reaches only by luck (a run left
in Dispatching without its Job, a Job created whose status was never committed). A test starts a
node with ``SLIMSCHED_TEST_CRASH_AT=<point>[:<count>]`` and the node SIGKILLs itself the
``count``-th time (default 1) it reaches ``point``: a real crash of a real process, at a known
step, after which another node takes over. ``SLIMSCHED_TEST_BREAK=<rule>[,<rule>]`` turns one of
the leader's rules off, so a test can prove that it fails without it. ``SLIMSCHED_TEST_STOP_AT``
(same syntax) SIGSTOPs the node there instead: a leader frozen mid-step, deposed meanwhile, that
goes on where it stopped once continued (the 409 of a Job another leader created since). All are
read by ``Settings`` only; unset, ``reach`` is one falsy check and ``broken`` one set lookup.

``SLIMSCHED_TEST_STALL_ELECTED_SECONDS`` holds a node's Raft thread that long right after it
is elected, before pysyncobj appends and sends its first entry (a Raft thread starved of CPU):
whatever the new leader does meanwhile, it does on a state without the entries it has not
committed yet. Kept under the election timeout, so the followers wait for it.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import time
from enum import StrEnum

log = logging.getLogger(__name__)


class Point(StrEnum):
    # In the Raft thread of the leader: a FireTick that claimed its run is committed and applied
    # there, and the followers have not been told it is committed (pysyncobj tells them after
    # it applied the entries of that tick). The next leader commits it only with its own first
    # entry: the state the barrier exists for.
    FIRE_APPLIED = "fire-applied"
    # A FireTick that claimed its run (Dispatching) is committed; its Job is not created yet.
    FIRE_COMMITTED = "fire-committed"
    # A StartDispatch is committed; the run's Job is not created yet.
    DISPATCH_COMMITTED = "dispatch-committed"
    # The Job create was answered (created or 409); the run's Pending status is not committed.
    JOB_CREATED = "job-created"
    # A new leader's barrier is committed; it has not reconciled the runs left in Dispatching.
    BARRIER_COMMITTED = "barrier-committed"


class Break(StrEnum):
    """Leader rules a test may turn off (never in production: the names say TEST)."""

    # A new leader does not re-create the Jobs of runs left in Dispatching.
    RECONCILE = "reconcile"
    # A new leader does not commit a barrier before it reconciles, fires and dispatches.
    BARRIER = "barrier"
    # A schedule with several ticks pending fires the newest and drops the others unrecorded.
    MISSED_TICKS = "missed-ticks"
    # A schedule with several ticks pending (after an outage) records them all as missed and
    # fires none (the newest missed tick is not fired once).
    CATCH_UP = "catch-up"
    # Not a rule turned off but a fault injected: the leader proposes every FireTick twice, the
    # second once the first is answered, as a retry of a proposal whose fate it did not learn
    # would (pysyncobj has no client sessions). The state the FireTick dedupe exists for.
    REPEAT_FIRE_TICK = "repeat-fire-tick"
    # The declared-schedules sync takes every schedule for its own: it deletes those created
    # through the API (acknowledged writes lost).
    DECLARED_OWNS_ALL = "declared-owns-all"
    # A Job is named after the run and the term of the leader creating it, not the run alone: a
    # run re-created by another leader gets a second Job (dispatched twice).
    JOB_NAME_PER_TERM = "job-name-per-term"


_armed: dict[str, tuple[int, signal.Signals]] = {}
_stall_elected = 0.0
_broken: frozenset[str] = frozenset()


def parse_crash_at(spec: str | None) -> tuple[tuple[Point, int], ...]:
    """``"<point>[:<count>][,...]"`` -> ((point, count), ...); ValueError if malformed."""
    out = []
    for item in (spec or "").split(","):
        if not item.strip():
            continue
        name, _, count = item.partition(":")
        try:
            point = Point(name.strip())
        except ValueError:
            raise ValueError(
                f"unknown crash point {name.strip()!r}; points are {', '.join(p.value for p in Point)}"
            ) from None
        n = int(count) if count.strip() else 1
        if n < 1:
            raise ValueError(f"a crash point's count must be at least 1, got {n}")
        out.append((point, n))
    return tuple(out)


def parse_breaks(spec: str | None) -> frozenset[Break]:
    """``"<rule>[,<rule>]"`` -> the rules; ValueError for an unknown one."""
    out = set()
    for name in (spec or "").split(","):
        if name.strip():
            try:
                out.add(Break(name.strip()))
            except ValueError:
                raise ValueError(
                    f"unknown rule {name.strip()!r}; rules are {', '.join(b.value for b in Break)}"
                ) from None
    return frozenset(out)


def arm(
    crash_at: tuple[tuple[Point, int], ...] = (),
    breaks: frozenset[Break] = frozenset(),
    stop_at: tuple[tuple[Point, int], ...] = (),
    stall_elected: float = 0.0,
) -> None:
    """Set this process's crash and stop points and broken rules (the node's entry point, once)."""
    global _broken, _stall_elected
    _stall_elected = stall_elected
    _armed.clear()
    for points, sig in ((crash_at, signal.SIGKILL), (stop_at, signal.SIGSTOP)):
        for point, count in points:
            _armed[point.value] = (count, sig)
            log.warning("TEST: this node sends itself %s at %s (reach %d)", sig.name, point.value, count)
    _broken = frozenset(b.value for b in breaks)
    if breaks:
        log.warning("TEST: leader rules turned off: %s", ", ".join(sorted(_broken)))


def armed() -> bool:
    """Whether any crash point is armed (hot paths check this before building their argument)."""
    return bool(_armed)


def reach(point: Point) -> None:
    """The protocol reached ``point``: die here if a test armed it and this is the reach it named."""
    if not _armed:
        return
    armed = _armed.get(point.value)
    if armed is None:
        return
    left, sig = armed
    if left > 1:
        _armed[point.value] = (left - 1, sig)
        return
    del _armed[point.value]  # once: a node continued after a stop goes on
    # A line a test can wait for in the node's log, then a crash no cleanup code survives (or a
    # stop until SIGCONT).
    word = "CRASH" if sig is signal.SIGKILL else "STOP"
    print(f"TEST {word} AT {point.value}", file=sys.stderr, flush=True)
    os.kill(os.getpid(), sig)


def stall_elected() -> None:
    """The Raft thread just made this node leader: hold it there if a test asked to."""
    if _stall_elected > 0:
        log.warning("TEST: holding the Raft thread %.2f s after the election", _stall_elected)
        time.sleep(_stall_elected)


def broken(rule: Break) -> bool:
    return rule.value in _broken
