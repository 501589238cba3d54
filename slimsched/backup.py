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

The pure parts (payload, encode, verify, choose a file, decide a write, the cold-start rule) do
no I/O and are tested with tables; ``Backups`` is the edge that reads the Raft state, writes
files off the event loop and commits the restore.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import logging
import os
import threading
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import IO, Any

import orjson
from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge

from slimsched import codec, heap, ids
from slimsched.access import AccessPolicy
from slimsched.errors import ApiError, BadRequest, ConfigError, Conflict, Forbidden, SlimschedError
from slimsched.files import fsync_dir
from slimsched.model import Schedule
from slimsched.raft import RaftNode
from slimsched.statemachine import OK, Result, State, encode_command

log = logging.getLogger(__name__)

FORMAT = "slimsched-schedule-backup"
FORMAT_VERSION = 1
FILE_NAME = "schedule-jobs-backup.json"
PREV_NAME = FILE_NAME + ".prev"
CORRUPT_NAME = FILE_NAME + ".corrupt"
_TMP_SUFFIX = ".tmp"

# A node restarted with wiped Raft data looks "ready" while the log still streams in (pysyncobj
# caps its commit index at its own log's end). During its first minute, a state holding fewer
# schedules than the backup at a lower Raft index is taken for "still catching up", not written.
CATCH_UP_GRACE_SECONDS = 60.0
STOP_DEADLINE_SECONDS = 10.0
READY_POLL_SECONDS = 0.05
# Committing 100,000 schedules takes seconds; the restore retries with the same
# request id until committed (the state machine answers a repeat from memory).
RESTORE_COMMIT_SECONDS = 120.0
# A restore larger than this goes to Raft in parts (``restore_part``) once every member applies
# them: as one 30 MB entry, 100,000 schedules held every node's Raft thread ~2 s, and the
# leader's silence meanwhile cost an election (bench/RESULTS.md).
RESTORE_PART_BYTES = 1_000_000
# At a cold start the members announce their levels right after the first election.
RESTORE_LEVEL_WAIT_SECONDS = 10.0
RESTORE_ATTEMPTS = 3  # a restore in parts starts over when another one interrupted it
MAX_RESTORE_BODY_BYTES = 512 * 1024 * 1024
ADMIN_RESTORE_PATH = "/admin/restore"

_SORT = orjson.OPT_SORT_KEYS
_HEADER_FIELDS = ("format", "version", "node", "raft_index", "written_at", "schedule_count", "payload_sha256")
_HEX = frozenset("0123456789abcdef")


class BackupError(SlimschedError):
    """A backup file cannot be used; the message names the problem in one sentence."""


# -- pure: payload, encoding, verification -------------------------------------------------------


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def make_payload(schedules: Iterable[Schedule], last_fired: Mapping[str, int]) -> dict[str, Any]:
    """The backed-up content: schedules sorted by id (insertion order must not change the hash).

    The reference definition; ``PayloadEncoder`` produces the same bytes incrementally.
    """
    ordered = sorted(schedules, key=lambda s: s.id)
    return {
        "schedules": [codec.schedule_to_dict(s) for s in ordered],
        "last_fired": {s.id: last_fired[s.id] for s in ordered if s.id in last_fired},
    }


def encode_payload(payload: Mapping[str, Any]) -> bytes:
    return orjson.dumps(payload, option=_SORT)


@dataclass(frozen=True)
class Payload:
    """The canonical encoding of the payload, its SHA-256 and how many schedules it holds."""

    data: bytes
    sha256: str
    count: int


