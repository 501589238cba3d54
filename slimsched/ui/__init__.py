"""The web view at ``/ui``: static HTML, JavaScript and CSS shipped in the package, no build step.

The page reads and acts only through the node's JSON API (``GET /jobs``, ``/job/...``,
``/job-schedules/...``, ``/status``), so it sees and may change exactly what the API lets its
caller see and change: a Private job opened from outside the cluster is listed, and refused.
Every node serves it; files are read once from the package and kept in memory.
"""

from __future__ import annotations

import functools
import importlib.resources

from aiohttp import web

# The files served, with their content types; each has its own route, nothing else is reachable.
FILES = {
    "index.html": "text/html",
    "app.js": "text/javascript",
    "style.css": "text/css",
}


@functools.cache
def _read(name: str) -> bytes:
    return importlib.resources.files("slimsched.ui").joinpath("static", name).read_bytes()


def _file(name: str) -> web.Response:
    return web.Response(
        body=_read(name),
        content_type=FILES[name],
        charset="utf-8",
        headers={"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"},
    )


async def page(request: web.Request) -> web.Response:
    return _file("index.html")


async def script(request: web.Request) -> web.Response:
    return _file("app.js")


async def stylesheet(request: web.Request) -> web.Response:
    return _file("style.css")
