"""The backup file: its canonical encoding, its hashes and their verification (pure, no I/O).

The format is described in slimsched/backup/__init__.py and specified by backup/schema.json.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson

from slimsched import codec, heap
from slimsched.errors import SlimschedError
from slimsched.model import Schedule

FORMAT = "slimsched-schedule-backup"
FORMAT_VERSION = 1
FILE_NAME = "schedule-jobs-backup.json"
PREV_NAME = FILE_NAME + ".prev"
CORRUPT_NAME = FILE_NAME + ".corrupt"

_SORT = orjson.OPT_SORT_KEYS
HEADER_FIELDS = ("format", "version", "node", "raft_index", "written_at", "schedule_count", "payload_sha256")
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
    """The canonical encoding of the payload as pieces, their SHA-256 and how many schedules it holds.

    The pieces are the per-schedule encodings the encoder keeps anyway, so a payload costs a
    list of references, not a second copy of the file; ``chunks`` streams them to disk.
    """

    pieces: tuple[bytes, ...]
    sha256: str
    count: int
    size: int

    def chunks(self) -> Iterator[bytes]:
        return iter(self.pieces)

    @property
    def data(self) -> bytes:
        """The whole encoding in one buffer (for tests and small payloads; writers stream)."""
        return b"".join(self.pieces)


def _payload_from_pieces(pieces: list[bytes], count: int) -> Payload:
    digest = hashlib.sha256()
    size = 0
    for piece in pieces:
        digest.update(piece)
        size += len(piece)
    return Payload(tuple(pieces), digest.hexdigest(), count, size)


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
        pieces = [b'{"last_fired":', fired, b',"schedules":[']
        for n, i in enumerate(order):
            if n:
                pieces.append(b",")
            pieces.append(current[i][1])
        pieces.append(b"]}")
        return _payload_from_pieces(pieces, len(order))


def payload_of(schedules: Iterable[Schedule], last_fired: Mapping[str, int]) -> Payload:
    return PayloadEncoder().encode(schedules, last_fired)


def _header_hash(header: Mapping[str, Any]) -> str:
    return sha256_hex(orjson.dumps({k: header[k] for k in HEADER_FIELDS}, option=_SORT))


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
    """A backup file ready to stream: the header's bytes around the payload's pieces."""

    head: bytes
    payload: Payload
    tail: bytes
    info: BackupInfo

    @property
    def size(self) -> int:
        return len(self.head) + self.payload.size + len(self.tail)

    def chunks(self) -> Iterator[bytes]:
        yield self.head
        yield from self.payload.chunks()
        yield self.tail

    @property
    def data(self) -> bytes:
        """The whole file in one buffer (for tests, the CLI and small files; the node streams)."""
        return b"".join(self.chunks())


_PAYLOAD_KEY = b'"payload":'
_PAYLOAD_PLACEHOLDER = _PAYLOAD_KEY + b"null"


def encode_backup(payload: Payload, *, node: str, raft_index: int, written_at: float) -> EncodedBackup:
    """The file for ``payload`` (streamed by ``chunks``), written by ``node`` at ``raft_index``.

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
    info = BackupInfo(payload.sha256, payload.count, raft_index, node, header["written_at"])
    return EncodedBackup(before + _PAYLOAD_KEY, payload, after + b"\n", info)


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
    unknown = sorted(set(doc) - {*HEADER_FIELDS, "header_sha256", "payload"})
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


def choose_backup(
    candidates: Sequence[tuple[str, bytes | None]], payload_sha256: str | None = None
) -> Choice:
    """The first candidate that verifies; candidates come newest first (the file, then ``.prev``).
    With ``payload_sha256``, the candidate holding that payload if one does (the backup a
    cold start chose from this node's report), else the first that verifies.

    ``None`` bytes stand for a missing file, which is not a problem; a refused file is.
    """
    refused: list[Refused] = []
    verified: list[tuple[str, Backup]] = []
    for name, raw in candidates:
        if raw is None:
            continue
        try:
            backup = verify_backup(raw)
        except BackupError as e:
            refused.append(Refused(name, str(e)))
            continue
        if payload_sha256 is None or backup.info.payload_sha256 == payload_sha256:
            return Choice(backup, name, tuple(refused))
        verified.append((name, backup))
    if verified:
        name, backup = verified[0]
        return Choice(backup, name, tuple(refused))
    return Choice(None, None, tuple(refused))
