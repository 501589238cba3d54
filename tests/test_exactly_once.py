"""Each exactly-once rule, proven in the state it exists for: real processes, real Raft, crash points.

A node started with ``SLIMSCHED_TEST_CRASH_AT=<point>`` SIGKILLs itself at that step of the
leader's protocol (slimsched.crashpoints), so a test puts the cluster in exactly the state a rule
is for, instead of killing at random and hoping. Each test then hands over to another node and
asserts the whole outcome: one Job per tick and per trigger, nothing else.

The rules and the tests that fail without them (each with its test-only switch, which turns the
rule's own code off, so the proof can be re-run: see bench/RESULTS.md, "Exactly-once rules"):

- reconcile (a new leader creates the Jobs of runs left in Dispatching): the fire-committed and
  dispatch-committed tests (``SLIMSCHED_TEST_BREAK=reconcile``);
- barrier (the reconcile runs on a state holding everything committed before the term): the
  fire-applied test (``SLIMSCHED_TEST_BREAK=barrier``);
- FireTick dedupe (a tick delivered twice is applied once): the repeated-FireTick test
  (``SLIMSCHED_TEST_BREAK_FIRE_DEDUP=1``);
- catch-up firing (after an outage the newest missed tick fires once, older ones are missed):
  the outage test (``SLIMSCHED_TEST_BREAK=catch-up``).
"""

from __future__ import annotations

import os
import signal
import time
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from slimsched import cronplan
from slimsched.cronplan import MAX_MISSED_RECORDED
from slimsched.emulator import EmulatorThread
from slimsched.jobmanifest import kube_job_name
from slimsched.localcluster import LocalCluster
from tests.helpers import KUBE_JOBS, KubeCluster, request, wait_until

# Rule switches a test run may carry in its environment (to prove a test fails without a rule):
# passed on to the nodes, which are the ones that read them.
_PASSED_ON = ("SLIMSCHED_TEST_BREAK", "SLIMSCHED_TEST_BREAK_FIRE_DEDUP")


def _cluster(tmp_path: Path, url: str, env: dict[str, str]) -> LocalCluster:
    merged = {"SLIMSCHED_KUBE_URL": url, **env}
    for k in _PASSED_ON:
        if os.environ.get(k):
            merged[k] = ",".join(filter(None, (merged.get(k), os.environ[k])))
    return LocalCluster.create(3, str(tmp_path), jobs_configuration=KUBE_JOBS, env=merged)


@pytest.fixture
def emulator() -> Iterator[tuple[EmulatorThread, str]]:
    em = EmulatorThread(pending_seconds=0.1, run_seconds=0.6)
    with em as url:
        yield em, url


def _start(tmp_path: Path, emulator: tuple[EmulatorThread, str], env: dict[str, str]) -> KubeCluster:
    em, url = emulator
    cluster = _cluster(tmp_path, url, env)
    cluster.start()
    try:
        cluster.wait_ready(timeout=30)
    except BaseException:
        cluster.stop()
        raise
    return KubeCluster(cluster, em, url)


@pytest.fixture
def started(tmp_path: Path, emulator: tuple[EmulatorThread, str]) -> Iterator[list[KubeCluster]]:
    """Clusters a test starts with ``_start``; every node of each is stopped by PID at the end."""
    clusters: list[KubeCluster] = []
    try:
        yield clusters
    finally:
        for kc in clusters:
            kc.cluster.stop()


def one_shot_cron(tick: int) -> str:
    """An expression that fires at epoch second ``tick`` only (that date, yearly), in the 6-field
    format of the running build (seconds first, or seconds last as an earlier release read it)."""
    t = datetime.fromtimestamp(tick, tz=UTC)
    for expr in (
        f"{t.second} {t.minute} {t.hour} {t.day} {t.month} *",
        f"{t.minute} {t.hour} {t.day} {t.month} * {t.second}",
    ):
        try:
            if cronplan.next_fire(expr, "UTC", tick - 1) == tick:
                return expr
        except ValueError:
            continue
    raise AssertionError(f"no one-shot expression for {tick}")


def _attempts(kc: KubeCluster, name: str) -> list[str]:
    """The outcome of every create attempt of Job ``name`` ("created", "conflict", ...)."""
    return [c.outcome for c in kc.emulator.call(lambda e: e.creations()) if c.name == name]


def _metric(kc: KubeCluster, index: int, sample: str) -> float:
    with urllib.request.urlopen(f"{kc.node_url(index)}/metrics", timeout=5) as resp:
        for line in resp.read().decode().splitlines():
            if line.startswith(sample + " "):
                return float(line.split()[1])
    return 0.0


def _reconciled(kc: KubeCluster, phase: str) -> float:
    sample = f'slimsched_runs_reconciled_total{{phase="{phase}"}}'
    return sum(_metric(kc, n.index, sample) for n in kc.cluster.nodes if n.running)


