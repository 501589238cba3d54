"""Callbacks from the Raft thread to the event loop, delivered in batches.

Each ``loop.call_soon_threadsafe`` writes a byte to the loop's self-pipe: a system call in the
Raft thread and a wake-up of the loop per call. Under write load the Raft thread applies
entries in batches and used to make two such calls per entry (the submitter's answer and the
leader's notice). An inbox makes one call per batch: the first callback put into an empty
inbox schedules its drain, later ones ride along until the loop runs it.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import Any


class LoopInbox:
    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self._lock = threading.Lock()
        self._pending: list[tuple[Callable[..., object], tuple[Any, ...]]] = []
        self.drains = 0  # loop wake-ups made so far

    def put(self, fn: Callable[..., object], *args: Any) -> None:
        """Run ``fn(*args)`` in the loop, in the order of ``put`` calls (from any thread)."""
        with self._lock:
            self._pending.append((fn, args))
            if len(self._pending) > 1:
                return  # a drain is already scheduled
        self.loop.call_soon_threadsafe(self._drain)

    def _drain(self) -> None:
        with self._lock:
            pending, self._pending = self._pending, []
        self.drains += 1
        for fn, args in pending:
            fn(*args)