class PayloadEncoder:
    """Encodes the payload pass after pass, re-encoding only the schedules that changed.

    Schedules are frozen and replaced on every change, so a schedule whose object is the one
    encoded last time has the same bytes. The list is joined from per-schedule encodings, which
    is byte for byte ``encode_payload(make_payload(...))``: for 100,000 schedules a pass then
    allocates little and never holds the GIL for one long ``orjson.dumps`` of the whole state,
    which would stall the node's event loop (the encoder runs in an executor thread).
    """

    def __init__(self) -> None:
        self._cache: dict[str, tuple[Schedule, bytes]] = {}
        self._order: list[str] = []

    def encode(self, schedules: Iterable[Schedule], last_fired: Mapping[str, int]) -> Payload:
        previous = self._cache
        current: dict[str, tuple[Schedule, bytes]] = {}
        added: list[str] = []
        for s in schedules:
            hit = previous.get(s.id)
            if hit is None or hit[0] is not s:
                if hit is None:
                    added.append(s.id)
                hit = (s, orjson.dumps(codec.schedule_to_dict(s), option=_SORT))
            current[s.id] = hit
        if added or len(current) != len(self._order):
            # The kept ids are sorted already: sorting them with the new ones merges two runs.
            order = [i for i in self._order if i in current] + sorted(added)
            order.sort()
        else:
            order = self._order
        self._cache, self._order = current, order
        fired = orjson.dumps({i: last_fired[i] for i in order if i in last_fired}, option=_SORT)
        data = b"".join(
            (b'{"last_fired":', fired, b',"schedules":[', b",".join(current[i][1] for i in order), b"]}")
        )
        return Payload(data, sha256_hex(data), len(order))


def payload_of(schedules: Iterable[Schedule], last_fired: Mapping[str, int]) -> Payload:
    return PayloadEncoder().encode(schedules, last_fired)


def _header_hash(header: Mapping[str, Any]) -> str:
    return sha256_hex(orjson.dumps({k: header[k] for k in _HEADER_FIELDS}, option=_SORT))