def _wait_crashed(kc: KubeCluster, timeout: float = 20.0) -> int:
    """The node that killed itself at its crash point (SIGKILL, by its own hand)."""
    found: list[int] = []

    def crashed() -> bool:
        for n in kc.cluster.nodes:
            if n.proc is not None and n.proc.poll() == -signal.SIGKILL:
                found.append(n.index)
                return True
        return False

    wait_until(crashed, timeout, "a node to reach its crash point")
    node = kc.cluster.nodes[found[0]]
    log = Path(kc.cluster.log_dir or "", f"node-{node.index}.log").read_text(errors="replace")
    assert "TEST CRASH AT" in log, "the node died, but not at its crash point"
    node.proc = None  # reaped: it may be started again
    return found[0]


def _restart(kc: KubeCluster, index: int) -> None:
    kc.cluster.start(index)
    kc.cluster.wait_ready(index, timeout=30)


def _run_of(kc: KubeCluster, job: str, run_id: str) -> dict[str, Any] | None:
    return next((r for r in kc.runs(job) if r["Id"] == run_id), None)


def _ledger(kc: KubeCluster, job: str, sid: str) -> list[dict[str, Any]]:
    status, ticks = request(f"{kc.any_url()}/job-schedules/{job}/{sid}/ticks", timeout=3)
    assert status == 200, ticks
    return list(ticks)


def _one_shot_schedule(kc: KubeCluster, job: str, lead: float = 3.0) -> tuple[str, int]:
    tick = int(time.time() + lead) + 1
    status, body = request(f"{kc.any_url()}/job-schedules/{job}", "POST", {"Schedule": one_shot_cron(tick)})
    assert status == 201, body
    return str(body["Id"]), tick


def _succeeded_once(kc: KubeCluster, job: str, run_id: str) -> None:
    """The run ends Succeeded, and its Job was created exactly once, never attempted again."""
    name = kube_job_name(job, run_id)
    wait_until(
        lambda: (_run_of(kc, job, run_id) or {}).get("Status") == "Succeeded", 30, f"run {run_id} to succeed"
    )
    assert _attempts(kc, name) == ["created"], _attempts(kc, name)
    others = {c.name for c in kc.emulator.call(lambda e: e.creations())} - {name}
    assert not others, f"Jobs nobody asked for: {others}"


# --- reconcile ------------------------------------------------------------------------------------


def test_tick_claimed_by_a_leader_killed_before_its_job_create_gets_one_job(
    tmp_path: Path, emulator: tuple[EmulatorThread, str], started: list[KubeCluster]
) -> None:
    """The FireTick that claimed the run committed (Dispatching), the leader died before the
    create: the next leader's first reconcile, right after its barrier, creates the Job."""
    kc = _start(tmp_path, emulator, {"SLIMSCHED_TEST_CRASH_AT": "fire-committed"})
    started.append(kc)
    sid, tick = _one_shot_schedule(kc, "ticker")
    run_id = f"{sid}-{tick}"
    dead = _wait_crashed(kc)
    assert _attempts(kc, kube_job_name("ticker", run_id)) == [], "the crash came before the create"
    _restart(kc, dead)  # the same crash point: nothing reaches it again (one tick only)
    _succeeded_once(kc, "ticker", run_id)
    assert [(t["Tick"], t["Outcome"]) for t in _ledger(kc, "ticker", sid)] == [(tick, "fired")]
    assert _reconciled(kc, "term-start") == 1, "the new leader's first reconcile created the Job"


def test_trigger_started_by_a_leader_killed_before_its_job_create_gets_one_job(
    tmp_path: Path, emulator: tuple[EmulatorThread, str], started: list[KubeCluster]
) -> None:
    """StartDispatch committed (the acknowledged trigger is Dispatching), the leader died
    before the create: the next leader creates the Job, once."""
    kc = _start(tmp_path, emulator, {"SLIMSCHED_TEST_CRASH_AT": "dispatch-committed"})
    started.append(kc)
    status, body = request(f"{kc.any_url()}/job/fibonacci", "POST", {"Args": ["3"]})
    assert status == 202, body
    dead = _wait_crashed(kc)
    name = kube_job_name("fibonacci", body["Id"])
    assert _attempts(kc, name) == []
    # Dispatching, which the API shows in SlimFaas's terms (no Job exists yet).
    assert (_run_of(kc, "fibonacci", body["Id"]) or {}).get("Status") in ("Queued", "Pending")
    _restart(kc, dead)
    _succeeded_once(kc, "fibonacci", body["Id"])


