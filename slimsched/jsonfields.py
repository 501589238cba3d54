"""Reading decoded JSON the way SlimFaas's clients write it, and recording what was adjusted.

Two outcomes besides a value:

- an error (``Invalid``): the input cannot mean anything (a wrong type, a malformed quantity),
  converted by the public entry points into ``BadRequest`` or ``ConfigError`` with the path of
  the field (``Resources.Limits.cpu: ...``);
- a note (``Note``): the input was read, but not exactly as written. An unknown field is
  ignored, as SlimFaas (System.Text.Json) ignores it; a resource above the configuration is
  capped, as SlimFaas caps it. Notes are collected by whoever opened ``collecting()`` (the API
  answers with one ``Warning`` header per note, or refuses them all in strict mode; the
  configuration lists them in /status) and dropped when nobody listens (a schedule's overrides
  merged again at each tick).

Property names match in any case, as SlimFaas's documentation writes them in PascalCase and
camelCase; when one field is given twice, the exact spelling wins (SlimFaas reads only the
exact one and ignores the other), and two inexact spellings are an error.

Pure: no I/O, no clock. The collector is a ``ContextVar``, so concurrent requests on one event
loop never see each other's notes.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from enum import Enum
from fractions import Fraction
from typing import NoReturn, TypeVar

from slimsched.quantities import parse_quantity

INT32_MAX = 2**31 - 1
INT64_MAX = 2**63 - 1

_E = TypeVar("_E", bound=Enum)
_T = TypeVar("_T")


@dataclass(frozen=True)
class Note:
    """One adjustment of an input: ``code`` is stable (metrics label, strict-mode error code)."""

    code: str
    path: str
    detail: str

    @property
    def message(self) -> str:
        return f"{self.path}: {self.detail}." if self.path else f"{self.detail[0].upper()}{self.detail[1:]}."


_NOTES: ContextVar[list[Note] | None] = ContextVar("slimsched_notes", default=None)


class collecting:
    """Collect the notes of the parsing and merging done inside the block, in order.

    A class rather than ``@contextmanager``: it runs on every write request, and a generator
    based context manager costs several times more.
    """

    __slots__ = ("_notes", "_token")

    def __enter__(self) -> list[Note]:
        self._notes: list[Note] = []
        self._token = _NOTES.set(self._notes)
        return self._notes

    def __exit__(self, *exc: object) -> None:
        _NOTES.reset(self._token)


def note(code: str, path: str, detail: str) -> None:
    """Record an adjustment for the innermost ``collecting()`` block, if any."""
    notes = _NOTES.get()
    if notes is not None:
        notes.append(Note(code, path, detail))


class Invalid(Exception):
    """A validation failure, converted to ``BadRequest`` or ``ConfigError`` by the public entry."""

    def __init__(self, code: str, path: str, detail: str) -> None:
        self.code = code
        self.path = path
        self.detail = detail
        super().__init__(self.message)

    @property
    def message(self) -> str:
        return Note(self.code, self.path, self.detail).message


def fail(code: str, path: str, detail: str) -> NoReturn:
    raise Invalid(code, path, detail)


def join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def describe(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        text = json.dumps(value, ensure_ascii=False)
        return f"the string {text}" if len(text) <= 40 else f'the string {text[:36]}..."'
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return f"a {type(value).__name__}"


def as_object(value: object, path: str) -> dict[str, object]:
    if not isinstance(value, dict):
        fail("invalid_field", path, f"expected an object, got {describe(value)}")
    return value


def fields(
    obj: Mapping[str, object],
    names: Sequence[str],
    path: str,
    aliases: Mapping[str, str] | None = None,
    *,
    unknown_is_error: bool = False,
) -> dict[str, object]:
    """``obj``'s entries under their canonical names, matched case-insensitively; nulls dropped.

    An unknown key is ignored with a note, or, with ``unknown_is_error`` (the volume structures,
    our own addition, where an ignored ``HostPath`` would hide a mistake about data access), an
    error. A field given under two spellings keeps the exact one
    (a canonical name or an alias as written here) with a note; two inexact spellings are an
    error, since nothing says which one was meant.
    """
    canonical, exact = _lookup(tuple(names), tuple((aliases or {}).items()))
    given: dict[str, str] = {}
    out: dict[str, object] = {}
    for key, value in obj.items():
        name = canonical.get(key.lower()) if isinstance(key, str) else None
        if name is None:
            if unknown_is_error:
                fail(
                    "unknown_field",
                    join(path, str(key)),
                    f"unknown field; the fields accepted here are {', '.join(names)}",
                )
            note("unknown_field", join(path, str(key)), "unknown field, ignored")
            continue
        earlier = given.get(name)
        if earlier is not None:
            if (earlier in exact) == (key in exact):
                fail("duplicate_field", join(path, name), f"given twice, as {earlier!r} and {key!r}")
            kept, dropped = (earlier, key) if earlier in exact else (key, earlier)
            note("duplicate_field", join(path, dropped), f"ignored, since {kept!r} is given too")
            if kept == earlier:
                continue
            out.pop(name, None)
        given[name] = key
        if value is not None:
            out[name] = value
    return out


@functools.cache
def _lookup(
    names: tuple[str, ...], aliases: tuple[tuple[str, str], ...]
) -> tuple[dict[str, str], frozenset[str]]:
    """Lowercased spelling -> canonical name, and the exact spellings; built once per field set."""
    canonical = {name.lower(): name for name in names}
    for alias, target in aliases:
        canonical[alias.lower()] = target
    return canonical, frozenset(names) | frozenset(alias for alias, _ in aliases)


def as_str(value: object, path: str) -> str:
    if not isinstance(value, str):
        fail("invalid_field", path, f"expected a string, got {describe(value)}")
    return value


def as_strs(value: object, path: str) -> tuple[str, ...]:
    if not isinstance(value, list):
        fail("invalid_field", path, f"expected a list of strings, got {describe(value)}")
    return tuple(as_str(item, f"{path}[{i}]") for i, item in enumerate(value))


def as_bool(value: object, path: str) -> bool:
    if not isinstance(value, bool):
        fail("invalid_field", path, f"expected true or false, got {describe(value)}")
    return value


def as_int(value: object, path: str, *, minimum: int, maximum: int = INT32_MAX) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        fail("invalid_field", path, f"expected an integer, got {describe(value)}")
    check_range(value, path, minimum=minimum, maximum=maximum)
    return value


def check_range(value: int, path: str, *, minimum: int, maximum: int = INT32_MAX) -> None:
    if value < minimum:
        kind = {0: "a non-negative integer", 1: "a positive integer"}.get(minimum, f"at least {minimum}")
        fail("invalid_field", path, f"expected {kind}, got {value}")
    if value > maximum:
        fail("invalid_field", path, f"expected at most {maximum}, got {value}")


def as_choice(value: object, path: str, kind: type[_E]) -> _E:
    text = as_str(value, path)
    for member in kind:
        if str(member.value).lower() == text.lower():
            return member
    allowed = " or ".join(str(member.value) for member in kind)
    fail("invalid_field", path, f"expected {allowed}, got {describe(value)}")


def as_quantity(value: object, path: str) -> Fraction:
    text = as_str(value, path)
    try:
        amount = parse_quantity(text)
    except ValueError as e:
        fail("invalid_quantity", path, str(e))
    if amount < 0:
        fail("invalid_quantity", path, f"a resource quantity cannot be negative, got {text!r}")
    return amount


def or_default(value: _T | None, default: _T) -> _T:
    return default if value is None else value


class Reader:
    """The fields of one JSON object, read by canonical name with their paths for messages."""

    def __init__(self, fields: Mapping[str, object], path: str) -> None:
        self.fields = fields
        self.path = path

    def at(self, name: str) -> str:
        return join(self.path, name)

    def get(self, name: str, parse: Callable[[object, str], _T]) -> _T | None:
        return parse(self.fields[name], self.at(name)) if name in self.fields else None

    def required(self, name: str, parse: Callable[[object, str], _T]) -> _T:
        value = self.get(name, parse)
        if value is None:
            fail("missing_field", self.at(name), "required")
        return value

    def integer(self, name: str, *, minimum: int, maximum: int = INT32_MAX) -> int | None:
        if name not in self.fields:
            return None
        return as_int(self.fields[name], self.at(name), minimum=minimum, maximum=maximum)

    def choice(self, name: str, kind: type[_E]) -> _E | None:
        return as_choice(self.fields[name], self.at(name), kind) if name in self.fields else None
