"""The backup side of ``slimsched chaos``: what each node's backup volume holds, the faults done
to it, and the invariant "no valid backup lost".

Why apart from chaos.py: the harness drives processes and load; this module only reads and
damages files (blocking: the harness runs it in a thread) and judges what it read (pure).

The invariant, checked at quiet points (a fault over, the cluster healthy, a few backup passes
done) and at the end:

- a node's newest valid backup (the file or ``.prev``, hashes verified) never goes back to a
  lower index, unless the fault itself wiped that volume;
- the best backup of the cluster (highest index over every node) never goes back, wiped volume
  or not: some node always keeps the newest one;
- a file damaged on disk is noticed (set aside as ``.damaged-<time>``), never rotated into ``.prev``;
- a cold start restores every schedule of the best backup left on any volume.
"""

from __future__ import annotations

import contextlib
import os
import random
from collections.abc import Mapping
from dataclasses import dataclass, field

from slimsched.backup import (
    FILE_NAME,
    PREV_NAME,
    Backup,
    BackupError,
    BackupInfo,
    check_integrity,
    read_optional,
    verify_backup,
)
from slimsched.backup.disk import DAMAGED_INFIX


@dataclass(frozen=True)
class VolumeView:
    """A backup volume as read: its newest valid backup (index 0 and no hash: none) and how many
    files were set aside as damaged."""

    index: int = 0
    count: int = 0
    sha: str = ""
    damaged_files: int = 0


def _info(path: str) -> BackupInfo | None:
    try:
        raw = read_optional(path)
    except OSError:  # e.g. a directory left where a file was
        return None
    if raw is None:
        return None
    try:
        return check_integrity(raw)
    except BackupError:
        return None


def read_volume(backup_dir: str) -> VolumeView:
    """The newest valid backup in ``backup_dir`` (blocking)."""
    try:
        names = os.listdir(backup_dir)
    except FileNotFoundError:
        return VolumeView()
    infos = [i for i in (_info(os.path.join(backup_dir, n)) for n in (FILE_NAME, PREV_NAME)) if i is not None]
    damaged = sum(1 for n in names if DAMAGED_INFIX in n)
    if not infos:
        return VolumeView(damaged_files=damaged)
    best = max(infos, key=lambda i: (i.raft_index, i.schedule_count))
    return VolumeView(best.raft_index, best.schedule_count, best.payload_sha256, damaged)


def best_backup(backup_dirs: Mapping[int, str]) -> tuple[int, Backup] | None:
    """The backup a cold start must restore: the highest index, then the most schedules, over
    every volume (blocking; full verification)."""
    found: list[tuple[int, Backup]] = []
    for node, d in backup_dirs.items():
        for name in (FILE_NAME, PREV_NAME):
            raw = read_optional(os.path.join(d, name))
            if raw is None:
                continue
            try:
                found.append((node, verify_backup(raw)))
            except BackupError:
                continue
    found = [f for f in found if f[1].schedules]
    if not found:
        return None
    return max(found, key=lambda f: (f[1].info.raft_index, f[1].info.schedule_count))


def damage(backup_dir: str, rng: random.Random) -> bool:
    """Flip one bit of a byte inside the payload of the node's backup file, as a failing disk
    would (the file's size stays; its mtime changes). False if there is no file to damage."""
    path = os.path.join(backup_dir, FILE_NAME)
    try:
        raw = read_optional(path)
        if raw is None or len(raw) < 64:
            return False
        at = rng.randrange(len(raw) // 4, 3 * len(raw) // 4)
        with open(path, "r+b") as f:  # the node may have replaced the file meanwhile: damage that one
            f.seek(at)
            f.write(bytes([raw[at] ^ 0x04]))
    except FileNotFoundError:
        return False
    return True


def wipe(backup_dir: str) -> None:
    """Remove every file of a (stopped) node's backup volume."""
    for name in os.listdir(backup_dir) if os.path.isdir(backup_dir) else ():
        with contextlib.suppress(FileNotFoundError):
            os.remove(os.path.join(backup_dir, name))


@dataclass
class BackupWatch:
    """What the harness has seen of the volumes; ``observe`` answers the violations as
    (kind, message) pairs."""

    high: dict[int, int] = field(default_factory=dict)  # node -> highest valid index seen
    cluster_high: int = 0
    damaged: dict[int, int] = field(default_factory=dict)  # node -> damaged files expected at least

    def wiped(self, node: int) -> None:
        self.high[node] = 0
        self.damaged.pop(node, None)  # the files set aside went with the rest

    def damaged_by_fault(self, node: int, seen_before: int) -> None:
        self.damaged[node] = seen_before + 1

    def observe(self, views: Mapping[int, VolumeView]) -> list[tuple[str, str]]:
        out: list[tuple[str, str]] = []
        for node, view in sorted(views.items()):
            high = self.high.get(node, 0)
            if view.index < high:
                out.append(
                    (
                        "backup-lost",
                        f"node {node}: newest valid backup at index {view.index}, it held index {high}",
                    )
                )
            self.high[node] = max(high, view.index)
            want = self.damaged.get(node, 0)
            if view.damaged_files < want:
                out.append(
                    (
                        "damage-unnoticed",
                        f"node {node}: its damaged backup file was not set aside "
                        f"({view.damaged_files} .damaged files, {want} expected)",
                    )
                )
        best = max((v.index for v in views.values()), default=0)
        if best < self.cluster_high:
            out.append(
                (
                    "best-backup-lost",
                    f"the best backup of the cluster went from index {self.cluster_high} to {best}",
                )
            )
        self.cluster_high = max(self.cluster_high, best)
        return out
