"""Crafted poisons on disk, keyed by a hash of everything that determines them."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from uebench.poison import Poison


def cache_key(parts: dict[str, Any]) -> str:
    """A stable hash of a JSON-able description (method options, data fingerprint, ...)."""
    text = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:24]


class PoisonCache:
    """``root/<key>.pt`` files, written atomically and verified when read."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.hits = 0
        self.misses = 0

    def path(self, key: str) -> Path:
        return self.root / f"{key}.pt"

    def get_or_craft(self, key: str, craft: Callable[[], Poison]) -> Poison:
        """The cached poison for ``key``, or ``craft()`` saved under it.

        A corrupt file raises :class:`~uebench.errors.UebenchError` naming it, rather than being
        silently replaced: a poison that changed under a finished result must be noticed.
        """
        path = self.path(key)
        if path.exists():
            self.hits += 1
            return Poison.load(path)
        self.misses += 1
        poison = craft()
        poison.meta = {**poison.meta, "cache_key": key}
        poison.save(path)
        return poison
