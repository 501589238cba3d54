"""Import a SlimFaas schedule backup: ``slimsched backup import-slimfaas FILE``.

SlimFaas's ``ScheduleJobBackupWorker`` writes ``schedule-jobs-backup.json`` as
``{"Hashsets": {"ScheduleJob:<job>": {"<schedule id>": "<base64>"}}}`` (ScheduleJobBackupData.cs),
each value the MemoryPack bytes of a ``ScheduleCreateJob`` record (Kubernetes/Models/CreateJob.cs):
Schedule, Args, Image, BackoffLimit, TtlSecondsAfterFinished, RestartPolicy, Resources,
Environments, DependsOn. This module decodes that (pure) and re-creates each schedule through
``POST /job-schedules/{job}`` of a running cluster (the edge), so every schedule is validated and
merged with the cluster's configuration as a schedule posted by a SlimFaas client would be.

What is carried over, and why:

- Schedule, Args, and Image, Resources, Environments, DependsOn when set.
- BackoffLimit, TtlSecondsAfterFinished and RestartPolicy only when they differ from the record's
  defaults (1, 60, "Never"): MemoryPack stores a value even when the client sent none, so a
  default cannot be told from a choice, and SlimFaas's JobService.EnqueueJobAsync ignores them
  anyway (it runs the configuration's values).
- A schedule whose Schedule, Args, Image and DependsOn equal one the job already has is skipped,
  so running the import twice creates nothing the second time.
- SlimFaas files a schedule of a job its configuration lacks under ``ScheduleJob:Default``; it is
  posted to the job ``default`` (which the cluster's ``Default`` entry then serves).
"""

from __future__ import annotations

import base64
import binascii
import struct
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import IO, Any, TypeVar

import orjson

from slimsched.jsonhttp import request_json

HASHSET_PREFIX = "ScheduleJob:"
TTL_FIELD = "${__slimfaas_ttl__}$"  # SlimDataInterpreter.HashsetTtlField: not a schedule
_NULL_OBJECT = 255
_T = TypeVar("_T")


class SlimFaasBackupError(ValueError):
    """The file is not a SlimFaas schedule backup slimsched can read; the message says where."""


# -- MemoryPack, as far as ScheduleCreateJob needs it ----------------------------------------------


