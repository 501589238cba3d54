"""SlimFaas compatibility of the answers, over a real 3-node cluster (processes, Raft over TCP).

Each case cites the SlimFaas file (SlimPlanet/SlimFaas) it comes from: field names, units and
order of SlimFaas's fields, GET /jobs/status as its UI reads it, declared schedules owned by the
configuration; and the optional paging of the list endpoints (issue 16), which must leave the
SlimFaas answer unchanged when it is not asked for.
"""

from __future__ import annotations

import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest

from slimsched.codec import DOTNET_TICKS_AT_EPOCH, dotnet_ticks
from slimsched.emulator import EmulatorThread
from slimsched.localcluster import LocalCluster
from tests.helpers import request, wait_until

JOBS = orjson.dumps(
    {
        "Configurations": {
            # docs/jobs.md's fibonacci, except DependsOn: its runs wait for a Deployment that never
            # comes, so they stay queued (JobService.ListJobAsync lists them after the others).
            "fibonacci": {
                "Image": "axaguildev/fibonacci-batch:latest",
                "ImagesWhitelist": [],
                "Resources": {
                    "Requests": {"cpu": "400m", "memory": "400Mi"},
                    "Limits": {"cpu": "400m", "memory": "400Mi"},
                },
                "DependsOn": ["fibonacci1"],
                "BackoffLimit": 1,
                "Visibility": "Public",
                "NumberParallelJob": 2,
                "TtlSecondsAfterFinished": 36000,
                "RestartPolicy": "Never",
            },
            "slow": {"Image": "demo/slow:1", "Visibility": "Public", "NumberParallelJob": 2},
            "hidden": {"Image": "demo/hidden:1", "Visibility": "Private"},
        },
        "Schedules": {"fibonacci": [{"Schedule": "0 0 * * *", "Args": ["42"]}]},
    }
).decode()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    base = Path(tmp_path_factory.mktemp("compat-api"))
    # Jobs run for 10 minutes: runs of "slow" stay Running while the cases look at them.
    with EmulatorThread(pending_seconds=0.05, run_seconds=600) as url:
        c = LocalCluster.create(3, str(base), jobs_configuration=JOBS, env={"SLIMSCHED_KUBE_URL": url})
        c.start()
        try:
            c.wait_ready(timeout=30)
            wait_until(lambda: len(_schedules(c, "fibonacci")) == 1, 15, "the declared schedule")
            yield c
        finally:
            c.stop()


def _url(c: LocalCluster, path: str, node: int = 0) -> str:
    return c.nodes[node].url + path


def _schedules(c: LocalCluster, job: str) -> list[dict[str, Any]]:
    status, body = request(_url(c, f"/job-schedules/{job}"))
    return body if status == 200 else []


def _get(url: str) -> tuple[int, dict[str, str], Any]:
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:
            return resp.status, dict(resp.headers), orjson.loads(resp.read())
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), orjson.loads(e.read())


def _ticks_now() -> int:
    return dotnet_ticks(int(time.time() * 1000))


def test_run_timestamps_are_dotnet_ticks_and_the_order_is_slimfaas(cluster: LocalCluster) -> None:
    """JobService.cs: InQueueTimestamp = DateTime.UtcNow.Ticks; KubernetesService.Jobs.cs stamps the
    start the same way; ListJobAsync lists the Kubernetes Jobs newest first, then the queue."""
    before = _ticks_now()
    ids = []
    for i in range(4):
        status, body = request(_url(cluster, "/job/slow", i % 3), "POST", {"Args": [str(i)]})
        assert status == 202, body
        ids.append(body["Id"])
        time.sleep(0.01)  # distinct InQueueTimestamps
    after = _ticks_now()

    def listed() -> list[dict[str, Any]]:
        runs: list[dict[str, Any]] = request(_url(cluster, "/job/slow", 1))[1]
        return runs

    wait_until(lambda: sum(r["Status"] == "Running" for r in listed()) == 2, 20, "two runs Running")
    runs = listed()
    by_id = {r["Id"]: r for r in runs}
    assert set(by_id) == set(ids)
    # docs/jobs.md 3.2: the fields of a listed job.
    assert set(runs[0]) >= {"Id", "Name", "Status", "PositionInQueue", "InQueueTimestamp", "StartTimestamp"}
    for r in runs:
        assert before - 10_000_000 <= r["InQueueTimestamp"] <= after + 10_000_000, r  # ticks, 1 s slack
        queued_ms = (r["InQueueTimestamp"] - DOTNET_TICKS_AT_EPOCH) // 10_000
        iso = datetime.fromtimestamp(queued_ms / 1000, tz=UTC).isoformat(timespec="milliseconds")
        assert r["InQueueTime"] == iso.replace("+00:00", "Z")
    started = [r for r in runs if r["Status"] != "Queued"]
    queued = [r for r in runs if r["Status"] == "Queued"]
    assert runs == started + queued, "the runs that left the queue come first"
    assert [r["Id"] for r in started] == [i for i in reversed(ids) if i in {r["Id"] for r in started}]
    assert [r["InQueueTimestamp"] for r in started] == sorted(
        (r["InQueueTimestamp"] for r in started), reverse=True
    )
    assert all(r["PositionInQueue"] == -1 and r["StartTimestamp"] >= r["InQueueTimestamp"] for r in started)
    assert [(r["Id"], r["PositionInQueue"], r["StartTimestamp"]) for r in queued] == [
        (i, n, -1) for n, i in enumerate(ids[2:], start=1)
    ]
    assert all(r["EndTimestamp"] == -1 and r["EndTime"] is None for r in runs)


