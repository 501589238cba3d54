"""Firing and dispatch on a real 3-node cluster with the Kubernetes API emulator, across failover."""

from __future__ import annotations

import time
import urllib.request
from collections import Counter
from typing import Any

from slimsched.cronplan import MAX_MISSED_RECORDED
from slimsched.jobmanifest import kube_job_name
from tests.helpers import KubeCluster, request, wait_until


def _finished(job: dict[str, Any]) -> bool:
    conditions = (job.get("status") or {}).get("conditions") or []
    return any(c.get("type") in ("Complete", "Failed") and c.get("status") == "True" for c in conditions)


def test_every_second_schedule_fires_once_per_tick_across_five_leader_kills(kc: KubeCluster) -> None:
    status, body = request(f"{kc.node_url(0)}/job-schedules/ticker", "POST", {"Schedule": "* * * * * *"})
    assert status == 201, body
    sid = body["Id"]
    start = time.time()
    kills = 0
    while kills < 5:
        time.sleep(1.5)  # the fault timetable: a kill every 1.5 s of leading
        leader = kc.cluster.wait_leader(timeout=20)
        kc.cluster.kill(leader)
        last_kill_ms = int(time.time() * 1000)
        kills += 1
        kc.cluster.start(leader)
        kc.cluster.wait_ready(leader, timeout=20)

    def fired_since_last_kill() -> list[dict[str, Any]]:
        status, ticks = request(f"{kc.any_url()}/job-schedules/ticker/{sid}/ticks")
        assert status == 200, ticks
        after = [t for t in ticks if t["RecordedAt"] > last_kill_ms and t["Outcome"] == "fired"]
        return list(ticks) if len(after) >= 2 else []

    # The last leader fires again: two ticks fired after the last kill (not a fixed wait).
    wait_until(lambda: bool(fired_since_last_kill()), 20, "ticks fired after the last kill")
    ledger = fired_since_last_kill()
    assert request(f"{kc.any_url()}/job-schedules/ticker/{sid}", "DELETE")[0] == 204
    end = time.time()
    # Let the last dispatches land (the schedule is gone, its queued runs remain and dispatch).
    wait_until(
        lambda: all(r["Status"] not in ("Queued", "Pending") for r in kc.runs("ticker")),
        20,
        "runs dispatched",
    )

    runs = kc.runs("ticker")
    fired_ticks = sorted(int(r["Id"].rsplit("-", 1)[1]) for r in runs)
    assert len(fired_ticks) == len(set(fired_ticks)), "a tick produced two runs"
    created = kc.created_names()
    duplicates = [name for name, n in Counter(created).items() if n > 1]
    assert duplicates == [], f"Job names created twice: {duplicates}"
    expected_names = {kube_job_name("ticker", f"{sid}-{t}") for t in fired_ticks}
    assert expected_names == set(created), "every fired tick has exactly one Job and no other Job exists"
    assert fired_ticks[0] <= int(start) + 2
    assert fired_ticks[-1] >= int(end) - 4
    # Every second up to the ledger's last tick is in the ledger (read before the delete):
    # fired with its run, or missed. Nothing is silently lost.
    outcomes = {t["Tick"]: t["Outcome"] for t in ledger}
    last = max(outcomes)
    assert sorted(outcomes) == list(range(fired_ticks[0], last + 1)), outcomes
    assert {t for t, o in outcomes.items() if o == "fired"} == {t for t in fired_ticks if t <= last}
    assert set(outcomes.values()) <= {"fired", "missed"}
    # "Fires", not only "at most once": each FireTick (its records share RecordedAt) fired its
    # newest pending tick and recorded only the older ones missed, so every takeover fired.
    batches: dict[int, list[tuple[int, str]]] = {}
    for t in ledger:
        batches.setdefault(t["RecordedAt"], []).append((t["Tick"], t["Outcome"]))
    for batch in batches.values():
        batch.sort()
        assert batch[-1][1] == "fired" and {o for _, o in batch[:-1]} <= {"missed"}, batch
    # Whether a takeover had ticks to catch up depends on how fast each election was (under a
    # second, none was missed): test_exactly_once's outage test proves catch-up deterministically.


def ledger(kc: KubeCluster, sid: str) -> dict[int, str]:
    status, ticks = request(f"{kc.any_url()}/job-schedules/ticker/{sid}/ticks")
    assert status == 200, ticks
    return {t["Tick"]: t["Outcome"] for t in ticks}


