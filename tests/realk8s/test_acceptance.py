"""The acceptance cases of slimsched, through a real 3-node cluster, on a real Kubernetes control plane.

One slimsched cluster (three ``slimsched serve`` processes) serves every case of this module,
in a namespace of its own, with the ServiceAccount token of deploy/ (its Role and RoleBinding)
and nothing more. Each case uses jobs of its own; the case that SIGKILLs leaders comes last.
What a container does is set per image (tests/realk8s/images.py); everything else, the Jobs'
pods, their outcomes and reasons, TTL and foreground deletion, Deployment readiness, is the real
job, garbage-collector, TTL and deployment controllers' doing.
"""

from __future__ import annotations

import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest

from slimsched.errors import KubeError
from slimsched.jobmanifest import kube_job_name
from slimsched.kube import KubeClient
from slimsched.localcluster import LocalCluster
from tests.helpers import request, wait_until
from tests.realk8s import deploy
from tests.realk8s.backends import RealBackend
from tests.realk8s.conftest import RealK8s
from tests.realk8s.images import ImageScript

pytestmark = pytest.mark.realk8s

LINES = ("compute 1", "compute 2", "done")


def _job(image: str, **more: Any) -> dict[str, Any]:
    return {"Image": image, "Visibility": "Public", **more}


JOBS = orjson.dumps(
    {
        "Configurations": {
            "ok": _job("accept/ok:1"),
            "fails": _job("accept/fails:1", BackoffLimit=0),
            "deadline": _job("accept/long:1", ActiveDeadlineSeconds=2, BackoffLimit=0),
            "par": _job("accept/par:1", NumberParallelJob=2),
            "needs-db": _job("accept/db-client:1", DependsOn=["db"]),
            "blocked": _job("accept/ok:1", DependsOn=["never-there"]),
            "long": _job("accept/long:1", NumberParallelJob=10),
            "talks": _job("accept/talks:1", NumberParallelJob=10),
            "talks-long": _job("accept/talks-long:1"),
            "ttl": _job("accept/ok:1", TtlSecondsAfterFinished=2),
            "ticker": _job("accept/tick:1", NumberParallelJob=100),
        }
    }
).decode()

IMAGES = {
    "accept/ok:1": ImageScript(run_seconds=1),
    "accept/fails:1": ImageScript(fail=True, run_seconds=1),
    "accept/long:1": ImageScript(run_seconds=600),
    "accept/par:1": ImageScript(run_seconds=2),
    "accept/db-client:1": ImageScript(run_seconds=1),
    "accept/talks:1": ImageScript(run_seconds=1, log=LINES),
    "accept/talks-long:1": ImageScript(run_seconds=600, log=LINES),
    "accept/tick:1": ImageScript(run_seconds=0.5),
    "accept/nightly:1": ImageScript(run_seconds=1),
}


@dataclass
class Acceptance:
    cluster: LocalCluster
    backend: RealBackend
    deployed: list[str]

    def url(self) -> str:
        for node in self.cluster.nodes:
            if node.running:
                return node.url
        raise AssertionError("no node running")

    def trigger(self, job: str, body: Any = None) -> str:
        status, answer = request(f"{self.url()}/job/{job}", "POST", body or {})
        assert status == 202, answer
        return str(answer["Id"])

    def run(self, job: str, run_id: str) -> dict[str, Any]:
        status, runs = request(f"{self.url()}/job/{job}", timeout=5)
        assert status == 200, runs
        for r in runs:
            if r["Id"] == run_id:
                return dict(r)
        raise AssertionError(f"no run {run_id} of {job} in {runs}")

    def wait_status(self, job: str, run_id: str, status: str, timeout: float = 60) -> dict[str, Any]:
        wait_until(
            lambda: self.run(job, run_id)["Status"] == status, timeout, f"run {run_id} of {job} {status}"
        )
        return self.run(job, run_id)

    def kube_jobs(self, selector: str) -> list[dict[str, Any]]:
        return self.backend.jobs(selector)

    def pods(self, selector: str) -> list[dict[str, Any]]:
        return self.backend.admin.items(f"/api/v1/namespaces/{self.backend.namespace}/pods", selector)

    def logs(self, job: str, run_id: str, query: str = "") -> tuple[int, str]:
        try:
            with urllib.request.urlopen(f"{self.url()}/job/{job}/{run_id}/logs{query}", timeout=30) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()