def _walk(url: str, limit: int) -> list[dict[str, Any]]:
    seen: list[dict[str, Any]] = []
    token = ""
    for _ in range(50):
        status, headers, page = _get(f"{url}?limit={limit}" + (f"&continue={token}" if token else ""))
        assert status == 200 and 1 <= len(page) <= limit, (status, page)
        seen += page
        token = headers.get("X-Continue", "")
        if not token:
            return seen
        assert int(headers["X-Remaining-Item-Count"]) > 0 and 'rel="next"' in headers["Link"]
    raise AssertionError("the walk did not end")


def test_paging_walks_the_runs_and_leaves_the_plain_answer_alone(cluster: LocalCluster) -> None:
    for i in range(3):
        assert request(_url(cluster, "/job/fibonacci"), "POST", {"Args": [str(i)]})[0] == 202
    assert request(_url(cluster, "/job/slow"), "POST", {})[0] == 202
    for job in ("fibonacci", "slow"):  # queued runs only; and (once test 1 ran) runs in both groups
        url = _url(cluster, f"/job/{job}")
        status, headers, whole = _get(url)
        assert status == 200 and isinstance(whole, list) and len(whole) >= 1
        assert "X-Continue" not in headers, "no paging asked, SlimFaas's bare list"
        for limit in (1, 2):
            assert [r["Id"] for r in _walk(url, limit)] == [r["Id"] for r in whole]
    # A token is for the list that handed it out.
    _, headers, _ = _get(_url(cluster, "/job/fibonacci?limit=1"))
    status, _, body = _get(_url(cluster, f"/job/slow?limit=1&continue={headers['X-Continue']}"))
    assert status == 400 and body["Error"] == "invalid_continue"
    for bad in ("limit=0", "limit=-1", "limit=x", "limit=1&continue=%21%21", "continue=eyJ"):
        status, _, body = _get(_url(cluster, f"/job/fibonacci?{bad}"))
        assert status == 400 and set(body) == {"Error", "Message"}, (bad, body)


def test_schedules_list_as_slimfaas_and_page(cluster: LocalCluster) -> None:
    """ScheduleJobService.ListScheduleJobAsync: Image "" and DependsOn [] when not set."""
    made = []
    for i in range(3):
        status, body = request(_url(cluster, "/job-schedules/slow"), "POST", {"Schedule": f"{i} 0 * * *"})
        assert status == 201, body
        made.append(body["Id"])
    listed = _schedules(cluster, "slow")
    assert [s["Id"] for s in listed] == made, "creation order"
    assert all(s["Image"] == "" and s["DependsOn"] == [] and s["Args"] == [] for s in listed)
    status, headers, page = _get(_url(cluster, "/job-schedules/slow?limit=2"))
    assert status == 200 and [s["Id"] for s in page] == made[:2]
    status, headers, rest = _get(
        _url(cluster, f"/job-schedules/slow?limit=2&continue={headers['X-Continue']}")
    )
    assert status == 200 and [s["Id"] for s in rest] == made[2:] and "X-Continue" not in headers


