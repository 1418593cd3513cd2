"""What holds for a method against clean training under the same countermeasure.

The thresholds are those of ``benchmarks/field_table.py`` (which imports them from here),
fixed before its CIFAR-10 run: a method *falls to* a countermeasure when its accuracy under it
is within :data:`MARGIN` points of clean training's under the same countermeasure, and
*survives* it when it is more than :data:`MARGIN` points below; under standard training it is
*unlearnable* when at least :data:`UNLEARNABLE` points below clean training.
"""

from __future__ import annotations

from collections.abc import Mapping

from uebench.errors import UebenchError
from uebench.spec import parse_spec

#: Points of clean accuracy within which a method falls to a countermeasure.
MARGIN = 15.0
#: Points below clean training under standard training that make a method unlearnable.
UNLEARNABLE = 20.0


def findings(method: Mapping[str, float | None], clean: Mapping[str, float | None]) -> list[str]:
    """One line per countermeasure that has a number for both the method and clean training:
    ``unlearnable under standard training: 11.6% vs clean 76.5%``, ``falls to grayscale:
    54.1% vs clean 73.4%``, ``survives jpeg:quality=10: 25.7% vs clean 69.8%``."""
    lines = []
    for countermeasure, value in method.items():
        base = clean.get(countermeasure)
        if value is None or base is None:
            continue
        numbers = f"{value:.1f}% vs clean {base:.1f}%"
        below = base - value
        if _is_standard_training(countermeasure):
            verdict = "unlearnable" if below >= UNLEARNABLE else "not unlearnable"
            lines.append(f"{verdict} under standard training: {numbers}")
        elif below <= MARGIN:
            lines.append(f"falls to {countermeasure}: {numbers}")
        else:
            lines.append(f"survives {countermeasure}: {numbers}")
    return lines


def _is_standard_training(countermeasure: str) -> bool:
    try:
        return parse_spec(countermeasure).name == "none"
    except UebenchError:
        return False
