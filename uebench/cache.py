"""Crafted poisons on disk, keyed by a hash of everything that determines them."""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from uebench.errors import UebenchError
from uebench.liveness import remove_stale_temporaries
from uebench.poison import Poison
from uebench.version import plugin_code, plugin_provenance

#: Method options that hold another plugin's spec, canonicalized inside a method's identity.
NESTED_SPECS = {"source": "archs"}


def cache_key(parts: dict[str, Any]) -> str:
    """A stable hash of a JSON-able description (method options, data fingerprint, ...)."""
    text = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def plugin_identity(kind: str, spec: str) -> dict[str, Any]:
    """A plugin spec's canonical form (name and every option) plus its code's identity.

    ``kind`` is a registry name (``methods``, ``defenses``, ``archs``, ``datasets``).  A
    third-party plugin's identity holds its distribution, version and (for code not installed
    from a release) source hash under ``"code"``; uebench's own plugins have none, so their
    identities, and the cell ids and poison keys hashed from them, are what they always were
    (:func:`uebench.version.plugin_code` says why).
    """
    from uebench.registry import REGISTRIES

    if kind == "methods":
        return method_identity(spec)
    resolved = REGISTRIES[kind].resolve(spec)
    return _with_code(resolved.canonical(), resolved.factory)


def defense_identity(spec: str) -> list[dict[str, Any]]:
    """The identity of each part of a (possibly ``+``-composed) countermeasure spec."""
    return [plugin_identity("defenses", part) for part in spec.split("+")]


def method_identity(spec: str, *, crafting: bool = False) -> dict[str, Any]:
    """A method's canonical options, nested specs (its source model, ...) canonicalized too.

    With ``crafting`` the harness-handled options (``classes``) are left out: they change which
    images get noise, not the noise, so every such variant shares one crafted poison.  A
    third-party method's code joins it (:func:`plugin_identity`).
    """
    from uebench.registry import METHODS

    resolved = METHODS.resolve(spec)
    if crafting:
        resolved = resolved.without_common()
    canonical = _with_code(resolved.canonical(), resolved.factory)
    # A method whose result depends on more than its options (``file``: the file's content)
    # says so here; no other method has the hook, so their identities are unchanged.
    identify = getattr(resolved.factory, "identity_options", None)
    if callable(identify):
        canonical["options"] = identify(canonical["options"])
    for key, kind in nested_specs(resolved.factory).items():
        value = canonical["options"].get(key)
        if isinstance(value, str):
            canonical["options"][key] = plugin_identity(kind, value)
    return canonical


def nested_specs(factory: Any) -> dict[str, str]:
    """Option name -> registry kind, for a method's options that hold another plugin's spec."""
    return {**NESTED_SPECS, **getattr(factory, "nested_specs", {})}


def _with_code(canonical: dict[str, Any], factory: Any) -> dict[str, Any]:
    # Options a plugin gained after its configurations were recorded (``late_options``: name
    # -> default) stay out of its identity at their default, so old cell ids and keys hold.
    for name, default in getattr(factory, "late_options", {}).items():
        if name in canonical.get("options", {}) and canonical["options"][name] == default:
            canonical = {**canonical, "options": dict(canonical["options"])}
            del canonical["options"][name]
    code = plugin_code(factory)
    return {**canonical, "code": code} if code is not None else canonical


def spec_plugins(kind: str, spec: str) -> list[dict[str, Any]]:
    """Every plugin a spec uses (itself, each ``+`` part, nested specs), with its provenance.

    What a record lists under ``plugins``: kind, name, the spec, and
    :func:`uebench.version.plugin_provenance` (distribution, version, origin, source hash).
    """
    from uebench.registry import REGISTRIES

    found: list[dict[str, Any]] = []
    for part in spec.split("+") if kind == "defenses" else [spec]:
        resolved = REGISTRIES[kind].resolve(part)
        found.append(
            {
                "kind": kind,
                "name": resolved.spec.name,
                "spec": part,
                **plugin_provenance(resolved.factory),
            }
        )
        if kind == "methods":
            for key, nested_kind in nested_specs(resolved.factory).items():
                value = resolved.options.get(key)
                if isinstance(value, str):
                    found += spec_plugins(nested_kind, value)
    return found


def poison_key(method: str, data_fingerprint: str, train_config: dict[str, Any] | None) -> str:
    """The cache key of ``method``'s poison on a dataset; the victim's training config joins it
    only for methods that train a source model with it (``uses_victim_training``), the
    crafting precision only for methods that craft by gradient (``crafts_by_gradient``)."""
    from uebench.registry import METHODS

    factory = METHODS.resolve(method).factory
    uses_training = getattr(factory, "uses_victim_training", False)
    parts = {
        "method": method_identity(method, crafting=True),
        "data": data_fingerprint,
        "train": train_config if uses_training else None,
    }
    if getattr(factory, "crafts_by_gradient", False):
        # Only gradient-crafted poisons changed when crafting left bf16 (issue 19): others
        # keep their keys.
        from uebench.crafting import CRAFT_PRECISION

        parts["craft_precision"] = CRAFT_PRECISION
    return cache_key(parts)


class PoisonCache:
    """``root/<key>.pt`` files, written atomically and verified when read."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.hits = 0
        self.misses = 0
        # A writer killed mid-save (kill -9, out of memory) leaves a hidden temporary file.
        remove_stale_temporaries(self.root)

    def path(self, key: str) -> Path:
        return self.root / f"{key}.pt"

    def load(self, key: str) -> Poison:
        """The verified poison stored under ``key``.

        Besides its content hash (:meth:`Poison.load`), the file must name ``key`` as its own
        cache key: every poison the cache writes is stamped with it, so a file copied under
        another key's name, or one not written by the cache, is refused rather than used.
        """
        path = self.path(key)
        poison = Poison.load(path, cache_entry=True)
        stored = poison.meta.get("cache_key")
        if stored != key:
            held = f"the poison of key {stored}" if stored else "no cache key"
            raise UebenchError(
                f"poison file {path} holds {held}, not {key}; delete it to recompute"
            )
        return poison

    def get_or_craft(self, key: str, craft: Callable[[], Poison]) -> Poison:
        """The cached poison for ``key``, or ``craft()`` saved under it.

        A corrupt file raises :class:`~uebench.errors.UebenchError` naming it, rather than being
        silently replaced: a poison that changed under a finished result must be noticed.
        """
        path = self.path(key)
        if path.exists():
            self.hits += 1
            return self.load(key)
        # Two processes on one grid (claims share its cells) often need the same poison at
        # once: the second waits for the first's file instead of crafting it again.
        with _crafting_lock(self.root / f".{key}.lock"):
            if path.exists():
                self.hits += 1
                return self.load(key)
            self.misses += 1
            poison = craft()
            poison.meta = {**poison.meta, "cache_key": key}
            poison.save(path)
        return poison


@contextlib.contextmanager
def _crafting_lock(path: Path) -> Iterator[None]:
    """An exclusive advisory lock on ``path`` (``flock``: the kernel releases it when its holder
    dies, so a killed crafter never blocks the next run).  Where ``fcntl`` is missing (Windows)
    nothing is locked and a concurrent run may craft the same poison twice, harmlessly: the
    content is deterministic and the write atomic."""
    try:
        import fcntl
    except ImportError:
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
