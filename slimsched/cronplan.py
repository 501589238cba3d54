"""Cron planning: validate expressions and work out which ticks are due. Pure: time is a parameter.

Expressions are croniter's: 5 fields as SlimFaas and a Kubernetes CronJob read them, or 6 with
seconds FIRST as Quartz, Spring, Cronos, Hangfire and Dkron read them (``*/10 * * * * *`` every
10 s, ``0 0 * * * *`` hourly; croniter's ``second_at_beginning``), names (JAN, MON), ranges,
steps, lists and ``@hourly``-style macros. An earlier release read the sixth field as seconds
LAST; ``from_seconds_last`` rewrites such an expression for stored state written by it (the
codec calls it when a stored schedule lacks the seconds-first marker). Ticks are whole epoch
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
                "or 6 (second minute hour day month weekday)",
            )
    try:
        _iter(stripped, datetime(2000, 1, 1, tzinfo=UTC))
        next_fire(stripped, time_zone, 946684800)
    except (CroniterError, ValueError, KeyError) as e:
        raise BadRequest("invalid_cron", f"Schedule {expr!r} is not a valid cron expression: {e}") from e


@lru_cache(maxsize=1024)  # every schedule encode and decode asks; expressions repeat
def has_seconds(expr: str) -> bool:
    """Whether ``expr`` has a seconds field (6 fields)."""
    return len(expr.split()) == 6


def from_seconds_last(expr: str) -> str:
    """The seconds-first form of an expression the earlier release read with seconds LAST.

    ``* * * * * */10`` (every 10 s, read seconds-last) becomes ``*/10 * * * * *``; a 5-field
    expression or a macro is the same in both readings and comes back unchanged.
    """
    fields = expr.split()
    if len(fields) != 6:
        return expr
    return " ".join([fields[5], *fields[:5]])


def _iter(expr: str, start: datetime) -> croniter:
    # second_at_beginning only matters for 6 fields: 5-field expressions and macros read the same.
    return croniter(expr, start, second_at_beginning=True)


@lru_cache(maxsize=1024)
def _fixed_hour(expr: str) -> bool:
    """Whether the expression names its hours (``30 2 * * *``) rather than every hour or a step."""
    stripped = expr.strip().lower()
    if stripped.startswith("@"):
        return stripped != "@hourly"
    fields = stripped.split()
    hours = fields[2] if len(fields) == 6 else fields[1] if len(fields) >= 2 else "*"
    return "*" not in hours and "/" not in hours


def _repeated_wall_time(expr: str, tick: int, tz: ZoneInfo) -> bool:
    """A fixed-hour tick at the second occurrence of a wall time repeated by a DST fall-back."""
    return _fixed_hour(expr) and datetime.fromtimestamp(tick, tz=tz).fold == 1


@lru_cache(maxsize=4096)  # pure: schedules sharing an expression share the answer
def next_fire(expr: str, time_zone: str, after: int) -> int:
    """The first tick strictly after ``after`` (epoch seconds)."""
    tz = zone(time_zone)
    try:
        it = _iter(expr.strip(), datetime.fromtimestamp(after, tz=tz))
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
    starting_deadline_seconds: int | None = None,
) -> TickPlan:
    """Decide the tick to fire now, following StartingDeadlineSeconds when there is one.

    Ticks in ``(last_handled, now]`` are due. The most recent one fires once whatever its age,
    as in SlimFaas and a Kubernetes CronJob without ``startingDeadlineSeconds``; with a deadline
    (opt-in) it fires only if it is no older than the deadline. Every other one is missed (at
    most ``MAX_MISSED_RECORDED`` are listed, the newest ones, so a long outage is reported
    without a storm of records).
    """
    cursor = last_handled if last_handled is not None else created_at
    first = next_fire(expr, time_zone, cursor)  # cached: schedules often share (expr, cursor)
    if first > now:
        return TickPlan(due=None, missed=(), next_tick=first)
    second = next_fire(expr, time_zone, first)
    if second > now:
        # One tick pending (every tick but after an outage): no walk back, cached answers only.
        if _in_deadline(now, first, starting_deadline_seconds):
            return TickPlan(due=first, missed=(), next_tick=second)
        return TickPlan(due=None, missed=(first,), next_tick=second)
    newest_first: list[int] = []
    it = _iter(expr.strip(), datetime.fromtimestamp(now + 1, tz=zone(time_zone)))
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
    if _in_deadline(now, latest, starting_deadline_seconds):
        return TickPlan(due=latest, missed=tuple(pending[:-1]), next_tick=next_tick)
    return TickPlan(due=None, missed=tuple(pending), next_tick=next_tick)


def _in_deadline(now: int, tick: int, deadline: int | None) -> bool:
    return deadline is None or now - tick <= deadline
