"""Snapshots of the replicated state: encoding in short pieces, decoding, and its fingerprint."""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Callable, Iterator
from typing import Any

import orjson

from slimsched import codec
from slimsched.state_store import SNAPSHOT_VERSION, Restoring, Result, State, put_run


def snapshot_to_dict(state: State) -> dict[str, Any]:
    return {
        "v": SNAPSHOT_VERSION,
        "schedules": [codec.schedule_to_dict(s) for s in state.schedules.values()],
        "last_fired": state.last_fired,
        "runs": [codec.run_to_dict(r) for r in state.runs.values()],
        "ledger": {k: [codec.tick_to_dict(t) for t in v] for k, v in state.ledger.items()},
        "recent": [[k, v.to_dict()] for k, v in state.recent.items()],
        "levels": state.levels,
        **({} if state.restoring is None else {"restoring": _restoring_to_dict(state.restoring)}),
        **({"backups": state.backups} if state.backups else {}),
    }


def _restoring_to_dict(r: Restoring) -> dict[str, Any]:
    return {
        "id": r.id,
        "parts": r.parts,
        "next_part": r.next_part,
        "schedules": [codec.schedule_to_dict(s) for s in r.schedules.values()],
        "last_fired": r.last_fired,
    }


def _restoring_from_dict(d: dict[str, Any]) -> Restoring:
    schedules = (codec.schedule_from_dict(s) for s in d["schedules"])
    return Restoring(
        id=str(d["id"]),
        parts=int(d["parts"]),
        next_part=int(d["next_part"]),
        schedules={s.id: s for s in schedules},
        last_fired={str(k): int(v) for k, v in d["last_fired"].items()},
    )


SNAPSHOT_CHUNK = 250  # ~0.5 ms of encoding a piece: the writer yields the GIL between pieces


def _chunks(items: list[Any]) -> Iterator[list[Any]]:
    for start in range(0, len(items), SNAPSHOT_CHUNK):
        yield items[start : start + SNAPSHOT_CHUNK]


def _json_list(items: list[Any], encode: Callable[[Any], Any]) -> Iterator[bytes]:
    yield b"["
    for n, chunk in enumerate(_chunks(items)):
        # orjson holds the GIL for a whole call: small calls let the Raft thread run between them.
        yield (b"," if n else b"") + orjson.dumps([encode(x) for x in chunk])[1:-1]
    yield b"]"


def _json_object(items: list[tuple[str, Any]], encode: Callable[[Any], Any]) -> Iterator[bytes]:
    yield b"{"
    for n, chunk in enumerate(_chunks(items)):
        yield (b"," if n else b"") + orjson.dumps({k: encode(v) for k, v in chunk})[1:-1]
    yield b"}"


def encode_snapshot_chunks(state: State) -> Iterator[bytes]:
    """``encode_snapshot`` as pieces, each encoded by a short orjson call (for 100,000 schedules)."""
    yield b'{"v":%d,"schedules":' % SNAPSHOT_VERSION
    yield from _json_list(list(state.schedules.values()), codec.schedule_to_dict)
    yield b',"last_fired":'
    yield from _json_object(list(state.last_fired.items()), lambda v: v)
    yield b',"runs":'
    yield from _json_list(list(state.runs.values()), codec.run_to_dict)
    yield b',"ledger":'
    yield from _json_object(list(state.ledger.items()), lambda v: [codec.tick_to_dict(t) for t in v])
    yield b',"recent":'
    yield from _json_list(list(state.recent.items()), lambda kv: [kv[0], kv[1].to_dict()])
    yield b',"levels":' + orjson.dumps(state.levels)
    if state.restoring is not None:
        r = state.restoring
        yield b',"restoring":{"id":%b,"parts":%d,"next_part":%d,"schedules":' % (
            orjson.dumps(r.id),
            r.parts,
            r.next_part,
        )
        yield from _json_list(list(r.schedules.values()), codec.schedule_to_dict)
        yield b',"last_fired":'
        yield from _json_object(list(r.last_fired.items()), lambda v: v)
        yield b"}"
    if state.backups:
        yield b',"backups":' + orjson.dumps(state.backups)
    yield b"}"


def encode_snapshot(state: State) -> bytes:
    return b"".join(encode_snapshot_chunks(state))


def snapshot_from_dict(d: dict[str, Any]) -> State:
    if d.get("v") != SNAPSHOT_VERSION:
        raise ValueError(f"unsupported snapshot version {d.get('v')!r}")
    state = State()
    for s in d["schedules"]:
        sched = codec.schedule_from_dict(s)
        state.schedules[sched.id] = sched
        state.job_schedules.setdefault(sched.job_name, {})[sched.id] = None
    state.last_fired = {str(k): int(v) for k, v in d["last_fired"].items()}
    for r in d["runs"]:
        put_run(state, codec.run_from_dict(r))
    state.ledger = {str(k): tuple(codec.tick_from_dict(t) for t in v) for k, v in d["ledger"].items()}
    state.recent = OrderedDict((str(k), Result.from_dict(v)) for k, v in d["recent"])
    # Absent from the snapshots of a release before level 2: no member has announced anything.
    state.levels = {str(k): int(v) for k, v in d.get("levels", {}).items()}
    # Absent unless a restore in parts was under way (level 3).
    state.restoring = _restoring_from_dict(d["restoring"]) if d.get("restoring") is not None else None
    # Absent before level 4, and until a node reports its backup.
    state.backups = dict(d.get("backups") or {})
    return state


def decode_snapshot(data: bytes) -> State:
    return snapshot_from_dict(orjson.loads(data))


def fingerprint(state: State) -> str:
    """A hash of the replicated content, equal on nodes that applied the same commands."""
    return hashlib.sha256(orjson.dumps(snapshot_to_dict(state), option=orjson.OPT_SORT_KEYS)).hexdigest()
