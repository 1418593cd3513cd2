"""Option values by their type annotation: the one converter behind spec options
(``emin:steps=20``, text) and grid settings (``epochs = 3`` in a config file, flags, API keywords).

Both read the annotation the same way (``X | None``, ``Literal``, lists and tuples, ``bool``,
``int``, ``float``) and fail with one line (:class:`~uebench.errors.UebenchError`); what
differs is what they are given: a spec option is always text to parse, a grid setting is
already a value and must have the annotation's type (``"three"`` is not an integer, ``"no"``
not a boolean).  An option a plugin takes through ``**options`` has no annotation:
:func:`guess` types it by how it is written.
"""

from __future__ import annotations

import math
import numbers
import os
import re
import types
import typing
from collections.abc import Mapping
from typing import Any

import numpy as np

from uebench.errors import UebenchError
from uebench.spec import parse_float, split_list, where_empty

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}
#: No seed list may hold more seeds than this, whatever a grid's ``max_cells`` says: expanding
#: ``0-100000000`` alone would take gigabytes before any bound could be checked.
MAX_SEEDS = 1_000_000


def convert(
    value: Any,
    annotation: Any,
    where: str,
    *,
    bounds: Mapping[str, Any] | None = None,
    text: bool = False,
) -> Any:
    """``value`` as a value of ``annotation`` (``int | None``, ``list[str]``, ``Literal[...]``),
    or a one-line error that starts with ``where``.

    With ``text`` the value is a spec option's text: ``none``/``null``/empty is None for an
    optional option, each type of a union is tried in turn, and words and numbers are parsed.
    Without it the value is a grid setting: lists may also be given as comma-separated strings
    (seeds also as ranges, ``0-4``); booleans must be real booleans; integers may not be floats
    with a fraction; floats must be finite; numbers keep within ``bounds`` (``min``, ``above``).
    """
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        optional = len(args) < len(typing.get_args(annotation))
        if not text:
            if value is None:
                return None
            (annotation,) = args
            return convert(value, annotation, where, bounds=bounds)
        if value.lower() in {"none", "null", ""} and optional:
            return None
        errors = []
        for arg in args:
            try:
                return convert(value, arg, where, text=True)
            except UebenchError as error:
                errors.append(str(error))
        raise UebenchError(errors[0])
    if origin is typing.Literal:
        allowed = typing.get_args(annotation)
        if value not in allowed:
            raise UebenchError(f"{where}: {value!r} is not one of {', '.join(map(str, allowed))}")
        return value
    if text:
        return _from_text(value, annotation, where)
    bounds = bounds or {}
    if origin is list:
        (item_type,) = typing.get_args(annotation)
        items = _as_list(where, value, item_type)
        return [_checked_item(where, item, item_type, bounds, in_list=True) for item in items]
    return _checked_item(where, value, annotation, bounds)


def guess(value: str) -> Any:
    """An option for a ``**options`` plugin, typed by how it is written: ``32`` an int,
    ``0.1`` or ``8/255`` a float, ``true``/``false`` a bool, ``none`` None, ``32,32`` a tuple
    of those, anything else the string itself."""
    if "," in value:
        return tuple(guess(part.strip()) for part in value.split(",") if part.strip())
    lowered = value.lower()
    if lowered in _TRUE - {"1"}:
        return True
    if lowered in _FALSE - {"0"}:
        return False
    if lowered in {"none", "null"}:
        return None
    try:
        return int(value)
    except ValueError:
        pass
    try:
        return parse_float(value)
    except UebenchError:
        return value


def _from_text(value: str, annotation: Any, where: str) -> Any:
    """A spec's text as a tuple, boolean (true/false, yes/no, on/off, 1/0), integer or float
    (fractions such as 8/255); any other annotation keeps the text."""
    origin = typing.get_origin(annotation)
    if origin is tuple:
        (item_type, *_) = typing.get_args(annotation) or (str,)
        return tuple(convert(v, item_type, where, text=True) for v in value.split(",") if v.strip())
    if annotation is bool:
        if value.lower() in _TRUE:
            return True
        if value.lower() in _FALSE:
            return False
        raise UebenchError(f"{where}: {value!r} is not a boolean (true/false)")
    if annotation is int:
        try:
            return int(value)
        except ValueError:
            raise UebenchError(f"{where}: {value!r} is not an integer") from None
    if annotation is float:
        try:
            return parse_float(value)
        except UebenchError as error:
            raise UebenchError(f"{where}: {error}") from None
    return value


