"""Declared method options: one table per method feeds validation, ``defaults``,
``tasksift methods NAME`` and the docs (the pattern of scikit-learn's
``_parameter_constraints``).

A method declares ``parameters = {"alpha": Option(0.5, "weight of ...", Interval(float, 0, 1)), ...}``.
An :class:`Option` accepts a value when any one of its constraints does; a constraint is an
:class:`Interval`, a :class:`Choices`, a :class:`PathLike`, ``None`` (null allowed) or one of the types ``bool``,
``str``, ``list``, ``dict``. :func:`validate_options` raises one standard
:class:`~tasksift.errors.ConfigError` message for an unknown or a badly typed option.
"""
from __future__ import annotations

import math
import numbers
import os
from dataclasses import dataclass
from typing import Any, Mapping

from ..errors import ConfigError

_TYPE_WORDS = {bool: "true or false", str: "text", list: "a list", dict: "a mapping"}
_TYPE_NAMES = {bool: "bool", str: "str", list: "list", dict: "mapping"}


@dataclass(frozen=True)
class Interval:
    """Numbers of ``kind`` (``int`` or ``float``) between ``low`` and ``high`` (None = unbounded);
    ``closed`` says which ends belong: "both", "left", "right" or "neither"."""

    kind: type
    low: float | None = None
    high: float | None = None
    closed: str = "both"

    def accepts(self, value: Any) -> bool:
        if isinstance(value, bool):
            return False
        if self.kind is int:
            if not isinstance(value, numbers.Integral):
                return False
        elif not isinstance(value, numbers.Real) or not math.isfinite(float(value)):
            return False
        lo_ok = self.low is None or (value >= self.low if self.closed in ("both", "left") else value > self.low)
        hi_ok = self.high is None or (value <= self.high if self.closed in ("both", "right") else value < self.high)
        return lo_ok and hi_ok

    def _bounds(self, space: str) -> str:
        """The interval as ``[0, 1]`` / ``>= 1`` / ``< 5`` (``space`` between the parts; "" when
        unbounded)."""
        closed_low, closed_high = self.closed in ("both", "left"), self.closed in ("both", "right")
        if self.low is not None and self.high is not None:
            return (f"{'[' if closed_low else '('}{_num(self.low)},{space}{_num(self.high)}"
                    f"{']' if closed_high else ')'}")
        if self.low is not None:
            return f"{'>=' if closed_low else '>'}{space}{_num(self.low)}"
        if self.high is not None:
            return f"{'<=' if closed_high else '<'}{space}{_num(self.high)}"
        return ""

    def describe(self) -> str:
        what = "an integer" if self.kind is int else "a number"
        bounds = self._bounds(" ")
        if not bounds:
            return what
        return f"{what} in {bounds}" if self.low is not None and self.high is not None else f"{what} {bounds}"

    def type_name(self) -> str:
        return ("int" if self.kind is int else "float") + self._bounds("")


@dataclass(frozen=True)
class Choices:
    """One of a fixed set of values (compared with ``==``, booleans never match numbers)."""

    values: tuple

    def __init__(self, *values: Any) -> None:
        object.__setattr__(self, "values", tuple(values))

    def accepts(self, value: Any) -> bool:
        return any(value == v and isinstance(value, bool) == isinstance(v, bool) for v in self.values)

    def describe(self) -> str:
        shown = [repr(v) if isinstance(v, str) else _yaml_word(v) for v in self.values]
        return "one of " + ", ".join(shown)

    def type_name(self) -> str:
        return "{" + ",".join(str(_yaml_word(v)) for v in self.values) + "}"


@dataclass(frozen=True)
class PathLike:
    """A file or folder path, or a hub id: text or an ``os.PathLike``."""

    def accepts(self, value: Any) -> bool:
        return isinstance(value, (str, os.PathLike))

    def describe(self) -> str:
        return "a path or hub id"

    def type_name(self) -> str:
        return "path"


@dataclass(frozen=True)
class Option:
    """One method option: its default, a one-line help text and what it accepts."""

    default: Any
    help: str
    accepts: tuple

    def __init__(self, default: Any, help: str, *accepts: Any) -> None:
        object.__setattr__(self, "default", default)
        object.__setattr__(self, "help", help)
        object.__setattr__(self, "accepts", tuple(accepts))

    def allows(self, value: Any) -> bool:
        """Whether ``value`` satisfies one of the constraints (no constraints: anything)."""
        if not self.accepts:
            return True
        return any(_constraint_accepts(c, value) for c in self.accepts)

    def describe(self) -> str:
        """What the option accepts, in words: "a number in [0, 1] or null"."""
        if not self.accepts:
            return "any value"
        words = [_constraint_words(c) for c in self.accepts]
        return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " or " + words[-1]

    def type_name(self) -> str:
        """A short type for tables: ``float``, ``int|null``, ``{max,mean}``."""
        if not self.accepts:
            return "any"
        return "|".join(_constraint_type(c) for c in self.accepts)


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)


def _yaml_word(v: Any) -> Any:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "true" if v else "false"
    return v


def _constraint_accepts(c: Any, value: Any) -> bool:
    if c is None:
        return value is None
    if c is bool:
        return isinstance(value, bool)
    if c is str:
        return isinstance(value, str)
    if c is list:
        return isinstance(value, (list, tuple))
    if c is dict:
        return isinstance(value, Mapping)
    return c.accepts(value)


def _constraint_words(c: Any) -> str:
    if c is None:
        return "null"
    if isinstance(c, type):
        return _TYPE_WORDS[c]
    return c.describe()


def _constraint_type(c: Any) -> str:
    if c is None:
        return "null"
    if isinstance(c, type):
        return _TYPE_NAMES[c]
    return c.type_name()


def defaults_of(table: Mapping[str, Option]) -> dict[str, Any]:
    """Each option's default, in table order (containers copied so callers can't share them)."""
    out = {}
    for name, opt in table.items():
        d = opt.default
        out[name] = type(d)(d) if isinstance(d, (list, dict)) else d
    return out


def validate_options(method: str, table: Mapping[str, Option], given: Mapping[str, Any]) -> None:
    """Raise one ConfigError naming the first unknown option or the first value its
    option does not accept (``method 'tsds' option alpha must be a number in [0, 1], got 2``)."""
    unknown = [k for k in given if k not in table]
    if unknown:
        raise ConfigError(f"method '{method}' has no option(s) {sorted(unknown)}; "
                          f"options: {', '.join(sorted(table)) or 'none'} (see `tasksift methods {method}`)")
    for name, value in given.items():
        opt = table[name]
        if not opt.allows(value):
            raise ConfigError(f"method '{method}' option {name} must be {opt.describe()}, got {value!r}")


def table_rows(table: Mapping[str, Option]) -> list[dict[str, Any]]:
    """The table as JSON-ready rows: name, type, default, accepts (in words), help."""
    return [{"name": name, "type": opt.type_name(), "default": opt.default, "accepts": opt.describe(),
             "help": opt.help} for name, opt in table.items()]
