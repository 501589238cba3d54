"""A model of the leader's protocol over the pure core, checked by Hypothesis's stateful testing.

The real state machine (``statemachine.apply``) and the real planner (``cronplan.plan``) run the
protocol the leader runs (slimsched.leader*), with its Raft and Kubernetes reduced to what the
exactly-once rules are about: a log of committed commands that every node applies in order, a
leader whose view may lag behind the log, and a Kubernetes that answers 409 to a second create
of a name. Hypothesis drives commands, clock moves, leader changes, crashes at the named points
(slimsched.crashpoints), duplicate Raft deliveries, stale proposals of a deposed leader and Job
creates answered 409, and after each step the state is checked against a reference model of
what must have happened:

- every tick of the schedule from its creation to now is in the ledger once (fired or missed),
  and after the cluster settles none is lost;
- every tick fired, and every trigger acknowledged, has exactly one run and, once settled,
  exactly one Job; no Job exists without its run;
- when a leader handles several pending ticks at once, the newest fires and the older ones are
  recorded as missed (an explicit StartingDeadlineSeconds keeps this true under either default).
"""

from __future__ import annotations

import base64
import os
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from slimsched import codec, cronplan, statemachine
from slimsched.jobmanifest import kube_job_name
from slimsched.model import JobSpec, Run, RunStatus, Schedule, TickOutcome
from slimsched.statemachine import State, apply, encode_batch, encode_command, fingerprint

JOB = "ticker"
SID = "s1"
T0 = 1_700_000_000  # the schedule's creation, epoch seconds
EVERY_SECOND = "* * * * * *"  # every second in both 6-field readings (seconds first or last)
DEADLINE = 3600


def _run(tick: int, at: int, status: RunStatus, term: int | None, index: int | None) -> Run:
    run_id = f"{SID}-{tick}"
    return Run(
        id=run_id,
        job_name=JOB,
        spec=JobSpec(image="img:1"),
        status=status,
        queued_at_ms=at,
        kube_name=kube_job_name(JOB, run_id),
        schedule_id=SID,
        tick=tick,
        dispatch_term=term,
        dispatch_index=index,
    )


