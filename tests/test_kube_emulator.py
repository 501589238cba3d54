"""The real ``kubernetes`` client, through ``KubeClient``, against the emulator over HTTP.

Every wait polls a condition with a deadline (at most every 50 ms); nothing sleeps and hopes.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar

import aiohttp
import pytest

from slimsched.emulator import Emulator, EmulatorThread
from slimsched.errors import KubeError
from slimsched.jobmanifest import (
    LABEL_MANAGED_BY,
    build_job_manifest,
    kube_job_name,
    run_selector,
    run_status_from_job,
    runs_selector,
)
from slimsched.jobtimeline import JobPlan, Mode, Phase, PhaseAt, phase_at
from slimsched.kube import KubeClient
from slimsched.labelselector import Requirement, SelectorError, parse_label_selector, selector_matches
from slimsched.model import EnvVar, JobSpec, KeyRef, ResourceFieldRef, Resources, Run, RunStatus
from tests.helpers import eventually

T = TypeVar("T")
NS = "default"
RFC3339 = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ")
POLL = 0.02


async def count(items: list[str]) -> int:
    return len(items)


@pytest.fixture
async def emulator() -> AsyncIterator[Emulator]:
    emu = Emulator(pending_seconds=0.1, run_seconds=0.3, seed=7)
    await emu.start()
    yield emu
    await emu.stop()


@pytest.fixture
async def kube(emulator: Emulator) -> AsyncIterator[KubeClient]:
    assert emulator.url is not None
    client = KubeClient.from_url(emulator.url, NS)
    yield client
    await client.close()


async def hook(emulator: Emulator, method: str, path: str, body: Any = None) -> Any:
    async with (
        aiohttp.ClientSession() as session,
        session.request(method, f"{emulator.url}/_emulator{path}", json=body) as response,
    ):
        assert response.status == 200, await response.text()
        return await response.json()


def make_run(run_id: str, job_name: str = "fibonacci", **spec: Any) -> Run:
    return Run(
        id=run_id,
        job_name=job_name,
        spec=JobSpec(**{"image": "registry/fibonacci:1", **spec}),
        status=RunStatus.DISPATCHING,
        queued_at_ms=0,
        kube_name=kube_job_name(job_name, run_id),
    )


def manifest(run: Run) -> dict[str, Any]:
    return build_job_manifest(run, namespace=NS, raft_term=3, raft_index=41, schedule_id=None)


async def status_of(kube: KubeClient, run: Run) -> tuple[RunStatus, str | None]:
    job = await kube.get_job(run.kube_name)
    assert job is not None
    return run_status_from_job(job, await kube.list_pods(run_selector(run.id)))


def status_is(status: RunStatus) -> Callable[[tuple[RunStatus, str | None]], bool]:
    return lambda value: value[0] is status


# --- dispatch exactly once -----------------------------------------------------------------------


async def test_second_create_of_the_same_name_is_a_conflict_counted_as_done(
    emulator: Emulator, kube: KubeClient
) -> None:
    run = make_run("run-1")
    assert await kube.create_job(manifest(run)) is True
    assert await kube.create_job(manifest(run)) is False
    log = await hook(emulator, "GET", "/creations")
    outcomes = [(c["name"], c["outcome"]) for c in log["items"]]
    assert outcomes == [(run.kube_name, "created"), (run.kube_name, "conflict")]
    assert all(RFC3339.fullmatch(c["at"]) for c in log["items"])
    assert len(await kube.list_jobs(run_selector(run.id))) == 1


async def test_a_create_without_a_json_content_type_is_refused_as_by_kube_apiserver(
    emulator: Emulator, kube: KubeClient
) -> None:
    run = make_run("run-ct")
    url = f"{emulator.url}/apis/batch/v1/namespaces/{NS}/jobs"
    body = json.dumps(manifest(run)).encode()
    async with aiohttp.ClientSession() as session:
        for headers in ({}, {"Content-Type": "application/x-www-form-urlencoded"}):
            async with session.post(url, data=body, headers=headers) as response:
                assert response.status == 415
                assert (await response.json())["reason"] == "UnsupportedMediaType"
    assert await kube.get_job(run.kube_name) is None
    assert await kube.create_job(manifest(run)) is True  # the client names its JSON


async def test_the_client_sends_the_manifest_unchanged(kube: KubeClient) -> None:
    run = make_run(
        "run-full",
        args=("--n", "3"),
        command=("/bin/fib",),
        backoff_limit=2,
        ttl_seconds_after_finished=30,
        active_deadline_seconds=60,
        parallelism=1,
        completions=1,
        resources=Resources(requests={"cpu": "100m", "memory": "100Mi"}, limits={"memory": "200Mi"}),
        environments=(
            EnvVar("A", value="1"),
            EnvVar("S", secret_key_ref=KeyRef("db", "pw")),
            EnvVar("C", resource_field_ref=ResourceFieldRef("limits.cpu", "fibonacci", "1m")),
        ),
    )
    sent = manifest(run)
    await kube.create_job(sent)
    stored = await kube.get_job(run.kube_name)
    assert stored is not None
    assert stored["spec"]["template"]["spec"] == sent["spec"]["template"]["spec"]
    for key in ("backoffLimit", "ttlSecondsAfterFinished", "activeDeadlineSeconds"):
        assert stored["spec"][key] == sent["spec"][key]
    assert stored["metadata"]["labels"].items() >= sent["metadata"]["labels"].items()
    assert stored["metadata"]["annotations"] == sent["metadata"]["annotations"]


async def test_invalid_job_is_a_kube_error_with_the_status(emulator: Emulator, kube: KubeClient) -> None:
    bad = manifest(make_run("run-bad"))
    bad["metadata"]["name"] = "Not_A_Label"
    with pytest.raises(KubeError) as info:
        await kube.create_job(bad)
    assert info.value.status == 422
    assert "is invalid" in str(info.value)
    assert [c.outcome for c in emulator.creations()] == ["invalid"]


async def test_job_goes_pending_running_succeeded(emulator: Emulator, kube: KubeClient) -> None:
    emulator.set_image_behaviour("registry/slow:1", Mode.SUCCEED, pending_seconds=0.3, run_seconds=0.4)
    run = make_run("run-2", image="registry/slow:1", args=("--n", "10"))
    await kube.create_job(manifest(run))
    seen: list[RunStatus] = []

    async def observe() -> tuple[RunStatus, str | None]:
        value = await status_of(kube, run)
        if not seen or seen[-1] is not value[0]:
            seen.append(value[0])
        return value

    assert await eventually(observe, status_is(RunStatus.SUCCEEDED)) == (RunStatus.SUCCEEDED, None)
    assert seen == [RunStatus.PENDING, RunStatus.RUNNING, RunStatus.SUCCEEDED]

    job = await kube.get_job(run.kube_name)
    assert job is not None
    assert job["metadata"]["labels"]["slimsched/raft-term"] == "3"
    assert job["status"]["succeeded"] == 1
    for key in ("startTime", "completionTime"):
        assert RFC3339.fullmatch(job["status"][key])
    assert RFC3339.fullmatch(job["metadata"]["creationTimestamp"])
    [pod] = await kube.list_pods(f"job-name={run.kube_name}")
    assert pod["metadata"]["labels"]["controller-uid"] == job["metadata"]["uid"]
    assert pod["metadata"]["labels"]["slimsched/run-id"] == run.id
    assert pod["status"]["phase"] == "Succeeded"
    assert pod["status"]["containerStatuses"][0]["state"]["terminated"]["exitCode"] == 0


async def test_finished_job_is_deleted_after_its_ttl(kube: KubeClient) -> None:
    kept = make_run("run-kept")
    short = make_run("run-ttl", ttl_seconds_after_finished=1)
    await kube.create_job(manifest(kept))
    await kube.create_job(manifest(short))
    assert await eventually(lambda: status_of(kube, short), status_is(RunStatus.SUCCEEDED))

    async def short_gone() -> bool:
        return await kube.get_job(short.kube_name) is None

    assert await eventually(short_gone, lambda gone: gone)
    assert await kube.list_pods(run_selector(short.id)) == [], "its pod goes with it"
    assert await kube.get_job(kept.kube_name) is not None, "a Job without a TTL stays"


async def test_get_missing_job_is_none(kube: KubeClient) -> None:
    assert await kube.get_job("nope") is None


async def test_list_by_label_selector(kube: KubeClient) -> None:
    runs = [make_run("a-1", "alpha"), make_run("a-2", "alpha"), make_run("b-1", "beta")]
    for run in runs:
        await kube.create_job(manifest(run))
    alpha = await kube.list_jobs("slimsched/job-name=alpha")
    assert sorted(j["metadata"]["name"] for j in alpha) == sorted(r.kube_name for r in runs[:2])
    both_terms = await kube.list_jobs(f"slimsched/job-name=alpha,{run_selector('a-2')}")
    assert [j["metadata"]["name"] for j in both_terms] == [runs[1].kube_name]
    assert len(await kube.list_jobs("slimsched/job-name!=alpha")) == 1
    assert len(await kube.list_jobs("app.kubernetes.io/managed-by")) == 3
    assert await kube.list_jobs("slimsched/job-name=gamma") == []
    assert len(await kube.list_pods("slimsched/job-name=alpha")) == 2
    assert runs_selector(["a-1", "b-1"]) == "slimsched/run-id in (a-1,b-1)"
    ids = await kube.list_jobs(f"slimsched/run-id in (a-1, b-1, zz),{LABEL_MANAGED_BY}")
    assert sorted(j["metadata"]["name"] for j in ids) == sorted([runs[0].kube_name, runs[2].kube_name])
    with pytest.raises(KubeError) as info:
        await kube.list_jobs("a in ()")
    assert info.value.status == 400


async def test_delete_job_and_its_pods(kube: KubeClient) -> None:
    run = make_run("run-del")
    await kube.create_job(manifest(run))
    assert len(await kube.list_pods(run_selector(run.id))) == 1
    assert await kube.delete_job(run.kube_name) is True
    assert await kube.get_job(run.kube_name) is None
    assert await kube.list_pods(run_selector(run.id)) == []
    assert await kube.delete_job(run.kube_name) is False


async def test_delete_without_policy_orphans_the_pod(emulator: Emulator, kube: KubeClient) -> None:
    run = make_run("run-orphan")
    await kube.create_job(manifest(run))
    async with (
        aiohttp.ClientSession() as session,
        session.delete(f"{emulator.url}/apis/batch/v1/namespaces/{NS}/jobs/{run.kube_name}") as response,
    ):
        status = await response.json()
    assert (status["kind"], status["status"]) == ("Status", "Success")
    [pod] = await kube.list_pods(run_selector(run.id))
    assert "ownerReferences" not in pod["metadata"]


async def test_forced_image_pull_backoff(emulator: Emulator, kube: KubeClient) -> None:
    await hook(emulator, "PUT", "/images", {"image": "registry/missing:0", "mode": "image_pull_backoff"})
    run = make_run("run-pull", image="registry/missing:0")
    await kube.create_job(manifest(run))
    value = await eventually(lambda: status_of(kube, run), status_is(RunStatus.IMAGE_PULL_BACK_OFF))
    assert value == (RunStatus.IMAGE_PULL_BACK_OFF, "ImagePullBackOff")


async def test_forced_failure(emulator: Emulator, kube: KubeClient) -> None:
    emulator.set_image_behaviour("registry/crash:1", "fail")
    run = make_run("run-crash", image="registry/crash:1")
    await kube.create_job(manifest(run))
    value = await eventually(lambda: status_of(kube, run), status_is(RunStatus.FAILED))
    assert value == (RunStatus.FAILED, "BackoffLimitExceeded")


async def test_active_deadline_fails_the_job(emulator: Emulator, kube: KubeClient) -> None:
    emulator.set_image_behaviour("registry/forever:1", Mode.HANG)
    run = make_run("run-deadline", image="registry/forever:1", active_deadline_seconds=1)
    await kube.create_job(manifest(run))
    await eventually(lambda: status_of(kube, run), status_is(RunStatus.RUNNING))
    value = await eventually(lambda: status_of(kube, run), status_is(RunStatus.FAILED), deadline=3.0)
    assert value == (RunStatus.FAILED, "DeadlineExceeded")
    job = await kube.get_job(run.kube_name)
    assert job is not None
    failed = [c for c in job["status"]["conditions"] if c["type"] == "Failed"]
    assert failed[0]["message"] == "Job was active longer than specified deadline"


# --- workloads and cronjobs ----------------------------------------------------------------------


async def test_workload_ready(emulator: Emulator, kube: KubeClient) -> None:
    assert await kube.workload_ready("db") is False
    await hook(emulator, "PUT", f"/namespaces/{NS}/deployments/db", {"replicas": 2, "readyReplicas": 0})
    assert await kube.workload_ready("db") is False
    await hook(emulator, "PUT", f"/namespaces/{NS}/deployments/db", {"replicas": 2, "readyReplicas": 1})
    assert await kube.workload_ready("db") is False
    await hook(emulator, "PUT", f"/namespaces/{NS}/deployments/db", {"replicas": 2, "readyReplicas": 2})
    assert await kube.workload_ready("db") is True

    await hook(emulator, "PUT", f"/namespaces/{NS}/statefulsets/cache", {"replicas": 1, "readyReplicas": 0})
    assert await kube.workload_ready("cache") is False
    emulator.set_workload("StatefulSet", "cache", replicas=1, ready_replicas=1)
    assert await kube.workload_ready("cache") is True
    emulator.set_workload("Deployment", "elsewhere", replicas=1, ready_replicas=1, namespace="other")
    assert await kube.workload_ready("elsewhere") is False


async def test_list_cronjobs(emulator: Emulator, kube: KubeClient) -> None:
    assert await kube.list_cronjobs() == []
    await hook(
        emulator,
        "PUT",
        f"/namespaces/{NS}/cronjobs/fibonacci",
        {
            "metadata": {"annotations": {"SlimFaas/Job": "true", "SlimFaas/Visibility": "Public"}},
            "spec": {
                "schedule": "* * * * *",
                "suspend": True,
                "jobTemplate": {
                    "spec": {
                        "template": {
                            "spec": {"containers": [{"name": "fibonacci", "image": "registry/fibonacci:1"}]}
                        }
                    }
                },
            },
        },
    )
    [cron] = await kube.list_cronjobs()
    assert cron["metadata"]["name"] == "fibonacci"
    assert cron["metadata"]["annotations"]["SlimFaas/Job"] == "true"
    assert cron["spec"]["suspend"] is True


_LEAN_CLIENT_SCRIPT = """
import asyncio, sys
from slimsched.kube import KubeClient

