"""The emulator's simulated job: what its container does and the phases it goes through. Pure.

The phase of a simulated job is a function of its plan and the time (``phase_at``), so the
emulator's controller only has to sleep until the next transition.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Mode(StrEnum):
    """What the simulated container of an image does."""

    SUCCEED = "succeed"
    FAIL = "fail"
    IMAGE_PULL_BACK_OFF = "image_pull_backoff"
    HANG = "hang"


class Phase(StrEnum):
    PENDING = "Pending"
    IMAGE_PULL_BACK_OFF = "ImagePullBackOff"
    RUNNING = "Running"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"

    @property
    def finished(self) -> bool:
        return self in (Phase.SUCCEEDED, Phase.FAILED)


@dataclass(frozen=True)
class JobPlan:
    """Everything that decides a simulated job's timeline, fixed when the job is created."""

    created_at: float
    mode: Mode
    pending_seconds: float
    run_seconds: float
    active_deadline_seconds: int | None = None
    forced_at: float | None = None
    forced_success: bool = True


@dataclass(frozen=True)
class PhaseAt:
    """A phase a simulated job enters at ``since`` (``reason`` for a failure)."""

    phase: Phase
    since: float
    reason: str | None = None


def timeline(plan: JobPlan) -> list[PhaseAt]:
    """Every phase a simulated job goes through, in order; it starts Pending at creation."""
    start = plan.created_at + plan.pending_seconds
    events: list[PhaseAt] = []
    if plan.mode is Mode.IMAGE_PULL_BACK_OFF:
        events.append(PhaseAt(Phase.IMAGE_PULL_BACK_OFF, start, "ImagePullBackOff"))
    else:
        events.append(PhaseAt(Phase.RUNNING, start))
        end = start + plan.run_seconds
        if plan.mode is Mode.SUCCEED:
            events.append(PhaseAt(Phase.SUCCEEDED, end))
        elif plan.mode is Mode.FAIL:
            events.append(PhaseAt(Phase.FAILED, end, "BackoffLimitExceeded"))
    if plan.forced_at is not None:
        if plan.forced_success:
            events.append(PhaseAt(Phase.SUCCEEDED, plan.forced_at))
        else:
            events.append(PhaseAt(Phase.FAILED, plan.forced_at, "BackoffLimitExceeded"))
    if plan.active_deadline_seconds is not None:
        deadline = plan.created_at + plan.active_deadline_seconds
        events.append(PhaseAt(Phase.FAILED, deadline, "DeadlineExceeded"))
    # Stable: at equal times the container's own events come first; nothing happens after the end.
    events.sort(key=lambda e: e.since)
    out = [PhaseAt(Phase.PENDING, plan.created_at)]
    for event in events:
        out.append(event)
        if event.phase.finished:
            break
    return out


def phase_at(plan: JobPlan, now: float) -> tuple[PhaseAt, float | None]:
    """The phase a simulated job is in at ``now``, and when it next changes (None: not by itself)."""
    events = timeline(plan)
    current = events[0]
    for event in events[1:]:
        if event.since > now:
            return current, event.since
        current = event
    return current, None