def test_ticks_missed_while_the_cluster_was_down_are_in_the_ledger(kc: KubeCluster) -> None:
    status, body = request(f"{kc.node_url(0)}/job-schedules/ticker", "POST", {"Schedule": "* * * * * *"})
    assert status == 201, body
    sid = body["Id"]
    wait_until(lambda: len(ledger(kc, sid)) >= 1, 10, "a first fired tick")
    down_from = time.time()  # the outage starts with the first node stopping
    kc.cluster.stop()
    time.sleep(3.0)  # the outage itself: ticks fall due while no node runs
    restarted_ms = int(time.time() * 1000)
    kc.cluster.start()
    kc.cluster.wait_ready(timeout=30)

    def recovered() -> bool:
        outcomes = ledger(kc, sid)
        missed = [t for t, o in outcomes.items() if o == "missed"]
        return bool(missed) and any(o == "fired" and t > max(missed) for t, o in outcomes.items())

    wait_until(recovered, 15, "the new leader to record the outage and fire again")
    outcomes = ledger(kc, sid)
    missed = sorted(t for t, o in outcomes.items() if o == "missed")
    assert len(missed) >= 2, f"the outage is recorded as missed ticks: {outcomes}"
    assert all(t >= int(down_from) - 1 for t in missed)
    # The outage's ticks were handled by the first FireTick after the restart (its records share
    # RecordedAt): every tick since the last one handled (the newest MAX_MISSED_RECORDED of them
    # if the machine took longer to come back), the newest fired (whatever its age, the default)
    # and each older one missed. Before and after it, every second is in the ledger.
    status, raw = request(f"{kc.any_url()}/job-schedules/ticker/{sid}/ticks")
    assert status == 200, raw
    after = [t for t in raw if t["RecordedAt"] >= restarted_ms]
    first_at = min(t["RecordedAt"] for t in after)
    batch = sorted((t["Tick"], t["Outcome"]) for t in after if t["RecordedAt"] == first_at)
    handled_before = max(t["Tick"] for t in raw if t["RecordedAt"] < first_at)
    newest = batch[-1][0]
    listed_from = max(handled_before + 1, newest - MAX_MISSED_RECORDED)
    assert [t for t, _ in batch] == list(range(listed_from, newest + 1)), batch
    assert sorted(t for t in outcomes if t <= handled_before) == list(
        range(min(outcomes), handled_before + 1)
    )
    assert sorted(t for t in outcomes if t >= newest) == list(range(newest, max(outcomes) + 1))
    assert len(batch) >= 3 and batch[-1][1] == "fired", batch
    assert {o for _, o in batch[:-1]} == {"missed"}, batch
    fired = sorted(t for t, o in outcomes.items() if o == "fired")
    created = kc.created_names()
    assert len(created) == len(set(created))
    wait_until(
        lambda: {kube_job_name("ticker", f"{sid}-{t}") for t in fired} <= set(kc.created_names()),
        10,
        "a Job for every fired tick",
    )
    assert not {kube_job_name("ticker", f"{sid}-{t}") for t in missed} & set(kc.created_names())


def test_acknowledged_trigger_dispatched_once_when_leader_dies_right_after(kc: KubeCluster) -> None:
    leader = kc.cluster.wait_leader()
    status, body = request(f"{kc.node_url(leader)}/job/fibonacci", "POST", {"Args": ["7"]})
    assert status == 202, body
    kc.cluster.kill(leader)
    run_id = body["Id"]
    name = kube_job_name("fibonacci", run_id)
    wait_until(
        lambda: any(r["Id"] == run_id and r["Status"] == "Succeeded" for r in kc.runs("fibonacci")),
        30,
        "the run to succeed under the new leader",
    )
    assert kc.created_names().count(name) == 1


def _trigger(kc: KubeCluster, job: str, count: int) -> list[str]:
    """``count`` runs of ``job``, triggered in order through the nodes in turn; their ids."""
    ids = []
    for i in range(count):
        status, body = request(f"{kc.node_url(i % 3)}/job/{job}", "POST", {"Args": [str(i)]})
        assert status == 202, body
        ids.append(body["Id"])
    return ids


def _active_jobs(kc: KubeCluster) -> int:
    return len([j for j in kc.jobs() if not _finished(j)])