async def main(url):
    kube = KubeClient.from_url(url, "default")
    manifest = {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "lean"},
                "spec": {"template": {"spec": {"restartPolicy": "Never",
                                               "containers": [{"name": "c", "image": "busybox"}]}}}}
    assert await kube.create_job(manifest)
    assert await kube.get_job("lean") is not None
    assert len(await kube.list_jobs("")) == 1
    await kube.list_pods("")
    await kube.workload_ready("absent")
    await kube.list_cronjobs()
    assert await kube.delete_job("lean")
    await kube.close()

asyncio.run(main(sys.argv[1]))
generated = ("kubernetes.client.api.", "kubernetes.client.models.")
print(" ".join(sorted(m for m in sys.modules if m.startswith(generated))))
"""


async def test_client_leaves_the_generated_api_classes_unimported(emulator: Emulator) -> None:
    """Importing BatchV1Api, CoreV1Api and AppsV1Api would add 28 MiB to every node (bench_memory)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        _LEAN_CLIENT_SCRIPT,
        str(emulator.url),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout=60)
    finally:
        if proc.returncode is None:
            os.kill(proc.pid, signal.SIGKILL)
            await proc.wait()
    assert proc.returncode == 0, err.decode()
    assert out.decode().split() == []


# --- logs ----------------------------------------------------------------------------------------


