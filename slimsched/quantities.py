"""Kubernetes resource quantities ("500m", "1.5Gi", "2e3"), parsed into exact values.

The override rules compare what a request asks for with what the job configuration allows
("is 600Mi at most 0.5Gi?"), so a quantity must mean here exactly what it will mean to the
Kubernetes API server once the Job is created. ``parse_quantity`` follows the behaviour of
``resource.ParseQuantity`` in k8s.io/apimachinery rather than its looser documentation:

- grammar: an optional sign, digits with an optional fraction (``1``, ``1.``, ``.5``), then one
  suffix: a binary one (Ki Mi Gi Ti Pi Ei), a decimal one (n u m "" k M G T P E), or a decimal
  exponent with an integer power (``e3``, ``E-2``; ``1e1.5`` is refused as Kubernetes refuses
  it). Whitespace, ``K`` alone, ``KB``, ``mi`` and a bare sign are malformed;
- a non-zero value is rounded away from zero to a whole nano unit (``0.1n`` means ``1n``);
- a binary-suffixed value is capped at 2**63 - 1, as Kubernetes caps it.

One deliberate departure: a written exponent beyond +-1000 or a number of more than 1000
digits is refused. Kubernetes would store ``1e999999999``; computing it exactly here would let
one request burn the CPU of the leader, and no resource is anywhere near that size.
"""

from __future__ import annotations

import functools
import re
from fractions import Fraction

_BINARY_SUFFIXES: dict[str, int] = {"Ki": 10, "Mi": 20, "Gi": 30, "Ti": 40, "Pi": 50, "Ei": 60}
_DECIMAL_SUFFIXES: dict[str, int] = {
    "n": -9,
    "u": -6,
    "m": -3,
    "": 0,
    "k": 3,
    "M": 6,
    "G": 9,
    "T": 12,
    "P": 15,
    "E": 18,
}

_QUANTITY = re.compile(
    r"(?P<sign>[+-]?)"
    r"(?:(?P<int>[0-9]+)(?:\.(?P<frac1>[0-9]*))?|\.(?P<frac2>[0-9]+))"
    r"(?:(?P<binary>[KMGTPE]i)|(?P<decimal>[numkMGTPE]?)|[eE](?P<exponent>[+-]?[0-9]+))"
)

_MAX_DIGITS = 1000
_MAX_EXPONENT = 1000
_NANO = Fraction(1, 10**9)
_BINARY_CAP = Fraction(2**63 - 1)


def parse_quantity(s: str) -> Fraction:
    """Return the exact value of the Kubernetes quantity ``s``; raise ``ValueError`` if malformed.

    Memoized (bounded): a request's quantities are compared with the same configured ones again
    and again, and exact parsing with fractions is most of what merging a request costs.
    """
    if not isinstance(s, str):
        raise ValueError(f"a quantity must be a string, not {type(s).__name__}")
    return _parse(s)


@functools.lru_cache(maxsize=4096)
def _parse(s: str) -> Fraction:
    if not s:
        raise ValueError("an empty string is not a Kubernetes quantity")
    m = _QUANTITY.fullmatch(s)
    if m is None:
        raise ValueError(
            f"{_shown(s)} is not a Kubernetes quantity: expected a number with an optional suffix "
            "such as 500m, 2, 1.5, 128Mi, 1Gi or 1e3"
        )
    whole = m["int"] or ""
    fraction = m["frac1"] or m["frac2"] or ""
    if len(whole) + len(fraction) > _MAX_DIGITS:
        raise ValueError(f"quantity {_shown(s)} has more than {_MAX_DIGITS} digits")
    value = Fraction(int(whole + fraction or "0"), 10 ** len(fraction))

    binary = m["binary"]
    if binary is not None:
        value *= 2 ** _BINARY_SUFFIXES[binary]
    else:
        written = m["exponent"]
        if written is None:
            exponent = _DECIMAL_SUFFIXES[m["decimal"]]
        else:
            digits = written.lstrip("+-").lstrip("0")
            if len(digits) > len(str(_MAX_EXPONENT)):
                raise ValueError(f"quantity {_shown(s)} has an exponent beyond +-{_MAX_EXPONENT}")
            exponent = -int(digits or "0") if written.startswith("-") else int(digits or "0")
        if abs(exponent) > _MAX_EXPONENT:
            raise ValueError(f"quantity {_shown(s)} has an exponent beyond +-{_MAX_EXPONENT}")
        value *= Fraction(10) ** exponent

    if value and value.denominator != 1:
        nanos = -((-value) // _NANO)  # ceiling: Kubernetes rounds a magnitude up, never to zero
        value = nanos * _NANO
    if binary is not None and value > _BINARY_CAP:
        value = _BINARY_CAP
    return -value if m["sign"] == "-" else value


def _shown(s: str) -> str:
    return repr(s) if len(s) <= 40 else f"{s[:37]!r}..."
