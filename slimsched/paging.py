"""Optional paging of the list endpoints, in the Kubernetes manner. Pure: no I/O, no clock.

``?limit=N`` asks for at most N items; when more remain, the answer carries an opaque continue
token (the ``X-Continue`` header, and ``Link: <...>; rel="next"``) that ``?continue=TOKEN``
hands back for the next page. Without ``limit`` and ``continue`` the answer is SlimFaas's: the
whole bare JSON list, no extra header.

A token names the last item served by its sort key, not by its offset, so items added or removed
meanwhile do not shift the next page. Unlike Kubernetes, a page reads the state of its own time
(there is no snapshot to page through): an item that changes place between two pages (a run
leaving the queue) can be served twice or not at all in one walk.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from dataclasses import dataclass

import orjson

from slimsched.errors import BadRequest

MAX_LIMIT = 100_000
_VERSION = 1

Key = tuple[int | str, ...]


@dataclass(frozen=True)
class PageRequest:
    limit: int | None = None
    after: Key | None = None  # the sort key of the last item of the previous page

    @property
    def paged(self) -> bool:
        return self.limit is not None or self.after is not None


def encode_token(scope: str, key: Key) -> str:
    raw = orjson.dumps([_VERSION, scope, list(key)])
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _bad_token(detail: str) -> BadRequest:
    return BadRequest(
        "invalid_continue",
        f"?continue is not a token this list handed out ({detail}); start again without it",
    )


def decode_token(token: str, scope: str) -> Key:
    if len(token) > 1024:
        raise _bad_token("too long")
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        data = orjson.loads(raw)
    except (binascii.Error, ValueError) as e:
        raise _bad_token("not decodable") from e
    if not (isinstance(data, list) and len(data) == 3 and data[0] == _VERSION and isinstance(data[2], list)):
        raise _bad_token("not decodable")
    if data[1] != scope:
        raise _bad_token("it belongs to another list")
    key = data[2]
    if not key or not all(
        isinstance(k, str) or (isinstance(k, int) and not isinstance(k, bool)) for k in key
    ):
        raise _bad_token("not decodable")
    return tuple(key)


def expect(key: Key, *shapes: tuple[type, ...]) -> Key:
    """``key`` if its items have the types of one of ``shapes`` (a token decoded fine but made
    for another order, or forged, must not reach a comparison with the list's own keys)."""
    for shape in shapes:
        if len(key) == len(shape) and all(type(k) is t for k, t in zip(key, shape, strict=True)):
            return key
    raise _bad_token("not a position in this list")


def parse(query: Mapping[str, str], scope: str) -> PageRequest:
    """The paging a request asks for; ``BadRequest`` (400) for a bad ``limit`` or token."""
    raw_limit = query.get("limit")
    limit: int | None = None
    if raw_limit is not None:
        digits = raw_limit.isascii() and raw_limit.isdigit() and len(raw_limit) <= len(str(MAX_LIMIT))
        if not digits or not 1 <= int(raw_limit) <= MAX_LIMIT:
            raise BadRequest(
                "invalid_query", f"?limit must be a whole number from 1 to {MAX_LIMIT}, not {raw_limit!r}"
            )
        limit = int(raw_limit)
    token = query.get("continue")
    after = decode_token(token, scope) if token else None
    return PageRequest(limit=limit, after=after)


def window(total: int, start: int, limit: int | None) -> tuple[int, int]:
    """The ``[start, end)`` slice of a page of at most ``limit`` items from ``start``."""
    start = max(0, min(start, total))
    return start, total if limit is None else min(total, start + limit)