class _Reader:
    """MemoryPack's wire format: objects start with a member-count byte (255: null), collections
    and strings with an int32 length (-1: null); strings are UTF-16 (length in chars) or, by
    default, UTF-8 written as (~byte count, UTF-16 length, bytes); integers little-endian."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def _take(self, n: int) -> bytes:
        if n < 0 or self.pos + n > len(self.data):
            raise SlimFaasBackupError(f"truncated at byte {self.pos} (needs {n} more)")
        chunk = self.data[self.pos : self.pos + n]
        self.pos += n
        return chunk

    def byte(self) -> int:
        return self._take(1)[0]

    def int32(self) -> int:
        value: int = struct.unpack("<i", self._take(4))[0]
        return value

    def string(self) -> str | None:
        header = self.int32()
        if header == -1:
            return None
        try:
            if header >= 0:
                return self._take(2 * header).decode("utf-16-le")
            byte_count = ~header
            self.int32()  # the UTF-16 length, which Python does not need
            return self._take(byte_count).decode("utf-8")
        except UnicodeDecodeError as e:
            raise SlimFaasBackupError(f"a string at byte {self.pos} is not valid text: {e}") from e

    def collection(self, item: Callable[[], _T]) -> list[_T] | None:
        count = self.int32()
        if count == -1:
            return None
        if count < 0 or count > len(self.data):
            raise SlimFaasBackupError(f"impossible collection length {count} at byte {self.pos}")
        return [item() for _ in range(count)]

    def obj(self, members: int, read: Callable[[int], _T]) -> _T | None:
        """An object of at most ``members`` members; ``read(count)`` reads the ``count`` present."""
        count = self.byte()
        if count == _NULL_OBJECT:
            return None
        if count > members:
            raise SlimFaasBackupError(f"an object with {count} members where {members} are known")
        return read(count)

    def done(self) -> None:
        if self.pos != len(self.data):
            raise SlimFaasBackupError(f"{len(self.data) - self.pos} bytes left after the record")


def _strings(r: _Reader) -> list[str] | None:
    return r.collection(lambda: r.string() or "")


def _str_map(r: _Reader) -> dict[str, str] | None:
    count = r.int32()
    if count == -1:
        return None
    out: dict[str, str] = {}
    for _ in range(count):
        key = r.string() or ""
        out[key] = r.string() or ""
    return out


def _members(count: int, readers: list[Callable[[], Any]], defaults: list[Any]) -> list[Any]:
    return [readers[i]() if i < count else defaults[i] for i in range(len(readers))]


def _ref(r: _Reader, names: tuple[str, ...]) -> dict[str, str] | None:
    def read(count: int) -> dict[str, str]:
        values = _members(count, [r.string] * len(names), [None] * len(names))
        return {n: v for n, v in zip(names, values, strict=True) if v is not None}

    return r.obj(len(names), read)


def _env(r: _Reader) -> dict[str, Any]:
    def read(count: int) -> dict[str, Any]:
        readers: list[Callable[[], Any]] = [
            r.string,
            r.string,
            lambda: _ref(r, ("Name", "Key")),
            lambda: _ref(r, ("Name", "Key")),
            lambda: _ref(r, ("FieldPath",)),
            lambda: _ref(r, ("ContainerName", "Resource", "Divisor")),
        ]
        values = _members(count, readers, [None] * 6)
        names = ("Name", "Value", "SecretRef", "ConfigMapRef", "FieldRef", "ResourceFieldRef")
        return {n: v for n, v in zip(names, values, strict=True) if v is not None}

    env = r.obj(6, read)
    if env is None:
        raise SlimFaasBackupError("a null environment variable")
    return env


def _resources(r: _Reader) -> dict[str, dict[str, str]] | None:
    def read(count: int) -> dict[str, dict[str, str]]:
        requests, limits = _members(count, [lambda: _str_map(r), lambda: _str_map(r)], [None, None])
        return {"Requests": requests or {}, "Limits": limits or {}}

    return r.obj(2, read)


_DEFAULTS: dict[str, Any] = {
    "Schedule": None,
    "Args": None,
    "Image": "",
    "BackoffLimit": 1,
    "TtlSecondsAfterFinished": 60,
    "RestartPolicy": "Never",
    "Resources": None,
    "Environments": None,
    "DependsOn": None,
}


def decode_schedule_create_job(data: bytes) -> dict[str, Any]:
    """The ScheduleCreateJob record MemoryPack wrote, as a dict of its nine fields."""
    r = _Reader(data)

    def read(count: int) -> dict[str, Any]:
        readers: list[Callable[[], Any]] = [
            r.string,
            lambda: _strings(r),
            r.string,
            r.int32,
            r.int32,
            r.string,
            lambda: _resources(r),
            lambda: r.collection(lambda: _env(r)),
            lambda: _strings(r),
        ]
        return dict(zip(_DEFAULTS, _members(count, readers, list(_DEFAULTS.values())), strict=True))

    record = r.obj(len(_DEFAULTS), read)
    r.done()
    if record is None or not record["Schedule"]:
        raise SlimFaasBackupError("the record has no Schedule")
    return record


class _Writer:
    """The inverse of ``_Reader`` (UTF-8 strings, MemoryPack's default): builds SlimFaas backups
    for tests and for anyone who needs one."""

    def __init__(self) -> None:
        self.out = bytearray()

    def int32(self, v: int) -> None:
        self.out += struct.pack("<i", v)

    def string(self, v: str | None) -> None:
        if v is None:
            self.int32(-1)
        elif v == "":
            self.int32(0)
        else:
            raw = v.encode("utf-8")
            self.int32(~len(raw))
            self.int32(len(v.encode("utf-16-le")) // 2)
            self.out += raw

    def strings(self, v: Iterable[str] | None) -> None:
        if v is None:
            self.int32(-1)
            return
        items = list(v)
        self.int32(len(items))
        for s in items:
            self.string(s)

    def str_map(self, v: dict[str, str] | None) -> None:
        if v is None:
            self.int32(-1)
            return
        self.int32(len(v))
        for k, x in v.items():
            self.string(k)
            self.string(x)

    def ref(self, v: dict[str, str] | None, names: tuple[str, ...]) -> None:
        if v is None:
            self.out.append(_NULL_OBJECT)
            return
        self.out.append(len(names))
        for n in names:
            self.string(v.get(n))


def encode_schedule_create_job(job: dict[str, Any]) -> bytes:
    """MemoryPack bytes of a ScheduleCreateJob (fields as ``decode_schedule_create_job`` gives)."""
    f = {**_DEFAULTS, **job}
    w = _Writer()
    w.out.append(len(_DEFAULTS))
    w.string(f["Schedule"])
    w.strings(f["Args"])
    w.string(f["Image"])
    w.int32(f["BackoffLimit"])
    w.int32(f["TtlSecondsAfterFinished"])
    w.string(f["RestartPolicy"])
    res = f["Resources"]
    if res is None:
        w.out.append(_NULL_OBJECT)
    else:
        w.out.append(2)
        w.str_map(res.get("Requests"))
        w.str_map(res.get("Limits"))
    envs = f["Environments"]
    if envs is None:
        w.int32(-1)
    else:
        w.int32(len(envs))
        for e in envs:
            w.out.append(6)
            w.string(e.get("Name"))
            w.string(e.get("Value"))
            w.ref(e.get("SecretRef"), ("Name", "Key"))
            w.ref(e.get("ConfigMapRef"), ("Name", "Key"))
            w.ref(e.get("FieldRef"), ("FieldPath",))
            w.ref(e.get("ResourceFieldRef"), ("ContainerName", "Resource", "Divisor"))
    w.strings(f["DependsOn"])
    return bytes(w.out)


def encode_backup(hashsets: dict[str, dict[str, dict[str, Any]]]) -> bytes:
    """A ``schedule-jobs-backup.json`` as SlimFaas writes it (indented), from job -> id -> record."""
    doc = {
        "Hashsets": {
            f"{HASHSET_PREFIX}{job}": {
                sid: base64.b64encode(encode_schedule_create_job(rec)).decode() for sid, rec in by_id.items()
            }
            for job, by_id in hashsets.items()
        }
    }
    return orjson.dumps(doc, option=orjson.OPT_INDENT_2)


# -- the backup file -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Entry:
    """One schedule of the backup: where SlimFaas kept it, and the body that re-creates it."""

    job: str  # as SlimFaas filed it
    slimfaas_id: str
    body: dict[str, Any]

    @property
    def target_job(self) -> str:
        return self.job.lower()


def request_body(record: dict[str, Any]) -> dict[str, Any]:
    """The ``POST /job-schedules`` body that asks for what the SlimFaas record ran."""
    body: dict[str, Any] = {"Schedule": record["Schedule"], "Args": record["Args"] or []}
    if record["Image"]:
        body["Image"] = record["Image"]
    for key in ("BackoffLimit", "TtlSecondsAfterFinished", "RestartPolicy"):
        if record[key] != _DEFAULTS[key]:
            body[key] = record[key]
    for key in ("Resources", "Environments", "DependsOn"):
        if record[key] is not None:
            body[key] = record[key]
    return body


def read_backup(raw: bytes) -> list[Entry]:
    """Every schedule of a SlimFaas backup file, sorted by job then SlimFaas id."""
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError as e:
        raise SlimFaasBackupError(f"not JSON: {e}") from e
    hashsets = doc.get("Hashsets") if isinstance(doc, dict) else None
    if not isinstance(hashsets, dict):
        raise SlimFaasBackupError('no "Hashsets" object: not a SlimFaas schedule-jobs-backup.json')
    entries: list[Entry] = []
    for key, by_id in sorted(hashsets.items()):
        if not key.startswith(HASHSET_PREFIX):
            continue
        job = key[len(HASHSET_PREFIX) :]
        if not isinstance(by_id, dict):
            raise SlimFaasBackupError(f"Hashsets[{key!r}] is not an object")
        for sid, encoded in sorted(by_id.items()):
            if sid == TTL_FIELD:
                continue
            where = f"Hashsets[{key!r}][{sid!r}]"
            if not isinstance(encoded, str):
                raise SlimFaasBackupError(f"{where} is not a base64 string")
            try:
                record = decode_schedule_create_job(base64.b64decode(encoded, validate=True))
            except binascii.Error as e:
                raise SlimFaasBackupError(f"{where} is not base64: {e}") from e
            except SlimFaasBackupError as e:
                raise SlimFaasBackupError(f"{where}: {e}") from e
            entries.append(Entry(job=job, slimfaas_id=sid, body=request_body(record)))
    return entries


# -- the command line (the edge: files and HTTP) ---------------------------------------------------


def _same(body: dict[str, Any], listed: dict[str, Any]) -> bool:
    return bool(
        listed.get("Schedule") == body["Schedule"]
        and listed.get("Args", []) == body["Args"]
        and listed.get("Image", "") == body.get("Image", "")
        and listed.get("DependsOn", []) == body.get("DependsOn", [])
    )


def cli_import(
    path: str, server: str, dry_run: bool, out: IO[str], err: IO[str], timeout: float = 15.0
) -> int:
    """0: every schedule created or already there; 1: some failed or the file is unreadable;
    3: the server cannot be reached."""
    try:
        with open(path, "rb") as f:
            entries = read_backup(f.read())
    except OSError as e:
        print(f"FAILED: cannot read {path}: {e.strerror or e}", file=err)
        return 1
    except SlimFaasBackupError as e:
        print(f"FAILED: {path}: {e}; nothing was sent", file=err)
        return 1
    base = server.rstrip("/")
    existing: dict[str, list[dict[str, Any]]] = {}
    created = skipped = failed = 0
    for entry in entries:
        job = urllib.parse.quote(entry.target_job, safe="")
        line = f"{entry.target_job} {entry.body['Schedule']!r} (SlimFaas id {entry.slimfaas_id})"
        if dry_run:
            print(f"would create: {line}: {orjson.dumps(entry.body).decode()}", file=out)
            continue
        try:
            if job not in existing:
                status, listed = request_json(f"{base}/job-schedules/{job}", "GET", None, timeout)
                existing[job] = listed if status == 200 and isinstance(listed, list) else []
            if any(_same(entry.body, s) for s in existing[job]):
                skipped += 1
                print(f"already there: {line}", file=out)
                continue
            status, answer = request_json(f"{base}/job-schedules/{job}", "POST", entry.body, timeout)
        except (OSError, urllib.error.URLError) as e:
            print(f"FAILED: cannot reach {base}: {e}", file=err)
            return 3
        if status == 201 and isinstance(answer, dict):
            created += 1
            existing[job].append({**entry.body, "Id": answer.get("Id")})
            print(f"created: {line} -> {answer.get('Id')}", file=out)
        else:
            failed += 1
            message = answer.get("Message", answer) if isinstance(answer, dict) else answer
            print(f"FAILED: {line}: {status} {message}", file=err)
    if dry_run:
        print(f"{len(entries)} schedules would be created in {base} (dry run: nothing was sent)", file=out)
        return 0
    print(f"{created} created, {skipped} already there, {failed} failed, of {len(entries)}", file=out)
    return 1 if failed else 0
