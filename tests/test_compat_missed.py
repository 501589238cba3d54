"""Missed ticks as SlimFaas handles them, on a real 3-node cluster.

src/SlimFaas/Jobs/SlimScheduleJobsWorker.cs enqueues a schedule's newest tick
(Cron.GetLatestJobExecutionTimestamp) once when it is newer than the last one it ran, whatever
its age, as a Kubernetes CronJob without startingDeadlineSeconds does. The cluster here starts
from a backup whose schedules last fired two hours ago: the newest tick (about five minutes old)
fires once, the older one is recorded as missed; a schedule that opts in to
StartingDeadlineSeconds: 60 records its newest tick as missed too.
"""

from __future__ import annotations

import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from slimsched import backup as bk
from slimsched import cronplan
from slimsched.emulator import EmulatorThread
from slimsched.jobmanifest import kube_job_name
from slimsched.localcluster import LocalCluster
from slimsched.model import Schedule
from tests.helpers import KubeCluster, request, wait_until

JOBS = orjson.dumps(
    {"Configurations": {"fibonacci": {"Image": "demo/fib:1", "Visibility": "Public"}}}
).decode()


@pytest.fixture
def kc(tmp_path: Path) -> Iterator[KubeCluster]:
    emulator = EmulatorThread(pending_seconds=0.05, run_seconds=0.2)
    with emulator as url:
        c = LocalCluster.create(3, str(tmp_path), jobs_configuration=JOBS, env={"SLIMSCHED_KUBE_URL": url})
        c.start()
        try:
            c.wait_ready(timeout=30)
            yield KubeCluster(c, emulator, url)
        finally:
            c.stop()


def _ledger(kc: KubeCluster, sid: str) -> dict[int, str]:
    status, ticks = request(f"{kc.any_url()}/job-schedules/fibonacci/{sid}/ticks", timeout=3)
    return {t["Tick"]: t["Outcome"] for t in ticks} if status == 200 else {}


def test_after_an_outage_the_newest_tick_fires_whatever_its_age(kc: KubeCluster) -> None:
    now = int(time.time())
    minute = (time.gmtime(now).tm_min - 5) % 60
    cron = f"{minute} * * * *"  # hourly, its newest tick about five minutes ago
    newest = cronplan.next_fire(cron, "UTC", now - 3600)
    assert 240 <= now - newest <= 360
    schedules = [
        Schedule(id="default-deadline", job_name="fibonacci", cron=cron, created_at_ms=(now - 86400) * 1000),
        Schedule(
            id="opt-in-deadline",
            job_name="fibonacci",
            cron=cron,
            starting_deadline_seconds=60,
            created_at_ms=(now - 86400) * 1000,
        ),
    ]
    last_fired = {s.id: newest - 7200 for s in schedules}
    data = bk.encode_backup(
        bk.payload_of(schedules, last_fired), node="old", raft_index=1, written_at=now
    ).data
    req = urllib.request.Request(f"{kc.node_url(0)}/admin/restore", data=data, method="POST")
    with urllib.request.urlopen(req, timeout=20) as resp:
        assert resp.status == 200

    expected: dict[str, dict[int, str]] = {
        "default-deadline": {newest - 3600: "missed", newest: "fired"},
        "opt-in-deadline": {newest - 3600: "missed", newest: "missed"},
    }
    wait_until(
        lambda: all(_ledger(kc, sid) == ledger for sid, ledger in expected.items()),
        20,
        "the leader to handle the ticks of the outage",
    )
    fired = kube_job_name("fibonacci", f"default-deadline-{newest}")
    wait_until(lambda: fired in kc.created_names(), 20, "the Job of the newest tick")
    assert kc.created_names().count(fired) == 1
    assert not [n for n in kc.created_names() if "opt-in" in n]
    runs: list[dict[str, Any]] = kc.runs("fibonacci")
    assert [r["ScheduleId"] for r in runs] == ["default-deadline"]
