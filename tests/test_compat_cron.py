"""SlimFaas compatibility: cron expressions and missed ticks (pure; time is a parameter).

Each case names the SlimFaas file (SlimPlanet/SlimFaas) or the convention it comes from.
"""

from __future__ import annotations

import hashlib
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import orjson
import pytest

from slimsched import backup as bk
from slimsched import catalog, codec, cronplan, jobconfig
from slimsched.errors import BadRequest
from slimsched.model import Schedule
from slimsched.statemachine import State, apply, encode_command

REPO = Path(__file__).resolve().parent.parent


def ts(text: str) -> int:
    return int(datetime.fromisoformat(text).replace(tzinfo=ZoneInfo("UTC")).timestamp())


# tests/SlimFaas.Tests/Jobs/CronTests.cs and CronNextExecutionTests.cs: 5-field expressions,
# "0/2" read as "*/2" (Cron.cs treats a "0" range start of a step as "*"), day-of-month OR
# day-of-week when both are restricted (Cron.cs's dayMatch).
@pytest.mark.parametrize(
    ("expr", "after", "expected"),
    [
        ("*/5 * * * *", "2024-01-01T12:01:30", "2024-01-01T12:05:00"),
        ("0/2 * * * *", "2024-01-01T12:01:30", "2024-01-01T12:02:00"),  # demo/deployment-cron.yaml
        ("0 0 * * *", "2024-01-01T12:00:00", "2024-01-02T00:00:00"),  # docs/jobs.md
        ("0 0 * * 0", "2024-01-01T12:00:00", "2024-01-07T00:00:00"),  # docs/jobs.md: Sunday
        ("0 0 15 * 1", "2024-01-02T00:00:00", "2024-01-08T00:00:00"),  # dom OR dow
        ("0 */2 * * *", "2024-01-01T12:30:00", "2024-01-01T14:00:00"),  # JobStatusEndpointTests.cs
    ],
)
def test_five_fields_as_slimfaas(expr: str, after: str, expected: str) -> None:
    assert cronplan.next_fire(expr, "UTC", ts(after)) == ts(expected)


# Six fields: seconds FIRST, as Quartz, Spring, Cronos (the .NET library), Hangfire and Dkron.
@pytest.mark.parametrize(
    ("expr", "after", "expected"),
    [
        ("*/10 * * * * *", "2024-01-01T12:00:05", "2024-01-01T12:00:10"),
        ("0 0 * * * *", "2024-01-01T00:00:00", "2024-01-01T01:00:00"),  # hourly, not 60 ticks at 00:00
        ("0 30 9 * * MON-FRI", "2024-01-06T00:00:00", "2024-01-08T09:30:00"),
    ],
)
def test_six_fields_seconds_first(expr: str, after: str, expected: str) -> None:
    assert cronplan.next_fire(expr, "UTC", ts(after)) == ts(expected)


def test_from_seconds_last_keeps_the_meaning() -> None:
    assert cronplan.from_seconds_last("* * * * * */10") == "*/10 * * * * *"
    assert cronplan.from_seconds_last("0 * * * * 30") == "30 0 * * * *"
    assert cronplan.from_seconds_last("0 0 * * *") == "0 0 * * *"
    assert cronplan.from_seconds_last("@hourly") == "@hourly"


def test_stored_schedules_of_the_earlier_release_keep_their_meaning() -> None:
    """A 6-field schedule stored without the seconds-first marker was written seconds-LAST."""
    legacy = {"Id": "s1", "Name": "ticker", "Schedule": "* * * * * */10", "StartingDeadlineSeconds": 60}
    s = codec.schedule_from_dict(legacy)
    assert s.cron == "*/10 * * * * *"
    assert cronplan.next_fire(s.cron, "UTC", ts("2024-01-01T00:00:01")) == ts("2024-01-01T00:00:10")
    stored = codec.schedule_to_dict(s)
    assert stored[codec.CRON_SECONDS_KEY] == codec.CRON_SECONDS_FIRST
    assert codec.schedule_from_dict(stored) == s, "the new form reads back as written"
    five = codec.schedule_to_dict(Schedule(id="s2", job_name="x", cron="0 0 * * *"))
    assert codec.CRON_SECONDS_KEY not in five, "5-field schedules encode as before"


def test_the_earlier_releases_backup_restores_with_the_same_meaning() -> None:
    """backup/example-schedule-jobs-backup.json was written by the seconds-last release."""
    raw = (REPO / "backup" / "example-schedule-jobs-backup.json").read_bytes()
    assert b'"* * * * * */10"' in raw
    state = State()
    result = apply(state, bk.restore_command(bk.verify_backup(raw), rid="r1"))
    assert result.ok, result
    crons = {s.job_name: s.cron for s in state.schedules.values()}
    assert crons["ticker"] == "*/10 * * * * *"


