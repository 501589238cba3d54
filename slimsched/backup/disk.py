"""The backup directory's files (blocking I/O: callers run these in an executor)."""

from __future__ import annotations

import contextlib
import os

from slimsched.backup.fileformat import (
    CORRUPT_NAME,
    FILE_NAME,
    PREV_NAME,
    BackupError,
    BackupInfo,
    Refused,
    check_integrity,
)
from slimsched.backup.policy import DiskState
from slimsched.files import fsync_dir

_TMP_SUFFIX = ".tmp"

# -- file I/O (blocking: run in an executor) -----------------------------------------------------


def read_optional(path: str) -> bytes | None:
    try:
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        return None


def read_candidates(backup_dir: str) -> list[tuple[str, bytes | None]]:
    """The backup file and ``.prev``, newest first (None for a missing file)."""
    return [(name, read_optional(os.path.join(backup_dir, name))) for name in (FILE_NAME, PREV_NAME)]


def write_backup(backup_dir: str, data: bytes, *, rotate: bool, set_aside_corrupt: bool) -> None:
    """Replace the backup file atomically and durably.

    ``rotate``: the file on disk verified, keep it as ``.prev`` (hard link, so the file name
    never disappears). ``set_aside_corrupt``: it did not verify, move it to ``.corrupt`` for a
    human and leave ``.prev`` (the last good file) alone.
    """
    os.makedirs(backup_dir, exist_ok=True)
    main = os.path.join(backup_dir, FILE_NAME)
    tmp = main + _TMP_SUFFIX
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    if set_aside_corrupt and os.path.exists(main):
        os.replace(main, os.path.join(backup_dir, CORRUPT_NAME))
    elif rotate and os.path.exists(main):
        prev = os.path.join(backup_dir, PREV_NAME)
        prev_tmp = prev + _TMP_SUFFIX
        with contextlib.suppress(FileNotFoundError):
            os.remove(prev_tmp)
        try:
            os.link(main, prev_tmp)
        except OSError:  # a file system without hard links: copy, durably
            with open(main, "rb") as src, open(prev_tmp, "wb") as dst:
                dst.write(src.read())
                dst.flush()
                os.fsync(dst.fileno())
        os.replace(prev_tmp, prev)
    os.replace(tmp, main)
    fsync_dir(backup_dir)


def remove_stale_temporaries(backup_dir: str) -> None:
    for name in (FILE_NAME + _TMP_SUFFIX, PREV_NAME + _TMP_SUFFIX):
        with contextlib.suppress(FileNotFoundError):
            os.remove(os.path.join(backup_dir, name))


def load_disk_state(backup_dir: str) -> tuple[DiskState, tuple[Refused, ...]]:
    """Read back and verify what is on disk (at start): the file, and ``.prev`` if needed."""
    main_raw = read_optional(os.path.join(backup_dir, FILE_NAME))
    refused: list[Refused] = []
    main: BackupInfo | None = None
    main_refused: str | None = None
    if main_raw is not None:
        try:
            main = check_integrity(main_raw)
        except BackupError as e:
            main_refused = str(e)
            refused.append(Refused(FILE_NAME, main_refused))
    prev: BackupInfo | None = None
    if main is None:
        prev_raw = read_optional(os.path.join(backup_dir, PREV_NAME))
        if prev_raw is not None:
            try:
                prev = check_integrity(prev_raw)
            except BackupError as e:
                refused.append(Refused(PREV_NAME, str(e)))
    return DiskState(main, main_refused, prev), tuple(refused)
