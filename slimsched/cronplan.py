"""Cron planning: validate expressions and work out which ticks are due. Pure: time is a parameter.

Expressions are croniter's: 5 fields, or 6 with seconds as the LAST field (``* * * * * */10``),
names (JAN, MON), ranges, steps, lists and ``@hourly``-style macros. Ticks are whole epoch
seconds. Each schedule has an IANA time zone; fire times are computed on the zone's wall clock
(croniter over a zone-aware datetime), so ``0 2 * * *`` in Europe/Paris is 02:00 local time in
both winter and summer. DST rule (Vixie cron's): a wall time skipped by a spring-forward
transition fires at the first instant after the gap (02:30 fires at 03:00 that day); a wall time
repeated by a fall-back transition fires once, at its first instance, for expressions with fixed
hours, while expressions over every hour (``*/30 * * * *``) fire at every real instant.
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


@lru_cache(maxsize=1024)
def _fixed_hour(expr: str) -> bool:
    """Whether the expression names its hours (``30 2 * * *``) rather than every hour or a step."""
    stripped = expr.strip().lower()
    if stripped.startswith("@"):
        return stripped != "@hourly"
    fields = stripped.split()
    return len(fields) >= 2 and "*" not in fields[1] and "/" not in fields[1]


def _repeated_wall_time(expr: str, tick: int, tz: ZoneInfo) -> bool:
    """A fixed-hour tick at the second occurrence of a wall time repeated by a DST fall-back."""
    return _fixed_hour(expr) and datetime.fromtimestamp(tick, tz=tz).fold == 1


@lru_cache(maxsize=4096)  # pure: schedules sharing an expression share the answer
def next_fire(expr: str, time_zone: str, after: int) -> int:
    """The first tick strictly after ``after`` (epoch seconds)."""
    tz = zone(time_zone)
    try:
        it = croniter(expr.strip(), datetime.fromtimestamp(after, tz=tz))
        for _ in range(8):  # at most a few repeated instants in a row
            tick = int(it.get_next(datetime).timestamp())
            if not _repeated_wall_time(expr, tick, tz):
                return tick
    except CroniterBadDateError as e:
        raise ValueError(f"{expr!r} never fires again after {after}") from e
    except CroniterBadCronError as e:
        raise ValueError(str(e)) from e
    return tick


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
    first = next_fire(expr, time_zone, cursor)  # cached: schedules often share (expr, cursor)
    if first > now:
        return TickPlan(due=None, missed=(), next_tick=first)
    second = next_fire(expr, time_zone, first)
    if second > now:
        # One tick pending (every tick but after an outage): no walk back, cached answers only.
        if now - first <= starting_deadline_seconds:
            return TickPlan(due=first, missed=(), next_tick=second)
        return TickPlan(due=None, missed=(first,), next_tick=second)
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
        if not _repeated_wall_time(expr, tick, zone(time_zone)):
            newest_first.append(tick)
    pending = newest_first[::-1]
    next_tick = next_fire(expr, time_zone, now)
    if not pending:
        return TickPlan(due=None, missed=(), next_tick=next_tick)
    latest = pending[-1]
    if now - latest <= starting_deadline_seconds:
        return TickPlan(due=latest, missed=tuple(pending[:-1]), next_tick=next_tick)
    return TickPlan(due=None, missed=tuple(pending), next_tick=next_tick)
