"""The backup directory's files (blocking I/O: callers run these in an executor)."""

from __future__ import annotations

import contextlib
import os
import shutil
import time
from dataclasses import dataclass

from slimsched.backup.fileformat import (
    CORRUPT_NAME,
    FILE_NAME,
    PREV_NAME,
    BackupError,
    BackupInfo,
    EncodedBackup,
    Refused,
    check_integrity,
)
from slimsched.backup.policy import DiskState
from slimsched.errors import SlimschedError
from slimsched.files import fsync_dir

_TMP_SUFFIX = ".tmp"
DAMAGED_INFIX = ".damaged-"
WRITE_BUFFER_BYTES = 1 << 20
# Room left over after a write: the directory entry, file system metadata, a log line.
FREE_MARGIN_BYTES = 64 * 1024

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


class NoSpace(SlimschedError):
    """The backup volume lacks the room for the file: nothing was written, the old file stands."""


@dataclass(frozen=True)
class Written:
    """What a write did besides writing: the file it set aside as damaged, and why."""

    damaged_name: str | None = None
    damaged_problem: str | None = None


def damaged_name(now: float) -> str:
    """``schedule-jobs-backup.json.damaged-20250131T080000.250Z``: never overwrites an earlier one."""
    ms = round(now * 1000)
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(ms // 1000)) + f".{ms % 1000:03d}Z"
    return f"{FILE_NAME}{DAMAGED_INFIX}{stamp}"


def recheck(path: str, expected: BackupInfo) -> str | None:
    """Why the file at ``path`` is no longer the one this node wrote (None if it still is).

    Missing counts as damaged too: something removed it behind the node's back.
    """
    raw = read_optional(path)
    if raw is None:
        return "the file is gone"
    try:
        info = check_integrity(raw)
    except BackupError as e:
        return str(e)
    if info.payload_sha256 != expected.payload_sha256:
        return f"it now holds payload {info.payload_sha256}, not the {expected.payload_sha256} written"
    return None


def signature(path: str) -> tuple[int, int, int] | None:
    """Inode, size and mtime: what changes when anything writes, replaces or removes the file."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns)


def set_aside_damaged(backup_dir: str, now: float) -> str:
    """Rename the file to ``.damaged-<time>`` for a human (never into ``.prev``); its new name."""
    name = damaged_name(now)
    os.replace(os.path.join(backup_dir, FILE_NAME), os.path.join(backup_dir, name))
    fsync_dir(backup_dir)
    return name


def free_bytes(backup_dir: str) -> int:
    st = os.statvfs(backup_dir)
    return st.f_bavail * st.f_frsize


def write_backup(
    backup_dir: str,
    encoded: EncodedBackup,
    *,
    expect_main: BackupInfo | None,
    set_aside_corrupt: bool,
    now: float,
) -> Written:
    """Replace the backup file atomically and durably, streaming it to disk.

    ``expect_main``: what the file on disk held when last verified. It is verified again first:
    if it still holds that, it is kept as ``.prev`` (hard link, so the file name never
    disappears); if it changed since, it is set aside as ``.damaged-<time>`` and ``.prev``
    (the last good copy) is left alone. ``set_aside_corrupt``: the file was refused when the
    node started; it goes to ``.corrupt``, ``.prev`` again untouched.

    Rotating first frees the old ``.prev``, so a write needs room for the new file only (it used
    to need the old ``.prev``, the file and the new one at once). The free space is checked
    before writing (``NoSpace``), and a write that fails anyway leaves no temporary file.
    """
    os.makedirs(backup_dir, exist_ok=True)
    main = os.path.join(backup_dir, FILE_NAME)
    written = Written()
    if set_aside_corrupt and os.path.exists(main):
        os.replace(main, os.path.join(backup_dir, CORRUPT_NAME))
    elif expect_main is not None and os.path.exists(main):
        problem = recheck(main, expect_main)
        if problem is not None:
            written = Written(set_aside_damaged(backup_dir, now), problem)
        else:
            _rotate(backup_dir, main)
    free = free_bytes(backup_dir)
    if free < encoded.size + FREE_MARGIN_BYTES:
        raise NoSpace(
            f"the backup volume {backup_dir} has {free} bytes free; the file needs {encoded.size} "
            f"(+{FREE_MARGIN_BYTES} spare)"
        )
    tmp = main + _TMP_SUFFIX
    try:
        with open(tmp, "wb", buffering=WRITE_BUFFER_BYTES) as f:
            for chunk in encoded.chunks():
                f.write(chunk)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, main)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise
    fsync_dir(backup_dir)
    return written


def _rotate(backup_dir: str, main: str) -> None:
    prev = os.path.join(backup_dir, PREV_NAME)
    with contextlib.suppress(FileNotFoundError):
        if os.path.samefile(main, prev):  # rotated by a pass that then found no room to write
            return
    prev_tmp = prev + _TMP_SUFFIX
    with contextlib.suppress(FileNotFoundError):
        os.remove(prev_tmp)
    try:
        os.link(main, prev_tmp)
    except OSError:  # a file system without hard links: copy, durably
        try:
            with open(main, "rb") as src, open(prev_tmp, "wb") as dst:
                shutil.copyfileobj(src, dst, WRITE_BUFFER_BYTES)
                dst.flush()
                os.fsync(dst.fileno())
        except BaseException:
            with contextlib.suppress(OSError):
                os.remove(prev_tmp)
            raise
    os.replace(prev_tmp, prev)


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
