"""Keeps CPython's memory management from pausing a node that holds a large state.

A node's replicated state is tens of thousands of long-lived objects. CPython runs a full
cyclic collection, which visits every tracked object, each time the objects that survived
into its oldest generation grew by a quarter: under write load with 50,000 schedules that was a
50-100 ms pause of the event loop and of the Raft thread every few seconds, and the p99 latency
of every request in flight (bench/RESULTS.md). The steward moves what survives each young
collection to the permanent generation (``gc.freeze``), which collections skip, so full
collections stop running on their own. Reference counting still frees frozen objects that
become unreachable (the state's objects hold no cycles); what freezing defers is cyclic
garbage that outlived its young collection, reclaimed every ``thaw_seconds`` by one full
collection the steward runs itself. Each step ends with ``malloc_trim``, which gives freed
heap back to the system, so a node's RSS follows its state down as well as up.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import gc
import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class HeapPolicy:
    freeze_seconds: float = 1.0  # young collection + freeze this often
    thaw_seconds: float = 600.0  # full collection (of cyclic garbage frozen meanwhile) this often


def _load_malloc_trim() -> Callable[[int], int] | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        fn = ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError):  # not glibc (musl, macOS): nothing to trim with
        return None
    fn.argtypes = [ctypes.c_size_t]
    fn.restype = ctypes.c_int
    trim: Callable[[int], int] = fn
    return trim


_MALLOC_TRIM = _load_malloc_trim()


def trim() -> bool:
    """Return free heap pages to the system (glibc only); False when there is no malloc_trim."""
    if _MALLOC_TRIM is None:
        return False
    _MALLOC_TRIM(0)
    return True


def unfreeze() -> None:
    """Hand every frozen object back to the collector (a node stopping inside a longer process)."""
    gc.unfreeze()


class _Pauses:
    """Who is pausing the collector now; it runs again when the last one is done."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._count = 0
        self._resume = False

    @contextlib.contextmanager
    def __call__(self) -> Iterator[None]:
        with self._lock:
            if self._count == 0:
                self._resume = gc.isenabled()
                gc.disable()
            self._count += 1
        try:
            yield
        finally:
            with self._lock:
                self._count -= 1
                if self._count == 0:
                    # What was built is frozen, as the steward would, in constant time: else the
                    # next allocation, in any thread, would pay the young collection put off.
                    gc.freeze()
                    if self._resume:
                        gc.enable()


collections_paused = _Pauses()
"""``with collections_paused():`` no automatic cyclic collection while a large state is decoded.

Decoding 100,000 schedules at once (a snapshot loaded, a restore applied) creates about a
million tracked objects, and CPython collects its oldest generation each time the survivors
grew by a quarter: collections doubled the time of both (bench/RESULTS.md). The objects built
hold no cycles. When the last pause ends, everything tracked is frozen (``gc.freeze``, what the
steward does every second anyway): the young collection that was put off would otherwise visit
all of them at once, in whichever thread allocates next. The collector is the process's: nested
and concurrent pauses (several Raft nodes in one test process) end when the last one does, and
leave it enabled or not as the first one found it.
"""


class HeapSteward:
    """Owned by the node: ``step`` is called every ``freeze_seconds`` by its ``heap`` task."""

    def __init__(self, policy: HeapPolicy, now: float) -> None:
        self.policy = policy
        self._thawed_at = now
        self.full_collections = 0

    def step(self, now: float) -> bool:
        """Freeze what survives a young collection; a full collection first when one is due.

        Returns True when this step ran the full collection.
        """
        full = now - self._thawed_at >= self.policy.thaw_seconds
        if full:
            self._thawed_at = now
            started = time.perf_counter()
            gc.unfreeze()
            gc.collect()
            trim()
            self.full_collections += 1
            log.debug("full collection and trim: %.1f ms", (time.perf_counter() - started) * 1000)
        else:
            gc.collect(1)
            trim()  # cheap when there is nothing to give back (~50 us); RSS follows deletions
        gc.freeze()
        return full

    async def run(self, clock: Callable[[], float]) -> None:
        while True:
            await asyncio.sleep(self.policy.freeze_seconds)
            self.step(clock())
