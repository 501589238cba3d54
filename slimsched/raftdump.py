"""Raft snapshots ("dumps") of the ``State``, written off the Raft thread.

Snapshots dump only the ``State``, as versioned orjson, through pysyncobj's
``SyncObjConf(serializer=..., deserializer=..., serializeChecker=...)``: the Raft thread takes a
shallow copy of the state and a background thread encodes and writes it, so the Raft thread never
stalls on a large state. Split from raft.py (the only module importing pysyncobj) by role:
``DumpState`` mirrors pysyncobj's SERIALIZER_STATE values, checked there at import.
"""

from __future__ import annotations

import base64
import contextlib
import enum
import logging
import os
import threading
import time
from typing import Any, Protocol

import orjson

from slimsched import heap, statemachine
from slimsched.files import fsync_dir
from slimsched.settings import RaftTimings, Settings
from slimsched.statemachine import State

log = logging.getLogger(__name__)

DUMP_VERSION = 1
SNAPSHOT_PAUSE_SECONDS = 0.0005
SNAPSHOT_STOP_SECONDS = 5.0  # abandoning a dump takes one piece (~1 ms)


class DumpState(enum.IntEnum):
    """pysyncobj's SERIALIZER_STATE (raft.py asserts the values match)."""

    NOT_SERIALIZING = 0
    SERIALIZING = 1
    SUCCESS = 2
    FAILED = 3


class DumpOwner(Protocol):
    """The Raft node as the snapshotter sees it."""

    settings: Settings

    @property
    def replica(self) -> Any: ...

    def copy_state(self) -> State: ...

    def replace_state(self, state: State) -> None: ...


def compaction_due(timings: RaftTimings, now: float, last_applied_at: float, applied: int) -> bool:
    """Compact now: ``applied`` commands since the last dump reach the limit, or the log is quiet.

    Counted in commands, not in entries: pysyncobj counts entries, and a ``batch`` entry holds
    up to MAX_BATCH_COMMANDS of them, so its own threshold would let the log hold all of them.
    """
    if applied >= timings.log_compaction_min_entries:
        return True
    quiet = now - last_applied_at >= timings.idle_compaction_seconds
    return quiet and applied >= timings.idle_compaction_entries


class Snapshotter:
    """Writes dumps off the Raft thread; pysyncobj polls ``check`` for the outcome."""

    def __init__(self, node: DumpOwner) -> None:
        self._node = node
        self._thread: threading.Thread | None = None
        self._outcome: int | None = None
        self._abandon = threading.Event()
        self._final = ""  # the dump's path, set by serialize
        self.applied = 0  # commands applied since the last dump began (Raft thread only)
        self.last_applied_at = 0.0

    def serialize(self, tmp_file: str, raft_data: tuple[Any, ...]) -> None:
        # Runs in the Raft thread, right after the entry at raft_data[0] was applied: copy now.
        self.applied = 0
        state = self._node.copy_state()
        self._final = tmp_file.removesuffix(".tmp")
        self._outcome = None
        self._thread = threading.Thread(
            target=self._write,
            args=(self._final + ".writing", state, raft_data),
            name="raft-snapshot",
            daemon=True,
        )
        self._thread.start()
        # pysyncobj now renames tmp_file over the dump; there is no tmp_file, so that rename fails
        # harmlessly. The dump is replaced by ``check``, once written.

    def _write(self, writing: str, state: State, raft_data: tuple[Any, ...]) -> None:
        """Write and fsync the dump as ``writing``: the Raft thread publishes it (``check``)."""
        try:
            head = orjson.dumps(
                {"v": DUMP_VERSION, "raft": [_entry_to_json(raft_data[0]), _entry_to_json(raft_data[1])]}
            )
            with open(writing, "wb") as f:
                f.write(head[:-1] + b',"state":')
                for piece in statemachine.encode_snapshot_chunks(state):
                    if self._abandon.is_set():
                        self._outcome = DumpState.FAILED  # ``abandon`` removes the file
                        return
                    f.write(piece)
                    # Encoding holds the GIL; without a pause it keeps it for whole switch
                    # intervals (5 ms) against the event loop: the write path's p99 tail.
                    time.sleep(SNAPSHOT_PAUSE_SECONDS)
                f.write(b"}")
                f.flush()
                os.fsync(f.fileno())
            self._outcome = DumpState.SUCCESS
        except Exception:
            log.exception("writing the Raft snapshot failed")
            self._outcome = DumpState.FAILED

    def abandon(self, timeout: float) -> None:
        """Stop a dump being written and remove its file (at most ``timeout`` to do it).

        Called once the Raft thread has stopped: a dump it had not published is dropped.
        """
        thread = self._thread
        if thread is not None:
            self._abandon.set()
            thread.join(timeout)
            if not thread.is_alive():  # stopped early or finished unpublished: either way, drop it
                with contextlib.suppress(OSError):
                    os.remove(self._final + ".writing")

    def check(self) -> int:
        """pysyncobj's poll (Raft thread): SUCCESS only once the written dump replaced the old one.

        The dump is published here, not by the writer: pysyncobj compacts its journal to the
        dump's entries in this same tick on SUCCESS. A dump published earlier, by another thread,
        could be on disk when the node stops before that tick; at the next start pysyncobj finds
        that the journal does not begin at the dump's entries, clears the journal and loses every
        entry after the dump (seen: two of three nodes restarted that way elected a leader
        without the last acknowledged writes).
        """
        if self._thread is None:
            replica = self._node.replica
            timings = self._node.settings.timings
            if replica is not None and compaction_due(
                timings, time.monotonic(), self.last_applied_at, self.applied
            ):
                replica.forceLogCompaction()  # pysyncobj acts on it in this same tick
            return int(DumpState.NOT_SERIALIZING)
        if self._thread.is_alive() or self._outcome is None:
            return int(DumpState.SERIALIZING)
        outcome, self._thread, self._outcome = self._outcome, None, None
        if outcome == DumpState.SUCCESS:
            try:
                os.replace(self._final + ".writing", self._final)
                fsync_dir(os.path.dirname(self._final) or ".")
            except OSError:
                log.exception("publishing the Raft snapshot failed")
                return int(DumpState.FAILED)
        return int(outcome)

    def deserialize(self, file_name: str) -> tuple[Any, Any, Any]:
        with open(file_name, "rb") as f, heap.collections_paused():
            doc = orjson.loads(f.read())
            if doc.get("v") != DUMP_VERSION:
                raise ValueError(f"unsupported Raft dump version {doc.get('v')!r}")
            state = statemachine.snapshot_from_dict(doc["state"])
        self._node.replace_state(state)
        if self._node.replica is not None:
            self._node.replica.defer_election()
        first, second = doc["raft"]
        return _entry_from_json(first), _entry_from_json(second), []


def _entry_to_json(entry: tuple[bytes, int, int]) -> list[Any]:
    return [base64.b64encode(entry[0]).decode("ascii"), entry[1], entry[2]]


def _entry_from_json(j: list[Any]) -> tuple[bytes, int, int]:
    return base64.b64decode(j[0]), int(j[1]), int(j[2])
