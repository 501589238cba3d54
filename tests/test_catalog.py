"""Jobs and schedules declared by the configuration and by annotated CronJobs."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from slimsched import catalog, jobconfig
from slimsched.emulator import EmulatorThread
from slimsched.localcluster import LocalCluster, LocalNode
from slimsched.model import Resources, RestartPolicy, Visibility
from tests.helpers import request, wait_until
from tests.slimfaas_demo import DEMO_CRONJOB

# The CronJob of SlimFaas's documentation (SlimFaas: demo/deployment-cron.yaml, docs/jobs.md 2.3),
# with an env added.
CRONJOB: dict[str, Any] = {"apiVersion": "batch/v1", "kind": "CronJob", **copy.deepcopy(DEMO_CRONJOB)}
CRONJOB["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]["env"] = [
    {"name": "PLAIN", "value": "1"},
    {"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}},
]


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
    # Issue 17: the SlimFaas/Schedules annotation declares the schedules; the suspended CronJob's
    # own spec.schedule ("0 0 * * *") does not fire, as in SlimFaas.
    assert [(s.schedule, s.overrides.args) for s in found.schedules] == [("*/2 * * * *", ("39",))]


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
        lambda cj: cj["metadata"]["annotations"].update({"SlimFaas/DefaultVisibility": "Internal"}),
        lambda cj: cj["spec"]["jobTemplate"]["spec"]["template"]["spec"].update(containers=[]),
        lambda cj: cj["metadata"].update(name="fib.v2"),
        lambda cj: cj["spec"]["jobTemplate"]["spec"].update(backoffLimit="x"),
        lambda cj: cj["spec"]["jobTemplate"]["spec"]["template"]["spec"].update(restartPolicy="Always"),
    ],
    ids=["bad-visibility", "no-container", "bad-name", "bad-backoff", "bad-restart-policy"],
)
def test_malformed_annotated_cronjobs_are_refused_with_a_reason(change: Any) -> None:
    cj = copy.deepcopy(CRONJOB)
    change(cj)
    with pytest.raises(ValueError, match="CronJob"):
        catalog.cronjob_job(cj)
    # combine() skips it and keeps the rest.
    assert "fibonacci5" not in catalog.combine(jobconfig.JobsConfiguration(), [cj]).configurations


def test_a_cronjob_wins_over_the_configuration_of_the_same_name() -> None:
    """SlimFaas: src/SlimFaas/Jobs/JobConfiguration.cs::MergeJobConfigurations (CronJobs merged last).

    Issue 17 changed this (the configuration used to win): a job and its schedules declared by a
    CronJob replace the configured ones of that name; schedules of other names stay.
    """
    base = jobconfig.parse_jobs_configuration(
        orjson.dumps(
            {
                "Configurations": {"fibonacci5": {"Image": "mine:1"}, "other": {"Image": "o:1"}},
                "Schedules": {"fibonacci5": [{"Schedule": "@daily"}], "other": [{"Schedule": "@hourly"}]},
            }
        ).decode()
    )
    combined = catalog.combine(base, [CRONJOB])
    assert combined.job("fibonacci5").image == "axaguildev/fibonacci-batch:latest"
    assert [s.schedule for s in combined.schedules["fibonacci5"]] == ["*/2 * * * *"]
    assert [s.schedule for s in combined.schedules["other"]] == ["@hourly"]
    assert combined.from_cronjobs == frozenset({"fibonacci5"})


def test_slimfaas_defaults_for_a_cronjob_without_resources_or_ttl() -> None:
    """100m/100Mi, TTL 60, backoff 1.

    SlimFaas: src/SlimFaas/Kubernetes/KubernetesService.JobsConfiguration.cs::ExtractJobConfigurations.
    """
    cj = copy.deepcopy(CRONJOB)
    job_spec = cj["spec"]["jobTemplate"]["spec"]
    del job_spec["ttlSecondsAfterFinished"], job_spec["backoffLimit"]
    del (
        job_spec["template"]["spec"]["containers"][0]["resources"],
        job_spec["template"]["spec"]["restartPolicy"],
    )
    found = catalog.cronjob_job(cj)
    assert found is not None
    c = found.config
    assert c.resources == Resources(
        requests={"cpu": "100m", "memory": "100Mi"}, limits={"cpu": "100m", "memory": "100Mi"}
    )
    assert (c.ttl_seconds_after_finished, c.backoff_limit, c.restart_policy) == (60, 1, RestartPolicy.NEVER)


SCHEDULE_ANNOTATIONS: list[tuple[str, str, list[tuple[str, tuple[str, ...] | None]], list[str]]] = [
    # SlimFaas: tests/SlimFaas.Tests/Kubernetes/ExtractJobConfigurationsTests.cs, the Schedules cases.
    ("invalid-json", "NOT_VALID_JSON", [], ["invalid_annotation"]),
    ("blank", "   ", [], []),
    ("empty-array", "[]", [], []),
    (
        "several-multiline",
        """[
          { "Schedule": "0 6 * * *", "Args": ["a"] },
          { "Schedule": "0 18 * * *", "Args": ["b"], "Unknown": 1 }
        ]""",
        [("0 6 * * *", ("a",)), ("0 18 * * *", ("b",))],
        ["unknown_field"],
    ),
    ("not-an-array", '{"Schedule": "0 6 * * *"}', [], ["invalid_annotation"]),
    ("wrong-type", '[{"Schedule": 6}]', [], ["invalid_annotation"]),
]


@pytest.mark.parametrize(
    ("annotation", "expected", "codes"),
    [(a, e, c) for _, a, e, c in SCHEDULE_ANNOTATIONS],
    ids=[i for i, *_ in SCHEDULE_ANNOTATIONS],
)
def test_schedules_annotation(
    annotation: str, expected: list[tuple[str, tuple[str, ...] | None]], codes: list[str]
) -> None:
    cj = copy.deepcopy(CRONJOB)
    cj["metadata"]["annotations"]["SlimFaas/Schedules"] = annotation
    combined = catalog.combine(jobconfig.JobsConfiguration(), [cj])
    assert "fibonacci5" in combined.configurations  # the job is kept whatever the annotation holds
    got = [(s.schedule, s.overrides.args) for s in combined.schedules.get("fibonacci5", ())]
    assert got == expected
    assert [n.code for n in combined.notes] == codes


def test_schedule_entries_inherit_from_the_cronjob() -> None:
    """SlimFaas: tests/SlimFaas.Tests/Kubernetes/ExtractJobConfigurationsTests.cs.

    'Schedules annotation inherits DependsOn from CronJob', '... with explicit image overrides job image'.
    """
    cj = copy.deepcopy(CRONJOB)
    cj["metadata"]["annotations"]["SlimFaas/JobImagesWhitelist"] = "override:*"
    cj["metadata"]["annotations"]["SlimFaas/Schedules"] = (
        '[{"Schedule":"0 0 * * *","Args":[]},{"Schedule":"0 6 * * *","Args":[],"Image":"override:v2"}]'
    )
    combined = catalog.combine(jobconfig.JobsConfiguration(), [cj])
    config = combined.job("fibonacci5")
    inherited, own_image = (jobconfig.merge(config, s.overrides) for s in combined.schedules["fibonacci5"])
    assert inherited.depends_on == ("fibonacci1", "fibonacci2")
    assert (inherited.image, inherited.backoff_limit, inherited.ttl_seconds_after_finished) == (
        "axaguildev/fibonacci-batch:latest",
        1,
        60,
    )
    assert own_image.image == "override:v2"


def test_non_integer_parallel_annotation_counts_as_one_with_a_note() -> None:
    cj = copy.deepcopy(CRONJOB)
    cj["metadata"]["annotations"]["SlimFaas/NumberParallelJob"] = "two"
    combined = catalog.combine(jobconfig.JobsConfiguration(), [cj])
    assert combined.job("fibonacci5").number_parallel_job == 1
    assert [n.code for n in combined.notes] == ["invalid_annotation"]


def test_visibility_annotation_in_any_case() -> None:
    cj = copy.deepcopy(CRONJOB)
    cj["metadata"]["annotations"]["SlimFaas/DefaultVisibility"] = "public"
    found = catalog.cronjob_job(cj)
    assert found is not None and found.config.visibility is Visibility.PUBLIC


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
    assert [(s.source, s.cron) for s in from_cron] == [("cronjob", "*/2 * * * *")]


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
    cluster, emulator = declared

    def schedules(job: str, node: LocalNode | None = None) -> list[dict[str, Any]]:
        node = node or next(n for n in reversed(cluster.nodes) if n.running)
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
    # Proof that the new leader synced the declared schedules (not a fixed wait): the CronJob's
    # schedule changes, and every node shows the new one in place of the old.
    changed = copy.deepcopy(CRONJOB)
    changed["metadata"]["annotations"]["SlimFaas/Schedules"] = '[{"Schedule":"0 12 * * *","Args":["39"]}]'
    emulator.call(lambda e: e.put_cronjob("fibonacci5", changed))
    running = [n for n in cluster.nodes if n.running]
    wait_until(
        lambda: all([s["Schedule"] for s in schedules("fibonacci5", n)] == ["0 12 * * *"] for n in running),
        20,
        "the new leader to declare the changed CronJob schedule on every node",
    )
    for node in running:  # the same sync declared "fib" again: the same id, no second copy
        assert [s["Id"] for s in schedules("fib", node)] == [fib_id]
