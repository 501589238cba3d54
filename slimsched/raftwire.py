"""The limits of pysyncobj's wire, and the transport's counters (issue 16).

Pure: raft.py, the only module importing pysyncobj, enforces them in its transport classes.
"""

from __future__ import annotations

import errno
import logging
import time
from dataclasses import dataclass
from typing import TypeVar

from slimsched.statemachine import MAX_BATCH_COMMANDS

log = logging.getLogger("slimsched.raft")

# Under pysyncobj's appendEntriesBatchSizeBytes (64 KiB): a batch travels as one message.
MAX_BATCH_BYTES = 60_000

# pysyncobj's frame is an int32 length, then zlib(pickle(message)), wrapped with a password in a
# Fernet token (base64 of version, timestamp, IV, AES-CBC ciphertext and HMAC: 4/3 of the data plus
# ~100 bytes). It buffers whatever length a frame announces before it authenticates anything.
#
# The first frame on an accepted connection is the peer's random key (with a password: a Fernet
# token of 32 bytes, ~190 bytes) or, without one, its address or a utility command: all tiny.
# A frame that authenticates proves the password; until then a connection may buffer only this.
HANDSHAKE_FRAME_BYTES = 4096
# Restore parts are ~1 MB (backup.RESTORE_PART_BYTES), grouped by schedule count: a part can hold
# one schedule more than its share, and a schedule's command is bounded by the HTTP body cap.
RESTORE_PART_MAX_BYTES = 1_000_000
FRAME_SLACK_BYTES = 64 * 1024  # the message dict, pickle and zlib framing, Fernet's fixed part


def largest_command_bytes(max_body_bytes: int) -> int:
    """The largest command one frame carries whole.

    The leader sends append_entries of entries up to pysyncobj's appendEntriesBatchSizeBytes
    (64 KiB, plus the one entry that crosses it), an entry of 64 KiB or more in 64 KiB pieces, and
    snapshots in logCompactionBatchSize (64 KiB) pieces. A follower forwards a command it proposes
    to the leader whole (``apply_command``): a restore part, or a command made of an HTTP body
    (a batch of them stays under MAX_BATCH_BYTES).
    """
    return RESTORE_PART_MAX_BYTES + 2 * max(max_body_bytes, MAX_BATCH_BYTES)


def frame_cap_bytes(max_body_bytes: int) -> int:
    """Frames an authenticated peer may send: the largest command with Fernet's 4/3 and slack."""
    return largest_command_bytes(max_body_bytes) * 4 // 3 + FRAME_SLACK_BYTES


# Raft-thread counters, read by /metrics (one writer: the Raft thread).
@dataclass
class TransportCounters:
    frames_refused: int = 0  # frames announced beyond the cap; their connection was dropped
    accept_failures: int = 0  # accept() failed for lack of file descriptors (the listener stays)
    listener_lost: str | None = None  # why the Raft listening socket is closed, if it is
    unidentified_dropped: int = 0  # connections dropped before they said which peer they are
    resent_entries: int = 0  # applied entries the leader sent again, unchanged (benign)
    divergences: int = 0  # applied entries replaced by another term or command: an alarm
    last_warning_at: float = -1e9


# A peer identifies itself (random key, then its address) within milliseconds of connecting.
MAX_UNIDENTIFIED_CONNECTIONS = 64
UNIDENTIFIED_SECONDS = 5.0
WARNING_INTERVAL_SECONDS = 10.0  # a flood of strangers logs one line per interval, not one each


def warn_rarely(counters: TransportCounters, msg: str, *args: object) -> None:
    now = time.monotonic()
    if now - counters.last_warning_at >= WARNING_INTERVAL_SECONDS:
        counters.last_warning_at = now
        log.warning(msg, *args)
    else:
        log.debug(msg, *args)


# accept() failures of the Raft listener: out of descriptors (pause accepting), or a pending
# connection's own error that Linux passes on (skip it); any other closes the listener.
OUT_OF_DESCRIPTORS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
# accept(2): Linux passes on a pending connection's own network error; the listener is fine.
CONNECTION_ERRORS = frozenset(
    {
        errno.EAGAIN,
        errno.EWOULDBLOCK,
        errno.EINTR,
        errno.ECONNABORTED,
        errno.EPROTO,
        errno.EPERM,
        errno.ENETDOWN,
        errno.ENETUNREACH,
        errno.EHOSTDOWN,
        errno.EHOSTUNREACH,
        errno.ENONET,
        errno.ENOPROTOOPT,
        errno.EOPNOTSUPP,
    }
)
ACCEPT_PAUSE_SECONDS = 0.2
LISTEN_BACKLOG = 128


T = TypeVar("T")


def batch_groups(pending: list[tuple[bytes, T]]) -> list[list[tuple[bytes, T]]]:
    """Consecutive runs of commands, each under MAX_BATCH_BYTES and MAX_BATCH_COMMANDS."""
    groups: list[list[tuple[bytes, T]]] = []
    size = 0
    for item in pending:
        full = bool(groups) and len(groups[-1]) >= MAX_BATCH_COMMANDS
        if not groups or full or size + len(item[0]) > MAX_BATCH_BYTES:
            groups.append([])
            size = 0
        groups[-1].append(item)
        size += len(item[0]) + 1
    return groups
