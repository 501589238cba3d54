"""The contract between slimsched's KubeClient and a Kubernetes API server, on the emulator and a real one.

Each case runs twice: on the emulator in every plain test run, and on a real kube-apiserver +
kube-controller-manager (``pytest -m realk8s``). What slimsched relies on (the Job's outcome and
its reason as the job controller writes them, TTL deletion, foreground deletion, pod logs and
their media types, CronJob discovery, Deployment readiness) is asserted the same way on both,
so the emulator cannot drift from the real server.
"""

from __future__ import annotations

import asyncio
import time
import urllib.parse
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import orjson
import pytest

from slimsched import catalog
from slimsched.errors import KubeError
from slimsched.jobmanifest import build_job_manifest, kube_job_name, run_selector, run_status_from_job
from slimsched.kube import KubeClient
from slimsched.leader import RUN_IDS_PER_SELECTOR, Leader
from slimsched.model import JobSpec, Run, RunStatus
from tests import helpers
from tests.realk8s.backends import Backend, RealBackend
from tests.realk8s.deploy import service_account_credentials
from tests.realk8s.images import ImageScript
from tests.realk8s.kubeadmin import Credentials
from tests.tlscerts import make_tls

T = TypeVar("T")


async def eventually(
    probe: Callable[[], Awaitable[T]], done: Callable[[T], bool], deadline: float = 30.0, what: str = ""
) -> T:
    """The shared poll, with the real server's slower deadline and pace."""
    return await helpers.eventually(probe, done, deadline, what, interval=0.1)


@pytest.fixture
async def kube(backend: Backend) -> AsyncIterator[KubeClient]:
    client = backend.client()
    yield client
    await client.close()


def make_run(run_id: str, image: str, **spec: Any) -> Run:
    return Run(
        id=run_id,
        job_name="contract",
        spec=JobSpec(**{"image": image, "backoff_limit": 0, **spec}),
        status=RunStatus.DISPATCHING,
        queued_at_ms=0,
        kube_name=kube_job_name("contract", run_id),
    )


async def start(backend: Backend, kube: KubeClient, run: Run) -> None:
    manifest = build_job_manifest(
        run, namespace=backend.namespace, raft_term=2, raft_index=7, schedule_id=None
    )
    assert await kube.create_job(manifest) is True


async def status_of(kube: KubeClient, run: Run) -> tuple[RunStatus, str | None]:
    job = await kube.get_job(run.kube_name)
    assert job is not None, f"Job {run.kube_name} is gone"
    return run_status_from_job(job, await kube.list_pods(run_selector(run.id)))


def has(status: RunStatus) -> Callable[[tuple[RunStatus, str | None]], bool]:
    return lambda value: value[0] is status


async def running_pod(backend: Backend, kube: KubeClient, run: Run) -> str:
    await start(backend, kube, run)
    await eventually(lambda: status_of(kube, run), has(RunStatus.RUNNING), what="the run running")
    pods = await kube.list_pods(run_selector(run.id))
    assert len(pods) == 1
    return str(pods[0]["metadata"]["name"])


# --- dispatch and outcomes ------------------------------------------------------------------------


async def test_a_second_create_of_a_name_is_409_and_the_job_keeps_its_labels(
    backend: Backend, kube: KubeClient
) -> None:
    backend.image("contract/ok:1", ImageScript(run_seconds=0.5))
    run = make_run("create-twice", "contract/ok:1")
    await start(backend, kube, run)
    manifest = build_job_manifest(
        run, namespace=backend.namespace, raft_term=9, raft_index=9, schedule_id=None
    )
    assert await kube.create_job(manifest) is False
    [job] = await kube.list_jobs(run_selector(run.id))
    assert job["metadata"]["name"] == run.kube_name
    assert job["metadata"]["labels"]["slimsched/raft-term"] == "2", "the first create is the one kept"
    assert job["metadata"]["annotations"]["slimsched/run-id"] == run.id
    # The leader maps pods to their Job by the job-name label the job controller puts on them.
    await eventually(lambda: kube.list_pods(run_selector(run.id)), bool, what="the Job's pod")
    [pod] = await kube.list_pods(run_selector(run.id))
    assert pod["metadata"]["labels"]["job-name"] == run.kube_name


def quiet_manifests(runs: list[Run], backend: Backend, term: int) -> list[dict[str, Any]]:
    """The runs' Jobs without pods (the real tier's fake kubelet has nothing to do), labelled by term."""
    manifests = [
        build_job_manifest(r, namespace=backend.namespace, raft_term=term, raft_index=i, schedule_id=None)
        for i, r in enumerate(runs)
    ]
    for m in manifests:
        m["spec"]["parallelism"] = 0
    return manifests


