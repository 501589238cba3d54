"""Request and run ids: 128 random bits as 32 hex digits, without a system call per id.

``uuid.uuid4`` reads ``os.urandom`` for every id; that call releases the GIL, and on a busy
leader taking it back waits for the Raft thread's switch interval: uuid4 was a fifth of the
leader's event-loop time in the write benchmark (bench/RESULTS.md). Ids only have to be unique
(they name requests for deduplication and runs for their Jobs), not secret, so one generator
per process, seeded once from ``os.urandom``, gives them; two processes collide only if their
128-bit seeds do.
"""

from __future__ import annotations

import os
import random

_generator = random.Random(int.from_bytes(os.urandom(32), "big"))


def new_id() -> str:
    return f"{_generator.getrandbits(128):032x}"
