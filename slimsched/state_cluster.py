"""Commands about the cluster rather than the user's data: restores, levels, backup reports."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from slimsched import codec
from slimsched.model import Schedule
from slimsched.state_store import OK, Restoring, Result, State, error

_NOT_EMPTY = "state already holds schedules; restore refused"


def _land(
    state: State, schedules: Iterable[Schedule], last_fired: dict[str, int], base_index: object = None
) -> Result:
    if isinstance(base_index, int) and not isinstance(base_index, bool) and base_index >= 0:
        # Indexes of backups written from now on continue from the restored one's (policy.py).
        state.backups = {**state.backups, "base": base_index, "choice": None}
    n = 0
    for sched in schedules:
        state.schedules[sched.id] = sched
        state.job_schedules.setdefault(sched.job_name, {})[sched.id] = None
        n += 1
    state.last_fired.update({k: v for k, v in last_fired.items() if k in state.schedules})
    return Result("ok", value={"Restored": n})


def _restore_content(cmd: dict[str, Any]) -> tuple[list[Schedule], dict[str, int]]:
    """The schedules and last fired ticks a ``restore`` or ``restore_part`` carries, decoded."""
    schedules = [codec.schedule_from_dict(s) for s in cmd["schedules"]]
    return schedules, {str(k): int(v) for k, v in cmd.get("last_fired", {}).items()}


def restore(state: State, cmd: dict[str, Any]) -> Result:
    """Load schedules from a backup, only into a state that holds none."""
    if state.schedules:
        return error("conflict", _NOT_EMPTY)
    schedules, last_fired = _restore_content(cmd)
    state.restoring = None
    return _land(state, schedules, last_fired, cmd.get("base_index"))


def restore_part(state: State, cmd: dict[str, Any]) -> Result:
    """One part of a restore split so that no entry holds a Raft thread for long.

    Parts are staged in ``state.restoring`` and land together with the last one, so a restore
    is all or nothing, as ``restore`` is. Part 0 starts a restore (and drops one left unfinished
    by an earlier leader); a later part must follow the parts applied. Every part but the last
    answers a bare "ok", so an unfinished restore still looks like a cold start to the next
    leader, which restores again. Refused when the state holds schedules, which also drops what
    was staged: a schedule created meanwhile wins over the backup.
    """
    restore_id, part, parts = cmd["restore"], cmd["part"], cmd["parts"]
    if not isinstance(restore_id, str) or not restore_id:
        return error("invalid", "restore_part needs a restore id")
    if not isinstance(part, int) or not isinstance(parts, int) or not 0 <= part < parts:
        return error("invalid", "restore_part needs 0 <= part < parts")
    if state.schedules:
        state.restoring = None
        return error("conflict", _NOT_EMPTY)
    staged = state.restoring
    if part == 0:
        staged = Restoring(id=restore_id, parts=parts, next_part=0)
    elif staged is None or (staged.id, staged.parts, staged.next_part) != (restore_id, parts, part):
        return error(
            "interrupted", f"part {part} of restore {restore_id!r} does not follow the parts applied"
        )
    schedules, last_fired = _restore_content(cmd)
    for sched in schedules:
        staged.schedules[sched.id] = sched
    staged.last_fired.update(last_fired)
    staged.next_part = part + 1
    state.restoring = staged
    if staged.next_part < parts:
        return OK
    state.restoring = None
    return _land(state, staged.schedules.values(), staged.last_fired, cmd.get("base_index"))


def hello(state: State, cmd: dict[str, Any]) -> Result:
    """A node announces the command level of its release."""
    node, level = cmd["node"], cmd["level"]
    if not isinstance(node, str) or not node or not isinstance(level, int) or level < 1:
        return error("invalid", "hello needs a node address and a level >= 1")
    state.levels[node] = level
    return OK


def _backup_header(cmd: dict[str, Any]) -> dict[str, Any] | None:
    node, index, sha, count = cmd["node"], cmd["raft_index"], cmd["payload_sha256"], cmd["schedule_count"]
    if not isinstance(node, str) or not node or not isinstance(sha, str):
        return None
    if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in (index, count)):
        return None
    return {"node": node, "raft_index": index, "payload_sha256": sha, "schedule_count": count}


def backup_report(state: State, cmd: dict[str, Any]) -> Result:
    """A node reports the newest valid backup it holds (count 0 and no hash: none), so that a
    cold start restores the best backup of the whole cluster, not the leader's own, and a node
    whose backup is behind the others' can tell. Answers a bare "ok": no activity for a cold start.
    """
    header = _backup_header(cmd)
    if header is None:
        return error(
            "invalid", "backup_report needs a node, a raft_index, a payload_sha256 and a schedule_count"
        )
    state.backups = {**state.backups, "reports": {**state.backups.get("reports", {}), header["node"]: header}}
    return OK


def backup_choice(state: State, cmd: dict[str, Any]) -> Result:
    """The leader of a cold-started cluster names the reported backup to restore; the node that
    holds it proposes the restore. Refused once the state holds schedules."""
    header = _backup_header(cmd)
    if header is None:
        return error(
            "invalid", "backup_choice needs a node, a raft_index, a payload_sha256 and a schedule_count"
        )
    if state.schedules:
        return error("conflict", _NOT_EMPTY)
    state.backups = {**state.backups, "choice": header}
    return OK