class Protocol(RuleBasedStateMachine):
    """One Raft log, a leader with a view of its prefix, a Kubernetes of Job names."""

    def __init__(self) -> None:
        super().__init__()
        self.log: list[bytes] = []
        self.truth = State()  # every committed entry applied: what every node converges on
        self.view_len = 0  # entries the leader has applied (its view may lag)
        self.term = 1
        self.now = T0
        self.jobs: Counter[str] = Counter()  # Job name -> creates that succeeded
        self.conflicts = 0  # creates answered 409
        self.crashed = False  # the leader died at a crash point: nothing more until a change
        self.triggers: list[str] = []
        # Each FireTick's (expected, recorded) ledger lines: (tick, outcome) after the last handled.
        self.catch_ups: list[tuple[list[tuple[int, str]], list[tuple[int, str]]]] = []
        self._n = 0
        self.commit(
            encode_command(
                "create_schedule",
                schedule=codec.schedule_to_dict(
                    Schedule(
                        id=SID,
                        job_name=JOB,
                        cron=EVERY_SECOND,
                        created_at_ms=T0 * 1000,
                        starting_deadline_seconds=DEADLINE,
                    )
                ),
            )
        )
        self.barrier()

    # -- the parts ---------------------------------------------------------------------------

    def commit(self, payload: bytes) -> statemachine.Result:
        self.log.append(payload)
        return apply(self.truth, payload)

    def view(self) -> State:
        return statemachine.replay(self.log[: self.view_len])

    def barrier(self) -> None:
        """A new term: the barrier commits, the leader's view catches up with the whole log."""
        self.commit(encode_command("barrier", rid=f"barrier-{self.term}"))
        self.view_len = len(self.log)

    def create(self, run: Run) -> None:
        """Kubernetes: a second create of one name is a 409, which the leader counts as done."""
        if self.jobs[run.kube_name]:
            self.conflicts += 1
        else:
            self.jobs[run.kube_name] += 1

    def dispatched(self, run: Run) -> None:
        self.commit(
            encode_command(
                "run_status",
                run_id=run.id,
                status="Pending",
                expect="Dispatching",
                at=self.now * 1000,
            )
        )

    # -- rules -------------------------------------------------------------------------------

    # At most MAX_MISSED_RECORDED ticks pend at once: the ledger then lists every one of them.
    @precondition(lambda self: self.now - self.truth.last_fired.get(SID, T0) < 15)
    @rule(seconds=st.integers(0, 4))
    def clock(self, seconds: int) -> None:
        self.now += seconds

    @precondition(lambda self: not self.crashed)
    @rule(crash=st.sampled_from(["none", "none", "fire-committed", "job-created"]))
    def fire(self, crash: str) -> None:
        """The leader's cron step, from its view: one FireTick for every pending tick."""
        view = self.view()
        plan = cronplan.plan(
            EVERY_SECOND,
            "UTC",
            last_handled=view.last_fired.get(SID),
            created_at=T0,
            now=self.now,
            starting_deadline_seconds=DEADLINE,
        )
        if plan.due is None and not plan.missed:
            return
        assert plan.due is not None, "inside the deadline the newest pending tick fires"
        run = _run(plan.due, self.now * 1000, RunStatus.DISPATCHING, self.term, len(self.log))
        handled = self.truth.last_fired.get(SID, T0)  # what was handled when this commits
        result = self.commit(
            encode_command(
                "fire_tick",
                schedule_id=SID,
                tick=plan.due,
                at=self.now * 1000,
                outcome="fired",
                missed=list(plan.missed),
                run=codec.run_to_dict(run),
            )
        )
        self.view_len = len(self.log)
        if not result.ok:
            return
        # The reference: every tick pending when it commits, the newest fired, the older missed.
        expected = [*((t, "missed") for t in range(handled + 1, plan.due)), (plan.due, "fired")]
        recorded = [(t.tick, t.outcome.value) for t in self.truth.ledger[SID] if t.tick > handled]
        self.catch_ups.append((expected, recorded))
        if crash == "fire-committed":
            self.crashed = True
            return
        self.create(run)
        if crash == "job-created":
            self.crashed = True
            return
        self.dispatched(run)

    @precondition(lambda self: not self.crashed)
    @rule(crash=st.sampled_from(["none", "dispatch-committed", "job-created"]))
    def trigger(self, crash: str) -> None:
        """POST /job: enqueue (acknowledged once committed), StartDispatch, create, Pending."""
        self._n += 1
        run = replace(
            _run(0, self.now * 1000, RunStatus.QUEUED, None, None),
            id=f"t{self._n}",
            kube_name=kube_job_name(JOB, f"t{self._n}"),
            schedule_id=None,
            tick=None,
        )
        assert self.commit(encode_command("enqueue_run", rid=f"rid-{self._n}", run=codec.run_to_dict(run))).ok
        self.triggers.append(run.id)
        assert self.commit(
            encode_command("start_dispatch", run_id=run.id, term=self.term, index=len(self.log))
        ).ok
        self.view_len = len(self.log)
        if crash == "dispatch-committed":
            self.crashed = True
            return
        self.create(run)
        if crash == "job-created":
            self.crashed = True
            return
        self.dispatched(run)

    @rule(lag=st.integers(0, 3))
    def leader_change(self, lag: int) -> None:
        """Another node leads; it held the log less its last ``lag`` entries uncommitted, which
        its barrier commits. Then the reconcile: every run in Dispatching without its Job gets
        it (a Job that exists is followed, not created again)."""
        self.term += 1
        self.crashed = False
        self.view_len = max(0, len(self.log) - lag)
        self.barrier()
        for run in list(self.truth.runs.values()):
            if run.status is RunStatus.DISPATCHING:
                if not self.jobs[run.kube_name]:
                    self.create(run)
                self.dispatched(run)

    @rule(data=st.data())
    def duplicate_delivery(self, data: st.DataObject) -> None:
        """pysyncobj has no sessions: a command reported failed may be applied, then retried."""
        repeatable = [
            p for p in self.log if orjson.loads(p)["type"] in ("fire_tick", "start_dispatch", "enqueue_run")
        ]
        if repeatable:
            before = fingerprint(self.truth)
            result = self.commit(data.draw(st.sampled_from(repeatable)))
            assert not result.ok or orjson.loads(self.log[-1]).get("rid"), result
            assert fingerprint(self.truth) == before, "a repeated command changed nothing"

    @rule(back=st.integers(1, 6))
    def stale_leader_proposes(self, back: int) -> None:
        """A deposed leader woken by SIGCONT proposes the FireTick its old view called for."""
        old = statemachine.replay(self.log[: max(1, len(self.log) - back)])
        plan = cronplan.plan(
            EVERY_SECOND,
            "UTC",
            last_handled=old.last_fired.get(SID),
            created_at=T0,
            now=self.now,
            starting_deadline_seconds=DEADLINE,
        )
        if plan.due is None:
            return
        run = _run(plan.due, self.now * 1000, RunStatus.QUEUED, None, None)
        fields = dict(schedule_id=SID, tick=plan.due, at=self.now * 1000, outcome="fired")
        ledger_before = list(self.truth.ledger.get(SID, ()))
        result = self.commit(
            encode_command("fire_tick", **fields, missed=list(plan.missed), run=codec.run_to_dict(run))
        )
        if not result.ok:
            assert list(self.truth.ledger.get(SID, ())) == ledger_before

    @rule()
    def jobs_finish(self) -> None:
        for run in list(self.truth.runs.values()):
            if run.status is RunStatus.PENDING:
                self.commit(
                    encode_command("run_status", run_id=run.id, status="Succeeded", at=self.now * 1000)
                )

    # -- the reference model -------------------------------------------------------------------

    @invariant()
    def each_tick_once_and_no_job_without_its_run(self) -> None:
        ledger = self.truth.ledger.get(SID, ())
        ticks = [t.tick for t in ledger]
        assert len(ticks) == len(set(ticks)), f"a tick recorded twice: {ticks}"
        assert ticks == sorted(ticks)
        handled = self.truth.last_fired.get(SID)
        # Every second from the first tick to the last handled is in the ledger: none lost.
        if handled is not None:
            assert ticks == list(range(T0 + 1, handled + 1)), ticks
        fired = {t.tick for t in ledger if t.outcome is TickOutcome.FIRED}
        cron_runs = {r.tick for r in self.truth.runs.values() if r.schedule_id == SID}
        assert cron_runs == fired, "one run per fired tick, none for a missed one"
        names = {r.kube_name for r in self.truth.runs.values()}
        assert set(self.jobs) <= names, "a Job exists without its run"
        assert all(n == 1 for n in self.jobs.values()), "a Job was created twice"
        for expected, recorded in self.catch_ups:
            assert recorded == expected

    @invariant()
    def once_settled_every_run_has_exactly_one_job(self) -> None:
        """Whenever no leader is dead mid-protocol, every run that left the queue has its Job."""
        if self.crashed:
            return
        for run in self.truth.runs.values():
            if run.status is not RunStatus.QUEUED:
                assert self.jobs[run.kube_name] == 1, (run.id, run.status)
        for rid in self.triggers:
            assert rid in self.truth.runs, "an acknowledged trigger was lost"