async def running_pod(emulator: Emulator, kube: KubeClient, run_id: str) -> tuple[Run, str]:
    emulator.set_image_behaviour("registry/server:1", Mode.HANG)
    run = make_run(run_id, image="registry/server:1", args=("--port", "80"))
    await kube.create_job(manifest(run))
    await eventually(lambda: status_of(kube, run), status_is(RunStatus.RUNNING))
    [pod] = await kube.list_pods(run_selector(run.id))
    return run, str(pod["metadata"]["name"])


async def test_read_pod_log_with_tail(emulator: Emulator, kube: KubeClient) -> None:
    _, pod = await running_pod(emulator, kube, "run-log")
    await hook(emulator, "POST", f"/namespaces/{NS}/pods/{pod}/log", {"lines": ["one", "two", "three"]})
    text = await kube.read_pod_log(pod, None)
    started = "emulator: container fibonacci started, image registry/server:1, args --port 80"
    assert text.splitlines()[0] == started
    assert text.endswith("one\ntwo\nthree\n")
    assert await kube.read_pod_log(pod, tail_lines=2) == "two\nthree\n"
    assert await kube.read_pod_log(pod, tail_lines=0) == ""


async def test_log_of_a_pod_not_started_is_an_error(emulator: Emulator, kube: KubeClient) -> None:
    emulator.set_image_behaviour("registry/missing:0", Mode.IMAGE_PULL_BACK_OFF)
    run = make_run("run-nolog", image="registry/missing:0")
    await kube.create_job(manifest(run))
    [pod] = await kube.list_pods(run_selector(run.id))
    with pytest.raises(KubeError) as info:
        await kube.read_pod_log(pod["metadata"]["name"], None)
    assert info.value.status == 400
    with pytest.raises(KubeError):
        await kube.read_pod_log("no-such-pod", None)


