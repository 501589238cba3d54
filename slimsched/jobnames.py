"""Job names as SlimFaas reads them: lowercased, then ``[a-z0-9_-]``, at most 40 characters.

SlimFaas lowercases the name of every ``/job/{name}`` and ``/job-schedules/{name}`` request and
then accepts ``[a-z0-9_-]+``, and looks configuration keys up case-insensitively. slimsched does
the same, with two differences that only widen what is accepted: names of 1 or 2 characters
(SlimFaas wants 3 to 30) and up to 40 characters. A name with ``_`` or a leading ``-`` is not a
Kubernetes object name, so the Job, container and label names derived from it are made safe in
``jobmanifest`` (deterministically, from the run id).

Pure: no I/O.
"""

from __future__ import annotations

import re

MAX_JOB_NAME_LENGTH = 40
"""Room for the run suffix in the 63 characters of a Kubernetes Job name, and more than
SlimFaas's own limit of 30."""

_JOB_NAME = re.compile(r"[a-z0-9_-]+")


def normalize_job_name(name: str) -> str:
    """``name`` as SlimFaas reads it: lowercased (``Fibonacci`` is job ``fibonacci``)."""
    return name.lower()


def is_job_name(name: str) -> bool:
    """Whether ``name`` (already lowercased) can name a job: ``[a-z0-9_-]``, 1 to 40 characters."""
    return len(name) <= MAX_JOB_NAME_LENGTH and _JOB_NAME.fullmatch(name) is not None


def job_name_rule() -> str:
    """The rule in words, for error messages."""
    return (
        "lowercase letters, digits, '_' and '-' (read in any case and lowercased, as SlimFaas does), "
        f"1 to {MAX_JOB_NAME_LENGTH} characters"
    )