async def test_a_burst_of_creates_on_kept_alive_connections_then_409s(
    backend: Backend, kube: KubeClient
) -> None:
    """Issue 18's create path: 48 creates at once (more than one connection, reused), then again."""
    backend.image("contract/ok:1", ImageScript(run_seconds=0.5))
    runs = [make_run(f"burst-{i}", "contract/ok:1") for i in range(48)]
    manifests = quiet_manifests(runs, backend, 3)
    assert await asyncio.gather(*(kube.create_job(m) for m in manifests)) == [True] * len(runs)
    assert await asyncio.gather(*(kube.create_job(m) for m in manifests)) == [False] * len(runs)
    names = {j["metadata"]["name"] for j in backend.jobs("slimsched/raft-term=3")}
    assert names == {r.kube_name for r in runs}


async def test_lists_come_in_pages_that_make_the_whole_list_once(backend: Backend, kube: KubeClient) -> None:
    """The status poll follows ``continue`` tokens (the server pages by ``limit``), on the lean path."""
    runs = [make_run(f"page-{i}", "contract/ok:1") for i in range(7)]
    await asyncio.gather(*(kube.create_job(m) for m in quiet_manifests(runs, backend, 4)))
    query = urllib.parse.urlencode({"labelSelector": "slimsched/raft-term=4", "limit": "3"})
    status, body, _ = backend.raw("GET", f"/apis/batch/v1/namespaces/{backend.namespace}/jobs?{query}", {})
    assert status == 200, body
    first = orjson.loads(body)
    assert len(first["items"]) == 3
    assert first["metadata"]["continue"], "a page with more to come carries a continue token"
    assert "remainingItemCount" not in first["metadata"], "not counted for a label-selected list"
    kube.list_page_size = 3
    names = [j["metadata"]["name"] for j in await kube.list_jobs("slimsched/raft-term=4")]
    assert sorted(names) == sorted(r.kube_name for r in runs), "every Job once, none twice"
    query = urllib.parse.urlencode({"limit": "3", "continue": "not-a-token"})
    status, body, _ = backend.raw("GET", f"/apis/batch/v1/namespaces/{backend.namespace}/jobs?{query}", {})
    assert status == 400, body


async def test_a_full_selector_of_long_run_ids_is_one_request(backend: Backend, kube: KubeClient) -> None:
    """The status poll names up to RUN_IDS_PER_SELECTOR runs in a selector: the server takes the long URL."""
    # 61-character run ids, as the ticks of a schedule with a 50-character name.
    count = RUN_IDS_PER_SELECTOR + 1
    runs = [make_run(f"{'x' * 50}-{1796454360 + i}", "contract/ok:1") for i in range(count)]
    await asyncio.gather(*(kube.create_job(m) for m in quiet_manifests(runs, backend, 5)))
    asked: list[str] = []

    async def list_jobs(selector: str) -> list[dict[str, Any]]:
        asked.append(selector)
        return await kube.list_jobs(selector)

    found = await Leader._list_of(runs, list_jobs)
    assert len(asked) == 2 and len(asked[0]) > 6000, "one selector of 100 long ids, then the last one"
    assert sorted(j["metadata"]["name"] for j in found) == sorted(r.kube_name for r in runs)


def real_only(backend: Backend) -> RealBackend:
    if not isinstance(backend, RealBackend):
        pytest.skip("the emulator neither authenticates, authorizes nor serves TLS")
    return backend


async def test_a_create_with_a_wrong_token_is_a_401_kube_error(backend: Backend) -> None:
    real = real_only(backend)
    real.use_credentials(Credentials(real.credentials.server, "not-a-token", real.credentials.ca_pem))
    client = real.client()
    try:
        with pytest.raises(KubeError) as info:
            await client.create_job(
                build_job_manifest(
                    make_run("bad-token", "contract/ok:1"),
                    namespace=real.namespace, raft_term=2, raft_index=7, schedule_id=None,
                )
            )  # fmt: skip
        assert info.value.status == 401
    finally:
        await client.close()
    assert real.jobs("slimsched/raft-term=2") == []


async def test_a_create_without_the_right_is_a_403_kube_error(backend: Backend) -> None:
    real = real_only(backend)
    real.admin.create(
        f"/api/v1/namespaces/{real.namespace}/serviceaccounts",
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "nobody"}},
    )
    real.use_credentials(service_account_credentials(real.admin, real.namespace, "nobody"))
    client = real.client()
    try:
        with pytest.raises(KubeError) as info:
            await client.create_job(
                build_job_manifest(
                    make_run("no-right", "contract/ok:1"),
                    namespace=real.namespace, raft_term=2, raft_index=7, schedule_id=None,
                )
            )  # fmt: skip
        assert info.value.status == 403
        assert "forbidden" in str(info.value).lower()
    finally:
        await client.close()
    assert real.jobs("slimsched/raft-term=2") == []


