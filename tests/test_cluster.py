"""A real 3-node cluster of separate processes over TCP on 127.0.0.1: failover and recovery."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from slimsched.democonfig import DEMO_JOBS_CONFIGURATION
from slimsched.localcluster import LocalCluster
from tests.helpers import request, wait_until


def schedule_ids(cluster: LocalCluster, index: int, job: str = "fibonacci") -> set[str]:
    status, body = request(f"{cluster.nodes[index].url}/job-schedules/{job}", timeout=2.0)
    assert status == 200, body
    return {s["Id"] for s in body}


def create_schedule(cluster: LocalCluster, index: int, args: list[str]) -> str:
    status, body = request(
        f"{cluster.nodes[index].url}/job-schedules/fibonacci",
        "POST",
        {"Schedule": "0 0 * * *", "Args": args},
    )
    assert status == 201, body
    return str(body["Id"])


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[LocalCluster]:
    c = LocalCluster.create(3, str(tmp_path), jobs_configuration=DEMO_JOBS_CONFIGURATION)
    c.start()
    try:
        c.wait_ready(timeout=30)
        yield c
    finally:
        c.stop()


def test_write_visible_at_once_on_taker_and_within_a_second_everywhere(cluster: LocalCluster) -> None:
    sid = create_schedule(cluster, 1, ["42"])
    assert sid in schedule_ids(cluster, 1)  # at once on the node that took it
    wait_until(
        lambda: all(sid in schedule_ids(cluster, i) for i in range(3)), 1.0, "replication to all nodes"
    )
    status, body = request(f"{cluster.nodes[2].url}/job-schedules/fibonacci/{sid}", "DELETE")
    assert status == 204, body
    status, body = request(f"{cluster.nodes[2].url}/job-schedules/fibonacci/{sid}", "DELETE")
    assert status == 404 and body["Error"] == "not_found"


def test_writes_continue_after_leader_sigkill(cluster: LocalCluster) -> None:
    before = [create_schedule(cluster, i % 3, [str(i)]) for i in range(5)]
    leader = cluster.wait_leader()
    cluster.kill(leader)
    survivors = [i for i in range(3) if i != leader]
    wait_until(lambda: cluster.leader_index() in survivors, 15, "a new leader among the survivors")
    after = [create_schedule(cluster, survivors[i % 2], [f"after-{i}"]) for i in range(5)]
    for i in survivors:
        assert set(before + after) <= schedule_ids(cluster, i)
    # The killed node comes back with its data directory and catches up.
    cluster.start(leader)
    cluster.wait_ready(leader)
    wait_until(lambda: set(before + after) <= schedule_ids(cluster, leader), 15, "restarted node catches up")


def test_node_restarted_with_empty_data_dir_receives_state(cluster: LocalCluster) -> None:
    created = [create_schedule(cluster, 0, [str(i)]) for i in range(10)]
    leader = cluster.wait_leader()
    follower = (leader + 1) % 3
    cluster.terminate(follower)
    cluster.wipe(follower)
    more = create_schedule(cluster, leader, ["while-away"])
    cluster.start(follower)
    cluster.wait_ready(follower)
    wait_until(
        lambda: set([*created, more]) <= schedule_ids(cluster, follower), 15, "wiped node receives the state"
    )
    hashes = {cluster.get_json(i, "/status?hash=1")["StateHash"] for i in range(3)}
    wait_until(
        lambda: len({cluster.get_json(i, "/status?hash=1")["StateHash"] for i in range(3)}) == 1,
        10,
        f"all nodes converge on one state hash (saw {hashes})",
    )
