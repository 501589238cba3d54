"""The heap steward freezes survivors and reclaims frozen cyclic garbage at its thaw; ids; the inbox."""

from __future__ import annotations

import asyncio
import gc
import re
import threading
import weakref
from collections.abc import Iterator

import pytest

from slimsched import ids
from slimsched.heap import HeapPolicy, HeapSteward, collections_paused
from slimsched.loopinbox import LoopInbox


class _Node:
    def __init__(self) -> None:
        self.me = self


@pytest.fixture
def frozen_heap() -> Iterator[None]:
    yield
    gc.unfreeze()


def test_steward_freezes_survivors_and_frees_frozen_cycles_at_its_thaw(frozen_heap: None) -> None:
    steward = HeapSteward(HeapPolicy(freeze_seconds=1.0, thaw_seconds=60.0), now=1000.0)
    cycle = _Node()
    alive = weakref.ref(cycle)
    assert steward.step(1001.0) is False
    assert gc.get_freeze_count() > 0
    del cycle
    gc.collect()
    assert alive() is not None, "a frozen cycle is skipped by collections until the thaw"
    assert steward.step(1059.0) is False
    assert alive() is not None
    assert steward.step(1060.0) is True
    assert alive() is None
    assert steward.full_collections == 1
    assert gc.get_freeze_count() > 0, "after its thaw the steward freezes the survivors again"


def test_steward_young_step_collects_unfrozen_cycles(frozen_heap: None) -> None:
    steward = HeapSteward(HeapPolicy(), now=0.0)
    steward.step(1.0)
    cycle = _Node()
    alive = weakref.ref(cycle)
    del cycle
    steward.step(2.0)
    assert alive() is None, "garbage younger than the last freeze goes at the next step"


def test_collections_pause_nests_and_leaves_the_collector_as_it_found_it(frozen_heap: None) -> None:
    assert gc.isenabled()
    gc.unfreeze()
    with collections_paused():
        assert not gc.isenabled()
        with collections_paused():
            assert not gc.isenabled()
        assert not gc.isenabled(), "the outer pause still holds"
        assert gc.get_freeze_count() == 0
    assert gc.isenabled()
    assert gc.get_freeze_count() > 0, "what was built is frozen when the last pause ends"
    assert gc.get_count()[0] < 50  # no young collection put off for the next allocation to pay
    gc.disable()
    try:
        with collections_paused():
            pass
        assert not gc.isenabled(), "a collector disabled before stays disabled"
    finally:
        gc.enable()
    with pytest.raises(RuntimeError), collections_paused():
        raise RuntimeError("boom")
    assert gc.isenabled()


def test_overlapping_pauses_in_two_threads_end_with_the_last_one(frozen_heap: None) -> None:
    first_in, second_in, first_out = threading.Event(), threading.Event(), threading.Event()
    seen: list[bool] = []

    def second() -> None:
        first_in.wait(5)
        with collections_paused():
            second_in.set()
            first_out.wait(5)
            seen.append(gc.isenabled())  # the first thread has left: still paused for this one
        seen.append(gc.isenabled())

    t = threading.Thread(target=second, name="second-pauser")
    t.start()
    with collections_paused():
        first_in.set()
        assert second_in.wait(5)
    first_out.set()
    t.join(5)
    assert seen == [False, True]
    assert gc.isenabled()


def test_ids_are_32_hex_digits_and_unique() -> None:
    made = [ids.new_id() for _ in range(100_000)]
    assert all(re.fullmatch(r"[0-9a-f]{32}", i) for i in made[:1000])
    assert len(set(made)) == len(made)


async def test_inbox_runs_callbacks_in_order_with_one_wake_up_per_batch() -> None:
    inbox = LoopInbox(asyncio.get_running_loop())
    seen: list[int] = []
    done = asyncio.Event()

    def put_many() -> None:
        for i in range(1000):
            inbox.put(seen.append, i)
        inbox.put(done.set)

    producer = threading.Thread(target=put_many)
    producer.start()
    producer.join(timeout=10)  # blocks the loop on purpose: every put lands in one pending batch
    assert seen == [], "nothing runs outside the loop"
    async with asyncio.timeout(5):
        await done.wait()
    assert seen == list(range(1000))
    assert inbox.drains == 1

    all_in = asyncio.Event()

    def add(value: int) -> None:
        seen.append(value)
        if len(seen) == 1008:
            all_in.set()

    threads = [threading.Thread(target=inbox.put, args=(add, 1000 + k)) for k in range(8)]
    for t in threads:
        t.start()
    async with asyncio.timeout(5):
        await all_in.wait()
    for t in threads:
        t.join(timeout=5)
    assert sorted(seen[1000:]) == list(range(1000, 1008))
    assert 2 <= inbox.drains <= 9