def _as_list(key: str, value: Any, item_type: type) -> list[Any]:
    kind = "integers" if item_type is int else "specs"
    if isinstance(value, str):
        items = parse_seeds(value) if item_type is int else split_list(value)
    elif isinstance(value, (list, tuple)):
        items = list(value)
        if item_type is str:
            for item in items:
                _checked_item(key, item, str, {}, in_list=True)
            items = split_list(items)
    elif item_type is int and _is_int(value):
        items = [value]
    else:
        raise UebenchError(
            f"{key}: expected a list of {kind} or a comma-separated string, got {value!r}"
        )
    if not items:
        raise UebenchError(f"{key} is empty: give at least one {kind[:-1]}")
    return items


def _checked_item(
    key: str, value: Any, kind: type, bounds: Mapping[str, Any], in_list: bool = False
) -> Any:
    where = f"{key}: expected {'every item to be ' if in_list else ''}"
    if kind is bool:
        if not isinstance(value, (bool, np.bool_)):  # not "no", 0 or None
            raise UebenchError(f"{where}true or false, got {value!r}")
        return bool(value)
    if kind is str:
        if isinstance(value, os.PathLike):
            value = os.fspath(value)
        if not isinstance(value, str):
            raise UebenchError(f"{where}a string, got {value!r}")
        return value
    if kind is int:
        if not _is_int(value):
            raise UebenchError(f"{where}an integer{_bounds_text(bounds)}, got {value!r}")
        number: int | float = int(value)
    elif kind is float:
        number = float(value) if _is_real(value) else math.nan
        if not math.isfinite(number):
            raise UebenchError(f"{where}a finite number{_bounds_text(bounds)}, got {value!r}")
    else:  # pragma: no cover - a field of a type this function does not know
        raise TypeError(f"{key}: unsupported annotation {kind!r}")
    low, above = bounds.get("min"), bounds.get("above")
    if (low is not None and number < low) or (above is not None and number <= above):
        noun = "an integer" if kind is int else "a finite number"
        raise UebenchError(f"{where}{noun}{_bounds_text(bounds)}, got {value!r}")
    return number


def _is_real(value: Any) -> bool:
    """A number (numpy's too), not a bool."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _is_int(value: Any) -> bool:
    """An integer, or a float without a fraction (``3.0`` for 3), not a bool."""
    if not _is_real(value):
        return False
    return isinstance(value, numbers.Integral) or (
        math.isfinite(value) and float(value).is_integer()
    )


def _bounds_text(bounds: Mapping[str, Any]) -> str:
    if bounds.get("above") is not None:
        return f" > {bounds['above']}"
    if bounds.get("min") is not None:
        return f" >= {bounds['min']}"
    return ""


#: One seed as text: digits only (``int`` alone would take ``1_000`` and `` +1``).
_SEED = re.compile(r"-?\d+")


def parse_seeds(value: Any) -> list[int]:
    """``0,1,2``, ``0-4`` or a list of ints; a reversed range, an empty item (``0,,1``,
    ``0,``), a number written with ``_`` and no seed at all are errors."""
    if _is_int(value):
        return [int(value)]
    if isinstance(value, (list, tuple)):
        bad = next((v for v in value if not _is_int(v)), None)
        if bad is not None or not value:
            raise UebenchError(f"seeds: expected a list of integers, got {list(value)!r}")
        return [int(v) for v in value]
    if not isinstance(value, str):
        raise UebenchError(f"seeds: expected e.g. 0,1,2, 0-4 or a list of integers, got {value!r}")
    seeds: list[int] = []
    parts = [part.strip() for part in value.split(",")]
    if any(parts) and "" in parts:  # all blank: "names no seed" below
        # "0," may be a seed left out, not a stray comma: refused as in a spec list.
        raise UebenchError(f"bad seeds {value!r}: {where_empty(parts)}")
    for part in parts:
        ends = part.split("-", 1) if "-" in part[1:] else [part]
        if part and not all(_SEED.fullmatch(end.strip()) for end in ends):
            raise UebenchError(f"bad seeds {value!r}; use e.g. 0,1,2 or 0-4 (plain digits)")
        try:
            if "-" in part[1:]:
                low, high = (int(end) for end in part.split("-", 1))
                if high < low:
                    raise UebenchError(f"seeds: the range {part} is reversed; write {high}-{low}")
                if high - low + 1 + len(seeds) > MAX_SEEDS:
                    raise UebenchError(
                        f"seeds: {part} holds {high - low + 1} seeds; at most {MAX_SEEDS} "
                        "in one grid"
                    )
                seeds.extend(range(low, high + 1))
            elif part:
                seeds.append(int(part))
        except ValueError:
            raise UebenchError(f"bad seeds {value!r}; use e.g. 0,1,2 or 0-4") from None
    if not seeds:
        raise UebenchError(f"seeds {value!r} names no seed; use e.g. 0,1,2 or 0-4")
    return seeds