def test_job_created_by_a_leader_killed_before_its_status_commit_is_not_created_again(
    tmp_path: Path, emulator: tuple[EmulatorThread, str], started: list[KubeCluster]
) -> None:
    """The Job exists, the run is still Dispatching: the next leader finds the Job by name and
    follows it; it makes no second create (not even one answered 409)."""
    kc = _start(tmp_path, emulator, {"SLIMSCHED_TEST_CRASH_AT": "job-created"})
    started.append(kc)
    status, body = request(f"{kc.any_url()}/job/fibonacci", "POST", {"Args": ["4"]})
    assert status == 202, body
    dead = _wait_crashed(kc)
    assert _attempts(kc, kube_job_name("fibonacci", body["Id"])) == ["created"]
    _restart(kc, dead)
    _succeeded_once(kc, "fibonacci", body["Id"])
    assert _reconciled(kc, "term-start") + _reconciled(kc, "poll") == 0, "nothing was re-created"


def _armed_followers(
    tmp_path: Path, emulator: tuple[EmulatorThread, str], started: list[KubeCluster]
) -> tuple[KubeCluster, int]:
    """A cluster whose leader dies before its next Job create and whose followers, restarted one
    at a time while that leader keeps leading, die after the barrier of the first term they lead.

    Under load a restarted follower can win an election before the leader reconnects to it
    (and then dies at its barrier, as armed): that attempt cannot set the state up, so it is
    stopped and made again, three attempts at most.
    """
    for attempt in range(3):
        armed = {"SLIMSCHED_TEST_CRASH_AT": "dispatch-committed"}
        kc = _start(tmp_path / f"attempt-{attempt}", emulator, armed)
        started.append(kc)
        first = kc.cluster.wait_leader()
        kc.cluster.env = {**kc.cluster.env, "SLIMSCHED_TEST_CRASH_AT": "dispatch-committed,barrier-committed"}
        try:
            for f in (i for i in range(3) if i != first):
                kc.cluster.terminate(f)
                kc.cluster.start(f)
                kc.cluster.wait_ready(f, timeout=30)
            if kc.cluster.wait_leader() == first:
                return kc, first
        except TimeoutError:
            pass
        kc.cluster.stop()
    raise AssertionError("a restarted follower took the leadership in each of 3 attempts")


def test_leader_killed_between_its_barrier_and_its_reconcile_hands_the_run_on(
    tmp_path: Path, emulator: tuple[EmulatorThread, str], started: list[KubeCluster]
) -> None:
    """Two deaths in a row: the leader that started the run dies before its create, the next one
    after its barrier but before its reconcile. The third leader creates the one Job."""
    kc, first = _armed_followers(tmp_path, emulator, started)
    status, body = request(f"{kc.node_url(first)}/job/fibonacci", "POST", {"Args": ["5"]})
    assert status == 202, body
    name = kube_job_name("fibonacci", body["Id"])
    assert _wait_crashed(kc) == first
    second = _wait_crashed(kc)
    assert second != first
    assert _attempts(kc, name) == [], "neither dead leader created the Job"
    # Every node restarted without crash points; the third leader reconciles.
    kc.cluster.env = {k: v for k, v in kc.cluster.env.items() if k != "SLIMSCHED_TEST_CRASH_AT"}
    for i in range(3):
        kc.cluster.terminate(i)
        kc.cluster.nodes[i].proc = None
    kc.cluster.start()
    kc.cluster.wait_ready(timeout=30)
    _succeeded_once(kc, "fibonacci", body["Id"])


# --- barrier --------------------------------------------------------------------------------------


def test_new_leader_reconciles_a_run_whose_commit_it_had_not_heard_of(
    tmp_path: Path, emulator: tuple[EmulatorThread, str], started: list[KubeCluster]
) -> None:
    """The leader dies in its Raft thread right after applying the claiming FireTick, before it
    told the followers that it was committed: the next leader holds the entry uncommitted, and
    commits it only with its own first entry. Its barrier makes its first reconcile (before
    anything is fired or dispatched) see the run; without it the first reconcile reads a state
    without the run."""
    # Each new leader's Raft thread is held 0.25 s after its election (under the 0.4 s election
    # timeout): the window in which only the barrier keeps the reconcile from a stale state.
    env = {"SLIMSCHED_TEST_CRASH_AT": "fire-applied", "SLIMSCHED_TEST_STALL_ELECTED_SECONDS": "0.25"}
    kc = _start(tmp_path, emulator, env)
    started.append(kc)
    sid, tick = _one_shot_schedule(kc, "ticker")
    dead = _wait_crashed(kc)
    _restart(kc, dead)
    _succeeded_once(kc, "ticker", f"{sid}-{tick}")
    assert _reconciled(kc, "term-start") == 1, "the first reconcile of the new term saw the run"
    assert _reconciled(kc, "poll") == 0


# --- FireTick dedupe ------------------------------------------------------------------------------


