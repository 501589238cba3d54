"""The chaos harness's load: clients that create, delete, trigger and act under faults.

Each client records in the client log what the cluster acknowledged, which is what the checker
holds the nodes and Kubernetes to at the end of a run.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from datetime import UTC, datetime
from typing import Any

from slimsched.chaoscheck import EVERY_SECOND, AckedTrigger, Answer, CreatedSchedule, DeletedSchedule
from slimsched.chaosharness import HarnessBase, wait_event

NEVER_IN_A_RUN = "0 0 1 1 *"  # churned schedules: created and deleted, never due during a run
TICK_PREFIX = "tick-"
TRIGGER_PREFIX = "trig-"
CHURN_JOBS = ("churn-0", "churn-1", "churn-2", "churn-3")
ACTION_PREFIX = "action-"  # a schedule of such a job is triggered now and backfilled under faults
ACTION_ROUNDS_PER_JOB = 25  # 4 runs a round: 100 runs a job, below the 200 finished runs kept
ACTION_CRON = "0 * * * *"
BACKFILL_EPOCH = 1_577_836_800  # 2020-01-01T00:00:00Z: each round backfills the next hours after it
BACKFILL_HOURS = 3
DELETE_ATTEMPTS = 60  # of one schedule delete, 0.3 s apart, while its answer is unknown or 5xx
ACTION_ATTEMPTS = 40  # retries of one action (same RequestId) while its answer is unknown
ACTION_PERIOD = 3.0
TRIGGERS_PER_JOB = 100  # below the state machine's 200 finished runs per job: nothing is pruned


def _iso(epoch_s: int) -> str:
    return datetime.fromtimestamp(epoch_s, tz=UTC).isoformat().replace("+00:00", "Z")


class LoadClients(HarnessBase):
    async def delete_schedule(self, sid: str, job: str) -> None:
        # Retried for as long as a fault can last (a slow-client flood answers 503 for seconds):
        # a schedule left alive fires every second for the rest of the run, past what the state
        # keeps of a job's finished runs and of a schedule's ledger.
        unknown_before = False
        for _ in range(DELETE_ATTEMPTS):
            a = await self.op("delete schedule", "DELETE", f"/job-schedules/{job}/{sid}")
            if a.acked:
                self.log.deleted[sid] = DeletedSchedule(job, time.time(), "204")
                return
            if a.status == 404:
                if unknown_before:
                    self.log.deleted[sid] = DeletedSchedule(job, time.time(), "404 after an unknown attempt")
                else:
                    self.log.lost_at_delete.append(sid)
                return
            if a.status is not None and a.status < 500:
                self.log.unexpected.append(f"DELETE schedule {sid}: {a.status} {a.body}")
                return
            unknown_before = unknown_before or a.unknown
            await asyncio.sleep(0.3)
        self.log.delete_unknown.add(sid)

    async def create_schedule(self, job: str, cron: str) -> str | None:
        self.log.job_names.add(job)
        a = await self.op("create schedule", "POST", f"/job-schedules/{job}", {"Schedule": cron})
        if a.acked and isinstance(a.body, dict):
            sid = str(a.body["Id"])
            self.log.created[sid] = CreatedSchedule(job, cron, time.time())
            return sid
        if a.status is not None and a.status < 500 and not a.acked:
            self.log.unexpected.append(f"POST schedule {job}: {a.status} {a.body}")
        return None

    async def poll_ledger(self, sid: str, job: str) -> None:
        a = await self.op("read ledger", "GET", f"/job-schedules/{job}/{sid}/ticks")
        if a.status == 200 and isinstance(a.body, list):
            self.log.ledger_polls.setdefault(sid, []).append(list(a.body))

    async def tick_client(self) -> None:
        """Keeps a few every-second schedules alive, each on its own job, replaced every 15-40 s."""
        loop = asyncio.get_running_loop()
        live: list[tuple[str, str, float]] = []
        next_poll = loop.time() + 5.0
        while not self.stop_load.is_set():
            if len(live) < self.config.every_second_schedules:
                job = f"{TICK_PREFIX}{self._tick_jobs}"
                self._tick_jobs += 1
                sid = await self.create_schedule(job, EVERY_SECOND)
                if sid is not None:
                    live.append((sid, job, loop.time() + self.rng.uniform(15.0, 40.0)))
                    continue
                await wait_event(self.stop_load, 0.5)
                continue
            now = loop.time()
            for entry in [e for e in live if e[2] <= now]:
                live.remove(entry)
                await self.poll_ledger(entry[0], entry[1])
                await self.delete_schedule(entry[0], entry[1])
            if now >= next_poll:
                for sid, job, _ in live:
                    await self.poll_ledger(sid, job)
                next_poll = now + 5.0
            await wait_event(self.stop_load, 0.5)

    async def churn_client(self) -> None:
        """Creates and deletes schedules that never fire during a run, on a few jobs."""
        live: list[tuple[str, str]] = []
        while not self.stop_load.is_set():
            if live and (len(live) >= 8 or self.rng.random() < 0.5):
                sid, job = live.pop(self.rng.randrange(len(live)))
                await self.delete_schedule(sid, job)
            else:
                job = self.rng.choice(CHURN_JOBS)
                created = await self.create_schedule(job, NEVER_IN_A_RUN)
                if created is not None:
                    live.append((created, job))
            await wait_event(self.stop_load, 1.0 / self.config.churn_rate)

    async def trigger_client(self) -> None:
        while not self.stop_load.is_set():
            seq = self._seq
            self._seq += 1
            job = f"{TRIGGER_PREFIX}{seq // TRIGGERS_PER_JOB}"
            self.log.job_names.add(job)
            a = await self.op("trigger", "POST", f"/job/{job}", {"Args": [str(seq)]})
            if a.acked and isinstance(a.body, dict):
                self.log.triggers[str(a.body["Id"])] = AckedTrigger(job, time.time())
            elif a.status is not None and a.status < 500:
                self.log.unexpected.append(f"POST /job/{job}: {a.status} {a.body}")
            await wait_event(self.stop_load, 1.0 / self.config.trigger_rate)

    async def until_acked(self, name: str, path: str, body: dict[str, Any]) -> Answer | None:
        """POST until a node acknowledges it; the body's RequestId makes every retry safe."""
        for _ in range(ACTION_ATTEMPTS):
            a = await self.op(name, "POST", path, body)
            if a.acked and isinstance(a.body, dict):
                return a
            if a.status is not None and a.status < 500:
                self.log.unexpected.append(f"POST {path}: {a.status} {a.body}")
                return None
            await asyncio.sleep(0.5)
        return None

    async def action_client(self) -> None:
        """Schedule actions under faults: a manual trigger, then a backfill of the next hours of
        2020, every few seconds, each retried with its RequestId until acknowledged. Every run
        they report is checked like an acknowledged trigger: on every node, one Job. A job takes
        ACTION_ROUNDS_PER_JOB rounds, so none holds more finished runs than the state keeps."""
        base = ""
        for n in itertools.count():
            if self.stop_load.is_set():
                return
            if n % ACTION_ROUNDS_PER_JOB == 0:
                job = f"{ACTION_PREFIX}{n // ACTION_ROUNDS_PER_JOB}"
                sid = None
                while sid is None and not self.stop_load.is_set():
                    sid = await self.create_schedule(job, ACTION_CRON)
                    if sid is None:
                        await wait_event(self.stop_load, 0.5)
                if sid is None:
                    return
                base = f"/job-schedules/{job}/{sid}"
            a = await self.until_acked("trigger schedule", f"{base}/trigger", {"RequestId": f"trigger-{n}"})
            if a is not None:
                self.log.triggers[str(a.body["Id"])] = AckedTrigger(job, time.time())
            start = BACKFILL_EPOCH + n * BACKFILL_HOURS * 3600
            window = {
                "Start": _iso(start),
                "End": _iso(start + (BACKFILL_HOURS - 1) * 3600),
                "RequestId": f"backfill-{n}",
            }
            a = await self.until_acked("backfill", f"{base}/backfill", window)
            if a is not None:
                fired = [str(t["RunId"]) for t in a.body["Fired"]]
                if len(fired) != BACKFILL_HOURS:
                    self.log.unexpected.append(f"backfill {window}: fired {len(fired)} of {BACKFILL_HOURS}")
                for run_id in fired:
                    self.log.triggers[run_id] = AckedTrigger(job, time.time())
            await wait_event(self.stop_load, ACTION_PERIOD)