def test_a_raft_log_entry_of_the_earlier_release_replays_with_the_same_meaning() -> None:
    state = State()
    entry = {"Id": "s1", "Name": "ticker", "Schedule": "0 * * * * 30", "StartingDeadlineSeconds": 60}
    assert apply(state, encode_command("create_schedule", rid="r", schedule=entry)).ok
    assert state.schedules["s1"].cron == "30 0 * * * *"  # at second 30 of minute 0 of every hour
    assert (
        orjson.loads(orjson.dumps(codec.schedule_to_dict(state.schedules["s1"])))["Schedule"]
        == "30 0 * * * *"
    )


# Missed ticks: SlimSchedulejobsWorker.cs fires the newest tick (Cron.GetLatestJobExecutionTimestamp)
# once if it is newer than the stored one, whatever its age; a Kubernetes CronJob without
# startingDeadlineSeconds does the same.
def test_after_a_day_down_the_newest_missed_tick_fires_once() -> None:
    last = ts("2024-01-01T00:00:00")
    now = ts("2024-01-02T00:00:30")
    plan = cronplan.plan("0 * * * *", "UTC", last_handled=last, created_at=0, now=now)
    assert plan.due == ts("2024-01-02T00:00:00")
    assert len(plan.missed) == cronplan.MAX_MISSED_RECORDED and plan.due not in plan.missed
    opt_in = cronplan.plan(
        "0 * * * *", "UTC", last_handled=last, created_at=0, now=now + 120, starting_deadline_seconds=60
    )
    assert opt_in.due is None and opt_in.missed[-1] == ts("2024-01-02T00:00:00")


def _latest(expr: str, now: int) -> int | None:
    """SlimFaas's Cron.GetLatestJobExecutionTimestamp: the newest tick at or before ``now``."""
    return cronplan.plan(expr, "UTC", last_handled=now - 40 * 86400, created_at=0, now=now).due


# tests/SlimFaas.Tests/Jobs/CronTests.cs, GetLatestJobExecutionTimestamp_ValidCases, every row.
@pytest.mark.parametrize(
    ("expr", "now", "expected"),
    [
        ("0 0 * * *", "2024-06-09T12:34:56", "2024-06-09T00:00:00"),
        ("0 12 * * *", "2024-06-09T12:00:00", "2024-06-09T12:00:00"),
        ("0 12 * * *", "2024-06-09T13:00:00", "2024-06-09T12:00:00"),
        ("0 12 * * *", "2024-06-09T11:59:00", "2024-06-08T12:00:00"),
        ("*/15 * * * *", "2024-06-09T12:45:00", "2024-06-09T12:45:00"),
        ("*/15 * * * *", "2024-06-09T12:46:00", "2024-06-09T12:45:00"),
        ("*/15 * * * *", "2024-06-09T12:14:00", "2024-06-09T12:00:00"),
        ("*/2 * * * *", "2024-06-09T12:04:00", "2024-06-09T12:04:00"),
        ("*/2 * * * *", "2024-06-09T12:05:00", "2024-06-09T12:04:00"),
        ("0/15 * * * *", "2024-06-09T12:45:00", "2024-06-09T12:45:00"),
        ("0/15 * * * *", "2024-06-09T12:46:00", "2024-06-09T12:45:00"),
        ("0/15 * * * *", "2024-06-09T12:14:00", "2024-06-09T12:00:00"),
        ("0/30 * * * *", "2024-06-09T12:30:00", "2024-06-09T12:30:00"),
        ("* 0/6 * * *", "2024-06-09T12:00:00", "2024-06-09T12:00:00"),
        ("* 0/6 * * *", "2024-06-09T18:00:00", "2024-06-09T18:00:00"),
        ("0 0 1 * *", "2024-06-09T10:00:00", "2024-06-01T00:00:00"),
        ("0 0 1 * *", "2024-01-01T00:00:00", "2024-01-01T00:00:00"),
        ("0 0 1 * *", "2024-01-01T00:15:00", "2024-01-01T00:00:00"),
        ("0 0 * * 0", "2024-06-09T12:00:00", "2024-06-09T00:00:00"),
        ("0 0 * * 0", "2024-06-10T00:00:00", "2024-06-09T00:00:00"),
        ("0 9-17 * * 1-5", "2024-06-10T12:00:00", "2024-06-10T12:00:00"),
        ("0 9-17 * * 1-5", "2024-06-10T18:00:00", "2024-06-10T17:00:00"),
        ("0 9,17 * * 1,5", "2024-06-07T17:01:00", "2024-06-07T17:00:00"),
        ("0 */3 * * *", "2024-06-09T12:00:00", "2024-06-09T12:00:00"),
        ("0 */3 * * *", "2024-06-09T13:00:00", "2024-06-09T12:00:00"),
        ("0 */3 * * *", "2024-06-09T00:01:00", "2024-06-09T00:00:00"),
        ("0 0 * 1 *", "2024-01-01T00:00:00", "2024-01-01T00:00:00"),
        ("0 0 * 1 *", "2024-01-31T23:59:59", "2024-01-31T00:00:00"),
        ("0 0 31 12 *", "2023-12-31T23:59:59", "2023-12-31T00:00:00"),
        ("0 12 10 * 5", "2024-05-10T12:00:00", "2024-05-10T12:00:00"),
        ("0 12 10 * 5", "2024-05-17T12:00:00", "2024-05-17T12:00:00"),
        ("0 12 10 * 5", "2024-05-18T12:00:00", "2024-05-17T12:00:00"),
        ("0 * * * *", "2024-03-31T01:59:00", "2024-03-31T01:00:00"),
        ("0 * * * *", "2024-10-27T01:59:00", "2024-10-27T01:00:00"),
    ],
)
def test_slimfaas_cron_tests_latest_execution(expr: str, now: str, expected: str) -> None:
    assert _latest(expr, ts(now)) == ts(expected)