async def test_follow_streams_lines_until_the_pod_ends(emulator: Emulator, kube: KubeClient) -> None:
    run, pod = await running_pod(emulator, kube, "run-follow")
    received: list[str] = []
    first_line = asyncio.Event()

    async def follow() -> None:
        async for line in kube.stream_pod_log(pod):
            received.append(line)
            first_line.set()

    reader = asyncio.create_task(follow())
    await asyncio.wait_for(first_line.wait(), 5)
    emulator.append_log(pod, ["working", "still working"])
    await eventually(lambda: count(received), lambda n: n == 3)
    assert not reader.done()
    assert emulator.finish_job(run.kube_name, succeeded=True) is True
    await asyncio.wait_for(reader, 5)
    assert received[1:] == ["working", "still working", "emulator: container fibonacci exited with code 0"]
    assert await status_of(kube, run) == (RunStatus.SUCCEEDED, None)


async def test_leaving_a_follow_early_releases_it(emulator: Emulator, kube: KubeClient) -> None:
    _, pod = await running_pod(emulator, kube, "run-leave")
    stream = kube.stream_pod_log(pod)
    assert (await anext(stream)).startswith("emulator: container")
    waiting = asyncio.ensure_future(anext(stream))
    await asyncio.sleep(0.05)  # let the reader thread block on the socket
    waiting.cancel()
    await asyncio.wait_for(stream.aclose(), 2)
    assert await kube.read_pod_log(pod, 1)  # the client still works


