"""Schedule actions beyond the cron loop: trigger now, backfill a range, preview the next fire times.

Pure: request parsing, tick enumeration and run ids, with the time as a parameter. The HTTP
handlers (``api``) read the clock, call these, and submit one command (``trigger_schedule`` or
``backfill``) whose ``apply`` makes the action exactly-once; the preview is a read.

Fire times come from ``cronplan.next_fire`` (never croniter directly), so a preview and a
backfill read an expression exactly as the cron loop fires it.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from slimsched import cronplan
from slimsched.errors import BadRequest
from slimsched.model import ConcurrencyPolicy
from slimsched.statemachine import MAX_BACKFILL_TICKS

MAX_PREVIEW = 100
DEFAULT_PREVIEW = 10
MAX_EXPRESSION = 200  # characters of a previewed expression (?schedule), as openapi.json says
MAX_TIME_ZONE = 100
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


def next_fires(expr: str, time_zone: str, after: int, count: int, *, until: int | None = None) -> list[int]:
    """The first ``count`` ticks strictly after ``after`` and not after ``until``.

    Fewer when the expression stops firing or leaves the representable years.
    """
    out: list[int] = []
    cursor = after
    for _ in range(count):
        try:
            cursor = cronplan.next_fire(expr, time_zone, cursor)
        except (ValueError, OverflowError, OSError):
            break
        if until is not None and cursor > until:
            break
        out.append(cursor)
    return out


def ticks_between(
    expr: str, time_zone: str, start: int, end: int, limit: int = MAX_BACKFILL_TICKS
) -> list[int]:
    """Every tick in ``[start, end]``; ``BadRequest`` (too_many_ticks) past ``limit`` of them."""
    ticks = next_fires(expr, time_zone, start - 1, limit + 1, until=end)
    if len(ticks) > limit:
        raise BadRequest(
            "too_many_ticks",
            f"the range holds more than {limit} ticks of {expr!r}; backfill it in smaller ranges",
        )
    return ticks


def manual_run_id(schedule_id: str, request_id: str) -> str:
    """The run id of a manual trigger: the same request id always names the same run.

    Its last part (``m`` and 16 hex digits) never reads as a tick, as the ``{schedule}-{tick}``
    ids of cron and backfilled runs do.
    """
    return f"{schedule_id}-m{hashlib.sha256(request_id.encode()).hexdigest()[:16]}"


def parse_time(value: Any, name: str) -> int:
    """An RFC 3339 date-time with its offset (``2026-01-01T00:00:00Z``) as epoch seconds."""
    if not isinstance(value, str):
        raise BadRequest("invalid_field", f"{name} must be an RFC 3339 date-time string")
    try:
        parsed = datetime.fromisoformat(value.strip())
    except ValueError as e:
        raise BadRequest("invalid_field", f"{name} {value!r} is not an RFC 3339 date-time") from e
    if parsed.tzinfo is None:
        raise BadRequest("invalid_field", f"{name} {value!r} has no UTC offset (add Z or +hh:mm)")
    try:
        return int(parsed.timestamp())
    except (OverflowError, ValueError, OSError) as e:
        raise BadRequest("invalid_field", f"{name} {value!r} is out of range") from e


def iso(epoch_s: int) -> str:
    return datetime.fromtimestamp(epoch_s, tz=UTC).isoformat().replace("+00:00", "Z")


def _object(body: Any, allowed: set[str]) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise BadRequest("invalid_body", "the request body must be a JSON object")
    unknown = sorted(set(body) - allowed)
    if unknown:
        raise BadRequest("unknown_field", f"unknown field {unknown[0]!r}; expected {sorted(allowed)}")
    return body


def _request_id(body: dict[str, Any]) -> str | None:
    rid = body.get("RequestId")
    if rid is None:
        return None
    if not isinstance(rid, str) or not _REQUEST_ID.match(rid):
        raise BadRequest(
            "invalid_field", "RequestId must be 1 to 128 characters of letters, digits and . _ : -"
        )
    return rid


def parse_trigger(body: Any) -> str | None:
    """The optional ``RequestId`` of a trigger: a retry carrying it starts no second run."""
    return _request_id(_object(body, {"RequestId"}))


@dataclass(frozen=True)
class BackfillRequest:
    start: int
    end: int
    policy: ConcurrencyPolicy | None
    request_id: str | None


def parse_backfill(body: Any, now: int) -> BackfillRequest:
    d = _object(body, {"Start", "End", "ConcurrencyPolicy", "RequestId"})
    if "Start" not in d or "End" not in d:
        raise BadRequest("missing_field", "a backfill needs Start and End (RFC 3339 date-times)")
    start, end = parse_time(d["Start"], "Start"), parse_time(d["End"], "End")
    if end < start:
        raise BadRequest("invalid_range", "End is before Start")
    if end > now:
        raise BadRequest("invalid_range", "End is in the future: a backfill covers ticks already due")
    policy = d.get("ConcurrencyPolicy")
    if policy is not None and policy not in {p.value for p in ConcurrencyPolicy}:
        raise BadRequest("invalid_field", "ConcurrencyPolicy must be Allow, Forbid or Replace")
    return BackfillRequest(
        start, end, ConcurrencyPolicy(policy) if policy is not None else None, _request_id(d)
    )


def parse_count(raw: str | None) -> int:
    """``?count=N`` of a preview: 1 to ``MAX_PREVIEW``, ``DEFAULT_PREVIEW`` when absent."""
    if raw is None:
        return DEFAULT_PREVIEW
    if not (raw.isascii() and raw.isdigit()) or len(raw) > 4 or not 1 <= int(raw) <= MAX_PREVIEW:
        raise BadRequest(
            "invalid_query", f"?count must be a whole number from 1 to {MAX_PREVIEW}, not {raw!r}"
        )
    return int(raw)