def format_time(epoch_seconds: float) -> str:
    """ISO 8601 UTC with milliseconds, e.g. ``2025-01-31T08:00:00.250Z``."""
    ms = round(epoch_seconds * 1000)
    dt = datetime.fromtimestamp(ms // 1000, tz=UTC)
    return dt.strftime("%Y-%m-%dT%H:%M:%S") + f".{ms % 1000:03d}Z"


@dataclass(frozen=True)
class BackupInfo:
    """What a verified file says about itself (without its schedules)."""

    payload_sha256: str
    schedule_count: int
    raft_index: int
    node: str
    written_at: str


@dataclass(frozen=True)
class EncodedBackup:
    data: bytes
    info: BackupInfo


_PAYLOAD_KEY = b'"payload":'
_PAYLOAD_PLACEHOLDER = _PAYLOAD_KEY + b"null"


def encode_backup(payload: Payload, *, node: str, raft_index: int, written_at: float) -> EncodedBackup:
    """The file's bytes for ``payload``, written by ``node`` at ``raft_index``.

    The header is encoded with a ``null`` payload, which the payload's bytes then replace: the
    result is the canonical encoding of the whole document without encoding the payload twice.
    (Header values are a fixed string, hex digits, numbers and the node id and time, whose
    quotes orjson escapes, so ``"payload":null`` occurs exactly once.)
    """
    header: dict[str, Any] = {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "node": node,
        "raft_index": raft_index,
        "written_at": format_time(written_at),
        "schedule_count": payload.count,
        "payload_sha256": payload.sha256,
    }
    head = orjson.dumps({**header, "header_sha256": _header_hash(header), "payload": None}, option=_SORT)
    before, placeholder, after = head.partition(_PAYLOAD_PLACEHOLDER)
    assert placeholder and _PAYLOAD_PLACEHOLDER not in after
    data = b"".join((before, _PAYLOAD_KEY, payload.data, after, b"\n"))
    info = BackupInfo(payload.sha256, payload.count, raft_index, node, header["written_at"])
    return EncodedBackup(data, info)


@dataclass(frozen=True)
class Backup:
    """A verified backup: its schedules as codec dicts (ready for a ``restore`` command)."""

    info: BackupInfo
    schedules: list[dict[str, Any]]
    last_fired: dict[str, int]


def _is_sha(v: Any) -> bool:
    return isinstance(v, str) and len(v) == 64 and set(v) <= _HEX


def _is_count(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def _parse(raw: bytes) -> dict[str, Any]:
    if not raw.strip():
        raise BackupError("the file is empty")
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError as e:
        raise BackupError(f"the file is not valid JSON ({e}): it is truncated or corrupted") from e
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        found = doc.get("format") if isinstance(doc, dict) else type(doc).__name__
        raise BackupError(f"not a slimsched schedule backup (format is {found!r}, expected {FORMAT!r})")
    return doc


def _check_header(doc: dict[str, Any]) -> None:
    if doc.get("version") != FORMAT_VERSION:
        raise BackupError(
            f"unsupported backup format version {doc.get('version')!r} "
            f"(this slimsched reads version {FORMAT_VERSION})"
        )
    unknown = sorted(set(doc) - {*_HEADER_FIELDS, "header_sha256", "payload"})
    if unknown:
        raise BackupError(f"unknown top-level field {unknown[0]!r}")
    for name in ("node", "written_at"):
        if not isinstance(doc.get(name), str):
            raise BackupError(f"field {name!r} must be a string")
    for name in ("raft_index", "schedule_count"):
        if not _is_count(doc.get(name)):
            raise BackupError(f"field {name!r} must be a non-negative integer")
    for name in ("payload_sha256", "header_sha256"):
        if not _is_sha(doc.get(name)):
            raise BackupError(f"field {name!r} must be 64 lowercase hexadecimal digits")
    actual = _header_hash(doc)
    if actual != doc["header_sha256"]:
        raise BackupError(
            f"header checksum mismatch: header_sha256 is {doc['header_sha256']} but the header hashes "
            f"to {actual} (the file was modified or corrupted)"
        )


def _check_payload_hash(doc: dict[str, Any], actual: str) -> None:
    if actual != doc["payload_sha256"]:
        raise BackupError(
            f"payload checksum mismatch: payload_sha256 is {doc['payload_sha256']} but the payload hashes "
            f"to {actual} (the file was modified or corrupted)"
        )


_NOT_CANONICAL = (
    "the file is not in canonical form (sorted keys, no whitespace, one final newline): "
    "it was reformatted or edited"
)


def _info(doc: dict[str, Any]) -> BackupInfo:
    return BackupInfo(
        doc["payload_sha256"], doc["schedule_count"], doc["raft_index"], doc["node"], doc["written_at"]
    )


def verify_backup(raw: bytes) -> Backup:
    """Check every byte of a backup file and decode it; ``BackupError`` names the first problem."""
    with heap.collections_paused():  # decoding 100,000 schedules: see heap.collections_paused
        return _verify_backup(raw)


def _verify_backup(raw: bytes) -> Backup:
    doc = _parse(raw)
    _check_header(doc)
    payload = doc.get("payload")
    if not isinstance(payload, dict):
        raise BackupError("field 'payload' must be an object")
    _check_payload_hash(doc, sha256_hex(encode_payload(payload)))
    if orjson.dumps(doc, option=_SORT) + b"\n" != raw:
        raise BackupError(_NOT_CANONICAL)
    schedules, last_fired = _check_payload(payload)
    if len(schedules) != doc["schedule_count"]:
        raise BackupError(f"schedule_count is {doc['schedule_count']} but the payload holds {len(schedules)}")
    return Backup(_info(doc), schedules, last_fired)


def check_integrity(raw: bytes) -> BackupInfo:
    """Check that no byte changed since the file was written, without decoding the schedules.

    What a node reads back at start (``verify_backup`` is for a restore): the header is parsed
    apart from the payload, whose exact bytes are hashed. Cheap for 100,000 schedules, and
    enough to know whether the file on disk is intact and what it holds.
    """
    start = raw.find(b"," + _PAYLOAD_KEY + b"{")
    end = raw.rfind(b',"payload_sha256":"')
    if start < 0 or end < start:
        verify_backup(raw)  # not our layout: the full check names the problem
        raise BackupError(_NOT_CANONICAL)
    head = raw[:start] + b"," + _PAYLOAD_PLACEHOLDER + raw[end:]
    doc = _parse(head)
    _check_header(doc)
    _check_payload_hash(doc, sha256_hex(raw[start + 1 + len(_PAYLOAD_KEY) : end]))
    if orjson.dumps(doc, option=_SORT) + b"\n" != head:
        raise BackupError(_NOT_CANONICAL)
    return _info(doc)


def _check_payload(payload: dict[str, Any]) -> tuple[list[dict[str, Any]], dict[str, int]]:
    if set(payload) != {"schedules", "last_fired"}:
        raise BackupError("field 'payload' must hold exactly 'schedules' and 'last_fired'")
    schedules = payload["schedules"]
    last_fired = payload["last_fired"]
    if not isinstance(schedules, list) or not isinstance(last_fired, dict):
        raise BackupError("payload.schedules must be a list and payload.last_fired an object")
    ids: set[str] = set()
    previous = ""
    for i, d in enumerate(schedules):
        try:
            if not isinstance(d, dict):
                raise ValueError(f"expected an object, got {type(d).__name__}")
            sched = codec.schedule_from_dict(d)
        except (ValueError, KeyError, TypeError) as e:
            raise BackupError(f"schedule #{i} is invalid: {type(e).__name__}: {e}") from e
        if sched.id in ids:
            raise BackupError(f"schedule id {sched.id!r} appears twice")
        if sched.id < previous:
            raise BackupError(f"schedules are not sorted by Id (at #{i}, {sched.id!r})")
        ids.add(sched.id)
        previous = sched.id
    for sid, tick in last_fired.items():
        if sid not in ids:
            raise BackupError(f"last_fired names schedule {sid!r}, which the backup does not hold")
        if not isinstance(tick, int) or isinstance(tick, bool):
            raise BackupError(f"last_fired[{sid!r}] must be an integer (epoch seconds)")
    return schedules, last_fired


@dataclass(frozen=True)
class Refused:
    name: str
    problem: str


@dataclass(frozen=True)
class Choice:
    """The backup to restore (None if no file verifies), its file name, and the files refused."""

    backup: Backup | None
    name: str | None
    refused: tuple[Refused, ...]


def choose_backup(candidates: Sequence[tuple[str, bytes | None]]) -> Choice:
    """The first candidate that verifies; candidates come newest first (the file, then ``.prev``).

    ``None`` bytes stand for a missing file, which is not a problem; a refused file is.
    """
    refused: list[Refused] = []
    for name, raw in candidates:
        if raw is None:
            continue
        try:
            return Choice(verify_backup(raw), name, tuple(refused))
        except BackupError as e:
            refused.append(Refused(name, str(e)))
    return Choice(None, None, tuple(refused))


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


# -- the node's backup task and restore hook -----------------------------------------------------


class BackupMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.passes = Counter(
            "slimsched_backup_passes",
            "Backup passes by outcome (written, unchanged, kept_non_empty, catching_up, failed)",
            ["outcome"],
            registry=registry,
        )
        self.last_write = Gauge(
            "slimsched_backup_last_write_timestamp_seconds",
            "When this node last wrote its backup",
            registry=registry,
        )
        self.schedules = Gauge(
            "slimsched_backup_schedules", "Schedules in this node's backup file on disk", registry=registry
        )
        self.corrupt = Counter(
            "slimsched_backup_corrupt_files",
            "Backup files refused because they did not verify, by file",
            ["file"],
            registry=registry,
        )
        self.restores = Counter(
            "slimsched_backup_restores",
            "Cold-start restore decisions of this node as leader, by outcome",
            ["outcome"],
            registry=registry,
        )


@dataclass
class Backups:
    """Owned by the node: a named task writes the backup every interval; a restore hook for the leader."""

    raft: RaftNode
    backup_dir: str
    node_id: str
    interval_seconds: float
    registry: CollectorRegistry
    clock: Callable[[], float]
    new_id: Callable[[], str] = field(default=ids.new_id)
    restore_part_bytes: int = RESTORE_PART_BYTES
    restore_level_wait_seconds: float = RESTORE_LEVEL_WAIT_SECONDS
    disk: DiskState = field(default_factory=DiskState, init=False)
    last_outcome: str | None = field(default=None, init=False)
    last_restore: str | None = field(default=None, init=False)
    _metrics: BackupMetrics = field(init=False)
    _task: asyncio.Task[None] | None = field(default=None, init=False)
    _stopping: asyncio.Event = field(default_factory=asyncio.Event, init=False)
    _caught_up: bool = field(default=False, init=False)
    _started_at: float = field(default=float("-inf"), init=False)  # set when the task starts
    _io_lock: threading.Lock = field(default_factory=threading.Lock, init=False)
    _pass_lock: asyncio.Lock = field(default_factory=asyncio.Lock, init=False)
    _encoder: PayloadEncoder = field(default_factory=PayloadEncoder, init=False)

    def __post_init__(self) -> None:
        if not self.interval_seconds > 0:
            raise ConfigError(
                f"SLIMSCHED_BACKUP_INTERVAL_SECONDS must be a positive number, got {self.interval_seconds}"
            )
        self._metrics = BackupMetrics(self.registry)

    @property
    def path(self) -> str:
        return os.path.join(self.backup_dir, FILE_NAME)

    # -- lifecycle -----------------------------------------------------------------------------

    def start(self) -> None:
        self._stopping.clear()
        self._task = asyncio.get_running_loop().create_task(self._run(), name="backup")

    async def stop(self, deadline: float = STOP_DEADLINE_SECONDS) -> None:
        """Stop the task and write a last backup (if this node ever caught up), within ``deadline``."""
        loop = asyncio.get_running_loop()
        until = loop.time() + deadline
        self._stopping.set()
        task, self._task = self._task, None
        if task is not None:
            try:
                await asyncio.wait_for(task, max(0.0, until - loop.time()))
            except TimeoutError:
                log.warning("the backup task did not stop within %.0f s", deadline)
            except Exception:
                log.exception("the backup task failed")
        if self._caught_up:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(0.1, until - loop.time())):
                    await self.backup_once()

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        self._started_at = loop.time()
        await self.load()
        # "As soon as it has applied the log": a leader is known and the commit index applied.
        while not self._stopping.is_set() and not self.raft.status().ready:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(READY_POLL_SECONDS):
                    await self._stopping.wait()
        self._caught_up = not self._stopping.is_set()
        while not self._stopping.is_set():
            await self.backup_once()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.interval_seconds):
                    await self._stopping.wait()

    async def load(self) -> None:
        """Read back the files on disk, so that an unchanged state is not written again."""
        loop = asyncio.get_running_loop()

        def read() -> tuple[DiskState, tuple[Refused, ...]]:
            with self._io_lock:
                if os.path.isdir(self.backup_dir):
                    remove_stale_temporaries(self.backup_dir)
                return load_disk_state(self.backup_dir)

        try:
            self.disk, refused = await loop.run_in_executor(None, read)
        except OSError as e:
            # Unknown content: treated as unreadable, so an empty state will not replace it.
            log.error("cannot read the backup directory %s: %s", self.backup_dir, e)
            self.disk, refused = DiskState(main_refused=f"cannot read it: {e}"), ()
        self._report(refused)
        if self.disk.main is not None:
            self._metrics.schedules.set(self.disk.main.schedule_count)

    def _report(self, refused: Iterable[Refused]) -> None:
        for r in refused:
            self._metrics.corrupt.labels(r.name).inc()
            log.error("backup %s refused: %s", os.path.join(self.backup_dir, r.name), r.problem)

    # -- one pass ------------------------------------------------------------------------------

    async def backup_once(self) -> Decision | None:
        """Write the backup if the schedules changed; None if the pass failed (logged)."""
        async with self._pass_lock:
            try:
                decision = await self._backup_once()
            except Exception:
                log.exception("writing the backup to %s failed", self.path)
                self._metrics.passes.labels("failed").inc()
                self.last_outcome = "failed"
                return None
            self._metrics.passes.labels(decision.value).inc()
            self.last_outcome = decision.value
            return decision

    async def _backup_once(self) -> Decision:
        loop = asyncio.get_running_loop()
        applied = self.raft.status().applied_index  # the copy below holds at least this much
        schedules, last_fired = self.raft.read(lambda s: (list(s.schedules.values()), s.last_fired.copy()))
        written_at = self.clock()
        since_start = loop.time() - self._started_at
        disk = self.disk

        def encode_and_write() -> tuple[Decision, BackupInfo | None]:
            payload = self._encoder.encode(schedules, last_fired)
            decision = decide_write(
                payload.sha256,
                payload.count,
                disk,
                applied_index=applied,
                seconds_since_start=since_start,
            )
            if decision is not Decision.WRITE:
                return decision, None
            encoded = encode_backup(payload, node=self.node_id, raft_index=applied, written_at=written_at)
            with self._io_lock:
                write_backup(
                    self.backup_dir,
                    encoded.data,
                    rotate=disk.main is not None,
                    set_aside_corrupt=disk.main_refused is not None,
                )
            return decision, encoded.info

        decision, info = await loop.run_in_executor(None, encode_and_write)
        if info is not None:
            self.disk = DiskState(main=info, prev=disk.main or disk.prev)
            self._metrics.last_write.set(written_at)
            self._metrics.schedules.set(info.schedule_count)
            log.info(
                "backup written: %d schedules, sha256 %s, Raft index %d",
                info.schedule_count,
                info.payload_sha256,
                info.raft_index,
            )
        elif decision is Decision.KEEP_NON_EMPTY and self.last_outcome != decision.value:
            log.warning("the state holds no schedules: the non-empty backup %s is kept", self.path)
        return decision

    # -- cold-start restore (called by the leader after its barrier) ---------------------------

    async def restore_if_cold_start(self) -> str:
        """Restore the newest verified backup if the cluster cold-started; never raises."""
        outcome = "failed"
        try:
            outcome = await self._restore_if_cold_start()
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("the cold-start restore failed")
        self.last_restore = outcome
        self._metrics.restores.labels(outcome).inc()
        return outcome

    async def _restore_if_cold_start(self) -> str:
        if not self.raft.read(is_cold_start):
            return "not_cold_start"
        loop = asyncio.get_running_loop()

        def load() -> Choice:
            with self._io_lock:
                return choose_backup(read_candidates(self.backup_dir))

        choice = await loop.run_in_executor(None, load)
        self._report(choice.refused)
        if choice.backup is None:
            if choice.refused:
                log.error("cold start: no backup in %s verifies; nothing restored", self.backup_dir)
                return "refused"
            log.info("cold start: no backup in %s; nothing to restore", self.backup_dir)
            return "no_backup"
        backup = choice.backup
        if not backup.schedules:
            log.info("cold start: the backup %s holds no schedules; nothing to restore", choice.name)
            return "empty_backup"
        in_parts: bool | None = None
        info = backup.info
        log.warning(
            "cold start: restoring %d schedules from %s (sha256 %s, written %s by %s at Raft index %d)",
            info.schedule_count,
            os.path.join(self.backup_dir, choice.name or ""),
            info.payload_sha256,
            info.written_at,
            info.node,
            info.raft_index,
        )
        result = OK
        for attempt in range(RESTORE_ATTEMPTS):
            rid = self.new_id()
            single = await loop.run_in_executor(None, restore_command, backup, rid)
            commands = [single]
            if len(single) > self.restore_part_bytes:
                if in_parts is None:
                    in_parts = await self._members_apply_parts()
                if in_parts:
                    part_bytes = self.restore_part_bytes
                    split = functools.partial(
                        restore_parts, backup, rid, whole_bytes=len(single), part_bytes=part_bytes
                    )
                    commands = await loop.run_in_executor(None, split)
            for command in commands:
                result = await self._commit(command)
                if not result.ok:
                    break
            if result.code != "interrupted":
                break
            # A part of a restore that an earlier leader began, committed late, reset the parts.
            log.warning(
                "cold start: restore interrupted (%s); again (attempt %d)", result.message, attempt + 2
            )
        if result.ok:
            log.warning(
                "cold start: %d schedules restored (%d Raft entries)", info.schedule_count, len(commands)
            )
            return "restored"
        log.warning("cold start: restore not applied: %s", result.message)
        return "conflict"

    async def _members_apply_parts(self) -> bool:
        """Whether every member applies ``restore_part``, once they have announced their levels
        (waited for a while: at a cold start they announce right after the first election)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.restore_level_wait_seconds
        while not self.raft.applied_by_all("restore_part"):
            if loop.time() >= deadline:
                log.warning("cold start: not every member applies restore_part: restoring in one entry")
                return False
            await asyncio.sleep(READY_POLL_SECONDS)
        return True

    async def _commit(self, command: bytes) -> Result:
        """Until committed (the same request id each time); cancelled with the leader's term."""
        backoff = 0.1
        while True:
            try:
                return await self.raft.submit(command, within=RESTORE_COMMIT_SECONDS)
            except ApiError as e:
                log.warning("restore not committed yet (%s); retrying", e.message)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 2.0)


