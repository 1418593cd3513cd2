"""The one grammar every registry shares: ``NAME[:key=value[:key=value]]``, comma-separated lists.

Examples: ``emin:form=class``, ``random:form=class:eps=16/255``, ``resnet18:width=16``,
``npz:data/x.npz`` (a lone value fills the plugin's first option), ``cutmix+earlystop``
(``+`` composes countermeasures), ``emin:source=[resnet18:width=16]`` (brackets nest a spec).
A comma followed by a digit continues the previous value, so
``emin:classes=0,1,8,9,random`` is two specs.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

from uebench.errors import UebenchError

_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.\-]*$")
#: Deepest bracket nesting a spec may have (a source model's source model is 2); parsing
#: and resolving recurse once per level, so a thousand levels would end in RecursionError.
MAX_NESTING = 16


@dataclass(frozen=True)
class Spec:
    """A parsed ``NAME[:key=value...]``; ``text`` keeps what the user wrote."""

    name: str
    options: dict[str, str] = field(default_factory=dict)
    positional: str | None = None
    text: str = ""

    def __str__(self) -> str:
        return self.text or self.name


def parse_spec(text: str) -> Spec:
    """Parse one ``NAME[:key=value...]`` string."""
    text = text.strip()
    if not text:
        raise UebenchError("empty spec; expected NAME[:key=value...]")
    name, *parts = _split_outside_brackets(text, ":")
    if not _NAME.match(name):
        raise UebenchError(f"bad spec {text!r}: {name!r} is not a name")
    options: dict[str, str] = {}
    positional = None
    for part in parts:
        if "=" not in part:
            if positional is not None or options:
                raise UebenchError(
                    f"bad spec {text!r}: only the first option may be given without 'key='"
                )
            positional = part
            continue
        key, value = part.split("=", 1)
        key = key.strip().replace("-", "_")
        if not key or key in options:
            raise UebenchError(f"bad spec {text!r}: empty or repeated key {key!r}")
        value = value.strip()
        if value.startswith("[") and value.endswith("]"):
            value = value[1:-1]
        options[key] = value
    return Spec(name=name, options=options, positional=positional, text=text)


def _split_outside_brackets(text: str, separator: str) -> list[str]:
    parts, depth, current = [], 0, []
    for char in text:
        depth += {"[": 1, "]": -1}.get(char, 0)
        if depth < 0:
            raise UebenchError(f"bad spec {_short(text)}: unbalanced ']'")
        if depth > MAX_NESTING:
            raise UebenchError(
                f"bad spec {_short(text)}: brackets nest deeper than {MAX_NESTING} levels"
            )
        if char == separator and depth == 0:
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    if depth:
        raise UebenchError(f"bad spec {_short(text)}: unbalanced '['")
    return [*parts, "".join(current)]


def _short(text: str, limit: int = 80) -> str:
    """``text`` quoted, cut to ``limit`` characters so an error stays one readable line."""
    return repr(text) if len(text) <= limit else repr(text[: limit - 3] + "...")


def split_list(text: str | list[str] | tuple[str, ...]) -> list[str]:
    """Split a comma-separated list of specs.

    A comma before a digit continues a value (``classes=0,1,8,9``), and commas inside brackets
    belong to the bracketed value (``emin:classes=[bird,ship]``).
    """
    if isinstance(text, (list, tuple)):
        if any(not chunk.strip() for chunk in text):  # a config file's ["clean", ""]
            raise UebenchError(f"bad list {list(text)!r}: an empty item")
        return [item for chunk in text for item in split_list(chunk)]
    items, depth, start = [], 0, 0
    for position, char in enumerate(text):
        depth += {"[": 1, "]": -1}.get(char, 0)
        if char == "," and depth == 0 and re.match(r"\s*([A-Za-z_]|,|$)", text[position + 1 :]):
            items.append(text[start:position])
            start = position + 1
    items.append(text[start:])
    inner = [item.strip() for item in items]
    if not any(inner):  # "" or blanks: the caller says which list is empty
        return []
    # An empty item is a typo (``clean,,emin``, ``clean,``: a name left out or a stray comma),
    # said as such rather than as "'clean,' is not a name" or a run of one method too few.
    if any(not item for item in inner):
        raise UebenchError(f"bad list {_short(text)}: {where_empty(inner)}")
    return inner


def where_empty(items: list[str]) -> str:
    """Where a list split into ``items`` has an empty one, in words."""
    if not items[0]:
        return "an empty item before the first comma"
    if not items[-1]:
        return "an empty item after the last comma"
    return "an empty item between two commas"


def parse_float(value: str, *, finite: bool = True) -> float:
    """A float that may be written as a fraction, e.g. ``8/255``.

    ``nan`` and ``inf`` are refused unless ``finite`` is False: no option of a built-in plugin
    means anything at those values, and a NaN slips through every ``x <= limit`` range check.
    """
    try:
        if "/" in value:
            numerator, denominator = value.split("/", 1)
            number = float(numerator) / float(denominator)
        else:
            number = float(value)
    except (ValueError, ZeroDivisionError):
        raise UebenchError(f"{value!r} is not a number (fractions like 8/255 are fine)") from None
    if finite and not math.isfinite(number):
        raise UebenchError(f"{value!r} is not a finite number")
    return number