Protocol.TestCase.settings = settings(max_examples=60, stateful_step_count=30, deadline=None)
TestProtocol = Protocol.TestCase


# --- replay determinism across processes ---------------------------------------------------------

ids = st.sampled_from(["a", "b", "c"])
ticks = st.integers(T0, T0 + 40)


def _schedule(i: str) -> dict[str, Any]:
    return codec.schedule_to_dict(Schedule(id=i, job_name=JOB, cron=EVERY_SECOND, created_at_ms=T0 * 1000))


def _fire(i: str, tick: int, outcome: str, missed: list[int]) -> bytes:
    run = _run(tick, tick * 1000, RunStatus.QUEUED, None, None)
    run = replace(run, id=f"{i}-{tick}", schedule_id=i, kube_name=kube_job_name(JOB, f"{i}-{tick}"))
    return encode_command(
        "fire_tick",
        schedule_id=i,
        tick=tick,
        at=tick * 1000 + 3,
        outcome=outcome,
        missed=missed,
        **({"run": codec.run_to_dict(run)} if outcome == "fired" else {"reason": "r"}),
    )


single = st.one_of(
    st.builds(lambda i: encode_command("create_schedule", schedule=_schedule(i)), ids),
    st.builds(lambda i: encode_command("delete_schedule", job_name=JOB, schedule_id=i), ids),
    st.builds(
        _fire,
        ids,
        ticks,
        st.sampled_from(["fired", "missed", "skipped"]),
        st.lists(ticks, max_size=4).map(sorted),
    ),
    st.builds(
        lambda i, lf: encode_command("restore", schedules=[_schedule(i)], last_fired={i: lf}), ids, ticks
    ),
    st.builds(
        lambda rid, part, parts, i: encode_command(
            "restore_part", restore=rid, part=part, parts=parts, schedules=[_schedule(i)], last_fired={}
        ),
        st.sampled_from(["r1", "r2"]),
        st.integers(0, 2),
        st.integers(1, 3),
        ids,
    ),
    st.builds(
        lambda node, level: encode_command("hello", node=node, level=level),
        st.sampled_from(["n1:1", "n2:2", "n3:3"]),
        st.integers(0, 4),
    ),
    st.builds(lambda r: encode_command("barrier", rid=r), st.sampled_from(["x", "y"])),
)
replays = st.lists(
    st.one_of(single, st.lists(single, max_size=4).map(encode_batch)),
    max_size=25,
)