def test_fire_tick_delivered_twice_is_applied_once(
    tmp_path: Path, emulator: tuple[EmulatorThread, str], started: list[KubeCluster]
) -> None:
    """Every FireTick is proposed a second time once the first is answered (as a retry of a
    proposal whose fate was unknown would be): each tick is in the ledger once, with one run and
    one Job, and the second delivery was answered "duplicate"."""
    kc = _start(tmp_path, emulator, {"SLIMSCHED_TEST_BREAK": "repeat-fire-tick"})
    started.append(kc)
    status, body = request(f"{kc.any_url()}/job-schedules/ticker", "POST", {"Schedule": "* * * * * *"})
    assert status == 201, body
    sid = body["Id"]
    wait_until(lambda: len(_ledger(kc, "ticker", sid)) >= 3, 15, "three ticks")
    status, body = request(f"{kc.any_url()}/job-schedules/ticker/{sid}", "PATCH", {"Paused": True})
    assert status == 200, body
    ledger = _ledger(kc, "ticker", sid)
    ticks = [t["Tick"] for t in ledger]
    assert len(ticks) == len(set(ticks)), f"a tick recorded twice: {ticks}"
    fired = [t["Tick"] for t in ledger if t["Outcome"] == "fired"]
    assert len(fired) >= 3
    for tick in fired:
        _wait_run_succeeded(kc, f"{sid}-{tick}")
        assert _attempts(kc, kube_job_name("ticker", f"{sid}-{tick}")) == ["created"]
    logs = "".join(
        Path(kc.cluster.log_dir or "", f"node-{i}.log").read_text(errors="replace") for i in range(3)
    )
    assert logs.count("proposed again: duplicate") >= len(fired), "the second deliveries were refused"


# --- catch-up firing --------------------------------------------------------------------------------


def test_after_an_outage_the_newest_missed_tick_fires_once_and_the_older_are_missed(
    tmp_path: Path, emulator: tuple[EmulatorThread, str], started: list[KubeCluster]
) -> None:
    """The whole cluster is down for 3 s: the first leader after it records every tick of the
    outage in one FireTick, the newest fired (inside the explicit StartingDeadlineSeconds, so the
    test holds whatever the default deadline) and every older one missed, each once."""
    kc = _start(tmp_path, emulator, {})
    started.append(kc)
    body_in = {"Schedule": "* * * * * *", "StartingDeadlineSeconds": 3600}
    status, body = request(f"{kc.any_url()}/job-schedules/ticker", "POST", body_in)
    assert status == 201, body
    sid = body["Id"]
    wait_until(lambda: len(_ledger(kc, "ticker", sid)) >= 1, 10, "a first tick")
    kc.cluster.stop()
    time.sleep(3.0)  # the outage itself: ticks fall due while no node runs
    restarted_ms = int(time.time() * 1000)
    kc.cluster.start()
    kc.cluster.wait_ready(timeout=30)
    wait_until(
        lambda: any(t["RecordedAt"] >= restarted_ms for t in _ledger(kc, "ticker", sid)),
        15,
        "the first tick after the outage",
    )
    status, body = request(f"{kc.any_url()}/job-schedules/ticker/{sid}", "PATCH", {"Paused": True})
    assert status == 200, body
    ledger = _ledger(kc, "ticker", sid)
    ticks = [t["Tick"] for t in ledger]
    assert len(ticks) == len(set(ticks)), ticks
    first_at = min(t["RecordedAt"] for t in ledger if t["RecordedAt"] >= restarted_ms)
    batch = sorted((t["Tick"], t["Outcome"]) for t in ledger if t["RecordedAt"] == first_at)
    last_before = max(t["Tick"] for t in ledger if t["RecordedAt"] < first_at)
    # Every tick since the last one handled (the newest MAX_MISSED_RECORDED if the restart was slow).
    listed_from = max(last_before + 1, batch[-1][0] - MAX_MISSED_RECORDED)
    assert [t for t, _ in batch] == list(range(listed_from, batch[-1][0] + 1)), batch
    assert len(batch) >= 3, f"the outage left at least 3 ticks: {batch}"
    assert batch[-1][1] == "fired", f"the newest missed tick fires: {batch}"
    assert {o for _, o in batch[:-1]} == {"missed"}, batch
    newest = batch[-1][0]
    _wait_run_succeeded(kc, f"{sid}-{newest}")
    assert _attempts(kc, kube_job_name("ticker", f"{sid}-{newest}")) == ["created"]
    for tick, _ in batch[:-1]:
        assert _run_of(kc, "ticker", f"{sid}-{tick}") is None
        assert _attempts(kc, kube_job_name("ticker", f"{sid}-{tick}")) == []


def _wait_run_succeeded(kc: KubeCluster, run_id: str) -> None:
    wait_until(
        lambda: (_run_of(kc, "ticker", run_id) or {}).get("Status") == "Succeeded", 30, f"{run_id} to succeed"
    )
