"""How the emulator answers as kube-apiserver does: Status objects, JSON, media type negotiation."""

from __future__ import annotations

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


def list_response(kind: str, api_version: str, items: list[dict[str, Any]], rv: int) -> web.Response:
    return json_response(
        {"kind": kind, "apiVersion": api_version, "metadata": {"resourceVersion": str(rv)}, "items": items}
    )


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
