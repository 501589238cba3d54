"""pysyncobj's "truncating already-applied log entries" told apart (issue 16, finding 7).

A leader re-sending entries that a follower already applied is ordinary and logged at debug; an
applied entry replaced by another term or command is a divergence: a critical line and
``slimsched_raft_divergences``. Both over real ``slimsched serve`` processes.
"""

from __future__ import annotations

import signal
import threading
import time
import urllib.request
from pathlib import Path

from slimsched.democonfig import DEMO_JOBS_CONFIGURATION
from slimsched.localcluster import LocalCluster
from tests.helpers import request, wait_until


def _metric(c: LocalCluster, i: int, name: str) -> float:
    with urllib.request.urlopen(c.nodes[i].url + "/metrics", timeout=5) as resp:
        for line in resp.read().decode().splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
    raise AssertionError(f"{name} not in /metrics")


def _logs(c: LocalCluster) -> str:
    assert c.log_dir is not None
    return "".join(p.read_text(errors="replace") for p in sorted(Path(c.log_dir).glob("node-*.log")))


def _create(c: LocalCluster, i: int, n: int) -> None:
    status, body = request(
        c.nodes[i].url + "/job-schedules/fibonacci", "POST", {"Schedule": f"{n % 60} 0 * * *"}
    )
    assert status == 201, body


def _counts(c: LocalCluster) -> set[int]:
    return {len(request(n.url + "/job-schedules/fibonacci")[1]) for n in c.nodes if n.running}


def test_re_sent_entries_are_benign_and_logged_below_critical(tmp_path: Path) -> None:
    c = LocalCluster.create(
        3, str(tmp_path), jobs_configuration=DEMO_JOBS_CONFIGURATION, env={"SLIMSCHED_KUBE_MODE": "none"}
    )
    c.start()
    try:
        c.wait_ready(timeout=30)
        leader = c.wait_leader(timeout=30)
        follower = (leader + 1) % 3
        errors: list[BaseException] = []
        written = [0] * 8
        stop = threading.Event()

        def writer(k: int) -> None:
            try:
                while not stop.is_set() and written[k] < 2000:
                    _create(c, leader, written[k])
                    written[k] += 1
            except BaseException as e:  # reported below
                errors.append(e)

        threads = [threading.Thread(target=writer, args=(k,)) for k in range(len(written))]
        for t in threads:
            t.start()
        try:
            for _ in range(3):  # a follower that stalls under writes gets entries again on waking
                time.sleep(0.5)
                c.signal(follower, signal.SIGSTOP)
                time.sleep(1.5)
                c.signal(follower, signal.SIGCONT)
            time.sleep(0.5)
        finally:
            stop.set()
            for t in threads:
                t.join(60)
        assert not errors, errors
        wait_until(lambda: _counts(c) == {sum(written)}, 30, "every node to hold every schedule")
        resent = sum(_metric(c, i, "slimsched_raft_resent_entries") for i in range(3))
        print(f"{sum(written)} writes; entries re-sent unchanged to an applied follower: {resent:.0f}")
        assert resent > 0, "the leader never re-sent an applied entry: the scenario did not happen"
        assert all(_metric(c, i, "slimsched_raft_divergences") == 0 for i in range(3))
        logs = _logs(c)
        assert "truncating already-applied" not in logs and "CRITICAL" not in logs, logs[-3000:]
    finally:
        c.stop()


def test_a_replaced_applied_entry_raises_the_divergence_alarm(tmp_path: Path) -> None:
    """Node 2 keeps entries of a later term while a majority is wiped (data loss, not a crash
    fault): when they meet again, applied entries on one side are replaced by other terms."""
    c = LocalCluster.create(
        3, str(tmp_path), jobs_configuration=DEMO_JOBS_CONFIGURATION, env={"SLIMSCHED_KUBE_MODE": "none"}
    )
    c.start()
    try:
        c.wait_ready(timeout=30)
        for _ in range(2):  # elections raise the term that node 2's entries carry
            leader = c.wait_leader(timeout=30)
            c.kill(leader)
            c.start(leader)
            c.wait_ready(timeout=30)
        for n in range(5):
            _create(c, c.wait_leader(timeout=30), n)
        wait_until(lambda: _counts(c) == {5}, 15, "the five schedules on every node")
        term = request(c.nodes[2].url + "/status")[1]["Term"]
        assert term >= 3, term
        c.stop()

        c.wipe(0)
        c.wipe(1)
        c.start(0)
        c.start(1)
        wait_until(lambda: c.leader_index() is not None, 30, "a leader of the wiped pair")
        for n in range(3):
            _create(c, c.wait_leader(timeout=30), 100 + n)
        c.start(2)

        def alarmed() -> bool:
            try:
                return any(_metric(c, i, "slimsched_raft_divergences") > 0 for i in range(3))
            except OSError:
                return False

        wait_until(alarmed, 30, "a node to raise the divergence alarm")
        logs = _logs(c)
        assert "this node's state has diverged" in logs and "CRITICAL" in logs, logs[-3000:]
    finally:
        c.stop()
