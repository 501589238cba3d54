"""Watching pysyncobj's log for a real divergence, and quieting its false alarm (issue 16).

Pure of pysyncobj imports: raft.py hands over the journal object pysyncobj created.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from slimsched.raftwire import TransportCounters

log = logging.getLogger("slimsched.raft")

_RESEND_MESSAGE = "truncating already-applied log entries"


class _QuietResend(logging.Filter):
    """Drops pysyncobj's CRITICAL "truncating already-applied log entries": it fires whenever a
    leader re-sends entries a follower has already applied, which ordinary writes do (issue 16),
    so it could not serve as the divergence alarm. ``LogWatch`` tells the two cases apart."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(_RESEND_MESSAGE)


logging.getLogger("pysyncobj.syncobj").addFilter(_QuietResend())


class LogWatch:
    """Compares each applied entry pysyncobj truncates with the entry it adds back at that index.

    The same term and command: the leader re-sent what this node had (debug). Another term or
    command: an entry this node applied was replaced, its state has diverged from the leader's
    (critical log line and ``divergences``). pysyncobj's journal is wrapped on the instance, as
    its truncation happens inside a name-mangled method of its append_entries handler.
    """

    def __init__(self, journal: Any, applied: Callable[[], int], counters: TransportCounters) -> None:
        self._journal = journal
        self._applied = applied
        self._counters = counters
        self._truncated: dict[int, tuple[int, bytes]] = {}  # index -> (term, command); Raft thread

    def install(self) -> None:
        journal = self._journal
        delete, add = journal.deleteEntriesFrom, journal.add

        def watched_delete(position: int) -> None:
            applied = self._applied()
            for i in range(position, len(journal)):
                command, index, term = journal[i]
                if index > applied:
                    break
                self._truncated[index] = (term, command)
            delete(position)

        def watched_add(command: bytes, index: int, term: int) -> None:
            add(command, index, term)
            if self._truncated:
                self.compare(index, term, command)

        journal.deleteEntriesFrom = watched_delete
        journal.add = watched_add

    def compare(self, index: int, term: int, command: bytes) -> None:
        old = self._truncated.pop(index, None)
        if old is None:
            return
        if old == (term, command):
            self._counters.resent_entries += 1
            log.debug("Raft: the leader re-sent entry %d (term %d), already applied here", index, term)
            return
        self._counters.divergences += 1
        log.critical(
            "Raft: entry %d, applied here at term %d, is replaced by the leader's entry of term %d%s: "
            "this node's state has diverged from the cluster's; stop it, wipe its Raft data and let it "
            "catch up (backup/RUNBOOK.md)",
            index,
            old[0],
            term,
            "" if old[0] != term else " (same term, another command)",
        )
