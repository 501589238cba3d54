"""Hash-checked backups of the schedules on a volume of their own, and the cold-start restore.

Why this exists: Raft keeps the schedules only while a majority of nodes keeps its data, and
pysyncobj never fsyncs its journal. The backup volume is the second line: every node writes the
schedules (with their last fired ticks and pause state) to ``schedule-jobs-backup.json`` in
``SLIMSCHED_BACKUP_DIR``, and a leader that finds a cold-started, empty cluster loads the newest
backup whose hashes verify and commits it: one ``restore`` command, or ``restore_part`` commands
of about 1 MB when it is larger and every member applies them. backup/RUNBOOK.md is the
operator's side of this; backup/schema.json specifies the file.

The file is the canonical encoding (orjson, sorted keys, no whitespace, one trailing newline) of::

    {"format": "slimsched-schedule-backup", "version": 1, "node": ..., "raft_index": ...,
     "written_at": ..., "schedule_count": ..., "payload_sha256": ..., "header_sha256": ...,
     "payload": {"last_fired": {schedule id: tick}, "schedules": [codec dicts sorted by Id]}}

``payload_sha256`` hashes the canonical encoding of ``payload``: it is the content's identity,
so a node rewrites the file only when it changes (read back at start, so a restart rewrites
nothing). ``header_sha256`` hashes the canonical encoding of every other top-level field, the
payload hash included, so no byte of the file is unchecked; and a file whose bytes are not the
canonical encoding of what it holds is refused too. Together: any changed byte is refused.

Rules the SlimFaas backup breaks and this one keeps: temp file + fsync + rename + directory
fsync; the previous good file kept as ``.prev``; an empty state never overwrites a non-empty (or
unreadable) backup; last fired ticks saved, so a restore neither fires old ticks again nor skips
the next one; a corrupted file is reported (log, metric) and never applied.

The package, by role: ``fileformat`` (the file's encoding and verification) and ``policy``
(decide a write, the cold-start rule, a restore as commands) are pure, do no I/O and are tested
with tables; ``disk`` reads and writes the directory (blocking, run in an executor); ``task`` is
the node's backup task and cold-start restore; ``admin`` the HTTP route of the operator's
restore; ``cli`` the ``slimsched backup`` commands. The names below are the package's public ones.
"""

from slimsched.backup.admin import (
    ADMIN_OVERWRITE_PATH,
    ADMIN_RESTORE_PATH,
    MAX_RESTORE_BODY_BYTES,
    admin_routes,
)
from slimsched.backup.cli import cli_overwrite, cli_restore, cli_verify
from slimsched.backup.disk import (
    NoSpace,
    Written,
    damaged_name,
    load_disk_state,
    read_candidates,
    read_optional,
    recheck,
    remove_stale_temporaries,
    set_aside_damaged,
    signature,
    write_backup,
)
from slimsched.backup.fileformat import (
    CORRUPT_NAME,
    FILE_NAME,
    FORMAT,
    FORMAT_VERSION,
    PREV_NAME,
    Backup,
    BackupError,
    BackupInfo,
    Choice,
    EncodedBackup,
    Payload,
    PayloadEncoder,
    Refused,
    check_integrity,
    choose_backup,
    encode_backup,
    encode_payload,
    format_time,
    make_payload,
    payload_of,
    sha256_hex,
    verify_backup,
)
from slimsched.backup.metrics import BackupMetrics
from slimsched.backup.policy import (
    RESTORE_COMMIT_SECONDS,
    RESTORE_PART_BYTES,
    Decision,
    DiskState,
    best_report,
    decide_write,
    is_cold_start,
    lineage_index,
    restore_command,
    restore_parts,
)
from slimsched.backup.task import Backups

__all__ = [
    "ADMIN_OVERWRITE_PATH",
    "ADMIN_RESTORE_PATH",
    "CORRUPT_NAME",
    "FILE_NAME",
    "FORMAT",
    "FORMAT_VERSION",
    "MAX_RESTORE_BODY_BYTES",
    "PREV_NAME",
    "RESTORE_COMMIT_SECONDS",
    "RESTORE_PART_BYTES",
    "Backup",
    "BackupError",
    "BackupInfo",
    "BackupMetrics",
    "Backups",
    "Choice",
    "Decision",
    "DiskState",
    "EncodedBackup",
    "NoSpace",
    "Payload",
    "PayloadEncoder",
    "Refused",
    "Written",
    "admin_routes",
    "best_report",
    "check_integrity",
    "choose_backup",
    "cli_overwrite",
    "cli_restore",
    "cli_verify",
    "damaged_name",
    "decide_write",
    "encode_backup",
    "encode_payload",
    "format_time",
    "is_cold_start",
    "lineage_index",
    "load_disk_state",
    "make_payload",
    "payload_of",
    "read_candidates",
    "read_optional",
    "recheck",
    "remove_stale_temporaries",
    "restore_command",
    "restore_parts",
    "set_aside_damaged",
    "sha256_hex",
    "signature",
    "verify_backup",
    "write_backup",
]
