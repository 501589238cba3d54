"""Command line: ``slimsched backup verify FILE`` and ``slimsched backup restore FILE``."""

from __future__ import annotations

import urllib.error
import urllib.request
from typing import IO

import orjson

from slimsched.backup.admin import ADMIN_OVERWRITE_PATH, ADMIN_RESTORE_PATH
from slimsched.backup.fileformat import BackupError, verify_backup
from slimsched.backup.policy import RESTORE_COMMIT_SECONDS

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


def cli_overwrite(url: str, out: IO[str], err: IO[str], timeout: float = RESTORE_COMMIT_SECONDS) -> int:
    """Ask one node to write its state over its backup even if that backup is newer or holds more."""
    target = url.rstrip("/") + ADMIN_OVERWRITE_PATH
    req = urllib.request.Request(target, data=b"", method="POST")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            answer = orjson.loads(resp.read() or b"{}")
    except urllib.error.HTTPError as e:
        print(f"FAILED: {target} answered {e.code}: {e.read().decode(errors='replace')}", file=err)
        return 1
    except (OSError, urllib.error.URLError) as e:
        print(f"FAILED: cannot reach {target}: {e}", file=err)
        return 1
    if not answer.get("Written"):
        print(f"NOT WRITTEN: the pass answered {answer.get('Outcome')!r}", file=err)
        return 1
    print(f"OK: {url} wrote its state over its backup", file=out)
    return 0
