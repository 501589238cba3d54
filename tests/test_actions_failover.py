"""A manual trigger and a backfill each fire once when the leader is SIGKILLed right after the ack.

Real processes: a 3-node cluster dispatching to the Kubernetes API emulator. Each action is sent
to a follower; as soon as it is acknowledged the leader is killed, and the client retries the same
request (same RequestId) as it would after a lost answer. Then every run must exist once, reach
Succeeded under the new leader, and have had its Job created exactly once.
"""

from __future__ import annotations

import collections
from typing import Any

from tests.helpers import KubeCluster, request, wait_until

HOUR = 3600
BACKFILL_TICKS = 12


def _follower(kc: KubeCluster) -> int:
    leader = kc.cluster.wait_leader()
    return next(n.index for n in kc.cluster.nodes if n.running and n.index != leader)


def _until_accepted(kc: KubeCluster, path: str, body: dict[str, Any]) -> dict[str, Any]:
    """POST to any running node until one accepts (503 while there is no leader, or a dead node)."""
    answer: dict[str, Any] = {}

    def accepted() -> bool:
        for node in kc.cluster.nodes:
            if not node.running:
                continue
            try:
                status, got = request(f"{node.url}{path}", "POST", body, timeout=5)
            except OSError:
                continue
            if status == 202:
                answer.update(got)
                return True
            assert status == 503, (status, got)
        return False

    wait_until(accepted, 30, f"POST {path} to be accepted")
    return answer


def _kill_leader_and_restart(kc: KubeCluster) -> None:
    leader = kc.cluster.wait_leader()
    kc.cluster.kill(leader)
    wait_until(lambda: kc.cluster.leader_index() not in (None, leader), 30, "a new leader")
    kc.cluster.start(leader)
    kc.cluster.wait_ready(leader, timeout=30)


def test_a_trigger_and_a_backfill_fire_once_across_leader_kills(kc: KubeCluster) -> None:
    status, body = request(f"{kc.node_url(0)}/job-schedules/ticker", "POST", {"Schedule": "0 * * * *"})
    assert status == 201, body
    sid = body["Id"]
    base = f"/job-schedules/ticker/{sid}"
    # Every node must have announced command level 4 before the API takes the new commands.
    wait_until(
        lambda: (
            request(f"{kc.node_url(0)}{base}/next?count=1")[0] == 200
            and request(f"{kc.node_url(0)}{base}/trigger", "POST", {"RequestId": "warm-up"})[0] == 202
        ),
        30,
        "every node at command level 4",
    )

    # A manual trigger, acknowledged by a follower; the leader dies at once; the client retries.
    trigger = {"RequestId": "chaos-trigger"}
    status, first = request(f"{kc.node_url(_follower(kc))}{base}/trigger", "POST", trigger)
    assert status == 202, first
    _kill_leader_and_restart(kc)
    retried = _until_accepted(kc, f"{base}/trigger", trigger)
    assert retried["Id"] == first["Id"]

    # A backfill of the 12 hours before the schedule existed, the same way.
    backfill = {"Start": "2024-03-01T00:00:00Z", "End": "2024-03-01T11:00:00Z", "RequestId": "chaos-backfill"}
    status, filled = request(f"{kc.node_url(_follower(kc))}{base}/backfill", "POST", backfill)
    assert status == 202, filled
    assert len(filled["Fired"]) == BACKFILL_TICKS
    _kill_leader_and_restart(kc)
    assert _until_accepted(kc, f"{base}/backfill", backfill) == filled
    # A new request over the same range fires nothing: every tick is already fired.
    again = _until_accepted(kc, f"{base}/backfill", {**backfill, "RequestId": "chaos-backfill-2"})
    assert (len(again["Fired"]), len(again["AlreadyFired"])) == (0, BACKFILL_TICKS)

    expected = {first["Id"]} | {t["RunId"] for t in filled["Fired"]}

    def all_succeeded() -> bool:
        runs = {r["Id"]: r["Status"] for r in kc.runs("ticker")}
        return all(runs.get(i) == "Succeeded" for i in expected)

    wait_until(all_succeeded, 60, "every run to succeed under the new leaders")
    mine = [r for r in kc.runs("ticker") if r.get("ScheduleId") == sid]
    ids = [r["Id"] for r in mine]
    assert len(ids) == len(set(ids)), "a run listed twice"
    warm_up = {r["Id"] for r in mine} - expected
    assert len(warm_up) == 1, "exactly the warm-up trigger besides the runs under test"
    # Each run's Job was created once; a later create by another leader is a 409, never a second Job.
    names = {r["Name"] for r in mine if r["Id"] in expected}
    created = collections.Counter(n for n in kc.created_names() if n in names)
    assert created == dict.fromkeys(names, 1), created
    ticks = sorted(int(i.rsplit("-", 1)[1]) for i in expected - {first["Id"]})
    assert ticks == [1_709_251_200 + h * HOUR for h in range(BACKFILL_TICKS)]
    ledger = request(f"{kc.any_url()}{base}/ticks")[1]
    assert collections.Counter(t.get("Reason") for t in ledger) == {"manual": 2, "backfill": BACKFILL_TICKS}
