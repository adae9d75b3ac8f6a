"""One way to validate settings: a table of rules, checked before RLlib's own checks.

Every algorithm lists its settings as :class:`Rule` rows (name, predicate, allowed values)
and calls :func:`check_rules`; a bad value is one ``ValueError`` naming the key, the value
and what is allowed. The predicates refuse booleans where numbers are meant
(``kfac_damping=True`` is not 1.0) and strings where numbers are meant.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Rule:
    """A setting, the predicate its value must satisfy, and the allowed values in words.

    ``method`` names the config method the user sets it with (``training``,
    ``env_runners``, ...), ``key`` the argument name there when it differs from the
    attribute ``name``.
    """

    name: str
    ok: Callable[[Any], bool]
    allowed: str
    method: str = "training"
    key: str | None = None


def is_number(value: Any) -> bool:
    """A real int or float (not a bool, not a string)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def number(low: float | None = None, high: float | None = None, *, low_open: bool = False,
           high_open: bool = False, finite: bool = True) -> Callable[[Any], bool]:
    """Predicate: a number (finite unless ``finite=False``, never NaN) in the interval."""

    def ok(value: Any) -> bool:
        if not is_number(value) or math.isnan(value) or (finite and math.isinf(value)):
            return False
        if low is not None and (value <= low if low_open else value < low):
            return False
        return not (high is not None and (value >= high if high_open else value > high))

    return ok


def integer(low: int | None = None, high: int | None = None) -> Callable[[Any], bool]:
    """Predicate: an int (not a bool) in ``[low, high]``."""

    def ok(value: Any) -> bool:
        return (isinstance(value, int) and not isinstance(value, bool)
                and (low is None or value >= low) and (high is None or value <= high))

    return ok


def boolean(value: Any) -> bool:
    """Predicate: True or False (not 0/1, not a string)."""
    return isinstance(value, bool)


def one_of(options: Sequence[Any]) -> Callable[[Any], bool]:
    """Predicate: one of ``options``."""
    return lambda value: isinstance(value, type(options[0])) and value in options


def optional(inner: Callable[[Any], bool]) -> Callable[[Any], bool]:
    """Predicate: None or what ``inner`` accepts."""
    return lambda value: value is None or inner(value)


def sequence_of(inner: Callable[[Any], bool], length: int) -> Callable[[Any], bool]:
    """Predicate: a list or tuple of ``length`` items, each accepted by ``inner``."""
    return lambda value: (isinstance(value, (list, tuple)) and len(value) == length
                          and all(inner(item) for item in value))


def check_rules(config: Any, rules: Sequence[Rule]) -> None:
    """Raises one ``ValueError`` for the first setting of ``config`` that breaks its rule."""
    for rule in rules:
        value = getattr(config, rule.name)
        if not rule.ok(value):
            key = rule.key or rule.name
            raise ValueError(f"{rule.method}({key}={value!r}) is invalid: {key} must be "
                             f"{rule.allowed}.")