async def test_stop_ends_open_log_streams_within_the_deadline(emulator: Emulator, kube: KubeClient) -> None:
    _, pod = await running_pod(emulator, kube, "run-stop")
    received: list[str] = []

    async def follow() -> None:
        async for line in kube.stream_pod_log(pod):
            received.append(line)

    reader = asyncio.create_task(follow())
    await eventually(lambda: count(received), lambda n: n >= 1)
    started = time.monotonic()
    await emulator.stop()
    assert time.monotonic() - started < 3
    with contextlib.suppress(KubeError):  # a clean end of the stream is as good as an error here
        await asyncio.wait_for(reader, 5)
    assert reader.done()


# --- the emulator's own pieces -------------------------------------------------------------------


def test_phase_timeline_is_a_function_of_plan_and_time() -> None:
    plan = JobPlan(created_at=100.0, mode=Mode.SUCCEED, pending_seconds=1.0, run_seconds=2.0)
    assert phase_at(plan, 100.0) == (PhaseAt(Phase.PENDING, 100.0), 101.0)
    assert phase_at(plan, 101.5) == (PhaseAt(Phase.RUNNING, 101.0), 103.0)
    assert phase_at(plan, 103.0) == (PhaseAt(Phase.SUCCEEDED, 103.0), None)
    deadline = JobPlan(100.0, Mode.IMAGE_PULL_BACK_OFF, 1.0, 2.0, active_deadline_seconds=5)
    assert phase_at(deadline, 102.0) == (PhaseAt(Phase.IMAGE_PULL_BACK_OFF, 101.0, "ImagePullBackOff"), 105.0)
    assert phase_at(deadline, 1e9) == (PhaseAt(Phase.FAILED, 105.0, "DeadlineExceeded"), None)
    early = JobPlan(100.0, Mode.SUCCEED, 1.0, 10.0, active_deadline_seconds=3)
    assert phase_at(early, 200.0)[0] == PhaseAt(Phase.FAILED, 103.0, "DeadlineExceeded")
    forced = JobPlan(100.0, Mode.HANG, 1.0, 2.0, forced_at=150.0, forced_success=False)
    assert phase_at(forced, 149.0) == (PhaseAt(Phase.RUNNING, 101.0), 150.0)
    assert phase_at(forced, 150.0)[0] == PhaseAt(Phase.FAILED, 150.0, "BackoffLimitExceeded")


