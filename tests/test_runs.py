"""What users of job platforms expect of a run: fields reach the Job, logs, cancel, deadlines."""

from __future__ import annotations

import json
import threading
import urllib.request
from collections.abc import Callable
from typing import Any

from tests.helpers import KubeCluster, request, wait_until


def _trigger(kc: KubeCluster, body: dict[str, Any], job: str = "runner", node: int = 0) -> str:
    status, got = request(f"{kc.node_url(node)}/job/{job}", "POST", body)
    assert status == 202, got
    return str(got["Id"])


def _job_of(kc: KubeCluster, kube_name: str) -> dict[str, Any]:
    for job in kc.jobs():
        if job["metadata"]["name"] == kube_name:
            return job
    raise AssertionError(f"no Job {kube_name}")


def test_new_fields_reach_the_job_manifest(kc: KubeCluster) -> None:
    run_id = _trigger(
        kc,
        {
            "Image": "demo/other:2",
            "Command": ["/bin/run", "--fast"],
            "Args": ["x"],
            "Parallelism": 1,
            "Completions": 2,
            "ActiveDeadlineSeconds": 120,
            "Resources": {"Limits": {"cpu": "250m"}},
            "Environments": [{"Name": "MODE", "Value": "test"}],
        },
    )
    kube_name = kc.run("runner", run_id)["Name"]
    wait_until(lambda: kube_name in kc.created_names(), 15, "the Job to be created")
    job = _job_of(kc, kube_name)
    spec = job["spec"]
    container = spec["template"]["spec"]["containers"][0]
    assert (spec["parallelism"], spec["completions"], spec["activeDeadlineSeconds"]) == (1, 2, 120)
    assert (container["image"], container["command"], container["args"]) == (
        "demo/other:2",
        ["/bin/run", "--fast"],
        ["x"],
    )
    assert container["resources"]["limits"] == {"cpu": "250m", "memory": "256Mi"}
    assert {"name": "MODE", "value": "test"} in container["env"]
    assert job["metadata"]["labels"]["slimsched/run-id"] == run_id


def test_an_image_outside_the_whitelist_is_refused_naming_the_field(kc: KubeCluster) -> None:
    status, got = request(f"{kc.node_url(1)}/job/runner", "POST", {"Image": "evil/miner:1"})
    assert status == 400, got
    assert "Image" in got["Message"], got