@pytest.fixture(scope="module")
def acc(realk8s: RealK8s, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Acceptance]:
    backend = RealBackend(realk8s.admin, realk8s.webhook, realk8s.workdir, prefix="slimsched")
    try:
        deployed = deploy.apply(realk8s.admin, backend.namespace)
        backend.use_credentials(
            deploy.service_account_credentials(realk8s.admin, backend.namespace, "slimsched")
        )
        for image, script in IMAGES.items():
            backend.image(image, script)
        base = tmp_path_factory.mktemp("acceptance")
        env = {**backend.node_env(), "SLIMSCHED_CRONJOB_REFRESH_SECONDS": "1"}
        cluster = LocalCluster.create(3, str(base), jobs_configuration=JOBS, env=env)
        cluster.start()
        try:
            cluster.wait_ready(timeout=60)
            yield Acceptance(cluster, backend, deployed)
        finally:
            cluster.stop()
    finally:
        backend.close()


def _finished(job: dict[str, Any]) -> bool:
    conditions = (job.get("status") or {}).get("conditions") or []
    return any(c.get("type") in ("Complete", "Failed") and c.get("status") == "True" for c in conditions)


# --- the permissions of deploy/ ------------------------------------------------------------------


async def test_nodes_run_with_the_service_account_of_deploy_and_nothing_more(
    acc: Acceptance, tmp_path: Path
) -> None:
    assert "created Role slimsched" in acc.deployed and "created RoleBinding slimsched" in acc.deployed
    assert "dry-run StatefulSet slimsched" in acc.deployed
    assert acc.backend.credentials.token != acc.backend.admin.credentials.token
    elsewhere = tmp_path / "default.kubeconfig"
    elsewhere.write_text(acc.backend.credentials.kubeconfig("default"))
    inside, outside = acc.backend.client(), KubeClient.from_kubeconfig(str(elsewhere), "default")
    try:
        await inside.list_jobs("")  # its own namespace: allowed
        with pytest.raises(KubeError) as info:
            await outside.list_jobs("")
        assert info.value.status == 403, "the token is bound to the namespace's Role only"
    finally:
        await inside.close()
        await outside.close()


# --- runs ----------------------------------------------------------------------------------------


