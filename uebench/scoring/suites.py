"""Countermeasure suites as data: the shipped ``suites.toml``, or a TOML file of one's own.

A suite is an id that says its version (``v1``, ``quick-v2``), a description and the ordered
countermeasure specs a method is scored against, with optional replacements per protocol and
dataset.  Its :meth:`Suite.content_hash` covers every countermeasure in canonical form (plugin
defaults included) and the replacements, so results recorded under one suite are never
compared with results under an edited one: a change is a new version.
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
import textwrap
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import tomllib

from uebench.countermeasure import build_countermeasure
from uebench.errors import UebenchError, plugin_errors
from uebench.grid.protocols import declared_datasets, protocol_names, resolve_protocol
from uebench.identity import countermeasure_identity
from uebench.registry import COUNTERMEASURES, DATASETS

#: The suite ``uebench bench`` and ``uebench.bench`` score against unless told otherwise.
DEFAULT_SUITE = "v1"

#: An id ends with its version: ``v1`` or ``NAME-v1``.
_ID = re.compile(r"^(?:[A-Za-z][A-Za-z0-9_.]*-)?v(?P<version>[0-9]+)$")
_KEYS = {"version", "description", "countermeasures", "overrides"}


@dataclass(frozen=True)
class Suite:
    """A versioned, ordered list of countermeasure specs and where it came from.

    ``overrides[protocol][dataset][spec]`` (dataset ``*``: any) is the spec that runs in
    ``spec``'s place under that protocol and dataset; tables keep ``spec`` as the column.
    """

    id: str
    version: int
    description: str
    countermeasures: tuple[str, ...]
    overrides: dict[str, dict[str, dict[str, str]]] = field(default_factory=dict)
    origin: str = field(default="", compare=False)

    def runs_for(self, protocol: str, dataset: str) -> list[tuple[str, str]]:
        """``(column, spec as run)`` per countermeasure under ``protocol`` on ``dataset`` (a
        dataset name), in the suite's order."""
        per_protocol = self.overrides.get(protocol, {})
        replaced = {**per_protocol.get("*", {}), **per_protocol.get(dataset, {})}
        return [(spec, replaced.get(spec, spec)) for spec in self.countermeasures]

    def content_hash(self) -> str:
        """A hash (16 hex digits) of the id, the version, each countermeasure's canonical
        identity and the overrides' (the description is left out: it changes no number)."""
        parts = {
            "id": self.id,
            "version": self.version,
            "countermeasures": [countermeasure_identity(s) for s in self.countermeasures],
            "overrides": {
                protocol: {
                    dataset: {spec: countermeasure_identity(r) for spec, r in specs.items()}
                    for dataset, specs in datasets.items()
                }
                for protocol, datasets in self.overrides.items()
            },
        }
        text = json.dumps(parts, sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def argument(self) -> str:
        """What ``--suite`` takes to name this suite: its id when shipped, else its file."""
        return self.id if shipped_suites().get(self.id) == self else self.origin

    def describe(self) -> str:
        """``suite v1 (version 1, hash 0123456789abcdef)``: how tables name the suite."""
        return f"suite {self.id} (version {self.version}, hash {self.content_hash()})"


# --- reading suites ----------------------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def shipped_suites() -> dict[str, Suite]:
    """The suites of the package's ``suites.toml``, by id."""
    text = resources.files("uebench.scoring").joinpath("suites.toml").read_text()
    return _parse(text, "uebench/scoring/suites.toml")


def load_suite(suite: str | Path | Suite) -> Suite:
    """A shipped suite by id (``v1``), or the one suite of a TOML file (a path ending in
    ``.toml``, in the format of ``suites.toml``)."""
    if isinstance(suite, Suite):
        return suite
    text = str(suite)
    if text.endswith(".toml") or Path(text).is_file():
        path = Path(text)
        try:
            content = path.read_text()
        except OSError as error:
            raise UebenchError(f"cannot read suite file {path}: {error.strerror}") from None
        found = _parse(content, str(path))
        if len(found) != 1:
            ids = ", ".join(found) or "none"
            raise UebenchError(f"suite file {path} must hold exactly one suite; it has {ids}")
        return next(iter(found.values()))
    shipped = shipped_suites()
    if text not in shipped:
        raise UebenchError(
            f"unknown suite {text!r}; shipped: {', '.join(shipped)} (or a path to a .toml file; "
            "uebench list suites shows them)"
        )
    return shipped[text]


def _parse(text: str, origin: str) -> dict[str, Suite]:
    try:
        table = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise UebenchError(f"{origin} is not valid TOML: {str(error).splitlines()[0]}") from None
    sections = table.get("suites")
    unknown = sorted(set(table) - {"suites"})
    if unknown or not isinstance(sections, dict) or not sections:
        raise UebenchError(f"{origin} must hold [suites.ID] tables and nothing else")
    return {suite_id: _suite(suite_id, values, origin) for suite_id, values in sections.items()}


def _suite(suite_id: str, values: Any, origin: str) -> Suite:
    where = f"{origin}: suite {suite_id!r}"
    if not isinstance(values, dict):
        raise UebenchError(f"{where} must be a table")
    unknown = sorted(set(values) - _KEYS)
    if unknown:
        raise UebenchError(
            f"{where}: unknown key {unknown[0]!r}; valid: {', '.join(sorted(_KEYS))}"
        )
    matched = _ID.match(suite_id)
    if matched is None:
        raise UebenchError(f"{where}: an id ends with its version, as v1 or NAME-v1")
    version = values.get("version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise UebenchError(f"{where}: version must be a positive integer, got {version!r}")
    if int(matched["version"]) != version:
        raise UebenchError(f"{where}: the id says version {matched['version']}, not {version}")
    specs = values.get("countermeasures")
    if not isinstance(specs, list) or not specs or not all(isinstance(s, str) for s in specs):
        raise UebenchError(f"{where}: countermeasures must be a non-empty list of specs")
    for spec in specs:
        _check_spec(spec, where)
    keys = [json.dumps(countermeasure_identity(s), sort_keys=True) for s in specs]
    for i, key in enumerate(keys):
        if key in keys[:i]:
            raise UebenchError(
                f"{where}: {specs[i]!r} is the same countermeasure as {specs[keys.index(key)]!r}"
            )
    overrides = _overrides(values.get("overrides", {}), specs, where)
    return Suite(
        id=suite_id,
        version=version,
        description=" ".join(str(values.get("description", "")).split()),
        countermeasures=tuple(specs),
        overrides=overrides,
        origin=origin,
    )


def _check_spec(spec: str, where: str) -> None:
    """A countermeasure spec that builds (its own option checks run): one line otherwise."""
    try:
        with plugin_errors(f"countermeasure {spec!r}", "checking its options"):
            build_countermeasure(spec)
    except UebenchError as error:
        raise UebenchError(f"{where}: {error}") from None


def _overrides(values: Any, specs: list[str], where: str) -> dict[str, dict[str, dict[str, str]]]:
    if not isinstance(values, dict):
        raise UebenchError(f"{where}: overrides must be [overrides.PROTOCOL.DATASET] tables")
    datasets = set(DATASETS.names())
    result: dict[str, dict[str, dict[str, str]]] = {}
    for protocol, per_dataset in values.items():
        if protocol not in protocol_names():
            raise UebenchError(
                f"{where}: overrides name an unknown protocol {protocol!r}; valid: "
                f"{', '.join(protocol_names())}"
            )
        if not isinstance(per_dataset, dict):
            raise UebenchError(f"{where}: overrides.{protocol} must hold DATASET tables")
        for dataset, replacements in per_dataset.items():
            if dataset != "*" and dataset not in datasets:
                raise UebenchError(
                    f"{where}: overrides.{protocol} names an unknown dataset {dataset!r}"
                )
            if not isinstance(replacements, dict):
                raise UebenchError(f"{where}: overrides.{protocol}.{dataset} must be a table")
            for spec, replacement in replacements.items():
                if spec not in specs:
                    raise UebenchError(
                        f"{where}: overrides.{protocol}.{dataset} replaces {spec!r}, which is "
                        "not one of its countermeasures"
                    )
                if not isinstance(replacement, str):
                    raise UebenchError(f"{where}: the replacement of {spec!r} must be a spec")
                _check_spec(replacement, where)
            result.setdefault(protocol, {})[dataset] = dict(replacements)
    return result


# --- listing -----------------------------------------------------------------------------------


def describe_suites() -> str:
    """Every shipped suite with its countermeasures, each with every option it runs with, and
    what each protocol changes (``uebench list suites``)."""
    lines = []
    for suite in shipped_suites().values():
        lines.append(f"{suite.id}: version {suite.version}, hash {suite.content_hash()}")
        lines.append(
            textwrap.fill(suite.description, 96, initial_indent="  ", subsequent_indent="  ")
        )
        for spec in suite.countermeasures:
            options = COUNTERMEASURES.resolve(spec).canonical()["options"]
            written = ", ".join(f"{key}={_written(value)}" for key, value in options.items())
            lines.append(f"  {spec:32s} {('options: ' + written) if written else ''}".rstrip())
            lines += [f"  {'':32s} {change}" for change in _protocol_changes(suite, spec)]
    return "\n".join(lines)


def _protocol_changes(suite: Suite, spec: str) -> list[str]:
    """``under mini on cifar10: advtrain:eps=8/255:steps=2:alpha=4/255`` for each protocol
    section that runs ``spec`` otherwise than written."""
    changes = []
    for name in protocol_names():
        for dataset in declared_datasets(name):
            runs = dict(suite.runs_for(name, dataset))[spec]
            resolved = resolve_protocol(name, dataset).defense_spec(runs)
            if resolved != spec:
                place = "any other dataset" if dataset == "*" else dataset
                changes.append(f"under {name} on {place}: {resolved}")
    return changes


def _written(value: Any) -> str:
    """A canonical option value as one would type it (``8/255`` rather than 0.0313...)."""
    if isinstance(value, float) and 0 < value < 1 and abs(value * 255 - round(value * 255)) < 1e-9:
        return f"{round(value * 255)}/255"
    if isinstance(value, bool):
        return "true" if value else "false"
    return f"{value:g}" if isinstance(value, float) else str(value)
