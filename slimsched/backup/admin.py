"""The operator's restore: ``POST /admin/restore`` (loopback or trusted networks only)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

import orjson
from aiohttp import web

from slimsched import ids
from slimsched.access import AccessPolicy
from slimsched.backup.fileformat import Backup, BackupError, verify_backup
from slimsched.backup.policy import RESTORE_COMMIT_SECONDS, RESTORE_PART_BYTES, restore_command, restore_parts
from slimsched.errors import ApiError, BadRequest, Conflict, Forbidden
from slimsched.raft import RaftNode

if TYPE_CHECKING:
    from slimsched.backup.task import Backups

log = logging.getLogger(__name__)

MAX_RESTORE_BODY_BYTES = 512 * 1024 * 1024
ADMIN_RESTORE_PATH = "/admin/restore"
ADMIN_OVERWRITE_PATH = "/admin/backup/overwrite"

# -- the operator's restore: POST /admin/restore (loopback or trusted networks only) -------------


def admin_routes(
    raft: RaftNode,
    access: AccessPolicy,
    *,
    new_id: Callable[[], str] = ids.new_id,
    part_bytes: int = RESTORE_PART_BYTES,
    backups: Backups | None = None,
) -> tuple[tuple[str, str, Callable[[web.Request], Awaitable[web.StreamResponse]]], ...]:
    """``POST /admin/restore``: the body is a backup file, verified again, then committed.

    ``POST /admin/backup/overwrite`` (with ``backups``): this node's next pass writes the state
    even over a backup that is newer or holds more; the explicit operator action the write rule
    asks for (backup/RUNBOOK.md). Answers the pass's outcome.
    """

    def require_admin(request: web.Request, path: str) -> object:
        caller = access.caller(request.remote, request.headers.get("X-Forwarded-For"))
        if not access.in_cluster(caller):
            raise Forbidden("admin_only", f"{path} accepts only loopback callers and trusted networks")
        return caller

    async def admin_restore(request: web.Request) -> web.Response:
        caller = require_admin(request, ADMIN_RESTORE_PATH)
        raw = await _read_limited(request, MAX_RESTORE_BODY_BYTES)
        loop = asyncio.get_running_loop()

        in_parts = raft.applied_by_all("restore_part")
        with_base = raft.applied_by_all("backup_report")

        def check() -> tuple[Backup, list[bytes]]:
            backup = verify_backup(raw)
            rid = new_id()
            base = backup.info.raft_index if with_base else None
            single = restore_command(backup, rid, base)
            if in_parts and len(single) > part_bytes:
                return backup, restore_parts(
                    backup, rid, whole_bytes=len(single), part_bytes=part_bytes, base_index=base
                )
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

    async def admin_overwrite(request: web.Request) -> web.Response:
        caller = require_admin(request, ADMIN_OVERWRITE_PATH)
        if backups is None:
            raise ApiError(404, "no_backups", "this node keeps no backup (SLIMSCHED_BACKUP_DIR is not set)")
        backups.overwrite_once = True
        log.warning(
            "%s asked by %s: the next pass replaces %s whatever it holds", request.path, caller, backups.path
        )
        decision = await backups.backup_once()
        body = {
            "Outcome": backups.last_outcome,
            "Written": decision is not None and decision.value == "written",
        }
        return web.Response(body=orjson.dumps(body), content_type="application/json")

    return (("POST", ADMIN_RESTORE_PATH, admin_restore), ("POST", ADMIN_OVERWRITE_PATH, admin_overwrite))


async def _read_limited(request: web.Request, limit: int) -> bytes:
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.content.iter_chunked(1 << 20):
        size += len(chunk)
        if size > limit:
            raise ApiError(413, "body_too_large", f"the backup exceeds {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)
