"""The CLI client: ``slimsched get|trigger|logs|pause|resume|backfill`` against any node's HTTP API.

It only calls the JSON API (so it sees exactly what visibility lets the caller see) with the
standard library's HTTP client: the same ``slimsched`` command runs a node and talks to one.

Exit codes, for shell scripts:

- 0: done;
- 1: the API answered an error (its ``Error`` code and message go to stderr);
- 2: bad usage (argparse's own code);
- 3: no node could be reached (connection refused, timeout, DNS).

Writes that may be retried safely are: pause/resume (idempotent), a schedule trigger and a
backfill (both carry a ``RequestId``, generated unless given, so a retry after a lost answer or
a 503 during a leader change never starts a second run). A plain job trigger (``POST /job``)
has no request id in SlimFaas's API and is never retried.
"""

from __future__ import annotations

import argparse
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import IO, Any

import orjson

EXIT_OK = 0
EXIT_API_ERROR = 1
EXIT_USAGE = 2
EXIT_UNREACHABLE = 3
DEFAULT_SERVER = "http://127.0.0.1:5000"
RETRIES = 5
RETRY_PAUSE_SECONDS = 0.3
_DOTNET_EPOCH_TICKS = 621_355_968_000_000_000


class ApiFailure(Exception):
    """The API answered an error status."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status, self.code, self.message = status, code, message


class Unreachable(Exception):
    """No answer from the server at all."""


@dataclass
class Client:
    server: str
    timeout: float = 10.0
    retries: int = RETRIES
    sleep: Callable[[float], None] = time.sleep

    def _url(self, path: str, query: dict[str, str] | None = None) -> str:
        url = self.server.rstrip("/") + path
        return url + ("?" + urllib.parse.urlencode(query) if query else "")

    def _open(
        self, method: str, path: str, body: Any, query: dict[str, str] | None, timeout: float | None
    ) -> Any:
        data = orjson.dumps(body) if body is not None else None
        req = urllib.request.Request(
            self._url(path, query), data=data, method=method, headers={"Content-Type": "application/json"}
        )
        try:
            return urllib.request.urlopen(req, timeout=timeout)
        except urllib.error.HTTPError as e:
            raw = e.read()
            try:
                err = orjson.loads(raw)
                code, message = str(err["Error"]), str(err["Message"])
            except (orjson.JSONDecodeError, KeyError, TypeError):
                code, message = "http_error", raw.decode(errors="replace")[:500] or str(e.reason)
            raise ApiFailure(e.code, code, message) from e
        except (urllib.error.URLError, OSError) as e:
            raise Unreachable(f"cannot reach {self.server}: {getattr(e, 'reason', e)}") from e

    def call(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        query: dict[str, str] | None = None,
        retry: bool = False,
    ) -> Any:
        """One JSON request; with ``retry``, repeated on 503 and lost connections (bounded)."""
        attempts = self.retries if retry else 1
        for attempt in range(attempts):
            try:
                with self._open(method, path, body, query, self.timeout) as resp:
                    raw = resp.read()
                    return orjson.loads(raw) if raw else None
            except (ApiFailure, Unreachable) as e:
                transient = isinstance(e, Unreachable) or e.status == 503
                if not transient or attempt == attempts - 1:
                    raise
                self.sleep(RETRY_PAUSE_SECONDS * (attempt + 1))
        raise AssertionError("unreachable")  # pragma: no cover

    def stream(self, path: str, query: dict[str, str], out: IO[str]) -> None:
        """Copy a text answer to ``out`` as it arrives (``logs -f``)."""
        with self._open("GET", path, None, query, None) as resp:
            for line in resp:
                out.write(line.decode(errors="replace"))
                out.flush()


# -- formatting ------------------------------------------------------------------------------------


def when(value: Any) -> str:
    """A run timestamp (milliseconds since the epoch, or .NET ticks) as UTC ISO 8601; '-' if none."""
    if not isinstance(value, int) or value < 0:
        return "-"
    ms = (value - _DOTNET_EPOCH_TICKS) // 10_000 if value > 10**15 else value
    return datetime.fromtimestamp(ms / 1000, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def table(rows: list[dict[str, Any]], columns: list[tuple[str, Callable[[dict[str, Any]], Any]]]) -> str:
    cells = [[h for h, _ in columns]] + [
        ["-" if (v := f(r)) is None else str(v) for _, f in columns] for r in rows
    ]
    widths = [max(len(row[i]) for row in cells) for i in range(len(columns))]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells
    )


JOB_COLUMNS: list[tuple[str, Callable[[dict[str, Any]], Any]]] = [
    ("NAME", lambda r: r["Name"]),
    ("VISIBILITY", lambda r: r["Visibility"]),
    ("QUEUED", lambda r: r.get("Queued")),
    ("ACTIVE", lambda r: r.get("Active")),
    ("RUNS", lambda r: r.get("Runs")),
    ("SCHEDULES", lambda r: r.get("Schedules")),
    ("IMAGE", lambda r: r.get("Image") if r.get("Accessible") else "(private: inside the cluster only)"),
]
SCHEDULE_COLUMNS: list[tuple[str, Callable[[dict[str, Any]], Any]]] = [
    ("JOB", lambda r: r["Name"]),
    ("ID", lambda r: r["Id"]),
    ("SCHEDULE", lambda r: r["Schedule"]),
    ("TIMEZONE", lambda r: r.get("TimeZone")),
    ("PAUSED", lambda r: r.get("Paused")),
    ("LAST FIRED", lambda r: r.get("LastFiredTime")),
    ("NEXT FIRE", lambda r: r.get("NextFireTime")),
]
RUN_COLUMNS: list[tuple[str, Callable[[dict[str, Any]], Any]]] = [
    ("JOB", lambda r: r["Job"]),
    ("ID", lambda r: r["Id"]),
    ("STATUS", lambda r: r["Status"]),
    ("QUEUED", lambda r: when(r.get("InQueueTimestamp"))),
    ("STARTED", lambda r: when(r.get("StartTimestamp"))),
    ("ENDED", lambda r: when(r.get("EndTimestamp"))),
    ("SCHEDULE", lambda r: r.get("ScheduleId")),
    ("REASON", lambda r: r.get("Reason")),
]
TICK_COLUMNS: list[tuple[str, Callable[[dict[str, Any]], Any]]] = [
    ("TICK", lambda r: r.get("TickTime")),
    ("OUTCOME", lambda r: r.get("Outcome")),
    ("RUN", lambda r: r.get("RunId")),
    ("LATENESS MS", lambda r: r.get("LatenessMs")),
    ("REASON", lambda r: r.get("Reason")),
]


# -- commands --------------------------------------------------------------------------------------


def _jobs(client: Client, job: str | None) -> list[str]:
    if job is not None:
        return [job]
    return [j["Name"] for j in client.call("GET", "/jobs", retry=True) if j.get("Accessible")]


def _emit(args: argparse.Namespace, out: IO[str], data: Any, columns: Any) -> None:
    if args.output == "json":
        out.write(orjson.dumps(data, option=orjson.OPT_INDENT_2).decode() + "\n")
    else:
        out.write(table(data, columns) + "\n")


def cmd_get(args: argparse.Namespace, client: Client, out: IO[str]) -> int:
    if args.kind == "jobs":
        _emit(args, out, client.call("GET", "/jobs", retry=True), JOB_COLUMNS)
    elif args.kind == "schedules":
        rows = [
            s for j in _jobs(client, args.job) for s in client.call("GET", f"/job-schedules/{j}", retry=True)
        ]
        _emit(args, out, rows, SCHEDULE_COLUMNS)
    elif args.kind == "runs":
        rows = [
            {"Job": j, **r}
            for j in _jobs(client, args.job)
            for r in client.call("GET", f"/job/{j}", retry=True)
        ]
        _emit(args, out, rows, RUN_COLUMNS)
    else:  # ticks
        if args.job is None or args.schedule is None:
            raise UsageError("get ticks needs JOB and --schedule ID")
        path = f"/job-schedules/{args.job}/{args.schedule}/ticks"
        _emit(args, out, client.call("GET", path, retry=True), TICK_COLUMNS)
    return EXIT_OK


def cmd_trigger(args: argparse.Namespace, client: Client, out: IO[str]) -> int:
    if args.schedule is None:
        if args.request_id is not None:
            raise UsageError("--request-id applies to a schedule trigger (--schedule ID) only")
        body = {"Args": args.arg} if args.arg else {}
        result = client.call("POST", f"/job/{args.job}", body)  # not idempotent: never retried
    else:
        if args.arg:
            raise UsageError("--arg applies to a job trigger; a schedule runs with its own overrides")
        rid = args.request_id or uuid.uuid4().hex
        path = f"/job-schedules/{args.job}/{args.schedule}/trigger"
        result = client.call("POST", path, {"RequestId": rid}, retry=True)
    if args.output == "json":
        out.write(orjson.dumps(result).decode() + "\n")
    else:
        out.write(f"{result['Id']}\n")
    return EXIT_OK


def cmd_logs(args: argparse.Namespace, client: Client, out: IO[str]) -> int:
    query = {"follow": "true"} if args.follow else {}
    if args.tail is not None:
        query["tail"] = str(args.tail)
    client.stream(f"/job/{args.job}/{args.run}/logs", query, out)
    return EXIT_OK


def cmd_pause(args: argparse.Namespace, client: Client, out: IO[str]) -> int:
    paused = args.command == "pause"
    result = client.call(
        "PATCH", f"/job-schedules/{args.job}/{args.schedule}", {"Paused": paused}, retry=True
    )
    _emit(args, out, result if args.output == "json" else [result], SCHEDULE_COLUMNS)
    return EXIT_OK


def cmd_backfill(args: argparse.Namespace, client: Client, out: IO[str]) -> int:
    body: dict[str, Any] = {
        "Start": args.start,
        "End": args.end,
        "RequestId": args.request_id or uuid.uuid4().hex,
    }
    if args.policy:
        body["ConcurrencyPolicy"] = args.policy
    result = client.call("POST", f"/job-schedules/{args.job}/{args.schedule}/backfill", body, retry=True)
    if args.output == "json":
        out.write(orjson.dumps(result, option=orjson.OPT_INDENT_2).decode() + "\n")
        return EXIT_OK
    rows = [
        {**t, "Outcome": outcome}
        for outcome, key in (
            ("fired", "Fired"),
            ("skipped", "Skipped"),
            ("already fired", "AlreadyFired"),
            ("not yet handled", "NotYetHandled"),
        )
        for t in result[key]
    ]
    rows.sort(key=lambda t: t["Tick"])
    out.write(table(rows, TICK_COLUMNS[:3]) + "\n")
    return EXIT_OK


class UsageError(Exception):
    """Arguments argparse accepted but that do not make sense together."""


COMMANDS: dict[str, Callable[[argparse.Namespace, Client, IO[str]], int]] = {
    "get": cmd_get,
    "trigger": cmd_trigger,
    "logs": cmd_logs,
    "pause": cmd_pause,
    "resume": cmd_pause,
    "backfill": cmd_backfill,
}


def add_subcommands(sub: Any, default_server: str) -> None:
    """Add the client's subcommands to ``slimsched``'s parser (called by ``cli.build_parser``)."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--server",
        default=default_server,
        help=f"any node's HTTP URL (default: $SLIMSCHED_SERVER or {DEFAULT_SERVER})",
    )
    common.add_argument("-o", "--output", choices=("table", "json"), default="table")
    common.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for an answer")
    epilog = "exit codes: 0 ok, 1 the API answered an error, 2 bad usage, 3 no node could be reached"

    def parser(name: str, help_text: str) -> argparse.ArgumentParser:
        p: argparse.ArgumentParser = sub.add_parser(name, parents=[common], help=help_text, epilog=epilog)
        p.set_defaults(func=run)
        return p

    get = parser("get", "list jobs, schedules, runs or a schedule's ticks")
    get.add_argument("kind", choices=("jobs", "schedules", "runs", "ticks"))
    get.add_argument("job", nargs="?", help="only this job (every job you may see when omitted)")
    get.add_argument("--schedule", help="the schedule id (get ticks)")
    trigger = parser("trigger", "run a job now, or one run of a schedule with --schedule")
    trigger.add_argument("job")
    trigger.add_argument("--schedule", help="run this schedule now, with its overrides")
    trigger.add_argument("--arg", action="append", help="an argument of a job trigger (repeatable)")
    trigger.add_argument("--request-id", help="names the request: a retry with it starts no second run")
    logs = parser("logs", "print a run's log")
    logs.add_argument("job")
    logs.add_argument("run")
    logs.add_argument("-f", "--follow", action="store_true", help="stream until the run's pod ends")
    logs.add_argument("--tail", type=int, help="only the last N lines")
    for name in ("pause", "resume"):
        p = parser(name, f"{name} a schedule")
        p.add_argument("job")
        p.add_argument("schedule")
    backfill = parser("backfill", "fire each tick of a past time range once")
    backfill.add_argument("job")
    backfill.add_argument("schedule")
    backfill.add_argument("--start", required=True, help="RFC 3339, e.g. 2026-01-01T00:00:00Z")
    backfill.add_argument("--end", required=True, help="RFC 3339, not in the future")
    backfill.add_argument(
        "--policy", choices=("Allow", "Forbid", "Replace"), help="instead of the schedule's"
    )
    backfill.add_argument("--request-id", help="names the request: a retry with it fires nothing twice")


def run(args: argparse.Namespace, out: IO[str] | None = None, err: IO[str] | None = None) -> int:
    out = out or sys.stdout
    err = err or sys.stderr
    client = Client(args.server, timeout=args.timeout)
    try:
        return COMMANDS[args.command](args, client, out)
    except UsageError as e:
        print(f"slimsched {args.command}: {e}", file=err)
        return EXIT_USAGE
    except ApiFailure as e:
        print(f"slimsched {args.command}: {e.status} {e.code}: {e.message}", file=err)
        return EXIT_API_ERROR
    except Unreachable as e:
        print(f"slimsched {args.command}: {e}", file=err)
        return EXIT_UNREACHABLE
