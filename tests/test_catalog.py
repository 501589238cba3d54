"""Jobs and schedules declared by the configuration and by annotated CronJobs."""

from __future__ import annotations

import copy
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from slimsched import catalog, jobconfig
from slimsched.emulator import EmulatorThread
from slimsched.localcluster import LocalCluster
from slimsched.model import RestartPolicy, Visibility
from tests.helpers import request, wait_until

# The CronJob of SlimFaas's documentation (demo/deployment-cron.yaml), as JSON.
CRONJOB: dict[str, Any] = {
    "apiVersion": "batch/v1",
    "kind": "CronJob",
    "metadata": {
        "name": "fibonacci5",
        "annotations": {
            "SlimFaas/Job": "true",
            "SlimFaas/DefaultVisibility": "Public",
            "SlimFaas/NumberParallelJob": "1",
            "SlimFaas/DependsOn": "fibonacci1,fibonacci2",
        },
    },
    "spec": {
        "schedule": "0 0 * * *",
        "suspend": True,
        "jobTemplate": {
            "spec": {
                "backoffLimit": 1,
                "ttlSecondsAfterFinished": 60,
                "template": {
                    "spec": {
                        "containers": [
                            {
                                "name": "fibonacci11",
                                "image": "axaguildev/fibonacci-batch:latest",
                                "resources": {
                                    "requests": {"cpu": "400m", "memory": "400Mi"},
                                    "limits": {"cpu": "400m", "memory": "400Mi"},
                                },
                                "env": [
                                    {"name": "PLAIN", "value": "1"},
                                    {
                                        "name": "TOKEN",
                                        "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}},
                                    },
                                ],
                            }
                        ],
                        "restartPolicy": "Never",
                    }
                },
            }
        },
    },
}


def test_slimfaas_demo_cronjob_maps_to_a_job() -> None:
    found = catalog.cronjob_job(CRONJOB)
    assert found is not None
    c = found.config
    assert (found.name, c.image, c.visibility, c.number_parallel_job) == (
        "fibonacci5",
        "axaguildev/fibonacci-batch:latest",
        Visibility.PUBLIC,
        1,
    )
    assert c.depends_on == ("fibonacci1", "fibonacci2")
    assert dict(c.resources.limits) == {"cpu": "400m", "memory": "400Mi"}
    assert (c.backoff_limit, c.ttl_seconds_after_finished, c.restart_policy) == (1, 60, RestartPolicy.NEVER)
    assert [(e.name, e.value, e.secret_key_ref and e.secret_key_ref.key) for e in c.environments] == [
        ("PLAIN", "1", None),
        ("TOKEN", None, "k"),
    ]
    assert found.schedule is not None and found.schedule.schedule == "0 0 * * *"


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (lambda cj: cj["spec"].update(suspend=False), None),
        (lambda cj: cj["metadata"]["annotations"].pop("SlimFaas/Job"), None),
        (lambda cj: cj["metadata"]["annotations"].update({"SlimFaas/Job": "false"}), None),
    ],
    ids=["not-suspended", "not-annotated", "annotation-false"],
)
def test_cronjobs_that_are_not_slimfaas_jobs_are_ignored(change: Any, expected: None) -> None:
    cj = copy.deepcopy(CRONJOB)
    change(cj)
    assert catalog.cronjob_job(cj) is expected


@pytest.mark.parametrize(
    "change",
    [
        lambda cj: cj["metadata"]["annotations"].update({"SlimFaas/NumberParallelJob": "two"}),
        lambda cj: cj["metadata"]["annotations"].update({"SlimFaas/DefaultVisibility": "Internal"}),
        lambda cj: cj["spec"]["jobTemplate"]["spec"]["template"]["spec"].update(containers=[]),
        lambda cj: cj["metadata"].update(name="Upper_Case"),
    ],
    ids=["bad-parallel", "bad-visibility", "no-container", "bad-name"],
)
def test_malformed_annotated_cronjobs_are_refused_with_a_reason(change: Any) -> None:
    cj = copy.deepcopy(CRONJOB)
    change(cj)
    with pytest.raises(ValueError, match="CronJob"):
        catalog.cronjob_job(cj)
    # combine() skips it and keeps the rest.
    assert "fibonacci5" not in catalog.combine(jobconfig.JobsConfiguration(), [cj]).configurations


