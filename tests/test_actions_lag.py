"""A schedule action sent to a follower that has not yet applied the schedule's creation.

Real processes: a 3-node cluster whose Raft links run through the chaos harness's partition
proxy. One follower is cut off, a schedule is created through the leader (the other two nodes
commit it), and a trigger and a backfill of that acknowledged schedule are sent to the cut-off
follower. It must not answer 404 from its stale state: it commits a barrier, which it can only
apply after the creation, and then acts on the schedule.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from slimsched.jsonhttp import request_json
from slimsched.localcluster import LocalCluster, free_ports
from slimsched.partitionproxy import PartitionProxy
from tests.conftest import JOBS


async def _call(url: str, method: str = "GET", body: Any = None) -> tuple[int, Any]:
    """A blocking request in a thread: the event loop keeps relaying the nodes' Raft traffic."""
    return await asyncio.to_thread(request_json, url, method, body, 30.0)


async def _wait_accepted(url: str, body: dict[str, Any], timeout: float) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        if (await _call(url, "POST", body))[0] == 202:
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"timed out after {timeout} s waiting for {url} to accept")


async def test_an_action_on_a_lagging_follower_sees_a_schedule_acknowledged_elsewhere(tmp_path: Path) -> None:
    n = 3
    ports = free_ports(3 * n)
    cluster = LocalCluster.create(
        n,
        str(tmp_path),
        http_ports=ports[:n],
        raft_ports=ports[n : 2 * n],
        raft_bind_ports=ports[2 * n :],
        jobs_configuration=JOBS,
        # The proxy reads each connection's first, unencrypted frame: no password, 127.0.0.1 only.
        env={
            "SLIMSCHED_KUBE_MODE": "none",
            "SLIMSCHED_RAFT_PASSWORD": "",
            "SLIMSCHED_RAFT_NETWORK_PRIVATE": "true",
        },
    )
    proxy = PartitionProxy({node.raft_address: str(node.raft_bind) for node in cluster.nodes})
    await proxy.start()
    try:
        await asyncio.to_thread(cluster.start)
        await asyncio.to_thread(cluster.wait_ready, None, 60.0)
        leader = await asyncio.to_thread(cluster.wait_leader, 30.0)
        lagging = next(i for i in range(n) if i != leader)
        url = cluster.nodes[lagging].url
        schedules = f"{cluster.nodes[leader].url}/job-schedules/fibonacci"
        # Level 4 (the actions' commands) is announced by every node before the cut.
        status, body = await _call(f"{schedules}", "POST", {"Schedule": "0 * * * *"})
        assert status == 201, body
        warm = f"/job-schedules/fibonacci/{body['Id']}/trigger"
        await _wait_accepted(f"{url}{warm}", {"RequestId": "warm"}, 30)

        proxy.isolate(cluster.nodes[lagging].raft_address)
        status, body = await _call(f"{schedules}", "POST", {"Schedule": "0 * * * *"})
        assert status == 201, body
        base = f"/job-schedules/fibonacci/{body['Id']}"
        # The cut-off follower really has not applied the creation: its reads do not show it.
        status, _ = await _call(f"{url}{base}/ticks")
        assert status == 404

        async def heal_soon() -> None:
            await asyncio.sleep(1.0)
            proxy.heal_all()

        healer = asyncio.create_task(heal_soon())
        status, got = await _call(f"{url}{base}/trigger", "POST", {"RequestId": "after-create"})
        await healer
        assert status == 202, got
        assert str(got["Id"]).startswith(body["Id"])

        proxy.isolate(cluster.nodes[lagging].raft_address)
        status, body = await _call(f"{schedules}", "POST", {"Schedule": "0 * * * *"})
        assert status == 201, body
        healer = asyncio.create_task(heal_soon())
        window = {"Start": "2024-03-01T00:00:00Z", "End": "2024-03-01T02:00:00Z", "RequestId": "fill"}
        status, got = await _call(f"{url}/job-schedules/fibonacci/{body['Id']}/backfill", "POST", window)
        await healer
        assert status == 202, got
        assert len(got["Fired"]) == 3, got
    finally:
        proxy.heal_all()
        await asyncio.to_thread(cluster.stop)
        await proxy.stop()
