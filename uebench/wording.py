"""How counts are said in the text uebench prints and writes ("1 seed", "3 seeds")."""

from __future__ import annotations

from collections.abc import Iterable


def counted(count: int, noun: str, plural: str | None = None) -> str:
    """``"1 seed"``, ``"3 seeds"``: ``count`` with ``noun`` in the number it takes (``plural``
    when adding an s is wrong)."""
    return f"{count} {noun if count == 1 else plural or noun + 's'}"


def seed_counts(counts: Iterable[int]) -> str:
    """``"1 seed"``, ``"3 seeds"`` or ``"1-3 seeds"``: how many seeds a table's cells average."""
    ordered = sorted({int(n) for n in counts})
    if len(ordered) == 1:
        return counted(ordered[0], "seed")
    return f"{ordered[0]}-{ordered[-1]} seeds"
