"""DueQueue against a plain dict model, over random sequences of operations (Hypothesis)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from slimsched.duequeue import DueQueue

_ids = st.sampled_from([f"s{i}" for i in range(12)])
_ticks = st.integers(min_value=0, max_value=20)
_ops = st.lists(
    st.one_of(
        st.tuples(st.just("put"), _ids, _ticks),
        st.tuples(st.just("discard"), _ids, st.just(0)),
        st.tuples(st.just("pop"), st.just(""), _ticks),
        st.tuples(st.just("clear"), st.just(""), st.just(0)),
    ),
    max_size=80,
)


@settings(max_examples=500, deadline=None)
@given(ops=_ops)
def test_due_queue_answers_as_a_dict_of_next_ticks(ops: list[tuple[str, str, int]]) -> None:
    q = DueQueue()
    model: dict[str, int] = {}
    for op, sid, value in ops:
        if op == "put":
            q.put(sid, value)
            model[sid] = value
        elif op == "discard":
            q.discard(sid)
            model.pop(sid, None)
        elif op == "clear":
            q.clear()
            model.clear()
        else:
            due = {s for s, t in model.items() if t <= value}
            assert q.pop_due(value) == due
            for s in due:
                del model[s]
        assert len(q) == len(model)
        assert all(q.get(s) == t for s, t in model.items())
        first = q.first()
        # the first bucket may hold only stale ids, but is never later than a live one
        if model:
            assert first is not None and first <= min(model.values())


def test_stale_entries_are_dropped_once_they_outnumber_the_live_ones() -> None:
    q = DueQueue()
    for tick in range(10_000):
        q.put("only", tick)  # each re-plan leaves the previous entry stale
    assert len(q) == 1
    assert q._entries <= 4 * 1024 + 1
    assert q.pop_due(9_998) == set()
    assert q.pop_due(9_999) == {"only"}
    assert q.first() is None