async def test_a_server_outside_the_kubeconfigs_ca_is_refused(backend: Backend, tmp_path: Path) -> None:
    """The create verifies the API server's certificate against the kubeconfig's CA (here another one)."""
    real = real_only(backend)
    real.use_credentials(
        Credentials(real.credentials.server, real.credentials.token, make_tls(tmp_path).ca_pem)
    )
    client = real.client()
    try:
        with pytest.raises(KubeError) as info:
            await client.create_job(
                build_job_manifest(
                    make_run("other-ca", "contract/ok:1"),
                    namespace=real.namespace, raft_term=2, raft_index=7, schedule_id=None,
                )
            )  # fmt: skip
        assert info.value.status is None
        assert "certificate" in str(info.value).lower()
    finally:
        await client.close()
    assert real.jobs("slimsched/raft-term=2") == []


async def test_a_job_succeeds_with_a_complete_condition(backend: Backend, kube: KubeClient) -> None:
    backend.image("contract/ok:1", ImageScript(run_seconds=0.5))
    run = make_run("succeeds", "contract/ok:1")
    await start(backend, kube, run)
    assert await eventually(lambda: status_of(kube, run), has(RunStatus.SUCCEEDED)) == (
        RunStatus.SUCCEEDED,
        None,
    )
    job = await kube.get_job(run.kube_name)
    assert job is not None
    assert {"type": "Complete", "status": "True"}.items() <= job["status"]["conditions"][-1].items()
    assert job["status"]["succeeded"] == 1


async def test_a_failing_container_fails_the_job_with_backoff_limit_exceeded(
    backend: Backend, kube: KubeClient
) -> None:
    backend.image("contract/fails:1", ImageScript(fail=True, run_seconds=0.5))
    run = make_run("fails", "contract/fails:1")
    await start(backend, kube, run)
    final = await eventually(lambda: status_of(kube, run), has(RunStatus.FAILED))
    assert final == (RunStatus.FAILED, "BackoffLimitExceeded")


async def test_active_deadline_fails_the_job_with_deadline_exceeded(
    backend: Backend, kube: KubeClient
) -> None:
    backend.image("contract/hangs:1", ImageScript(run_seconds=600))
    run = make_run("deadline", "contract/hangs:1", active_deadline_seconds=2)
    started = time.monotonic()
    await start(backend, kube, run)
    final = await eventually(lambda: status_of(kube, run), has(RunStatus.FAILED))
    assert final == (RunStatus.FAILED, "DeadlineExceeded")
    assert time.monotonic() - started >= 1.5


async def test_parallelism_and_completions_are_the_job_controllers(
    backend: Backend, kube: KubeClient
) -> None:
    backend.image("contract/ok:1", ImageScript(run_seconds=0.5))
    run = make_run("completions", "contract/ok:1", parallelism=2, completions=4)
    await start(backend, kube, run)
    await eventually(lambda: status_of(kube, run), has(RunStatus.SUCCEEDED))
    job = await kube.get_job(run.kube_name)
    assert job is not None
    assert job["status"]["succeeded"] == 4


async def test_ttl_after_finished_deletes_the_job(backend: Backend, kube: KubeClient) -> None:
    backend.image("contract/ok:1", ImageScript(run_seconds=0.5))
    run = make_run("ttl", "contract/ok:1", ttl_seconds_after_finished=1)
    await start(backend, kube, run)
    await eventually(lambda: status_of(kube, run), has(RunStatus.SUCCEEDED))
    await eventually(lambda: kube.get_job(run.kube_name), lambda job: job is None, what="the TTL deletion")
    assert await kube.list_jobs(run_selector(run.id)) == []


async def test_foreground_delete_removes_the_job_and_its_pods(backend: Backend, kube: KubeClient) -> None:
    backend.image("contract/hangs:1", ImageScript(run_seconds=600))
    run = make_run("deleted", "contract/hangs:1")
    await running_pod(backend, kube, run)
    assert await kube.delete_job(run.kube_name) is True

    async def left() -> tuple[int, int]:
        return len(await kube.list_jobs(run_selector(run.id))), len(
            await kube.list_pods(run_selector(run.id))
        )

    await eventually(left, lambda n: n == (0, 0), what="the Job and its pod to be gone")
    assert await kube.get_job(run.kube_name) is None
    assert await kube.delete_job(run.kube_name) is False


async def test_deployment_readiness(backend: Backend, kube: KubeClient) -> None:
    assert await kube.workload_ready("db") is False  # no such workload
    backend.deployment("db", replicas=2, ready=False)  # its pods exist, and cannot get ready
    assert await kube.workload_ready("db") is False
    backend.deployment("db", replicas=2, ready=True)
    await eventually(lambda: kube.workload_ready("db"), bool, what="the Deployment ready")


# --- logs -------------------------------------------------------------------------------------------

LINES = ("first line", "second line", "third line")