def test_values_above_the_configuration_are_capped_with_a_warning(kc: KubeCluster) -> None:
    # SlimFaas caps a resource above the configured limit (JobResourceValidator.cs); slimsched
    # caps it too, and our additions likewise, and says so in a Warning header as
    # kube-apiserver reports warnings. The Job gets the configured value.
    cases: list[tuple[dict[str, Any], str, Callable[[dict[str, Any]], bool]]] = [
        ({"Parallelism": 3}, "Parallelism", lambda job: job["spec"]["parallelism"] == 2),
        ({"Completions": 5}, "Completions", lambda job: job["spec"]["completions"] == 4),
        (
            {"Resources": {"Limits": {"memory": "1Gi"}}},
            "memory",
            lambda job: job["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]["memory"]
            == "256Mi",
        ),
    ]
    for body, field, read in cases:
        url = f"{kc.node_url(1)}/job/runner"
        req = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST")
        with urllib.request.urlopen(req, timeout=10) as resp:
            assert resp.status == 202
            warnings = resp.headers.get_all("Warning") or []
            run_id = json.loads(resp.read())["Id"]
        assert any(w.startswith("299 - ") and field in w for w in warnings), (field, warnings)
        # Read from the first running node once it has applied the write node 1 acknowledged.
        wait_until(lambda: any(r["Id"] == run_id for r in kc.runs("runner")), 10, "the run on node 0")  # noqa: B023
        kube_name = kc.run("runner", run_id)["Name"]
        wait_until(lambda: kube_name in kc.created_names(), 15, "the Job to be created")  # noqa: B023
        assert read(_job_of(kc, kube_name)), field


def test_logs_of_a_finished_run_and_streamed_logs_of_a_running_one(kc: KubeCluster) -> None:
    run_id = _trigger(kc, {"Args": ["42"]})
    status, body = request(f"{kc.node_url(0)}/job/runner/{run_id}/logs")  # the node that took it
    assert status in (409, 200)  # 409 while still queued: no pod yet
    wait_until(lambda: kc.run("runner", run_id)["Status"] == "Succeeded", 20, "the run to succeed")
    with urllib.request.urlopen(f"{kc.node_url(2)}/job/runner/{run_id}/logs", timeout=5) as resp:
        text = resp.read().decode()
    assert "started, image demo/runner:1, args 42" in text and "exited with code 0" in text
    with urllib.request.urlopen(f"{kc.node_url(2)}/job/runner/{run_id}/logs?tail=1", timeout=5) as resp:
        assert resp.read().decode().strip().endswith("exited with code 0")

    # A running run streams until its pod ends.
    kc.emulator.call(lambda e: e.set_image_behaviour("demo/hang:1", "hang"))
    hung = _trigger(kc, {"Image": "demo/hang:1"})
    wait_until(lambda: kc.run("runner", hung)["Status"] == "Running", 20, "the run to start")
    lines: list[str] = []

    def follow() -> None:
        with urllib.request.urlopen(
            f"{kc.node_url(0)}/job/runner/{hung}/logs?follow=true", timeout=20
        ) as resp:
            for raw in resp:
                lines.append(raw.decode().rstrip("\n"))

    reader = threading.Thread(target=follow, daemon=True)
    reader.start()
    wait_until(lambda: any("started" in line for line in lines), 10, "the first streamed line")
    pod = next(p for p in _pods(kc) if p["metadata"]["labels"].get("slimsched/run-id") == hung)
    kc.emulator.call(lambda e: e.append_log(pod["metadata"]["name"], ["step 1 done"]))
    wait_until(lambda: "step 1 done" in lines, 10, "a line written while following")
    kc.emulator.call(lambda e: e.finish_job(kc.run("runner", hung)["Name"], succeeded=True))
    reader.join(15)
    assert not reader.is_alive(), "the stream ends when the pod ends"

    status, body = request(f"{kc.node_url(0)}/job/runner/nope/logs")
    assert (status, body["Error"]) == (404, "not_found")
    status, body = request(f"{kc.node_url(0)}/job/runner/{run_id}/logs?tail=-1")
    assert (status, body["Error"]) == (400, "invalid_query")


def _pods(kc: KubeCluster) -> list[dict[str, Any]]:
    import orjson

    with urllib.request.urlopen(f"{kc.kube_url}/api/v1/namespaces/default/pods", timeout=5) as r:
        items: list[dict[str, Any]] = orjson.loads(r.read())["items"]
        return items


def test_log_of_a_queued_run_is_a_conflict(kc: KubeCluster) -> None:
    kc.emulator.call(lambda e: e.set_workload("deployment", "db", replicas=1, ready_replicas=0))
    run_id = _trigger(kc, {}, job="needs-db")
    status, body = request(f"{kc.node_url(0)}/job/needs-db/{run_id}/logs")
    assert (status, body["Error"]) == (409, "not_started")


def test_deleted_runs_end_canceled_and_their_job_is_deleted(kc: KubeCluster) -> None:
    kc.emulator.call(lambda e: e.set_image_behaviour("demo/hang:1", "hang"))
    active = _trigger(kc, {"Image": "demo/hang:1"})
    wait_until(lambda: kc.run("runner", active)["Status"] == "Running", 20, "the run to start")
    kube_name = kc.run("runner", active)["Name"]
    status, body = request(f"{kc.node_url(1)}/job/runner/{active}", "DELETE")
    assert status == 200 and body["Status"] == "Canceled", body
    wait_until(
        lambda: all(j["metadata"]["name"] != kube_name for j in kc.jobs()), 15, "the Job to be deleted"
    )
    assert kc.run("runner", active)["Status"] == "Canceled"

    kc.emulator.call(lambda e: e.set_workload("deployment", "db", replicas=1, ready_replicas=0))
    queued = _trigger(kc, {}, job="needs-db")
    assert request(f"{kc.node_url(2)}/job/needs-db/{queued}", "DELETE")[0] == 200
    kc.emulator.call(lambda e: e.set_workload("deployment", "db", replicas=1, ready_replicas=1))
    runs = kc.runs("needs-db")
    assert [(r["Status"], r["PositionInQueue"]) for r in runs] == [("Canceled", -1)]
    status, body = request(f"{kc.node_url(2)}/job/needs-db/{queued}/logs")
    assert status == 409, "a run canceled before dispatch never had a pod"


def test_run_past_its_deadline_is_failed_with_deadline_exceeded(kc: KubeCluster) -> None:
    kc.emulator.call(lambda e: e.set_image_behaviour("demo/hang:1", "hang"))
    run_id = _trigger(kc, {"Image": "demo/hang:1", "ActiveDeadlineSeconds": 1})
    wait_until(lambda: kc.run("runner", run_id)["Status"] == "Failed", 20, "the deadline to kill the run")
    assert kc.run("runner", run_id)["Reason"] == "DeadlineExceeded"