_WORKER = """
import base64, sys, orjson
from slimsched import statemachine
for line in sys.stdin:
    state = statemachine.State()
    codes = [statemachine.apply(state, base64.b64decode(p)).code for p in orjson.loads(line)]
    print(orjson.dumps([statemachine.fingerprint(state), codes]).decode(), flush=True)
"""


@pytest.fixture(scope="module")
def workers() -> Iterator[list[subprocess.Popen[str]]]:
    """Two replaying processes whose str hashes (set and dict-of-set orders) differ from ours."""
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _WORKER],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONHASHSEED": seed},
        )
        for seed in ("1", "4242")
    ]
    try:
        yield procs
    finally:
        for p in procs:
            assert p.stdin is not None
            p.stdin.close()
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(10)


@settings(max_examples=120, deadline=None)
@given(payloads=replays)
def test_replay_is_deterministic_across_processes_and_hash_seeds(
    workers: list[subprocess.Popen[str]], payloads: list[bytes]
) -> None:
    state = State()
    codes = [apply(state, p).code for p in payloads]
    line = orjson.dumps([base64.b64encode(p).decode() for p in payloads]).decode()
    for proc in workers:
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write(line + "\n")
        proc.stdin.flush()
        assert orjson.loads(proc.stdout.readline()) == [fingerprint(state), codes]


def test_the_replay_strategy_reaches_every_command_kind() -> None:
    """The strategy above is only as good as what it generates: each kind, and missed ticks."""
    seen: set[str] = set()

    @settings(max_examples=300, deadline=None)
    @given(replays)
    def collect(payloads: list[bytes]) -> None:
        for p in payloads:
            cmd = orjson.loads(p)
            for c in [cmd, *cmd.get("commands", [])]:
                seen.add(c["type"])
                if c["type"] == "fire_tick" and c.get("missed"):
                    seen.add("missed ticks")

    collect()
    assert {"restore", "restore_part", "hello", "batch", "fire_tick", "missed ticks"} <= seen
