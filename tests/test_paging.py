"""Paging tokens and limits (pure): what a client hands back is checked, never trusted."""

from __future__ import annotations

import base64

import orjson
import pytest

from slimsched import paging
from slimsched.errors import BadRequest


def test_a_token_round_trips_within_its_list_only() -> None:
    token = paging.encode_token("runs/fib", (0, -1700000000000, "abc"))
    assert token.isascii() and "=" not in token
    assert paging.decode_token(token, "runs/fib") == (0, -1700000000000, "abc")
    with pytest.raises(BadRequest) as err:
        paging.decode_token(token, "runs/other")
    assert err.value.code == "invalid_continue"


def _forged(data: object) -> str:
    return base64.urlsafe_b64encode(orjson.dumps(data)).decode()


@pytest.mark.parametrize(
    "token",
    [
        "!!",
        "eyJ",
        "x" * 2000,
        _forged({"a": 1}),
        _forged([2, "runs/fib", [1]]),  # another version
        _forged([1, "runs/fib", []]),
        _forged([1, "runs/fib", [True]]),
        _forged([1, "runs/fib", [1.5]]),
        _forged([1, "runs/fib", "x"]),
    ],
)
def test_a_bad_token_is_a_400(token: str) -> None:
    with pytest.raises(BadRequest) as err:
        paging.decode_token(token, "runs/fib")
    assert err.value.code == "invalid_continue" and err.value.status == 400


@pytest.mark.parametrize(
    ("query", "limit"),
    [({}, None), ({"limit": "1"}, 1), ({"limit": "250"}, 250), ({"limit": "100000"}, paging.MAX_LIMIT)],
)
def test_limit(query: dict[str, str], limit: int | None) -> None:
    req = paging.parse(query, "s")
    assert req.limit == limit and req.paged is (limit is not None)


@pytest.mark.parametrize(
    "raw", ["0", "-1", "x", "1.5", "²", "100001", "6517984", "1" + "0" * 9, "9" * 5000, ""]
)
def test_a_bad_limit_is_a_400(raw: str) -> None:
    with pytest.raises(BadRequest) as err:
        paging.parse({"limit": raw}, "s")
    assert err.value.code == "invalid_query"


def test_window() -> None:
    assert paging.window(5, 0, None) == (0, 5)
    assert paging.window(5, 3, 10) == (3, 5)
    assert paging.window(5, 9, 2) == (5, 5)
    assert paging.window(5, 1, 2) == (1, 3)


@pytest.mark.parametrize("key", [("a", 1), (1,), (1, 2), (True, "x"), (1, "x", 2)])
def test_a_key_of_another_shape_is_a_400(key: paging.Key) -> None:
    with pytest.raises(BadRequest) as err:
        paging.expect(key, (int, str))
    assert err.value.code == "invalid_continue"
    assert paging.expect((5, "x"), (int, int, str), (int, str)) == (5, "x")