def test_number_parallel_job_caps_active_jobs_and_positions_count_down(kc: KubeCluster) -> None:
    ids = _trigger(kc, "fibonacci", 5)
    max_active = 0
    positions_seen: dict[str, list[int]] = {i: [] for i in ids}
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        max_active = max(max_active, _active_jobs(kc))
        runs = {r["Id"]: r for r in kc.runs("fibonacci")}
        for i in ids:
            positions_seen[i].append(runs[i]["PositionInQueue"])
        if all(runs[i]["Status"] == "Succeeded" for i in ids):
            break
        time.sleep(0.05)
    else:
        raise AssertionError("the 5 runs did not all succeed in time")
    assert max_active <= 2
    assert max_active == 2, "the cap was reached (runs do overlap)"
    for run_id, seen in positions_seen.items():
        queued = [p for p in seen if p != -1]
        assert queued == sorted(queued, reverse=True), f"positions of {run_id} went up: {seen}"
        assert seen[-1] == -1
    last = positions_seen[ids[-1]]
    assert last[0] >= 1 and set(last) - {-1}, f"the last run was seen waiting in the queue: {last}"


def _metric(kc: KubeCluster, name: str) -> float:
    total = 0.0
    for i in range(3):
        with urllib.request.urlopen(f"{kc.node_url(i)}/metrics", timeout=5) as resp:
            for line in resp.read().decode().splitlines():
                if line.startswith(name + " "):
                    total += float(line.split()[1])
    return total


def test_cron_runs_claimed_at_fire_keep_the_cap_and_the_queue_order(kc: KubeCluster) -> None:
    manual = _trigger(kc, "fibonacci", 4)
    status, body = request(f"{kc.node_url(1)}/job-schedules/fibonacci", "POST", {"Schedule": "* * * * * *"})
    assert status == 201, body
    sid = body["Id"]
    max_active = 0
    deadline = time.monotonic() + 8
    while time.monotonic() < deadline:
        max_active = max(max_active, _active_jobs(kc))
        time.sleep(0.05)
    assert request(f"{kc.any_url()}/job-schedules/fibonacci/{sid}", "DELETE")[0] == 204
    wait_until(
        lambda: all(r["Status"] == "Succeeded" for r in kc.runs("fibonacci")), 30, "every run succeeded"
    )
    assert max_active == 2, "NumberParallelJob 2 was reached and never exceeded"
    created = kc.created_names()
    manual_names = {kube_job_name("fibonacci", r) for r in manual}
    cron_positions = [i for i, name in enumerate(created) if name not in manual_names]
    assert len(cron_positions) >= 4, created
    assert max(created.index(n) for n in manual_names) < min(cron_positions), "a cron run overtook the queue"
    assert len(created) == len(set(created))
    assert _metric(kc, "slimsched_runs_claimed_at_fire_total") >= 1, "no tick was claimed at fire time"


def test_blocked_dependency_does_not_block_other_jobs(kc: KubeCluster) -> None:
    kc.emulator.call(lambda e: e.set_workload("deployment", "db", replicas=1, ready_replicas=0))
    status, blocked = request(f"{kc.node_url(0)}/job/needs-db", "POST", {})
    assert status == 202, blocked
    status, free = request(f"{kc.node_url(1)}/job/fibonacci", "POST", {})
    assert status == 202, free
    wait_until(
        lambda: any(r["Id"] == free["Id"] and r["Status"] == "Succeeded" for r in kc.runs("fibonacci")),
        20,
        "the independent job to run",
    )
    assert [r["Status"] for r in kc.runs("needs-db")] == ["Queued"]
    kc.emulator.call(lambda e: e.set_workload("deployment", "db", replicas=1, ready_replicas=1))
    wait_until(
        lambda: [r["Status"] for r in kc.runs("needs-db")] == ["Succeeded"], 20, "the dependent job to run"
    )


def test_a_queue_longer_than_a_dispatch_pass_is_dispatched_whole_and_once(kc: KubeCluster) -> None:
    """300 runs queued behind a dependency, then all free at once: a pass reads the head of the
    queue only (DISPATCH_BATCH, 256, beyond the runs in flight), and the rest follow."""
    kc.emulator.call(lambda e: e.set_workload("deployment", "store", replicas=1, ready_replicas=0))
    ids = _trigger(kc, "backlog", 300)
    assert {r["Status"] for r in kc.runs("backlog")} == {"Queued"}
    kc.emulator.call(lambda e: e.set_workload("deployment", "store", replicas=1, ready_replicas=1))
    expected = {kube_job_name("backlog", i) for i in ids}
    wait_until(lambda: expected <= set(kc.created_names()), 60, "a Job for each of the 300 runs")
    created = [n for n in kc.created_names() if n in expected]
    assert len(created) == len(expected), "a run was dispatched twice"
