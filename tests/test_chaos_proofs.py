"""``slimsched chaos`` proves what it claims: the paths it exists for were taken, and a build
without a rule fails it, for each kind of violation it claims to catch.

- A correct build under the point faults (a leader dies, or stops, at a named step of the
  protocol: slimsched.crashpoints) has no violation, and the run shows that reconciles and
  catch-up firings happened (a run that never took them proves nothing). A create answered 409
  is counted but not required: see ``chaoscheck.unexercised``.
- Broken builds (``SLIMSCHED_TEST_BREAK``, read by the nodes only): missed ticks dropped ->
  tick-lost; a Job named per term -> run-dispatched-twice; the declared-schedules sync owning
  every schedule -> acked-write-lost. The FireTick dedupe build (tick-handled-twice) is proven in
  tests/test_chaos.py.
"""

from __future__ import annotations

from pathlib import Path

from slimsched import chaos
from slimsched.chaos import ChaosConfig
from slimsched.chaoscheck import AckedTrigger, ClientLog, NodeSnapshot, check, unexercised
from slimsched.chaosplan import FaultKind, FaultRecord


def _fault(kind: FaultKind, point: str | None = None, reached: bool = True) -> FaultRecord:
    return FaultRecord(kind, 0, True, 0.0, 0.0, 1, point=point, point_reached=reached)


def test_unexercised_names_each_path_a_fault_should_have_taken() -> None:
    taken = {"reconciled at term start": 1, "create answered 409": 1, "catch-up firings": 1}
    faults = [
        _fault(FaultKind.CRASH_POINT, "fire-committed"),
        _fault(FaultKind.STOP_POINT, "dispatch-committed"),
    ]
    assert unexercised(faults, taken) == []
    assert unexercised([_fault(FaultKind.KILL_LEADER)], {}) == [], "no point fault, nothing required"
    missing = unexercised(faults, {})
    assert [v.detail for v in missing] == [
        "a leader died before a create, yet nothing was reconciled",
        "leaders died mid-protocol, yet no tick was fired late",
    ]
    assert {v.kind for v in missing} == {"path-not-exercised"}
    # job-created leaves the Job: nothing to reconcile is required after it.
    assert unexercised([_fault(FaultKind.CRASH_POINT, "job-created")], {"catch-up firings": 1}) == []
    assert [v.detail for v in unexercised([_fault(FaultKind.CRASH_POINT, "fire-applied", False)], taken)] == [
        "crash-point: no node reached fire-applied"
    ]


def test_checker_sees_a_run_with_two_jobs_whatever_their_names() -> None:
    log = ClientLog(triggers={"r1": AckedTrigger("j", 1.0)})
    snaps = [NodeSnapshot(0, runs={"r1": {"Name": "j-r1", "Job": "j"}}, state_hash="h")]
    created = [("j-r1-t2", "created"), ("j-r1-t3", "created")]
    violations, _ = check(log, snaps, created, (), {"r1": ["j-r1-t2", "j-r1-t3"]})
    assert "run-dispatched-twice" in {v.kind for v in violations}
    clean, _ = check(log, snaps, [("j-r1", "created")], (), {"r1": ["j-r1"]})
    assert "run-dispatched-twice" not in {v.kind for v in clean}


def test_checker_counts_catch_up_firings() -> None:
    sid = "s"
    ledger = [
        {"Tick": 10, "Outcome": "fired", "RecordedAt": 10_000},
        {"Tick": 11, "Outcome": "missed", "RecordedAt": 14_000},
        {"Tick": 12, "Outcome": "missed", "RecordedAt": 14_000},
        {"Tick": 13, "Outcome": "fired", "RecordedAt": 14_000},
    ]
    snaps = [NodeSnapshot(0, ledgers={sid: ledger}, state_hash="h")]
    _, stats = check(ClientLog(), snaps, [])
    assert (stats.catch_up, stats.missed) == (1, 2)


# --- real runs ----------------------------------------------------------------------------------


def test_point_faults_take_the_paths_and_a_correct_build_passes(tmp_path: Path) -> None:
    report = chaos.run_chaos(
        ChaosConfig(
            duration=22.0,
            interval=4.0,
            seed=7,
            kinds=(FaultKind.CRASH_POINT, FaultKind.STOP_POINT),
            crash_points=("fire-committed", "dispatch-committed"),
            base_dir=str(tmp_path),
        )
    )
    print(report.table())
    assert report.violations == [], report.table()
    # Each point fault restarts nodes (10-30 s on a loaded machine): one or two fit in the run.
    assert report.faults and all(f.point_reached for f in report.faults), report.table()
    ex = report.exercised
    assert ex["reconciled at term start"] + ex["reconciled by a poll"] >= 1, report.table()
    assert ex["catch-up firings"] >= 1, report.table()


def _broken_run(tmp_path: Path, rule: str, kinds: tuple[FaultKind, ...], points: tuple[str, ...]) -> set[str]:
    report = chaos.run_chaos(
        ChaosConfig(
            duration=14.0,
            interval=4.0,
            seed=3,
            kinds=kinds,
            crash_points=points,
            base_dir=str(tmp_path),
            node_env={"SLIMSCHED_TEST_BREAK": rule},
        )
    )
    print(report.table())
    assert report.faults, report.table()
    return {v.kind for v in report.violations}


def test_a_build_that_drops_missed_ticks_fails_with_tick_lost(tmp_path: Path) -> None:
    kinds = _broken_run(tmp_path, "missed-ticks", (FaultKind.CRASH_POINT,), ("fire-committed",))
    assert "tick-lost" in kinds, kinds


def test_a_build_that_names_jobs_per_term_fails_with_a_run_dispatched_twice(tmp_path: Path) -> None:
    kinds = _broken_run(tmp_path, "job-name-per-term", (FaultKind.CRASH_POINT,), ("job-created",))
    assert "run-dispatched-twice" in kinds, kinds


def test_a_build_whose_sync_owns_every_schedule_fails_with_acked_write_lost(tmp_path: Path) -> None:
    kinds = _broken_run(tmp_path, "declared-owns-all", (FaultKind.KILL_LEADER,), ())
    assert "acked-write-lost" in kinds, kinds