# -- the operator's restore: POST /admin/restore (loopback or trusted networks only) -------------


def admin_routes(
    raft: RaftNode,
    access: AccessPolicy,
    *,
    new_id: Callable[[], str] = ids.new_id,
    part_bytes: int = RESTORE_PART_BYTES,
) -> tuple[tuple[str, str, Callable[[web.Request], Awaitable[web.StreamResponse]]], ...]:
    """``POST /admin/restore``: the body is a backup file, verified again, then committed."""

    async def admin_restore(request: web.Request) -> web.Response:
        caller = access.caller(request.remote, request.headers.get("X-Forwarded-For"))
        if not access.in_cluster(caller):
            raise Forbidden(
                "admin_only", f"{ADMIN_RESTORE_PATH} accepts only loopback callers and trusted networks"
            )
        raw = await _read_limited(request, MAX_RESTORE_BODY_BYTES)
        loop = asyncio.get_running_loop()

        in_parts = raft.applied_by_all("restore_part")

        def check() -> tuple[Backup, list[bytes]]:
            backup = verify_backup(raw)
            rid = new_id()
            single = restore_command(backup, rid)
            if in_parts and len(single) > part_bytes:
                return backup, restore_parts(backup, rid, whole_bytes=len(single), part_bytes=part_bytes)
            return backup, [single]

        try:
            backup, commands = await loop.run_in_executor(None, check)
        except BackupError as e:
            raise BadRequest("invalid_backup", f"the backup was refused: {e}") from e
        for command in commands:
            result = await raft.submit(command, within=RESTORE_COMMIT_SECONDS)
            if not result.ok:
                break
        if result.code == "conflict":
            raise Conflict(
                "not_empty", "the cluster already holds schedules: a restore applies only to an empty state"
            )
        if result.code == "interrupted":
            raise Conflict("restore_interrupted", f"another restore began meanwhile: {result.message}")
        if not result.ok:
            raise BadRequest(result.code, result.message)
        log.warning(
            "restored %d schedules by %s from %s (sha256 %s)",
            backup.info.schedule_count,
            ADMIN_RESTORE_PATH,
            caller,
            backup.info.payload_sha256,
        )
        body = {
            "Restored": backup.info.schedule_count,
            "Sha256": backup.info.payload_sha256,
            "WrittenAt": backup.info.written_at,
            "Node": backup.info.node,
        }
        return web.Response(body=orjson.dumps(body), content_type="application/json")

    return (("POST", ADMIN_RESTORE_PATH, admin_restore),)


