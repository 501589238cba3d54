"""Pure rules of the backups: when a pass writes, what a cold start is, a restore as commands."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from slimsched.backup.fileformat import Backup, BackupInfo
from slimsched.statemachine import State, encode_command

# A node restarted with wiped Raft data looks "ready" while the log still streams in (pysyncobj
# caps its commit index at its own log's end). During its first minute, a state holding fewer
# schedules than the backup at a lower Raft index is taken for "still catching up", not written.
CATCH_UP_GRACE_SECONDS = 60.0

# Committing 100,000 schedules takes seconds; the restore retries with the same
# request id until committed (the state machine answers a repeat from memory).
RESTORE_COMMIT_SECONDS = 120.0
# A restore larger than this goes to Raft in parts (``restore_part``) once every member applies
# them: as one 30 MB entry, 100,000 schedules held every node's Raft thread ~2 s, and the
# leader's silence meanwhile cost an election (bench/RESULTS.md).
RESTORE_PART_BYTES = 1_000_000


@dataclass(frozen=True)
class DiskState:
    """What this node knows of its backup directory: the verified file and ``.prev``, if any."""

    main: BackupInfo | None = None
    main_refused: str | None = None  # why the file on disk was refused, if it was
    prev: BackupInfo | None = None

    @property
    def best(self) -> BackupInfo | None:
        return self.main or self.prev


class Decision(StrEnum):
    WRITE = "written"
    UNCHANGED = "unchanged"
    KEEP_NON_EMPTY = "kept_non_empty"
    CATCHING_UP = "catching_up"


def decide_write(
    payload_sha256: str,
    schedule_count: int,
    disk: DiskState,
    *,
    applied_index: int,
    seconds_since_start: float,
) -> Decision:
    """Whether the current state should replace the backup on disk."""
    if disk.main is not None and disk.main.payload_sha256 == payload_sha256:
        return Decision.UNCHANGED
    best = disk.best
    if schedule_count == 0 and (disk.main_refused is not None or (best is not None and best.schedule_count)):
        # An unreadable file may hold schedules a human can still salvage: never replace it by nothing.
        return Decision.KEEP_NON_EMPTY
    if (
        best is not None
        and seconds_since_start < CATCH_UP_GRACE_SECONDS
        and schedule_count < best.schedule_count
        and applied_index < best.raft_index
    ):
        return Decision.CATCHING_UP
    return Decision.WRITE


def is_cold_start(state: State) -> bool:
    """True if the replicated state shows a cluster whose Raft data was wiped (or never existed).

    Nothing but leader barriers was ever applied: no schedules, no runs, no fired or missed tick,
    and every request the state machine remembers answered a bare "ok" (barriers do; every
    command that creates, deletes, pauses or fails answers with a value or an error). A cluster
    whose schedules were all deleted keeps those deletions among its remembered requests (and
    usually runs and ticks), so it is not taken for a cold start and nothing deleted comes back.
    The ``restore`` command itself applies only to a state without schedules, so a client
    creating a schedule at the same moment makes the restore a harmless no-op ("conflict").
    A restore in parts left unfinished is no activity either: its parts answer a bare "ok", and
    a part that arrived after another restore began answers "interrupted".
    """
    if state.schedules or state.runs or state.last_fired or state.ledger:
        return False
    return all((r.code == "ok" and r.value is None) or r.code == "interrupted" for r in state.recent.values())


def restore_command(backup: Backup, rid: str) -> bytes:
    return encode_command("restore", rid=rid, schedules=backup.schedules, last_fired=backup.last_fired)


def restore_parts(backup: Backup, rid: str, *, whole_bytes: int, part_bytes: int) -> list[bytes]:
    """The restore whose single command is ``whole_bytes`` long, as ``restore_part`` commands of
    about ``part_bytes`` each, committed in order (the state machine lands them with the last)."""
    count = len(backup.schedules)
    per = max(1, -(-count // max(1, -(-whole_bytes // part_bytes))))
    groups = [backup.schedules[i : i + per] for i in range(0, count, per)] or [[]]
    commands = []
    for n, group in enumerate(groups):
        ids_in = {str(d["Id"]) for d in group}
        commands.append(
            encode_command(
                "restore_part",
                rid=f"{rid}.{n}",
                restore=rid,
                part=n,
                parts=len(groups),
                schedules=group,
                last_fired={k: v for k, v in backup.last_fired.items() if k in ids_in},
            )
        )
    return commands