async def test_logs_of_a_running_pod_whole_tail_and_follow(backend: Backend, kube: KubeClient) -> None:
    backend.image("contract/talks:1", ImageScript(run_seconds=600, log=LINES))
    pod = await running_pod(backend, kube, make_run("talks", "contract/talks:1"))
    whole = await eventually(lambda: kube.read_pod_log(pod), bool, what="the log")
    assert whole == "".join(f"{line}\n" for line in LINES)
    assert await kube.read_pod_log(pod, tail_lines=2) == "second line\nthird line\n"
    assert await kube.read_pod_log(pod, tail_lines=0) == ""
    stream = kube.stream_pod_log(pod)
    try:
        received = [await asyncio.wait_for(anext(stream), 10) for _ in LINES]
    finally:
        await asyncio.wait_for(stream.aclose(), 5)
    assert received == list(LINES)
    assert await kube.read_pod_log(pod, tail_lines=1) == "third line\n", "the client still works"


async def test_follow_of_a_finished_pod_gives_the_whole_log_and_ends(
    backend: Backend, kube: KubeClient
) -> None:
    backend.image("contract/talked:1", ImageScript(run_seconds=0.5, log=LINES))
    run = make_run("talked", "contract/talked:1")
    await start(backend, kube, run)
    await eventually(lambda: status_of(kube, run), has(RunStatus.SUCCEEDED))
    [pod] = await kube.list_pods(run_selector(run.id))
    name = str(pod["metadata"]["name"])
    assert await kube.read_pod_log(name) == "".join(f"{line}\n" for line in LINES)

    async def follow() -> list[str]:
        return [line async for line in kube.stream_pod_log(name)]

    assert await asyncio.wait_for(follow(), 10) == list(LINES)


async def test_a_log_is_negotiated_as_an_api_answer(backend: Backend, kube: KubeClient) -> None:
    """kube-apiserver answers 406 to ``Accept: text/plain`` on pods/log (and sends text/plain)."""
    backend.image("contract/talks:1", ImageScript(run_seconds=600, log=LINES))
    pod = await running_pod(backend, kube, make_run("negotiated", "contract/talks:1"))
    path = f"/api/v1/namespaces/{backend.namespace}/pods/{pod}/log"
    status, body, _ = backend.raw("GET", path, {"Accept": "text/plain"})
    assert status == 406, body
    refusal = orjson.loads(body)
    assert (refusal["kind"], refusal["reason"], refusal["code"]) == ("Status", "NotAcceptable", 406)
    assert "application/json" in refusal["message"]
    for accept in ("application/json, */*", "*/*", "application/json"):
        status, body, content_type = await eventually(
            lambda a=accept: asyncio.to_thread(backend.raw, "GET", path, {"Accept": a}),  # type: ignore[misc]
            lambda answer: answer[0] == 200 and bool(answer[1]),
            what=f"the log with Accept: {accept}",
        )
        assert body.decode() == "".join(f"{line}\n" for line in LINES)
        assert content_type.startswith("text/plain")


async def test_log_of_a_missing_pod_is_a_404(backend: Backend, kube: KubeClient) -> None:
    with pytest.raises(KubeError) as info:
        await kube.read_pod_log("no-such-pod")
    assert info.value.status == 404


# --- CronJob discovery --------------------------------------------------------------------------------


async def test_annotated_cronjobs_are_listed_and_mapped(backend: Backend, kube: KubeClient) -> None:
    backend.cronjob(
        "nightly",
        {
            "metadata": {
                "annotations": {
                    "SlimFaas/Job": "true",
                    "SlimFaas/DefaultVisibility": "Public",
                    "SlimFaas/Schedules": '[{"Schedule": "0 3 * * *", "Args": ["x"]}]',
                },
                "labels": {"team": "data"},
            },
            "spec": {
                "schedule": "0 3 * * *",
                "suspend": True,
                "jobTemplate": {
                    "spec": {
                        "backoffLimit": 2,
                        "template": {
                            "spec": {
                                "restartPolicy": "Never",
                                "containers": [{"name": "nightly", "image": "contract/nightly:1"}],
                            }
                        },
                    }
                },
            },
        },
    )
    [cronjob] = await kube.list_cronjobs()
    assert cronjob["metadata"]["name"] == "nightly"
    assert "apiVersion" not in cronjob and "kind" not in cronjob, "a list names its items' kind once"
    found = catalog.cronjob_job(cronjob)
    assert found is not None
    assert (found.config.image, found.config.backoff_limit, found.config.visibility.value) == (
        "contract/nightly:1",
        2,
        "Public",
    )
    # Issue 17: the SlimFaas/Schedules annotation declares the schedules, not the suspended spec.schedule.
    assert [(s.schedule, s.overrides.args) for s in found.schedules] == [("0 3 * * *", ("x",))]
