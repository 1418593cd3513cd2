"""How counts are said in the text uebench prints and writes ("1 seed", "3 seeds")."""

from __future__ import annotations


def counted(count: int, noun: str, plural: str | None = None) -> str:
    """``"1 seed"``, ``"3 seeds"``: ``count`` with ``noun`` in the number it takes (``plural``
    when adding an s is wrong)."""
    return f"{count} {noun if count == 1 else plural or noun + 's'}"