# CronTests.cs, GetLatestJobExecutionTimestamp_InvalidCron_Throws, and CronNextExecutionTests.cs's
# invalid and empty cases: refused (400 invalid_cron at POST).
@pytest.mark.parametrize("expr", ["0 25 * * *", "0 0 32 * *", "61 * * * *", "0 0 * 13 *", "invalid cron", ""])
def test_slimfaas_invalid_crons_are_refused(expr: str) -> None:
    with pytest.raises(BadRequest) as err:
        cronplan.validate(expr)
    assert err.value.code == "invalid_cron"


# tests/SlimFaas.Tests/Jobs/CronNextExecutionTests.cs, every case.
@pytest.mark.parametrize(
    ("expr", "after", "expected"),
    [
        ("* * * * *", "2026-01-15T12:30:00", ["2026-01-15T12:31:00"]),
        ("45 * * * *", "2026-01-15T12:30:00", ["2026-01-15T12:45:00"]),
        ("15 * * * *", "2026-01-15T12:50:00", ["2026-01-15T13:15:00"]),
        ("0 14 * * *", "2026-01-15T12:30:00", ["2026-01-15T14:00:00"]),
        ("0 8 * * *", "2026-01-15T15:00:00", ["2026-01-16T08:00:00"]),
        ("*/15 * * * *", "2026-01-15T12:02:00", ["2026-01-15T12:15:00"]),
        (
            "*/2 * * * *",
            "2026-01-15T12:01:10",
            ["2026-01-15T12:02:00", "2026-01-15T12:04:00", "2026-01-15T12:06:00"],
        ),
    ],
)
def test_slimfaas_cron_next_execution(expr: str, after: str, expected: list[str]) -> None:
    tick = ts(after)
    got = []
    for _ in expected:
        tick = cronplan.next_fire(expr, "UTC", tick)
        got.append(tick)
    assert got == [ts(e) for e in expected]


def _earlier_release_id(job: str, index: int, req: jobconfig.ScheduleRequest) -> str:
    """A declared schedule's id as catalog.declared_schedules derived it before the marker."""
    content = [job, index, req.schedule, req.time_zone, req.concurrency_policy.value]
    content += [req.starting_deadline_seconds, codec.overrides_to_dict(req.overrides)]
    return f"config-{hashlib.sha256(orjson.dumps(content, option=orjson.OPT_SORT_KEYS)).hexdigest()[:20]}"


def test_a_declared_six_field_schedule_is_replaced_by_the_configurations_meaning() -> None:
    """The configuration owns what it declares: a copy stored by the seconds-last release (same
    text, old meaning) must not survive under the same id; a 5-field one keeps its id."""
    jobs = jobconfig.parse_jobs_configuration(
        orjson.dumps(
            {
                "Configurations": {"fib": {"Image": "demo/fib:1"}},
                "Schedules": {"fib": [{"Schedule": "0 0 * * * *"}, {"Schedule": "0 0 * * *"}]},
            }
        ).decode()
    )
    six, five = catalog.declared_schedules(jobs, discovered=frozenset(), now_ms=0)
    reqs = jobs.schedules["fib"]
    assert six.cron == "0 0 * * * *" and six.id != _earlier_release_id("fib", 0, reqs[0])
    assert five.id == _earlier_release_id("fib", 1, reqs[1])
