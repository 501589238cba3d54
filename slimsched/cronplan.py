"""Cron planning: validate expressions and work out which ticks are due. Pure: time is a parameter.

Expressions are croniter's: 5 fields, or 6 with seconds as the LAST field (``* * * * * */10``),
names (JAN, MON), ranges, steps, lists and ``@hourly``-style macros. Ticks are whole epoch
seconds. Each schedule has an IANA time zone; fire times are computed on the zone's wall clock
(croniter over a zone-aware datetime), so ``0 2 * * *`` in Europe/Paris is 02:00 local time in
both winter and summer. DST rule: a wall time skipped by a spring-forward transition does not
fire that day; a wall time repeated by a fall-back transition fires once, at its first instance.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import CroniterBadCronError, CroniterBadDateError, CroniterError, croniter

from slimsched.errors import BadRequest

MAX_MISSED_RECORDED = 20
_MACROS = {"@yearly", "@annually", "@monthly", "@weekly", "@daily", "@midnight", "@hourly"}


@lru_cache(maxsize=512)
def zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, TypeError, OSError) as e:  # OSError: "America", too long
        raise BadRequest("invalid_time_zone", f"TimeZone {name!r} is not an IANA time zone name") from e


@lru_cache(maxsize=1024)  # pure (no clock); only successes are cached, an error raises anew
def validate(expr: str, time_zone: str = "UTC") -> None:
    """Raise ``BadRequest`` unless ``expr`` is a cron expression slimsched can fire."""
    zone(time_zone)
    stripped = expr.strip()
    if stripped.lower() not in _MACROS:
        fields = stripped.split()
        if len(fields) not in (5, 6):
            raise BadRequest(
                "invalid_cron",
                f"Schedule {expr!r} has {len(fields)} fields; expected 5 (minute hour day month weekday) "
                "or 6 (with seconds last)",
            )
    try:
        croniter(stripped, datetime(2000, 1, 1, tzinfo=UTC))
        next_fire(stripped, time_zone, 946684800)
    except (CroniterError, ValueError, KeyError) as e:
        raise BadRequest("invalid_cron", f"Schedule {expr!r} is not a valid cron expression: {e}") from e


@lru_cache(maxsize=4096)  # pure: schedules sharing an expression share the answer for one second
def next_fire(expr: str, time_zone: str, after: int) -> int:
    """The first tick strictly after ``after`` (epoch seconds)."""
    start = datetime.fromtimestamp(after, tz=zone(time_zone))
    try:
        nxt = croniter(expr.strip(), start).get_next(datetime)
    except CroniterBadDateError as e:
        raise ValueError(f"{expr!r} never fires again after {after}") from e
    except CroniterBadCronError as e:
        raise ValueError(str(e)) from e
    return int(nxt.timestamp())


@dataclass(frozen=True)
class TickPlan:
    """What to do for one schedule at ``now``: fire ``due`` (if any), record ``missed``."""

    due: int | None
    missed: tuple[int, ...]
    next_tick: int


def plan(
    expr: str,
    time_zone: str,
    *,
    last_handled: int | None,
    created_at: int,
    now: int,
    starting_deadline_seconds: int,
) -> TickPlan:
    """Decide the tick to fire now, following StartingDeadlineSeconds.

    Ticks in ``(last_handled, now]`` are due. The most recent one fires if it is no older than
    the deadline; every other one is missed (at most ``MAX_MISSED_RECORDED`` are listed, the
    newest ones, so a long outage is reported without a storm of records).
    """
    cursor = last_handled if last_handled is not None else created_at
    newest_first: list[int] = []
    it = croniter(expr.strip(), datetime.fromtimestamp(now + 1, tz=zone(time_zone)))
    # Walk back from now: bounded by the number of ticks we list, however long the outage was.
    while len(newest_first) <= MAX_MISSED_RECORDED:
        try:
            tick = int(it.get_prev(datetime).timestamp())
        except CroniterBadDateError:
            break
        if tick <= cursor:
            break
        newest_first.append(tick)
    pending = newest_first[::-1]
    next_tick = next_fire(expr, time_zone, now)
    if not pending:
        return TickPlan(due=None, missed=(), next_tick=next_tick)
    latest = pending[-1]
    if now - latest <= starting_deadline_seconds:
        return TickPlan(due=latest, missed=tuple(pending[:-1]), next_tick=next_tick)
    return TickPlan(due=None, missed=tuple(pending), next_tick=next_tick)
