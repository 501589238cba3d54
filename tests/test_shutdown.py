"""Graceful shutdown: SIGTERM to the leader during a burst of writes loses no acknowledged write."""

from __future__ import annotations

import threading
import time
from pathlib import Path

from slimsched.democonfig import DEMO_JOBS_CONFIGURATION
from slimsched.localcluster import LocalCluster
from tests.helpers import request, wait_until
from tests.test_cluster import schedule_ids

GRACE_SECONDS = 30.0


def test_sigterm_to_leader_during_writes_keeps_every_acknowledged_write(tmp_path: Path) -> None:
    cluster = LocalCluster.create(3, str(tmp_path), jobs_configuration=DEMO_JOBS_CONFIGURATION)
    cluster.start()
    try:
        cluster.wait_ready()
        leader = cluster.wait_leader()
        acked: list[str] = []
        lock = threading.Lock()
        stop = threading.Event()

        def writer(w: int) -> None:
            for i in range(10_000):  # bounded; stopped by the event long before
                if stop.is_set():
                    return
                node = cluster.nodes[(w + i) % 3]
                try:
                    status, body = request(
                        f"{node.url}/job-schedules/fibonacci",
                        "POST",
                        {"Schedule": "0 0 * * *", "Args": [f"{w}-{i}"]},
                        5,
                    )
                except OSError:
                    continue  # the stopping node refuses connections: not acknowledged
                if status == 201:
                    with lock:
                        acked.append(body["Id"])

        threads = [threading.Thread(target=writer, args=(w,), daemon=True) for w in range(6)]
        for t in threads:
            t.start()
        wait_until(lambda: len(acked) >= 50, 20, "writes flowing")
        started = time.monotonic()
        code = cluster.terminate(leader, timeout=GRACE_SECONDS)
        took = time.monotonic() - started
        assert code == 0, f"the leader exited with {code}"
        assert took < GRACE_SECONDS
        before = len(acked)
        wait_until(lambda: len(acked) >= before + 50, 20, "writes go on with the new leader")
        stop.set()
        for t in threads:
            t.join(10)
        survivors = [i for i in range(3) if i != leader]
        for i in survivors:
            wait_until(lambda: set(acked) <= schedule_ids(cluster, i), 10, f"every acked write on node {i}")  # noqa: B023
    finally:
        cluster.stop()
