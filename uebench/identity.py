"""Who a plugin, a method, a countermeasure and a cell are: canonical specs, nested specs and
the keys hashed from them.

A plugin's identity is its spec's canonical form (name and every option, spelling-independent)
plus, for third-party code, the code's own identity (:func:`uebench.version.plugin_code`).  Cell
ids (:attr:`uebench.grid.cell.Cell.cell_id`) and poison-cache keys (:func:`poison_key`) are
hashes of identities, so whatever changes a result changes its key and nothing else does.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from uebench import precision
from uebench.plugin_flags import plugin_flag
from uebench.registry import METHODS, REGISTRIES, Registry, factory_path
from uebench.version import is_builtin, plugin_code, plugin_provenance

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
    if kind == "methods":
        return method_identity(spec)
    registry = REGISTRIES[kind]
    resolved = registry.resolve(spec)
    return _with_code(resolved.canonical(), resolved.factory, registry)


def countermeasure_identity(spec: str) -> list[dict[str, Any]]:
    """The identity of each part of a (possibly ``+``-composed) countermeasure spec."""
    return [plugin_identity("defenses", part) for part in spec.split("+")]


def method_identity(spec: str, *, crafting: bool = False) -> dict[str, Any]:
    """A method's canonical options, nested specs (its source model, ...) canonicalized too.

    With ``crafting`` the harness-handled options (``classes``) are left out: they change which
    images get noise, not the noise, so every such variant shares one crafted poison.  A
    third-party method's code joins it (:func:`plugin_identity`).
    """
    resolved = METHODS.resolve(spec)
    if crafting:
        resolved = resolved.without_common()
    canonical = _with_code(resolved.canonical(), resolved.factory, METHODS)
    # A method whose result depends on more than its options (``file``: the file's content)
    # says so here; the default leaves the options as they are.
    canonical["options"] = plugin_flag(resolved.factory, "identity_options")(canonical["options"])
    revision = plugin_flag(resolved.factory, "revision")
    if revision:
        canonical["revision"] = revision
    for key, kind in nested_specs(resolved.factory).items():
        value = canonical["options"].get(key)
        if isinstance(value, str):
            canonical["options"][key] = plugin_identity(kind, value)
    return canonical


def nested_specs(factory: Any) -> dict[str, str]:
    """Option name -> registry kind, for a method's options that hold another plugin's spec."""
    return {**NESTED_SPECS, **plugin_flag(factory, "nested_specs")}


def nested_method_specs(spec: str) -> list[str]:
    """Method specs a method's options name (``mix``'s parts), recursively, outermost first."""
    resolved = METHODS.resolve(spec)
    found: list[str] = []
    for option, kind in nested_specs(resolved.factory).items():
        value = resolved.options.get(option)
        if kind == "methods" and isinstance(value, str):
            found += [value, *nested_method_specs(value)]
    return found


def _with_code(canonical: dict[str, Any], factory: Any, registry: Registry) -> dict[str, Any]:
    # Options a plugin gained after its configurations were recorded (``late_options``: name
    # -> default) stay out of its identity at their default, so old cell ids and keys hold.
    for name, default in plugin_flag(factory, "late_options").items():
        if name in canonical.get("options", {}) and canonical["options"][name] == default:
            canonical = {**canonical, "options": dict(canonical["options"])}
            del canonical["options"][name]
    code = plugin_code(factory)
    if code is not None:
        canonical = {**canonical, "code": code}
    # A plugin registered over another of its name (--plugin-override) never shares the
    # replaced one's cells, even when both are uebench's own code.
    replaced = registry.overridden(canonical["name"])
    return {**canonical, "overrides": replaced} if replaced is not None else canonical


def spec_plugins(kind: str, spec: str) -> list[dict[str, Any]]:
    """Every plugin a spec uses (itself, each ``+`` part, nested specs), with its provenance.

    What a record lists under ``plugins``: kind, name, the spec, and
    :func:`uebench.version.plugin_provenance` (distribution, version, origin, source hash).
    """
    found: list[dict[str, Any]] = []
    registry = REGISTRIES[kind]
    for part in spec.split("+") if kind == "defenses" else [spec]:
        resolved = registry.resolve(part)
        entry = {
            "kind": kind,
            "name": resolved.spec.name,
            "spec": part,
            **plugin_provenance(resolved.factory),
        }
        if not is_builtin(resolved.factory):
            # What `--plugin NAME=module:Class` names, so a user can rebuild the cell (export);
            # code named in a record is never imported automatically.
            entry["factory"] = factory_path(resolved.factory)
        replaced = registry.overridden(resolved.spec.name)
        if replaced is not None:
            entry["overrides"] = replaced
        found.append(entry)
        if kind == "methods":
            for key, nested_kind in nested_specs(resolved.factory).items():
                value = resolved.options.get(key)
                if isinstance(value, str):
                    found += spec_plugins(nested_kind, value)
    return found


def source_key(
    arch: str, data_fingerprint: str, recipe: str, train_config: dict[str, Any], seed: int
) -> str:
    """The cache key of a source model trained for crafting: its architecture (canonical, with
    its code), the data, the training recipe (a function's qualified name), the training
    settings it ran with (epochs included) and the seed."""
    parts = {
        "source": plugin_identity("archs", arch),
        "data": data_fingerprint,
        "recipe": recipe,
        "train": train_config,
        "seed": seed,
    }
    return cache_key(parts)


def poison_key(method: str, data_fingerprint: str, train_config: dict[str, Any] | None) -> str:
    """The cache key of ``method``'s poison on a dataset; the victim's training config joins it
    only for methods that train a source model with it or build on one that does
    (:func:`uses_victim_training`), the
    crafting precision only for methods that craft by gradient (``crafts_by_gradient``)."""
    factory = METHODS.resolve(method).factory
    parts = {
        "method": method_identity(method, crafting=True),
        "data": data_fingerprint,
        "train": train_config if uses_victim_training(method) else None,
    }
    if plugin_flag(factory, "crafts_by_gradient"):
        # Only gradient-crafted poisons changed when crafting moved from bf16 to fp32: others keep
        # their keys.  Read at call time: the precision is a setting of the crafting module.
        parts["craft_precision"] = precision.CRAFT_PRECISION
    return cache_key(parts)


def uses_victim_training(method: str) -> bool:
    """Whether ``method``'s poison depends on the victim's training settings: it declares
    ``uses_victim_training``, or a method it builds on (``mix``'s parts, ``transfer``'s
    method) does, so a composite of such a method is never reused under other settings."""
    specs = [method, *nested_method_specs(method)]
    return any(plugin_flag(METHODS.resolve(s).factory, "uses_victim_training") for s in specs)
