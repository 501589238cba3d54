"""Cron planning: validation, time zones and DST, due and missed ticks. Pure, time as a parameter."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from slimsched import cronplan
from slimsched.errors import BadRequest


def ts(text: str, zone: str = "UTC") -> int:
    return int(datetime.fromisoformat(text).replace(tzinfo=ZoneInfo(zone)).timestamp())


@pytest.mark.parametrize(
    ("expr", "zone", "code"),
    [
        ("0 0 * * *", "UTC", None),
        ("*/10 * * * * *", "UTC", None),
        ("0 0 * * * *", "UTC", None),
        ("0 0 9 * * MON-FRI", "Europe/Paris", None),
        ("60 * * * * *", "UTC", "invalid_cron"),  # seconds first: 60 is out of range
        ("0 0 24 * * *", "UTC", "invalid_cron"),  # and the hours are the third field
        ("0 9 * JAN-MAR MON-FRI", "Europe/Paris", None),
        ("@hourly", "UTC", None),
        ("*/15 8-18 1,15 * *", "America/New_York", None),
        ("* * *", "UTC", "invalid_cron"),
        ("* * * * * * *", "UTC", "invalid_cron"),
        ("61 * * * *", "UTC", "invalid_cron"),
        ("a b c d e", "UTC", "invalid_cron"),
        ("", "UTC", "invalid_cron"),
        ("0 0 * * *", "Mars/Olympus", "invalid_time_zone"),
        ("0 0 * * *", "Europe", "invalid_time_zone"),
        ("0 0 * * *", "x" * 300, "invalid_time_zone"),
    ],
)
def test_validate(expr: str, zone: str, code: str | None) -> None:
    if code is None:
        cronplan.validate(expr, zone)
        return
    with pytest.raises(BadRequest) as err:
        cronplan.validate(expr, zone)
    assert err.value.code == code and err.value.message


@pytest.mark.parametrize(
    ("expr", "zone", "after", "expected"),
    [
        ("0 0 * * *", "UTC", ts("2024-01-01T12:00:00"), ts("2024-01-02T00:00:00")),
        ("*/10 * * * * *", "UTC", ts("2024-01-01T12:00:05"), ts("2024-01-01T12:00:10")),
        # Quartz/Spring/Cronos/Dkron: 0 0 * * * * is hourly, not 60 ticks at midnight.
        ("0 0 * * * *", "UTC", ts("2024-01-01T12:00:05"), ts("2024-01-01T13:00:00")),
        ("30 15 10 * * *", "UTC", ts("2024-01-01T12:00:00"), ts("2024-01-02T10:15:30")),
        ("0 9 * * *", "Europe/Paris", ts("2024-01-15T00:00:00"), ts("2024-01-15T08:00:00")),  # winter +1
        ("0 9 * * *", "Europe/Paris", ts("2024-07-15T00:00:00"), ts("2024-07-15T07:00:00")),  # summer +2
        # Spring forward in Paris (2024-03-31 02:00 -> 03:00): 02:30 does not exist, fires at 03:00.
        ("30 2 * * *", "Europe/Paris", ts("2024-03-30T23:00:00"), ts("2024-03-31T01:00:00")),
        # Fall back (2024-10-27 03:00 -> 02:00): 02:30 happens twice and fires once.
        ("30 2 * * *", "Europe/Paris", ts("2024-10-26T23:00:00"), ts("2024-10-27T00:30:00")),
    ],
    ids=[
        "daily",
        "seconds-field",
        "hourly-six-fields",
        "six-fields-daily",
        "tz-winter",
        "tz-summer",
        "dst-spring-skip",
        "dst-fall-once",
    ],
)
def test_next_fire(expr: str, zone: str, after: int, expected: int) -> None:
    assert cronplan.next_fire(expr, zone, after) == expected


def test_fall_back_fires_a_fixed_time_once_and_an_interval_at_every_instant() -> None:
    first = cronplan.next_fire("30 2 * * *", "Europe/Paris", ts("2024-10-26T23:00:00"))
    second = cronplan.next_fire("30 2 * * *", "Europe/Paris", first)
    assert second - first == 25 * 3600  # the next day's 02:30 (+01:00), not the repeated one
    ticks = [ts("2024-10-27T00:00:00")]
    for _ in range(4):
        ticks.append(cronplan.next_fire("*/30 * * * *", "Europe/Paris", ticks[-1]))
    assert [b - a for a, b in itertools.pairwise(ticks[1:])] == [1800, 1800, 1800]
    # The planner's backward walk applies the same rule: the repeated 02:30 is never due.
    plan = cronplan.plan(
        "30 2 * * *",
        "Europe/Paris",
        last_handled=first,
        created_at=0,
        now=ts("2024-10-27T01:30:00"),
        starting_deadline_seconds=3600,
    )
    assert (plan.due, plan.missed) == (None, ())


MINUTE = "* * * * *"


@pytest.mark.parametrize(
    ("last", "now", "deadline", "due", "missed"),
    [
        (None, 1_000_000_000 + 10, 60, None, ()),  # created 10 s ago, its first tick not yet
        (1_000_000_020, 1_000_000_080, 60, 1_000_000_080, ()),  # the tick, on time
        (1_000_000_020, 1_000_000_085, 60, 1_000_000_080, ()),  # late but inside the deadline
        (1_000_000_020, 1_000_000_200, 60, 1_000_000_200, (1_000_000_080, 1_000_000_140)),
        (1_000_000_020, 1_000_000_210, 5, None, (1_000_000_080, 1_000_000_140, 1_000_000_200)),
        (1_000_000_020, 1_000_000_080, 0, 1_000_000_080, ()),
        (
            1_000_000_020,
            1_000_000_210 + 86400,
            None,
            1_000_000_200 + 86400,
            tuple(1_000_000_200 + 86400 - 60 * k for k in range(cronplan.MAX_MISSED_RECORDED, 0, -1)),
        ),
    ],
    ids=[
        "nothing-due",
        "on-time",
        "late-in-deadline",
        "outage-latest-fires",
        "all-past-deadline",
        "zero-deadline",
        "no-deadline-day-outage-newest-fires",
    ],
)
def test_plan(
    last: int | None, now: int, deadline: int | None, due: int | None, missed: tuple[int, ...]
) -> None:
    # 1_000_000_020 is 01:47:00 UTC, a minute boundary.
    assert datetime.fromtimestamp(1_000_000_020, UTC).second == 0
    plan = cronplan.plan(
        MINUTE,
        "UTC",
        last_handled=last,
        created_at=1_000_000_000,
        now=now,
        starting_deadline_seconds=deadline,
    )
    assert (plan.due, plan.missed) == (due, missed)
    assert plan.next_tick > now


@pytest.mark.parametrize(("deadline", "due", "missed"), [(None, 1, ()), (60, None, (1,))])
def test_one_tick_days_old_fires_unless_a_deadline_is_set(
    deadline: int | None, due: int | None, missed: tuple[int, ...]
) -> None:
    """SlimFaas and a CronJob without startingDeadlineSeconds fire the newest missed tick once."""
    tick = ts("2024-03-01T00:00:00")
    plan = cronplan.plan(
        "0 0 1 * *",
        "UTC",
        last_handled=ts("2024-02-01T00:00:00"),
        created_at=0,
        now=tick + 5 * 86400,
        starting_deadline_seconds=deadline,
    )
    assert (plan.due, plan.missed) == (tick if due else None, tuple(tick for _ in missed))
    assert plan.next_tick == ts("2024-04-01T00:00:00")


def test_a_long_outage_lists_a_bounded_number_of_missed_ticks() -> None:
    plan = cronplan.plan(
        "* * * * * *", "UTC", last_handled=0, created_at=0, now=30 * 86400, starting_deadline_seconds=60
    )
    assert plan.due == 30 * 86400
    assert len(plan.missed) == cronplan.MAX_MISSED_RECORDED
    assert plan.missed[-1] == 30 * 86400 - 1


@settings(max_examples=200, deadline=None)
@given(
    st.sampled_from(
        ["* * * * *", "*/7 * * * *", "0 * * * *", "*/13 * * * * *", "15 3 * * MON", "0 0 * * * *"]
    ),
    st.integers(0, 2_000_000_000),
    st.integers(0, 5000),
    st.none() | st.integers(0, 120),
)
# Reached whatever hypothesis draws: the deadline drops the newest tick, on the one-pending path
# (one tick, 100 s old) and on the walk-back path (many ticks, the newest 30 s old).
@example("* * * * *", 1_000_000_020, 100, 10)
@example("* * * * *", 1_000_000_020, 450, 10)
@example("* * * * *", 1_000_000_020, 450, None)
def test_plan_properties(expr: str, cursor: int, elapsed: int, deadline: int | None) -> None:
    now = cursor + elapsed
    plan = cronplan.plan(
        expr, "UTC", last_handled=cursor, created_at=0, now=now, starting_deadline_seconds=deadline
    )
    ticks = [*plan.missed, *([plan.due] if plan.due is not None else [])]
    assert ticks == sorted(set(ticks)), "ticks are distinct and in order"
    assert all(cursor < t <= now for t in ticks), "only ticks after the last handled one, up to now"
    assert ticks == _forward_ticks(expr, "UTC", cursor, now), "every tick of the gap is listed"
    if ticks:
        newest = ticks[-1]
        if deadline is None or now - newest <= deadline:
            assert plan.due == newest, "the newest tick fires (no deadline, or inside it)"
        else:
            assert plan.due is None, "past StartingDeadlineSeconds the newest tick is missed too"
    assert plan.next_tick == cronplan.next_fire(expr, "UTC", now)


def _forward_ticks(expr: str, zone: str, cursor: int, now: int) -> list[int]:
    ticks: list[int] = []
    tick = cronplan.next_fire(expr, zone, cursor)
    while tick <= now and len(ticks) < 10_000:
        ticks.append(tick)
        tick = cronplan.next_fire(expr, zone, tick)
    return ticks[-(cronplan.MAX_MISSED_RECORDED + 1) :]


# Paris DST: 2025-03-30 01:00 UTC (spring forward), 2025-10-26 01:00 UTC (fall back).
_DST_EDGES = (1743296400, 1761440400)


@settings(max_examples=300, deadline=None)
@given(
    st.sampled_from(["30 2 * * *", "*/30 * * * *", "0 * * * *", "* * * * *", "0 3 * * *"]),
    st.sampled_from(_DST_EDGES),
    st.integers(-7200, 7200),
    st.integers(0, 10800),
)
def test_plan_lists_the_forward_ticks_across_dst(expr: str, edge: int, offset: int, elapsed: int) -> None:
    """Both of plan's paths (one tick pending, or a walk back) list what next_fire steps through."""
    cursor = edge + offset
    now = cursor + elapsed
    plan = cronplan.plan(
        expr, "Europe/Paris", last_handled=cursor, created_at=0, now=now, starting_deadline_seconds=10**9
    )
    listed = [*plan.missed, *([plan.due] if plan.due is not None else [])]
    assert listed == _forward_ticks(expr, "Europe/Paris", cursor, now)
