"""One slimsched node: wires settings, the Raft node, the HTTP API and the background loops.

The node owns every background task it starts, each named, and stops them within a deadline.
Shutdown order (SIGTERM): readiness fails first, the HTTP server stops taking connections and
lets in-flight requests finish, leader work stops, then the Raft node leaves.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from aiohttp import web

from slimsched import jobconfig
from slimsched.access import AccessPolicy
from slimsched.api import ApiContext, create_app
from slimsched.raft import RaftNode
from slimsched.settings import Settings

log = logging.getLogger(__name__)

SHUTDOWN_GRACE_SECONDS = 10.0


@dataclass
class Node:
    settings: Settings
    jobs: jobconfig.JobsConfiguration
    clock: Callable[[], float] = time.time
    raft: RaftNode = field(init=False)
    _runner: web.AppRunner | None = field(default=None, init=False)
    _accepting: bool = field(default=True, init=False)

    def __post_init__(self) -> None:
        self.raft = RaftNode(self.settings)

    @property
    def http_url(self) -> str:
        host = "127.0.0.1" if self.settings.http_host in ("0.0.0.0", "::") else self.settings.http_host
        return f"http://{host}:{self.settings.http_port}"

    async def start(self) -> None:
        s = self.settings
        await asyncio.get_running_loop().run_in_executor(None, self.raft.start)
        ctx = ApiContext(
            raft=self.raft,
            jobs=self.jobs,
            access=AccessPolicy.build(s.trusted_cidrs, s.trusted_proxies),
            clock=self.clock,
            max_body_bytes=s.max_body_bytes,
            ready_gate=lambda: self._accepting,
        )
        self._runner = web.AppRunner(
            create_app(ctx), access_log=None, shutdown_timeout=SHUTDOWN_GRACE_SECONDS, handle_signals=False
        )
        await self._runner.setup()
        await web.TCPSite(self._runner, s.http_host, s.http_port, reuse_address=True).start()
        log.info("node %s serving HTTP on %s:%s", s.node_id, s.http_host, s.http_port)

    async def stop(self) -> None:
        self._accepting = False
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        await asyncio.get_running_loop().run_in_executor(None, self.raft.stop)
        log.info("node %s stopped", self.settings.node_id)
