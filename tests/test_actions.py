"""Schedule actions: trigger now, backfill a range, preview the next fire times.

The state machine's rules are checked on a bare ``State``; the HTTP side against a real
single-node Raft cluster behind a real aiohttp server (the ``api`` fixture).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from aiohttp import ClientSession, UnixConnector, web
from aiohttp.test_utils import TestServer

from slimsched import actions, codec, state_store, statemachine
from slimsched.access import AccessPolicy
from slimsched.api import create_app
from slimsched.errors import BadRequest
from slimsched.jobmanifest import kube_job_name
from slimsched.model import ConcurrencyPolicy, JobSpec, Run, RunStatus, Schedule, TickOutcome
from slimsched.raft import RaftNode
from slimsched.statemachine import State, apply, encode_command, fingerprint
from tests.conftest import ApiHarness, ManualClock, api_context

SID = "s1"
HOUR = 3600


def _state(policy: ConcurrencyPolicy = ConcurrencyPolicy.ALLOW, created_at: int = 10 * HOUR) -> State:
    state = State()
    sched = Schedule(
        id=SID, job_name="fib", cron="0 * * * *", concurrency_policy=policy, created_at_ms=created_at * 1000
    )
    assert apply(state, encode_command("create_schedule", schedule=codec.schedule_to_dict(sched))).ok
    return state


def _run(run_id: str, tick: int | None = None) -> Run:
    return Run(
        id=run_id,
        job_name="fib",
        spec=JobSpec(image="img:1"),
        status=RunStatus.QUEUED,
        queued_at_ms=1,
        kube_name=kube_job_name("fib", run_id),
        schedule_id=SID,
        tick=tick,
    )


def _trigger(state: State, run_id: str, at: int, rid: str) -> statemachine.Result:
    cmd = encode_command(
        "trigger_schedule",
        rid=rid,
        job_name="fib",
        schedule_id=SID,
        at=at,
        run=codec.run_to_dict(_run(run_id)),
    )
    return apply(state, cmd)


def _backfill(
    state: State, ticks: list[int], policy: str = "Allow", rid: str | None = "b1"
) -> statemachine.Result:
    return apply(
        state,
        encode_command(
            "backfill",
            rid=rid,
            job_name="fib",
            schedule_id=SID,
            at=99 * HOUR * 1000,
            policy=policy,
            spec=codec.spec_to_dict(JobSpec(image="img:1")),
            ticks=[[t, kube_job_name("fib", f"{SID}-{t}")] for t in ticks],
        ),
    )


def _fire(state: State, tick: int) -> None:
    result = apply(
        state,
        encode_command(
            "fire_tick",
            schedule_id=SID,
            tick=tick,
            at=tick * 1000,
            outcome="fired",
            run=codec.run_to_dict(_run(f"{SID}-{tick}", tick)),
        ),
    )
    assert result.ok, result


def test_a_trigger_adds_one_manual_run_and_a_retry_with_its_run_id_adds_none() -> None:
    state = _state()
    _fire(state, 11 * HOUR)
    result = _trigger(state, "s1-m-abc", at=11 * HOUR * 1000 + 500, rid="r1")
    assert result.ok and result.value == {"RunId": "s1-m-abc", "Duplicate": False}
    assert state.last_fired[SID] == 11 * HOUR  # a manual run is no cron tick
    ledger = state.ledger[SID]
    assert (ledger[-1].outcome, ledger[-1].reason, ledger[-1].run_id) == (
        TickOutcome.FIRED,
        "manual",
        "s1-m-abc",
    )
    # Another request id (the window forgot the first) naming the same run: nothing new.
    again = _trigger(state, "s1-m-abc", at=12 * HOUR * 1000, rid="r2")
    assert again.value == {"RunId": "s1-m-abc", "Duplicate": True}
    assert [r.id for r in state.runs_of("fib")].count("s1-m-abc") == 1
    assert len(state.ledger[SID]) == len(ledger)


def test_a_trigger_of_another_jobs_schedule_or_a_non_queued_run_changes_nothing() -> None:
    state = _state()
    before = fingerprint(state)
    wrong_job = encode_command(
        "trigger_schedule", job_name="other", schedule_id=SID, at=1, run=codec.run_to_dict(_run("x"))
    )
    assert apply(state, wrong_job).code == "not_found"
    bad = codec.run_to_dict(_run("x", tick=5))
    assert apply(
        state, encode_command("trigger_schedule", job_name="fib", schedule_id=SID, at=1, run=bad)
    ).code == ("invalid")
    assert fingerprint(state) == before


def test_backfill_fires_each_handled_tick_once_and_leaves_later_ones_to_cron() -> None:
    state = _state(created_at=10 * HOUR)
    _fire(state, 11 * HOUR)
    _fire(state, 12 * HOUR)
    ticks = [h * HOUR for h in range(8, 15)]  # 8..14 h; handled up to 12 h
    result = _backfill(state, ticks)
    assert result.value == {
        "Fired": [8 * HOUR, 9 * HOUR, 10 * HOUR],
        "Skipped": [],
        "AlreadyFired": [11 * HOUR, 12 * HOUR],
        "NotYetHandled": [13 * HOUR, 14 * HOUR],
    }
    assert state.last_fired[SID] == 12 * HOUR
    runs = {r.id: r for r in state.runs_of("fib")}
    assert {f"{SID}-{h * HOUR}" for h in (8, 9, 10, 11, 12)} == set(runs)
    assert runs[f"{SID}-{8 * HOUR}"].tick == 8 * HOUR
    # The same range again under a new request id: everything is already fired.
    again = _backfill(state, ticks, rid="b2")
    assert again.value is not None and again.value["Fired"] == []
    assert again.value["AlreadyFired"] == [h * HOUR for h in range(8, 13)]
    assert len(state.runs_of("fib")) == 5


def test_backfilled_ticks_whose_runs_were_pruned_are_still_known_from_the_ledger() -> None:
    state = _state()
    _backfill(state, [8 * HOUR])
    state_store.drop_run(state, f"{SID}-{8 * HOUR}")  # as if pruned after it finished
    assert _backfill(state, [8 * HOUR], rid="b2").value == {
        "Fired": [],
        "Skipped": [],
        "AlreadyFired": [8 * HOUR],
        "NotYetHandled": [],
    }


def test_backfill_under_forbid_fires_the_first_tick_and_none_while_a_run_is_active() -> None:
    state = _state(ConcurrencyPolicy.FORBID)
    result = _backfill(state, [7 * HOUR, 8 * HOUR, 9 * HOUR], policy="Forbid")
    assert result.value is not None
    assert (result.value["Fired"], result.value["Skipped"]) == ([7 * HOUR], [8 * HOUR, 9 * HOUR])
    skipped = [t for t in state.ledger[SID] if t.outcome is TickOutcome.SKIPPED]
    assert [t.tick for t in skipped] == [8 * HOUR, 9 * HOUR]
    # The first run is still queued: a later backfill fires nothing.
    later = _backfill(state, [5 * HOUR], policy="Forbid", rid="b2")
    assert later.value is not None and (later.value["Fired"], later.value["Skipped"]) == ([], [5 * HOUR])


def test_backfill_under_replace_cancels_active_runs_and_fires_only_the_last_tick() -> None:
    state = _state(ConcurrencyPolicy.REPLACE)
    assert _trigger(state, "s1-m-a", at=1000, rid="t").ok
    result = _backfill(state, [7 * HOUR, 8 * HOUR], policy="Replace")
    assert result.value is not None and result.value["Fired"] == [8 * HOUR]
    assert state.runs["s1-m-a"].status is RunStatus.CANCELED
    assert state.runs[f"{SID}-{8 * HOUR}"].status is RunStatus.QUEUED
    assert f"{SID}-{7 * HOUR}" not in state.runs


@pytest.mark.parametrize(
    "ticks",
    [
        [3, 2],  # out of order
        [1, 1],  # repeated
        list(range(statemachine.MAX_BACKFILL_TICKS + 1)),  # too many
    ],
    ids=["unordered", "repeated", "too-many"],
)
def test_a_malformed_backfill_changes_nothing(ticks: list[int]) -> None:
    state = _state()
    before = fingerprint(state)
    assert _backfill(state, ticks, rid=None).code == "invalid"
    assert fingerprint(state) == before


def test_a_node_of_level_3_refuses_the_new_commands() -> None:
    state = _state()
    before = fingerprint(state)
    trigger = encode_command(
        "trigger_schedule", job_name="fib", schedule_id=SID, at=1, run=codec.run_to_dict(_run("x"))
    )
    assert apply(state, trigger, level=3).code == "invalid"
    assert fingerprint(state) == before
    assert statemachine.LEVEL_OF_TYPE["trigger_schedule"] == statemachine.LEVEL_OF_TYPE["backfill"] == 4


def test_tick_enumeration_is_bounded_and_follows_cronplan() -> None:
    assert actions.ticks_between("0 * * * *", "UTC", 3600, 3 * 3600) == [3600, 7200, 10800]
    assert actions.next_fires("0 2 * * *", "Europe/Paris", 1_700_000_000, 2) == [1_700_010_000, 1_700_096_400]
    with pytest.raises(BadRequest) as e:
        actions.ticks_between("* * * * *", "UTC", 0, 1001 * 60)
    assert e.value.code == "too_many_ticks"
    assert len(actions.ticks_between("* * * * *", "UTC", 60, 1000 * 60)) == 1000
    # A manual run's id never ends in a number, as the {schedule}-{tick} ids of ticks do.
    assert all(not actions.manual_run_id("s1", f"r{i}").rpartition("-")[2].isdigit() for i in range(200))


# -- over HTTP, on a real single-node Raft cluster --------------------------------------------------


async def _announce(api: ApiHarness) -> None:
    """Record this node's command level, as a node does at start (the fixture's node does not)."""
    hello = encode_command("hello", node=api.raft.settings.raft_address, level=statemachine.COMMAND_LEVEL)
    assert (await api.raft.submit(hello)).ok


async def _schedule(api: ApiHarness, cron: str = "*/5 * * * *", **extra: Any) -> str:
    status, body = await api.call(
        "POST", "/job-schedules/fibonacci", {"Schedule": cron, "Args": ["7"], **extra}
    )
    assert status == 201, body
    return str(body["Id"])


async def test_new_commands_wait_until_every_node_applies_them(api: ApiHarness) -> None:
    sid = await _schedule(api)
    status, body = await api.call("POST", f"/job-schedules/fibonacci/{sid}/trigger", {})
    assert (status, body["Error"]) == (503, "upgrade_in_progress")
    await _announce(api)
    status, body = await api.call("POST", f"/job-schedules/fibonacci/{sid}/trigger", {})
    assert status == 202, body


async def test_trigger_over_http_is_one_run_per_request_id(api: ApiHarness) -> None:
    await _announce(api)
    sid = await _schedule(api)
    path = f"/job-schedules/fibonacci/{sid}/trigger"
    first = await api.call("POST", path, {"RequestId": "retry-me"})
    second = await api.call("POST", path, {"RequestId": "retry-me"})
    other = await api.call("POST", path, None)
    assert first[0] == second[0] == other[0] == 202
    assert first[1]["Id"] == second[1]["Id"] != other[1]["Id"]
    assert (first[1]["Duplicate"], second[1]["Duplicate"]) == (False, True)
    _, runs = await api.call("GET", "/job/fibonacci")
    mine = [r for r in runs if r["ScheduleId"] == sid]
    assert sorted(r["Id"] for r in mine) == sorted([first[1]["Id"], other[1]["Id"]])
    _, ticks = await api.call("GET", f"/job-schedules/fibonacci/{sid}/ticks")
    assert [(t["Reason"], t["RunId"]) for t in ticks] == [
        ("manual", first[1]["Id"]),
        ("manual", other[1]["Id"]),
    ]
    # The run carries the schedule's overrides, merged with the job configuration.
    run = api.raft.read(lambda st: st.runs[first[1]["Id"]])
    assert run.spec.args == ("7",) and run.spec.image == "axaguildev/fibonacci-batch:latest"
    assert (await api.call("POST", "/job-schedules/fibonacci/nope/trigger", {}))[0] == 404
    status, body = await api.call("POST", path, {"RequestId": "bad id!"})
    assert (status, body["Error"]) == (400, "invalid_field")


async def test_backfill_over_http(api: ApiHarness) -> None:
    await _announce(api)
    sid = await _schedule(api, cron="0 * * * *")  # created at the clock's 2023-11-14T22:13:20Z
    path = f"/job-schedules/fibonacci/{sid}/backfill"
    body = {"Start": "2023-11-14T18:00:00Z", "End": "2023-11-14T21:00:00+00:00", "RequestId": "bf"}
    status, result = await api.call("POST", path, body)
    assert status == 202, result
    fired = [t["TickTime"] for t in result["Fired"]]
    assert fired == [f"2023-11-14T{h}:00:00Z" for h in (18, 19, 20, 21)]
    assert result["Fired"][0]["RunId"] == f"{sid}-{1_699_984_800}"
    # Retried with the same request id: the stored answer, no second run.
    assert await api.call("POST", path, body) == (202, result)
    # A new request over the same range: every tick is already fired.
    status, again = await api.call("POST", path, {**body, "RequestId": "bf2"})
    assert len(again["AlreadyFired"]) == 4 and again["Fired"] == []
    _, runs = await api.call("GET", "/job/fibonacci")
    assert len([r for r in runs if r["ScheduleId"] == sid]) == 4
    for bad, code in [
        ({"Start": "2023-11-14T18:00:00Z", "End": "2030-01-01T00:00:00Z"}, "invalid_range"),
        ({"Start": "2023-11-14T18:00:00Z", "End": "2023-11-14T17:00:00Z"}, "invalid_range"),
        ({"Start": "2023-11-14T18:00:00", "End": "2023-11-14T19:00:00Z"}, "invalid_field"),
        ({"Start": "2023-01-01T00:00:00Z", "End": "2023-11-14T00:00:00Z"}, "too_many_ticks"),
        ({"Start": "2023-11-14T18:00:00Z"}, "missing_field"),
        ({"Start": 1, "End": 2}, "invalid_field"),
    ]:
        status, err = await api.call("POST", path, bad)
        assert (status, err["Error"]) == (400, code), bad


async def test_next_fire_times_of_a_schedule_and_of_an_expression(api: ApiHarness) -> None:
    sid = await _schedule(api, cron="*/5 * * * *")
    status, body = await api.call("GET", f"/job-schedules/fibonacci/{sid}/next?count=3")
    assert status == 200
    assert body["NextFireTimes"] == ["2023-11-14T22:15:00Z", "2023-11-14T22:20:00Z", "2023-11-14T22:25:00Z"]
    await api.call("PATCH", f"/job-schedules/fibonacci/{sid}", {"Paused": True})
    _, paused = await api.call("GET", f"/job-schedules/fibonacci/{sid}/next")
    assert (paused["Paused"], paused["NextFireTimes"]) == (True, [])
    status, body = await api.call(
        "GET", "/schedule-preview?schedule=0%202%20*%20*%20*&timeZone=Europe/Paris&count=2"
    )
    assert status == 200
    assert body["NextFireTimes"] == ["2023-11-15T01:00:00Z", "2023-11-16T01:00:00Z"]  # 02:00 in Paris (CET)
    for query, code in [
        ("schedule=61%20*%20*%20*%20*", "invalid_cron"),
        ("schedule=*%20*%20*%20*%20*&timeZone=Mars/Base", "invalid_time_zone"),
        ("schedule=*%20*%20*%20*%20*&count=0", "invalid_query"),
        ("schedule=*%20*%20*%20*%20*&count=101", "invalid_query"),
        ("", "invalid_query"),
        ("schedule=" + "0" * 201, "invalid_query"),
        ("schedule=*%20*%20*%20*%20*&timeZone=" + "E" * 101, "invalid_query"),
    ]:
        status, err = await api.call("GET", f"/schedule-preview?{query}")
        assert (status, err["Error"]) == (400, code), query


async def test_private_jobs_stay_private_from_outside_the_cluster(raft: RaftNode, tmp_path: Path) -> None:
    """GET /jobs names a Private job to an outside caller and nothing more; its actions are 403."""
    ctx = api_context(raft, ManualClock(), access=AccessPolicy.build(["192.168.0.0/16"], []))
    runner = web.AppRunner(create_app(ctx))
    await runner.setup()
    unix_path = str(tmp_path / "api.sock")
    await web.UnixSite(runner, unix_path).start()
    tcp = web.TCPSite(runner, "127.0.0.1", 0)
    await tcp.start()
    inside_url = f"http://127.0.0.1:{runner.addresses[-1][1]}"
    try:
        async with ClientSession() as inside:
            await inside.post(f"{inside_url}/job/secret-job", json={})
            async with inside.get(f"{inside_url}/jobs") as resp:
                seen = {j["Name"]: j for j in await resp.json()}
            assert seen["secret-job"]["Accessible"] is True and seen["secret-job"]["Runs"] == 1
        # A Unix-socket peer has no IP address: a caller outside every trusted network.
        async with ClientSession(connector=UnixConnector(path=unix_path)) as outside:
            async with outside.get("http://slimsched/jobs") as resp:
                jobs = {j["Name"]: j for j in await resp.json()}
            assert jobs["secret-job"] == {"Name": "secret-job", "Visibility": "Private", "Accessible": False}
            assert jobs["fibonacci"]["Accessible"] is True and "Queued" in jobs["fibonacci"]
            for method, path in [
                ("POST", "/job-schedules/secret-job/x/trigger"),
                ("POST", "/job-schedules/secret-job/x/backfill"),
                ("GET", "/job-schedules/secret-job/x/next"),
            ]:
                async with outside.request(method, f"http://slimsched{path}", json={}) as resp:
                    assert (resp.status, (await resp.json())["Error"]) == (403, "private_job"), path
    finally:
        await runner.cleanup()


async def test_status_tells_the_backup_time_once_a_backup_was_written(raft: RaftNode) -> None:
    from slimsched.backup import BackupMetrics
    from slimsched.metrics import Metrics

    metrics = Metrics()
    server = TestServer(create_app(api_context(raft, ManualClock(), metrics=metrics)), host="127.0.0.1")
    await server.start_server()
    try:
        async with ClientSession() as session:

            async def status() -> dict[str, Any]:
                async with session.get(str(server.make_url("/status"))) as resp:
                    body: dict[str, Any] = await resp.json()
                    return body

            assert "BackupWrittenAt" not in await status()  # no backup volume
            backups = BackupMetrics(metrics.registry)
            assert "BackupWrittenAt" not in await status()  # none written yet
            backups.last_write.set(1_700_000_000)
            body = await status()
            assert body["BackupWrittenAt"] == "2023-11-14T22:13:20Z"
            assert body["IsLeader"] and body["MatchIndex"] == {}  # a single node has no peer
    finally:
        await server.close()
