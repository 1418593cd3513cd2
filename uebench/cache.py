"""Crafted poisons on disk, keyed by a hash of everything that determines them."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from uebench.poison import Poison

#: Method options that hold another plugin's spec, canonicalized inside a method's identity.
NESTED_SPECS = {"source": "archs"}


def cache_key(parts: dict[str, Any]) -> str:
    """A stable hash of a JSON-able description (method options, data fingerprint, ...)."""
    text = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def method_identity(spec: str, *, crafting: bool = False) -> dict[str, Any]:
    """A method's canonical options, nested specs (its source model, ...) canonicalized too.

    With ``crafting`` the harness-handled options (``classes``) are left out: they change which
    images get noise, not the noise, so every such variant shares one crafted poison.
    """
    from uebench.registry import METHODS, REGISTRIES

    resolved = METHODS.resolve(spec)
    if crafting:
        resolved = resolved.without_common()
    canonical = resolved.canonical()
    nested = {**NESTED_SPECS, **getattr(resolved.factory, "nested_specs", {})}
    for key, kind in nested.items():
        value = canonical["options"].get(key)
        if isinstance(value, str):
            if kind == "methods":
                canonical["options"][key] = method_identity(value)
            else:
                canonical["options"][key] = REGISTRIES[kind].resolve(value).canonical()
    return canonical


def poison_key(method: str, data_fingerprint: str, train_config: dict[str, Any] | None) -> str:
    """The cache key of ``method``'s poison on a dataset; the victim's training config joins it
    only for methods that train a source model with it (``uses_victim_training``)."""
    from uebench.registry import METHODS

    factory = METHODS.resolve(method).factory
    uses_training = getattr(factory, "uses_victim_training", False)
    return cache_key(
        {
            "method": method_identity(method, crafting=True),
            "data": data_fingerprint,
            "train": train_config if uses_training else None,
        }
    )


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
