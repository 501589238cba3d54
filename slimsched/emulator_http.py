"""How the emulator answers as kube-apiserver does: Status objects, JSON, media type negotiation."""

from __future__ import annotations

import base64
import binascii
from typing import Any

import orjson
from aiohttp import web

API_MEDIA_TYPES = ("application/json", "application/yaml", "application/vnd.kubernetes.protobuf")


def accepts_api_media_type(accept: str) -> bool:
    """Whether an ``Accept`` header admits one of the API server's serializers (empty: any)."""
    if not accept.strip():
        return True
    for media_range in accept.split(","):
        kind = media_range.split(";", 1)[0].strip().lower()
        if kind in ("*/*", "application/*") or kind in API_MEDIA_TYPES:
            return True
    return False


def status(code: int, reason: str, message: str, details: dict[str, Any] | None = None) -> web.Response:
    body: dict[str, Any] = {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }
    if details is not None:
        body["details"] = details
    return json_response(body, status=code)


def json_response(body: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(body), status=status, content_type="application/json")


def not_found(resource: str, name: str) -> web.Response:
    """``resource`` as the API server names it in messages: "jobs.batch", "pods"..."""
    plural, _, group = resource.partition(".")
    details = {"name": name, "kind": plural, **({"group": group} if group else {})}
    return status(404, "NotFound", f'{resource} "{name}" not found', details)


class BadContinue(ValueError):
    """A ``continue`` token this server did not give."""


def page(
    items: list[dict[str, Any]], limit: str | None, token: str | None, rv: int, *, selected: bool
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """One page of a list as kube-apiserver serves it, with its list metadata.

    Items come in key order (by name within a namespace); with ``limit`` at most that many,
    and a ``continue`` token (opaque to clients) when more follow, plus ``remainingItemCount``
    unless the list was ``selected`` by a label selector (the server cannot count those).
    Unlike the real server, a continued page reads the current objects, not the first page's
    snapshot: the client's part (following tokens to the end) is the same.
    """
    ordered = sorted(items, key=lambda o: str(o["metadata"].get("name", "")))
    if token:
        try:
            start = orjson.loads(base64.urlsafe_b64decode(token.encode()))["start"]
        except (binascii.Error, ValueError, KeyError, TypeError) as e:
            raise BadContinue(f"continue key is not valid: {token!r}") from e
        ordered = [o for o in ordered if str(o["metadata"].get("name", "")) > str(start)]
    metadata: dict[str, Any] = {"resourceVersion": str(rv)}
    try:
        size = int(limit) if limit else 0
    except ValueError:
        size = 0  # kube-apiserver ignores a limit that is not a positive integer
    if 0 < size < len(ordered):
        last = str(ordered[size - 1]["metadata"].get("name", ""))
        metadata["continue"] = base64.urlsafe_b64encode(orjson.dumps({"rv": rv, "start": last})).decode()
        if not selected:
            metadata["remainingItemCount"] = len(ordered) - size
        ordered = ordered[:size]
    return ordered, metadata


def list_response(
    kind: str, api_version: str, items: list[dict[str, Any]], metadata: dict[str, Any]
) -> web.Response:
    return json_response({"kind": kind, "apiVersion": api_version, "metadata": metadata, "items": items})


async def read_object(request: web.Request) -> Any:
    raw = await request.read()
    if not raw:
        return None
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None


def opt_float(value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"expected a number, got {value!r}")
    return float(value)