@pytest.mark.parametrize(
    ("selector", "labels", "matches"),
    [
        ("", {}, True),
        ("a=1", {"a": "1"}, True),
        ("a==1", {"a": "1"}, True),
        ("a=1", {"a": "2"}, False),
        ("a=1,b=2", {"a": "1", "b": "2"}, True),
        ("a=1, b=2", {"a": "1"}, False),
        ("a!=1", {}, True),
        ("a!=1", {"a": "1"}, False),
        ("a", {"a": ""}, True),
        ("!a", {"a": ""}, False),
        ("slimsched/run-id=r-1", {"slimsched/run-id": "r-1"}, True),
        ("a in (1,2)", {"a": "2"}, True),
        ("a in (1, 2),b=3", {"a": "1", "b": "3"}, True),
        ("a in (1,2)", {"a": "3"}, False),
        ("a in (1,2)", {}, False),
        ("a notin (1,2)", {"a": "3"}, True),
        ("a notin (1,2)", {}, True),
        ("b=3,a notin (1,2)", {"a": "1", "b": "3"}, False),
    ],
)
def test_label_selectors(selector: str, labels: dict[str, str], matches: bool) -> None:
    assert selector_matches(labels, parse_label_selector(selector)) is matches


def test_label_selector_parse() -> None:
    assert parse_label_selector("k=v,!x") == [Requirement("k", "=", "v"), Requirement("x", "!exists")]
    assert parse_label_selector("k in (a, b),x") == [
        Requirement("k", "in", values=frozenset({"a", "b"})),
        Requirement("x", "exists"),
    ]
    for bad in ("a in ()", "a in b", "a in (b", "!a=b", "=v"):
        with pytest.raises(SelectorError):
            parse_label_selector(bad)


def test_emulator_thread_serves_sync_code() -> None:
    thread = EmulatorThread(pending_seconds=0.05)
    with thread as url:
        assert url.startswith("http://127.0.0.1:")
        thread.call(lambda emu: emu.set_workload("deployment", "web", replicas=1, ready_replicas=1))
        with urllib.request.urlopen(f"{url}/apis/apps/v1/namespaces/{NS}/deployments/web", timeout=5) as r:
            assert json.load(r)["status"]["readyReplicas"] == 1
        with urllib.request.urlopen(f"{url}/_emulator/creations", timeout=5) as r:
            assert json.load(r) == {"items": []}


def test_module_entry_point_prints_url_and_stops_on_sigterm() -> None:
    with subprocess.Popen(
        [sys.executable, "-m", "slimsched.emulator", "--port", "0"],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    ) as proc:
        try:
            assert proc.stdout is not None
            url = proc.stdout.readline().strip()
            assert re.fullmatch(r"http://127\.0\.0\.1:\d+", url), url
            with urllib.request.urlopen(f"{url}/apis/batch/v1/namespaces/{NS}/jobs", timeout=5) as r:
                assert json.load(r)["kind"] == "JobList"
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=10) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=5)


@pytest.mark.parametrize("versions", [("v1",), ("v1beta1",), ("v1beta1", "v1")])
async def test_cronjobs_are_found_in_whichever_batch_version_the_server_serves(
    versions: tuple[str, ...],
) -> None:
    """Kubernetes 1.20 serves CronJob only as batch/v1beta1, 1.25 on only as batch/v1."""
    emulator = Emulator(cronjob_versions=versions)
    await emulator.start()
    assert emulator.url is not None
    client = KubeClient.from_url(emulator.url, NS)
    try:
        emulator.put_cronjob("nightly", {"spec": {"schedule": "0 3 * * *", "suspend": True}})
        for _ in range(2):  # the second call goes straight to the version found by the first
            [cron] = await client.list_cronjobs()
            assert cron["metadata"]["name"] == "nightly"
        async with aiohttp.ClientSession() as session:
            for version in ("v1", "v1beta1"):
                url = f"{emulator.url}/apis/batch/{version}/namespaces/{NS}/cronjobs"
                async with session.get(url) as response:
                    assert response.status == (200 if version in versions else 404)
    finally:
        await client.close()
        await emulator.stop()


def test_cronjob_versions_are_checked() -> None:
    with pytest.raises(ValueError):
        Emulator(cronjob_versions=("v2",))
    with pytest.raises(ValueError):
        Emulator(cronjob_versions=())
