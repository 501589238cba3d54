"""One blocking JSON request over urllib, for command-line tools, tests and benchmarks.

The CLI's import of a SlimFaas backup and the tests and benchmarks that drive a local cluster
need the same small thing: send a JSON body, get the status and the decoded answer back, error
statuses included, without an event loop.
"""

from __future__ import annotations

import urllib.error
import urllib.request
from typing import Any

import orjson


def request_json(url: str, method: str = "GET", body: Any = None, timeout: float = 10.0) -> tuple[int, Any]:
    """(status, decoded body or None), error statuses included; an error answer that is not JSON
    (a proxy's page, say) comes back as ``{"Message": its text}``."""
    data = orjson.dumps(body) if body is not None else None
    req = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            raw = resp.read()
            return resp.status, orjson.loads(raw) if raw else None
    except urllib.error.HTTPError as e:
        raw = e.read()
        try:
            return e.code, orjson.loads(raw) if raw else None
        except orjson.JSONDecodeError:
            return e.code, {"Message": raw.decode(errors="replace")}