def test_configuration_wins_over_a_cronjob_of_the_same_name() -> None:
    base = jobconfig.parse_jobs_configuration(
        orjson.dumps({"Configurations": {"fibonacci5": {"Image": "mine:1"}}}).decode()
    )
    combined = catalog.combine(base, [CRONJOB])
    assert combined.job("fibonacci5").image == "mine:1"
    assert "fibonacci5" not in combined.schedules


def test_declared_schedule_ids_are_deterministic_and_content_derived() -> None:
    cfg = jobconfig.parse_jobs_configuration(
        orjson.dumps(
            {
                "Configurations": {"fib": {"Image": "f:1"}},
                "Schedules": {"fib": [{"Schedule": "0 0 * * *", "Args": ["1"]}, {"Schedule": "0 1 * * *"}]},
            }
        ).decode()
    )
    a = catalog.declared_schedules(cfg, discovered=frozenset(), now_ms=1)
    b = catalog.declared_schedules(cfg, discovered=frozenset(), now_ms=999)
    assert [s.id for s in a] == [s.id for s in b]
    assert len({s.id for s in a}) == 2 and all(s.id.startswith("config-") and s.source == "config" for s in a)
    combined = catalog.combine(cfg, [CRONJOB])
    from_cron = [
        s
        for s in catalog.declared_schedules(combined, discovered=frozenset({"fibonacci5"}), now_ms=1)
        if s.job_name == "fibonacci5"
    ]
    assert [(s.source, s.cron) for s in from_cron] == [("cronjob", "0 0 * * *")]


JOBS = orjson.dumps(
    {
        "Configurations": {"fib": {"Image": "f:1", "Visibility": "Public"}},
        "Schedules": {"fib": [{"Schedule": "0 0 * * *", "Args": ["42"]}]},
    }
).decode()


@pytest.fixture
def declared(tmp_path: Path) -> Iterator[tuple[LocalCluster, EmulatorThread]]:
    emulator = EmulatorThread()
    with emulator as url:
        emulator.call(lambda e: e.put_cronjob("fibonacci5", copy.deepcopy(CRONJOB)))
        cluster = LocalCluster.create(
            3,
            str(tmp_path),
            jobs_configuration=JOBS,
            env={"SLIMSCHED_KUBE_URL": url, "SLIMSCHED_CRONJOB_REFRESH_SECONDS": "0.3"},
        )
        cluster.start()
        try:
            cluster.wait_ready()
            yield cluster, emulator
        finally:
            cluster.stop()


def test_leader_declares_configured_and_cronjob_schedules(
    declared: tuple[LocalCluster, EmulatorThread],
) -> None:
    cluster, _emulator = declared

    def schedules(job: str) -> list[dict[str, Any]]:
        node = next(n for n in reversed(cluster.nodes) if n.running)
        status, body = request(f"{node.url}/job-schedules/{job}")
        assert status == 200, body
        return list(body)

    wait_until(
        lambda: len(schedules("fib")) == 1 and len(schedules("fibonacci5")) == 1, 15, "declared schedules"
    )
    fib_id = schedules("fib")[0]["Id"]
    assert schedules("fib")[0]["Args"] == ["42"]
    # The discovered job is usable through the API on any node.
    status, body = request(f"{cluster.nodes[1].url}/job/fibonacci5", "POST", {})
    assert status == 202, body
    # A new leader declares the same ids: no duplicate schedules after failover.
    leader = cluster.wait_leader()
    cluster.kill(leader)
    cluster.wait_leader(timeout=20)
    time.sleep(1.0)  # an observation window for a negative check: no second copy appears
    assert [s["Id"] for s in schedules("fib")] == [fib_id]
    assert len(schedules("fibonacci5")) == 1