def test_a_trigger_becomes_a_real_job_that_succeeds(acc: Acceptance) -> None:
    run_id = acc.trigger("ok", {"Args": ["42"]})
    run = acc.wait_status("ok", run_id, "Succeeded")
    assert run["Name"] == kube_job_name("ok", run_id)
    [job] = acc.kube_jobs(f"slimsched/run-id={run_id}")
    assert job["metadata"]["name"] == run["Name"]
    assert job["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "slimsched"
    assert job["metadata"]["labels"]["slimsched/job-name"] == "ok"
    assert job["spec"]["template"]["spec"]["containers"][0]["args"] == ["42"]
    assert _finished(job) and job["status"]["succeeded"] == 1


def test_a_failing_run_ends_failed_with_the_job_controllers_reason(acc: Acceptance) -> None:
    run_id = acc.trigger("fails")
    run = acc.wait_status("fails", run_id, "Failed")
    assert run["Reason"] == "BackoffLimitExceeded"
    [job] = acc.kube_jobs(f"slimsched/run-id={run_id}")
    [failed] = [c for c in job["status"]["conditions"] if c["type"] == "Failed"]
    assert failed["reason"] == "BackoffLimitExceeded"


def test_active_deadline_ends_a_run_failed_with_deadline_exceeded(acc: Acceptance) -> None:
    run_id = acc.trigger("deadline")
    run = acc.wait_status("deadline", run_id, "Failed")
    assert run["Reason"] == "DeadlineExceeded"


def test_number_parallel_job_caps_the_real_jobs_running_at_once(acc: Acceptance) -> None:
    ids = [acc.trigger("par", {"Args": [str(i)]}) for i in range(4)]
    most = 0
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        most = max(most, len([j for j in acc.kube_jobs("slimsched/job-name=par") if not _finished(j)]))
        if all(acc.run("par", i)["Status"] == "Succeeded" for i in ids):
            break
        time.sleep(0.1)
    else:
        raise AssertionError("the 4 runs of par did not all succeed in time")
    assert most == 2, f"NumberParallelJob 2 was reached and never exceeded (seen {most})"
    assert len(acc.kube_jobs("slimsched/job-name=par")) == 4


def test_depends_on_waits_for_a_real_deployments_ready_replicas(acc: Acceptance) -> None:
    acc.backend.deployment("db", replicas=2, ready=False)
    waiting = acc.trigger("needs-db")
    free = acc.trigger("ok")
    acc.wait_status("ok", free, "Succeeded")  # the leader dispatched around it meanwhile
    assert acc.run("needs-db", waiting)["Status"] == "Queued"
    assert acc.kube_jobs(f"slimsched/run-id={waiting}") == []
    acc.backend.deployment("db", replicas=2, ready=True)
    acc.wait_status("needs-db", waiting, "Succeeded")


def test_delete_of_a_queued_run_and_of_a_running_one(acc: Acceptance) -> None:
    queued = acc.trigger("blocked")
    assert request(f"{acc.url()}/job/blocked/{queued}", "DELETE")[0] == 200
    assert acc.run("blocked", queued)["Status"] == "Canceled"

    running = acc.trigger("long")
    acc.wait_status("long", running, "Running")
    selector = f"slimsched/run-id={running}"
    assert len(acc.pods(selector)) == 1
    status, body = request(f"{acc.url()}/job/long/{running}", "DELETE")
    assert status == 200, body
    assert acc.run("long", running)["Status"] == "Canceled"
    # Foreground deletion completes: the pod goes first, then the Job itself.
    wait_until(lambda: acc.kube_jobs(selector) == [] and acc.pods(selector) == [], 60, "the Job deleted")
    assert acc.run("long", running)["Status"] == "Canceled"
    assert acc.kube_jobs(f"slimsched/run-id={queued}") == [], "the queued run never got a Job"


def test_ttl_after_finished_deletes_the_job_and_the_run_stays_listed(acc: Acceptance) -> None:
    run_id = acc.trigger("ttl")
    acc.wait_status("ttl", run_id, "Succeeded")
    wait_until(lambda: acc.kube_jobs(f"slimsched/run-id={run_id}") == [], 60, "the TTL controller")
    # The leader goes on following Jobs after this one is gone (another run through to its end)
    # and must not turn the finished run into JobNotFound.
    acc.wait_status("ok", acc.trigger("ok"), "Succeeded")
    run = acc.run("ttl", run_id)
    assert (run["Status"], run["Reason"]) == ("Succeeded", None)


# --- logs ----------------------------------------------------------------------------------------

WHOLE = "".join(f"{line}\n" for line in LINES)


@pytest.mark.parametrize("job", ["talks", "talks-long"])
def test_logs_whole_tail_and_follow(acc: Acceptance, job: str) -> None:
    run_id = acc.trigger(job)
    acc.wait_status(job, run_id, "Succeeded" if job == "talks" else "Running")
    assert acc.logs(job, run_id) == (200, WHOLE)
    assert acc.logs(job, run_id, "?tail=2") == (200, "compute 2\ndone\n")
    assert acc.logs(job, run_id, "?tail=0") == (200, "")
    # The fake kubelet ends a followed log once it has sent it (a real one would wait for more).
    assert acc.logs(job, run_id, "?follow=true") == (200, WHOLE)
    if job == "talks-long":
        assert request(f"{acc.url()}/job/{job}/{run_id}", "DELETE")[0] == 200


# --- CronJob discovery ---------------------------------------------------------------------------


def test_an_annotated_cronjob_of_the_real_server_is_a_job(acc: Acceptance) -> None:
    acc.backend.cronjob(
        "nightly",
        {
            "metadata": {
                "annotations": {
                    "SlimFaas/Job": "true",
                    "SlimFaas/DefaultVisibility": "Public",
                    "SlimFaas/Schedules": '[{"Schedule": "0 3 * * *"}]',
                }
            },
            "spec": {
                "schedule": "0 3 * * *",
                "suspend": True,
                "jobTemplate": {
                    "spec": {
                        "backoffLimit": 0,
                        "template": {
                            "spec": {
                                "restartPolicy": "Never",
                                "containers": [{"name": "nightly", "image": "accept/nightly:1"}],
                            }
                        },
                    }
                },
            },
        },
    )

    ids: list[str] = []

    def accepted() -> bool:
        # Until a node has discovered it, "nightly" is an unknown job (Default: no image).
        status, answer = request(f"{acc.url()}/job/nightly", "POST", {})
        if status == 202:
            ids.append(answer["Id"])
            return True
        assert (status, answer["Error"]) == (400, "image_required"), answer
        return False

    wait_until(accepted, 30, "the nodes to discover the CronJob")
    acc.wait_status("nightly", ids[0], "Succeeded")
    [job] = acc.kube_jobs(f"slimsched/run-id={ids[0]}")
    assert job["spec"]["template"]["spec"]["containers"][0]["image"] == "accept/nightly:1"
    wait_until(
        lambda: [s["Schedule"] for s in request(f"{acc.url()}/job-schedules/nightly")[1]] == ["0 3 * * *"],
        30,
        "the CronJob's schedule (its SlimFaas/Schedules annotation) declared",
    )


# --- cron across leader kills (last: it restarts nodes) -------------------------------------------


def test_every_second_cron_gives_one_real_job_per_tick_across_leader_kills(acc: Acceptance) -> None:
    status, body = request(f"{acc.url()}/job-schedules/ticker", "POST", {"Schedule": "* * * * * *"})
    assert status == 201, body
    sid = body["Id"]

    def runs() -> int:
        return len(request(f"{acc.url()}/job/ticker")[1])

    for _ in range(2):
        before = runs()
        wait_until(lambda n=before: runs() >= n + 2, 30, "the schedule to fire twice more")  # type: ignore[misc]
        leader = acc.cluster.wait_leader(timeout=30)
        acc.cluster.kill(leader)
        acc.cluster.start(leader)
        acc.cluster.wait_ready(leader, timeout=30)
    before = runs()
    wait_until(lambda: runs() >= before + 2, 30, "the schedule to fire under the last leader")
    assert request(f"{acc.url()}/job-schedules/ticker/{sid}", "DELETE")[0] == 204
    wait_until(
        lambda: all(r["Status"] in ("Succeeded", "Running") for r in request(f"{acc.url()}/job/ticker")[1]),
        60,
        "every fired tick dispatched",
    )
    listed = request(f"{acc.url()}/job/ticker")[1]
    fired = sorted(int(r["Id"].rsplit("-", 1)[1]) for r in listed)
    assert len(fired) >= 4 and len(fired) == len(set(fired)), fired
    jobs = acc.kube_jobs(f"slimsched/schedule-id={sid}")
    ticks = sorted(int(j["metadata"]["annotations"]["slimsched/tick"]) for j in jobs)
    assert ticks == fired, "exactly one real Job per fired tick"
    assert {j["metadata"]["name"] for j in jobs} == {kube_job_name("ticker", f"{sid}-{t}") for t in fired}
    for j in jobs:
        labels = j["metadata"]["labels"]
        assert (
            labels["slimsched/job-name"] == "ticker" and labels["app.kubernetes.io/managed-by"] == "slimsched"
        )
        assert int(labels["slimsched/raft-term"]) >= 1
