"""Kubernetes label selectors: parsing and matching, as the API server does for ``labelSelector``. Pure."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

_SELECTOR_TERM = re.compile(r"\s*(!)?\s*([A-Za-z0-9._/-]+)\s*(?:(==|=|!=)\s*([A-Za-z0-9._-]*))?\s*")
_SELECTOR_SET_TERM = re.compile(r"\s*([A-Za-z0-9._/-]+)\s+(in|notin)\s*\(([A-Za-z0-9._,\s-]*)\)\s*")
_SELECTOR_SPLIT = re.compile(r",(?![^()]*\))")  # commas outside parentheses


@dataclass(frozen=True)
class Requirement:
    key: str
    op: str  # "=", "!=", "exists", "!exists", "in", "notin"
    value: str = ""
    values: frozenset[str] = frozenset()  # of "in" and "notin"


class SelectorError(ValueError):
    pass


def parse_label_selector(selector: str) -> list[Requirement]:
    """``k=v``, ``k==v``, ``k!=v``, ``k``, ``!k``, ``k in (a,b)``, ``k notin (a,b)``, comma separated."""
    reqs: list[Requirement] = []
    for term in _SELECTOR_SPLIT.split(selector):
        if not term.strip():
            continue
        set_term = _SELECTOR_SET_TERM.fullmatch(term)
        if set_term is not None:
            key, op, raw = set_term.groups()
            values = frozenset(v.strip() for v in raw.split(",") if v.strip())
            if not values:
                raise SelectorError(f"unable to parse requirement: {term.strip()!r}: empty set")
            reqs.append(Requirement(key, op, values=values))
            continue
        m = _SELECTOR_TERM.fullmatch(term)
        if m is None:
            raise SelectorError(f"unable to parse requirement: {term.strip()!r}")
        negated, key, op, value = m.groups()
        if negated and op:
            raise SelectorError(f"unable to parse requirement: {term.strip()!r}")
        if op is None:
            reqs.append(Requirement(key, "!exists" if negated else "exists"))
        else:
            reqs.append(Requirement(key, "!=" if op == "!=" else "=", value or ""))
    return reqs


def selector_matches(labels: Mapping[str, str], reqs: list[Requirement]) -> bool:
    for r in reqs:
        if r.op == "exists" and r.key not in labels:
            return False
        if r.op == "!exists" and r.key in labels:
            return False
        if r.op == "=" and labels.get(r.key) != r.value:
            return False
        if r.op == "!=" and labels.get(r.key) == r.value:
            return False
        if r.op == "in" and labels.get(r.key) not in r.values:
            return False
        if r.op == "notin" and labels.get(r.key) in r.values:
            return False
    return True