async def _read_limited(request: web.Request, limit: int) -> bytes:
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.content.iter_chunked(1 << 20):
        size += len(chunk)
        if size > limit:
            raise ApiError(413, "body_too_large", f"the backup exceeds {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


# -- command line: slimsched backup verify / restore ---------------------------------------------


def cli_verify(path: str, out: IO[str], err: IO[str]) -> int:
    try:
        raw = _read_file(path)
        backup = verify_backup(raw)
    except BackupError as e:
        print(f"FAILED: {path}: {e}", file=err)
        return 1
    info = backup.info
    print(
        f"OK: {info.schedule_count} schedules, sha256 {info.payload_sha256} "
        f"(written {info.written_at} by {info.node} at Raft index {info.raft_index})",
        file=out,
    )
    return 0


def cli_restore(
    path: str, url: str, out: IO[str], err: IO[str], timeout: float = RESTORE_COMMIT_SECONDS
) -> int:
    try:
        raw = _read_file(path)
        backup = verify_backup(raw)
    except BackupError as e:
        print(f"FAILED: {path}: {e}; nothing was sent", file=err)
        return 1
    target = url.rstrip("/") + ADMIN_RESTORE_PATH
    req = urllib.request.Request(
        target, data=raw, method="POST", headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            answer = orjson.loads(resp.read() or b"{}")
    except urllib.error.HTTPError as e:
        body = e.read()
        try:
            message = orjson.loads(body).get("Message", "")
        except (orjson.JSONDecodeError, AttributeError):
            message = body.decode(errors="replace")
        print(f"FAILED: {target} answered {e.code}: {message}", file=err)
        return 1
    except (OSError, urllib.error.URLError) as e:
        print(f"FAILED: cannot reach {target}: {e}", file=err)
        return 1
    print(
        f"OK: restored {answer.get('Restored', backup.info.schedule_count)} schedules "
        f"(sha256 {backup.info.payload_sha256}) into {url}",
        file=out,
    )
    return 0


def _read_file(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise BackupError(f"cannot read the file: {e.strerror or e}") from e
