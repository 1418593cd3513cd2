"""The clean baseline: the accuracy of guessing, and whether clean training learned enough for
its setting to show what noise does (the test the end-of-run summary, the leaderboard, the
report and ``uebench compare`` all apply)."""

from __future__ import annotations

import numbers
from collections.abc import Mapping
from typing import Any

#: A clean row must clear chance by this share of the headroom above it (100% − chance) before
#: its setting can show what noise does: 28% with 10 classes, 60% with 2, 20.8% with 100.
#: Effective noise holds a victim 5-15 points above chance (19.9% for sample-wise
#: error-minimizing noise on CIFAR-10, Huang et al. 2021), so a clean row below this leaves no
#: room between "the noise works" and "nothing learned at all".
NEAR_CHANCE_SHARE = 0.2


def chance_level(num_classes: float | None) -> float | None:
    """Accuracy of guessing, 100/K percent (None when K is unknown)."""
    if num_classes is None or num_classes != num_classes or num_classes < 1:
        return None
    return 100.0 / float(num_classes)


def stated_num_classes(row: Mapping[str, Any]) -> int | None:
    """The class count K a record or a results-table row states: its ``num_classes``, else the
    length of its ``classes`` list; None when it states neither (records that predate them)."""
    value = row.get("num_classes")
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        return int(value)
    if isinstance(value, float) and value.is_integer():  # a table column holding a gap
        return int(value)
    classes = row.get("classes")
    return len(classes) if isinstance(classes, list) and classes else None


def near_chance(clean_acc: float | None, num_classes: float | None) -> bool | None:
    """Whether clean training reaching ``clean_acc`` (%) has learned too little to judge noise
    by: below chance + :data:`NEAR_CHANCE_SHARE` of the headroom.  None when either is unknown.
    """
    chance = chance_level(num_classes)
    if chance is None or clean_acc is None or clean_acc != clean_acc:
        return None
    return bool(clean_acc < chance + NEAR_CHANCE_SHARE * (100.0 - chance))


def near_chance_warning(clean_acc: float, num_classes: float, where: str) -> str:
    """One line saying a setting's clean row is near chance (used wherever one is flagged)."""
    chance = chance_level(num_classes)
    return (
        f"clean training reached only {clean_acc:.1f}% under {where} (chance {chance:.1f}%): "
        "that setting cannot show what the noise does"
    )