def test_declared_schedules_belong_to_the_configuration(cluster: LocalCluster) -> None:
    """JobScheduleEndpoints.cs / ScheduleJobService.DeleteScheduleJobAsync: a schedule of the
    configuration is not in the API store, so DELETE answers 404; we say why."""
    [declared] = _schedules(cluster, "fibonacci")
    assert declared["Source"] == "config" and declared["Args"] == ["42"]
    for method, body in (("DELETE", None), ("PATCH", {"Paused": True})):
        status, answer = request(_url(cluster, f"/job-schedules/fibonacci/{declared['Id']}"), method, body)
        assert status == 404 and answer["Error"] == "declared_schedule", answer
        assert "configuration" in answer["Message"]
    assert _schedules(cluster, "fibonacci") == [declared], "still there, not paused"
    status, body = request(_url(cluster, "/job-schedules/fibonacci"), "POST", {"Schedule": "*/5 * * * *"})
    assert status == 201
    assert request(_url(cluster, f"/job-schedules/fibonacci/{body['Id']}", 2), "DELETE")[0] == 204
    assert request(_url(cluster, f"/job-schedules/fibonacci/{body['Id']}"), "DELETE")[0] == 404


def test_jobs_status_as_the_slimfaas_ui_reads_it(cluster: LocalCluster) -> None:
    """JobStatusEndpoints.cs and JobStatus.cs (JobStatusEndpointTests.cs; the UI's useJobStatus.ts
    and JobTable.tsx read these fields): NextExecutionTimestamp in Unix seconds, run timestamps
    in .NET ticks; the /status-jobs alias answers the same."""
    wait_until(
        lambda: any(
            j["Name"] == "slow" and len(j["RunningJobs"]) == 2
            for j in request(_url(cluster, "/jobs/status"))[1]
        ),
        20,
        "two running jobs of slow in /jobs/status",
    )
    status, jobs = request(_url(cluster, "/jobs/status", 2))
    assert status == 200
    by_name = {j["Name"]: j for j in jobs}
    assert {"fibonacci", "slow", "hidden", "Default"} <= set(by_name)  # loopback counts as inside
    fib = by_name["fibonacci"]
    assert fib["Visibility"] == "Public" and fib["Image"] == "axaguildev/fibonacci-batch:latest"
    assert fib["NumberParallelJob"] == 2 and fib["DependsOn"] == ["fibonacci1"]
    assert fib["Resources"] == {
        "Requests": {"cpu": "400m", "memory": "400Mi"},
        "Limits": {"cpu": "400m", "memory": "400Mi"},
    }
    [daily] = [s for s in fib["Schedules"] if s["Source"] == "config"]
    now = time.time()
    assert daily["Schedule"] == "0 0 * * *" and daily["Image"] == ""
    assert (
        now < daily["NextExecutionTimestamp"] <= now + 86400 and daily["NextExecutionTimestamp"] % 86400 == 0
    )
    running = by_name["slow"]["RunningJobs"]
    assert {r["Status"] for r in running} == {"Running"}
    assert all(
        set(r) == {"Name", "Status", "ElementId", "InQueueTimestamp", "StartTimestamp"} for r in running
    )
    assert all(r["InQueueTimestamp"] > 600_000_000_000_000_000 for r in running), "ticks"
    assert by_name["fibonacci"]["RunningJobs"] == [], "queued runs have no Kubernetes Job yet"
    assert request(_url(cluster, "/status-jobs", 1))[1] == request(_url(cluster, "/jobs/status", 1))[1]


def test_six_field_cron_is_seconds_first_on_the_cluster(cluster: LocalCluster) -> None:
    status, body = request(_url(cluster, "/job-schedules/slow"), "POST", {"Schedule": "0 0 * * * *"})
    assert status == 201
    [s] = [s for s in _schedules(cluster, "slow") if s["Id"] == body["Id"]]
    nxt = datetime.fromisoformat(s["NextFireTime"].replace("Z", "+00:00"))
    assert (nxt.minute, nxt.second) == (0, 0), "hourly"
    assert 0 < nxt.timestamp() - time.time() <= 3600
    assert request(_url(cluster, f"/job-schedules/slow/{body['Id']}"), "DELETE")[0] == 204


@pytest.mark.parametrize("path", ["/job-schedules/slow", "/job/slow"])
@pytest.mark.parametrize("method", ["PUT", "PATCH"])
def test_put_and_patch_on_a_job_are_405(cluster: LocalCluster, method: str, path: str) -> None:
    """JobScheduleEndpointsTests.cs Unsupported_Methods_Return_405; JobEndpoints.cs maps the same."""
    status, body = request(_url(cluster, path), method, {"Schedule": "* * * * *"})
    assert status == 405 and body["Error"] == "method_not_allowed"
