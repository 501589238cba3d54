"""The outcome of a ``slimsched chaos`` run: failover times, counts, violations, as a table or JSON.

Why a module of its own: formatting is a role apart from running the faults and judging the
result; the report only reads the plan's records and the checker's findings.
"""

from __future__ import annotations

import dataclasses
import statistics
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from slimsched.chaoscheck import OpCounts, TickStats, Violation
from slimsched.chaosplan import FaultKind, FaultRecord

MAX_EXAMPLES = 5


def percentile_50_and_max(values: Sequence[float]) -> tuple[float | None, float | None]:
    if not values:
        return None, None
    return statistics.median(values), max(values)


def first_tick_after(fault_start: float, fire_times_ms: Sequence[int]) -> float | None:
    """Seconds from a fault to the first tick fired after it (a fire stamped at or after it)."""
    start_ms = fault_start * 1000
    later = [t for t in fire_times_ms if t >= start_ms]
    return (min(later) - start_ms) / 1000 if later else None


# --- the report ------------------------------------------------------------------------------


@dataclass
class ChaosReport:
    nodes: int
    duration: float
    seed: int
    faults: list[FaultRecord]
    ops: dict[str, OpCounts]
    ticks: TickStats
    jobs_created: int
    job_conflicts: int
    violations: list[Violation]
    proxy: dict[str, int]
    wall_seconds: float
    base_dir: str | None = None
    exercised: dict[str, int] = field(default_factory=dict)

    @property
    def leader_faults(self) -> list[FaultRecord]:
        return [f for f in self.faults if f.leader_fault]

    def failover(self) -> dict[str, tuple[float | None, float | None]]:
        lf = self.leader_faults
        return {
            "new_leader": percentile_50_and_max(
                [f.new_leader_after for f in lf if f.new_leader_after is not None]
            ),
            "first_tick": percentile_50_and_max(
                [f.first_tick_after for f in lf if f.first_tick_after is not None]
            ),
        }

    def to_dict(self) -> dict[str, Any]:
        fo = self.failover()
        return {
            "nodes": self.nodes,
            "duration": self.duration,
            "seed": self.seed,
            "wall_seconds": round(self.wall_seconds, 1),
            "faults": [{**dataclasses.asdict(f), "kind": f.kind.value} for f in self.faults],
            "faults_by_kind": dict(Counter(f.kind.value for f in self.faults)),
            "ops": {k: dataclasses.asdict(v) for k, v in self.ops.items()},
            "ticks": dataclasses.asdict(self.ticks),
            "jobs_created": self.jobs_created,
            "job_conflicts": self.job_conflicts,
            "failover": {k: {"p50": v[0], "max": v[1]} for k, v in fo.items()},
            "violations": [dataclasses.asdict(v) for v in self.violations],
            "proxy": self.proxy,
            "exercised": self.exercised,
        }

    def table(self) -> str:
        def secs(v: float | None) -> str:
            return "-" if v is None else f"{v:.2f} s"

        lines = [
            f"slimsched chaos: {self.nodes} nodes, {self.duration:g} s of load, seed {self.seed}, "
            f"{self.wall_seconds:.0f} s in all",
            "",
            f"{'Faults injected':<28}{'count':>7}",
        ]
        by_kind = Counter(f.kind for f in self.faults)
        for kind in FaultKind:
            if by_kind[kind]:
                lines.append(f"  {kind.value:<26}{by_kind[kind]:>7}")
        lines.append(f"  {'total':<26}{len(self.faults):>7}   ({len(self.leader_faults)} on the leader)")
        lines += [
            "",
            f"{'Operations':<28}{'attempted':>10}{'acked':>8}{'rejected':>10}{'unknown':>9}{'unreachable':>13}",
        ]
        for op, c in sorted(self.ops.items()):
            lines.append(
                f"  {op:<26}{c.attempted:>10}{c.acked:>8}{c.rejected:>10}{c.unknown:>9}{c.unreachable:>13}"
            )
        lines += [
            "",
            f"Cron ticks: {self.ticks.fired} fired, {self.ticks.missed} missed, "
            f"{self.ticks.skipped} skipped; Jobs created: {self.jobs_created} "
            f"(create attempts answered 409: {self.job_conflicts})",
            f"Proxy: {', '.join(f'{k} {v}' for k, v in sorted(self.proxy.items())) or 'idle'}",
            f"Paths exercised: {', '.join(f'{k} {v}' for k, v in self.exercised.items()) or '-'}",
            "",
            f"{'Failover (leader faults)':<28}{'p50':>10}{'max':>10}",
        ]
        for label, (p50, worst) in zip(
            ("fault -> new leader", "fault -> first tick fired"), self.failover().values(), strict=True
        ):
            lines.append(f"  {label:<26}{secs(p50):>10}{secs(worst):>10}")
        lines += [
            "",
            "Timetable",
            f"  {'at':>7}  {'kind':<20}{'node':>5}  {'leader?':<8}{'new leader':>11}"
            f"{'first tick':>11}{'healthy':>10}",
        ]
        for f in self.faults:
            lines.append(
                f"  {f.offset:>6.1f}s  {f.kind.value:<20}{f.target:>5}  "
                f"{'yes' if f.leader_fault else 'no':<8}"
                f"{secs(f.new_leader_after):>11}{secs(f.first_tick_after):>11}{secs(f.recovered_after):>10}"
            )
        by_violation = Counter(v.kind for v in self.violations)
        lines += ["", f"Violations: {len(self.violations)}"]
        for vkind, n in sorted(by_violation.items()):
            lines.append(f"  {vkind:<26}{n:>7}")
            for v in [v for v in self.violations if v.kind == vkind][:MAX_EXAMPLES]:
                lines.append(f"      {v.detail}")
        if self.violations and self.base_dir:
            lines.append(f"Node logs kept in {self.base_dir}/logs")
        return "\n".join(lines)


# --- the harness -----------------------------------------------------------------------------
