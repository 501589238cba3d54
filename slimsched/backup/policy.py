"""Pure rules of the backups: when a pass writes, what a cold start is, a restore as commands."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from slimsched.backup.fileformat import Backup, BackupInfo
from slimsched.statemachine import State, encode_command

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
    OLDER = "older"  # the state is older than the backup: kept (a node catching up, a stale restore)


def lineage_index(backups: Mapping[str, Any], applied_index: int) -> int:
    """The index a backup of the state is written at: the Raft index, counted on from the index of
    the backup the state was restored from (``base``, recorded by the restore).

    A cold start replays Raft from index 0, so Raft indexes alone would make every backup written
    after a restore look older than the one restored; counted on, the indexes of one cluster's
    backups grow across cold starts, and "older" keeps its meaning.
    """
    base = backups.get("base", 0)
    return (base if isinstance(base, int) else 0) + applied_index


def decide_write(
    payload_sha256: str,
    schedule_count: int,
    disk: DiskState,
    *,
    state_index: int,
    overwrite: bool = False,
) -> Decision:
    """Whether the current state (at ``state_index``, see ``lineage_index``) replaces the backup.

    Never by nothing; never by an older state (a lower index, or the same index and fewer
    schedules) unless the operator asked to ``overwrite``. A node whose Raft data was wiped thus
    writes nothing until it has caught up, and a cluster that came back from an older backup
    never replaces a newer one that a node still holds.
    """
    if disk.main is not None and disk.main.payload_sha256 == payload_sha256:
        return Decision.UNCHANGED
    best = disk.best
    if schedule_count == 0 and (disk.main_refused is not None or (best is not None and best.schedule_count)):
        # An unreadable file may hold schedules a human can still salvage: never replace it by nothing.
        return Decision.KEEP_NON_EMPTY
    if (
        best is not None
        and not overwrite
        and (
            state_index < best.raft_index
            or (state_index == best.raft_index and schedule_count < best.schedule_count)
        )
    ):
        return Decision.OLDER
    return Decision.WRITE


def best_report(
    reports: Mapping[str, Mapping[str, Any]], exclude: frozenset[str] = frozenset()
) -> Mapping[str, Any] | None:
    """The backup a cold start restores among those the nodes reported (``backup_report``): the
    highest index, then the most schedules, then the lowest node address (so every node agrees).
    An empty backup is never chosen."""
    candidates = [r for node, r in reports.items() if r.get("schedule_count", 0) > 0 and node not in exclude]
    if not candidates:
        return None
    top = max((r["raft_index"], r["schedule_count"]) for r in candidates)
    return min(
        (r for r in candidates if (r["raft_index"], r["schedule_count"]) == top), key=lambda r: str(r["node"])
    )


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


def _base(base_index: int | None) -> dict[str, int]:
    """``base_index`` rides on a restore only once every member applies level 4 (``backup_report``)."""
    return {} if base_index is None else {"base_index": base_index}


def restore_command(backup: Backup, rid: str, base_index: int | None = None) -> bytes:
    return encode_command(
        "restore", rid=rid, schedules=backup.schedules, last_fired=backup.last_fired, **_base(base_index)
    )


def restore_parts(
    backup: Backup, rid: str, *, whole_bytes: int, part_bytes: int, base_index: int | None = None
) -> list[bytes]:
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
                **_base(base_index),
            )
        )
    return commands
