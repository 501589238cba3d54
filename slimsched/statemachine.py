"""The replicated state machine: one ``apply`` over a closed set of versioned commands.

Every node runs the same commands in the same order through ``apply``; nothing here reads a
clock, draws a random number, does I/O or raises. The proposer puts times and ids into the
command. A command carrying a request id that was applied recently returns the stored result
again, so a client or the Raft bridge may retry a command whose fate it did not learn (pysyncobj
has no client sessions: an entry reported as failed may still be committed).

The state is mutated in place (100,000 schedules cannot be copied per command); a snapshot takes
a shallow copy of the top-level maps, whose values are frozen dataclasses.

This module decodes entries, checks versions and levels, keeps the request-id window and hands
each command to its handler; the state lives in ``state_store``, the handlers in
``state_schedules``, ``state_runs`` and ``state_cluster``, snapshots in ``state_snapshot``. The
names other modules use are re-exported here, so the machine has one front door.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import orjson

from slimsched import state_cluster, state_runs, state_schedules
from slimsched.state_schedules import BACKFILL_REASON, MANUAL_REASON, MAX_BACKFILL_TICKS
from slimsched.state_snapshot import (
    SNAPSHOT_CHUNK,
    decode_snapshot,
    encode_snapshot,
    encode_snapshot_chunks,
    fingerprint,
    snapshot_from_dict,
    snapshot_to_dict,
)
from slimsched.state_store import (
    COMMAND_VERSION,
    FINISHED_RUNS_PER_JOB,
    LEDGER_PER_SCHEDULE,
    OK,
    RECENT_REQUESTS,
    SNAPSHOT_VERSION,
    Restoring,
    Result,
    State,
    error,
)

__all__ = [
    "BACKFILL_REASON",
    "COMMAND_LEVEL",
    "COMMAND_VERSION",
    "FINISHED_RUNS_PER_JOB",
    "HANDLERS",
    "LEDGER_PER_SCHEDULE",
    "LEVEL_OF_TYPE",
    "MANUAL_REASON",
    "MAX_BACKFILL_TICKS",
    "MAX_BATCH_COMMANDS",
    "OK",
    "SNAPSHOT_CHUNK",
    "SNAPSHOT_VERSION",
    "Applied",
    "Restoring",
    "Result",
    "State",
    "applied_by_all",
    "apply",
    "apply_entry",
    "batch_results",
    "decode_snapshot",
    "encode_batch",
    "encode_command",
    "encode_snapshot",
    "encode_snapshot_chunks",
    "error",
    "fingerprint",
    "replay",
    "snapshot_from_dict",
    "snapshot_to_dict",
]

# Which command types a node applies. A release that adds a type raises it; a node records its
# level with a ``hello`` and the leader proposes the new types only once every member has
# announced it, since a node of an earlier release would answer them "unknown" and diverge.
# Level 2 added ``hello`` and ``batch``; level 3 ``restore_part``; level 4 ``trigger_schedule`` and
# ``backfill``, ``backup_report`` and ``backup_choice``.
COMMAND_LEVEL = 4
LEVEL_OF_TYPE = {
    "hello": 2,
    "batch": 2,
    "restore_part": 3,
    "trigger_schedule": 4,
    "backfill": 4,
    "backup_report": 4,
    "backup_choice": 4,
}
MAX_BATCH_COMMANDS = 1024


def encode_command(kind: str, **fields: Any) -> bytes:
    return orjson.dumps({"v": COMMAND_VERSION, "type": kind, **fields})


def applied_by_all(state: State, members: Iterable[str], kind: str) -> bool:
    """Every member announced a level that applies commands of type ``kind``."""
    return all(state.levels.get(m, 1) >= LEVEL_OF_TYPE.get(kind, 1) for m in members)


# How every batch entry begins (``encode_batch``): how its results are told from other entries'.
_BATCH_HEAD = b'{"v":%d,"type":"batch"' % COMMAND_VERSION


def batch_results(payload: bytes, result: Result) -> list[Result] | None:
    """The per-command results of a ``batch`` entry that was applied; None for any other entry."""
    if not result.ok or not payload.startswith(_BATCH_HEAD):
        return None
    results = (result.value or {}).get("Results")
    return results if isinstance(results, list) else None


def encode_batch(payloads: list[bytes]) -> bytes:
    """One entry carrying commands already encoded, applied in order as if each were its own."""
    return _BATCH_HEAD + b',"commands":[' + b",".join(payloads) + b"]}"


Handler = Callable[[State, dict[str, Any]], Result]

HANDLERS: dict[str, Handler] = {
    "create_schedule": state_schedules.create_schedule,
    "delete_schedule": state_schedules.delete_schedule,
    "set_paused": state_schedules.set_paused,
    "enqueue_run": state_runs.enqueue_run,
    "cancel_run": state_runs.cancel_run,
    "barrier": state_runs.barrier,
    "fire_tick": state_schedules.fire_tick,
    "start_dispatch": state_runs.start_dispatch,
    "run_status": state_runs.run_status,
    "restore": state_cluster.restore,
    "restore_part": state_cluster.restore_part,
    "hello": state_cluster.hello,
    "trigger_schedule": state_schedules.trigger_schedule,
    "backfill": state_schedules.backfill,
    "backup_report": state_cluster.backup_report,
    "backup_choice": state_cluster.backup_choice,
}


@dataclass(frozen=True)
class Applied:
    """What one entry did: its result, and every command it held, decoded, with that command's own
    result (a batch's commands in order; one pair for any other entry; none when the entry was not
    JSON or a batch was refused whole). Hooks read the commands here instead of parsing again."""

    result: Result
    commands: tuple[tuple[object, Result], ...]


def apply(state: State, payload: bytes, *, level: int = COMMAND_LEVEL) -> Result:
    """Apply one replicated command. Never raises; a bad command leaves the state untouched.

    A ``batch`` answers ``ok`` with ``value["Results"]``, one Result per command, in order.
    ``level`` below COMMAND_LEVEL applies as a node of that earlier release would (tests).
    """
    return apply_entry(state, payload, level=level).result


def apply_entry(state: State, payload: bytes, *, level: int = COMMAND_LEVEL) -> Applied:
    """``apply``, also answering each command the entry held, as decoded, with its result."""
    try:
        cmd = orjson.loads(payload)
    except (orjson.JSONDecodeError, TypeError):
        return Applied(error("invalid", "command is not JSON"), ())
    if isinstance(cmd, dict) and cmd.get("type") == "batch" and level >= LEVEL_OF_TYPE["batch"]:
        commands = cmd.get("commands")
        if cmd.get("v") != COMMAND_VERSION or not isinstance(commands, list):
            return Applied(error("invalid", "a batch needs version 1 and a list of commands"), ())
        if len(commands) > MAX_BATCH_COMMANDS:
            return Applied(error("invalid", f"a batch holds at most {MAX_BATCH_COMMANDS} commands"), ())
        results = [
            error("invalid", "a batch cannot hold a batch")
            if isinstance(c, dict) and c.get("type") == "batch"
            else _apply_command(state, c, level)
            for c in commands
        ]
        return Applied(Result("ok", value={"Results": results}), tuple(zip(commands, results, strict=True)))
    result = _apply_command(state, cmd, level)
    return Applied(result, ((cmd, result),))


def _apply_command(state: State, cmd: object, level: int) -> Result:
    if not isinstance(cmd, dict):
        return error("invalid", "command is not an object")
    if cmd.get("v") != COMMAND_VERSION:
        return error("invalid", f"unsupported command version {cmd.get('v')!r}")
    kind = cmd.get("type")
    handler = HANDLERS.get(kind)  # type: ignore[arg-type]
    if handler is None or LEVEL_OF_TYPE.get(kind, 1) > level:  # type: ignore[arg-type]
        return error("invalid", f"unknown command type {kind!r}")
    rid = cmd.get("rid")
    if rid is not None:
        if not isinstance(rid, str):
            return error("invalid", "rid must be a string")
        seen = state.recent.get(rid)
        if seen is not None:
            return seen
    try:
        # Handlers validate before they mutate, so an exception here means nothing changed.
        result = handler(state, cmd)
    except Exception as e:  # apply must never raise: a raising entry stalls pysyncobj for good
        result = error("invalid", f"malformed {kind} command: {type(e).__name__}: {e}")
    if rid is not None:
        state.recent[rid] = result
        while len(state.recent) > RECENT_REQUESTS:
            state.recent.popitem(last=False)
    return result


# -- snapshots -----------------------------------------------------------------------------------


def replay(payloads: Iterable[bytes]) -> State:
    state = State()
    for p in payloads:
        apply(state, p)
    return state
