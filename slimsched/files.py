"""Durable file writes shared by the Raft dumps and the backups: fsync the data, then its directory."""

from __future__ import annotations

import os


def fsync_dir(path: str) -> None:
    """Make a rename in ``path`` durable: a crash after it cannot bring back the old entry."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
