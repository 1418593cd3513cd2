"""Named protocols: the settings that define a result, read from ``protocols.toml``.

A protocol (``paper``, ``mini``) fixes, per dataset, the default architectures, epochs, batch
size, learning rate, subset sizes and the options methods and countermeasures run with (the
crafting source model, crafting through the victim's augmentation, PGD steps, ...).  The data
lives in ``protocols.toml`` beside this module; this module only reads and applies it.

Resolution order, each later source winning: plugin defaults < the protocol's ``"*"`` section <
its section for the dataset < config file < command-line flags; an option written in a spec
(``emin:source=[vgg11]``) wins over the protocol's.
"""

from __future__ import annotations

import functools
import hashlib
import json
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

import tomllib

from uebench.errors import UebenchError
from uebench.registry import COUNTERMEASURES, DATASETS, METHODS, Registry
from uebench.spec import parse_spec

#: Grid settings a protocol may set (the GridConfig fields of the same names).
GRID_KEYS = ("archs", "epochs", "batch_size", "lr", "train_size", "test_size")
_SECTION_KEYS = {*GRID_KEYS, "method_options", "methods", "defenses", "train"}


@dataclass(frozen=True)
class Protocol:
    """One protocol resolved for one dataset: every value a cell under it runs with."""

    name: str
    dataset: str
    description: str
    archs: tuple[str, ...]
    epochs: int | float  # fractional: the last pass is partial (airbench94's 9.9)
    batch_size: int
    lr: float
    train_size: int | None = None
    test_size: int | None = None
    method_options: dict[str, Any] = field(default_factory=dict)
    methods: dict[str, dict[str, Any]] = field(default_factory=dict)
    defenses: dict[str, dict[str, Any]] = field(default_factory=dict)
    # The victim's training recipe beyond the grid settings (TrainConfig fields: nesterov,
    # schedule, label_smoothing, lookahead, tta, ...); empty: standard training.
    train: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        """The resolved values, as a record stores them."""
        return {
            "name": self.name,
            "dataset": self.dataset,
            "archs": list(self.archs),
            "epochs": self.epochs,
            "batch_size": self.batch_size,
            "lr": self.lr,
            "train_size": self.train_size,
            "test_size": self.test_size,
            "method_options": dict(self.method_options),
            "methods": {k: dict(v) for k, v in self.methods.items()},
            "defenses": {k: dict(v) for k, v in self.defenses.items()},
            # Only when set, so the values recorded for recipe-free protocols stay as they were.
            **({"train": dict(self.train)} if self.train else {}),
        }

    def content_hash(self) -> str:
        """A hash (16 hex digits) of every resolved value (:meth:`as_dict`, not the
        description): cells made under two protocols with equal hashes ran with the same
        settings, so their numbers stand side by side."""
        text = json.dumps(self.as_dict(), sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def method_spec(self, spec: str) -> str:
        """``spec`` with the protocol's method options added where the spec leaves them unset."""
        name = parse_spec(spec).name
        per_method = self._method_options(spec)
        options = {**self.method_options, **per_method}
        # ε is an L∞ budget: an L2 or L0 method keeps its own unless named explicitly.
        if "eps" in self.method_options and "eps" not in per_method and not _is_linf(name):
            options.pop("eps")
        return _with_options(spec, METHODS, options)

    def _method_options(self, spec: str) -> dict[str, Any]:
        """The ``methods`` entries that match ``spec``, in the order declared.

        An entry is keyed by a method name (``emin``: every emin) or by a spec
        (``emin:form=sample``: only emin whose ``form``, written or by default, is ``sample``).
        """
        name = parse_spec(spec).name
        options: dict[str, Any] = {}
        for key, values in self.methods.items():
            wanted = parse_spec(key)
            if wanted.name != name:
                continue
            if wanted.options:
                have = METHODS.resolve(spec).options
                if any(
                    have.get(k) != v
                    for k, v in METHODS.resolve(key).options.items()
                    if k in wanted.options
                ):
                    continue
            options.update(values)
        return options

    def defense_spec(self, spec: str) -> str:
        """``spec`` (``a+b`` composes) with the protocol's countermeasure options added."""
        return "+".join(
            _with_options(part, COUNTERMEASURES, self.defenses.get(parse_spec(part).name, {}))
            for part in spec.split("+")
        )


@functools.lru_cache(maxsize=1)
def _table() -> dict[str, Any]:
    text = resources.files("uebench.grid").joinpath("protocols.toml").read_text()
    return tomllib.loads(text)


def protocol_names() -> list[str]:
    """Every declared protocol, sorted."""
    return sorted(_table()["protocols"])


def declared_datasets(name: str) -> list[str]:
    """The datasets protocol ``name`` has a section for, plus ``*`` (any other dataset)."""
    sections = _table()["protocols"][name]
    return [key for key in sections if isinstance(sections[key], dict)]


def default_protocols() -> dict[str, str]:
    """Dataset name → the protocol it runs under when none is chosen (as declared)."""
    return dict(_table()["default_protocol"])


def default_protocol(dataset: str) -> str:
    """The protocol a dataset (name or spec) runs under when none is chosen."""
    name = dataset if dataset == "*" else DATASETS.resolve(dataset).spec.name
    return str(_table()["default_protocol"].get(name, "paper"))


def resolve_protocol(name: str | None, dataset: str) -> Protocol:
    """Protocol ``name`` (None: the dataset's default) with its values for ``dataset``."""
    name = name or default_protocol(dataset)
    declared = _table()["protocols"]
    if name not in declared:
        raise UebenchError(f"unknown protocol {name!r}; valid: {', '.join(protocol_names())}")
    # "*" asks for the values any dataset without a section of its own gets.
    dataset_name = dataset if dataset == "*" else DATASETS.resolve(dataset).spec.name
    merged: dict[str, Any] = {}
    for section in (declared[name].get("*", {}), declared[name].get(dataset_name, {})):
        unknown = sorted(set(section) - _SECTION_KEYS)
        if unknown:  # a typo in the data file must not be silently ignored
            raise UebenchError(f"protocol {name!r} has an unknown key {unknown[0]!r}")
        for key, value in section.items():
            if key in ("method_options", "methods", "defenses", "train"):
                merged[key] = _merge(merged.get(key, {}), value)
            else:
                merged[key] = value
    return Protocol(
        name=name,
        dataset=dataset_name,
        description=" ".join(str(declared[name].get("description", "")).split()),
        archs=tuple(merged.get("archs", ("resnet18",))),
        epochs=_whole_if_integral(merged.get("epochs", 30)),
        batch_size=int(merged.get("batch_size", 128)),
        lr=float(merged.get("lr", 0.025)),
        train_size=merged.get("train_size"),
        test_size=merged.get("test_size"),
        method_options=merged.get("method_options", {}),
        methods=merged.get("methods", {}),
        defenses=merged.get("defenses", {}),
        train=merged.get("train", {}),
    )


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        out[key] = _merge(out.get(key, {}), value) if isinstance(value, dict) else value
    return out


def _is_linf(method: str) -> bool:
    """Whether a method's default threat model is L∞ (methods that cannot say count as L∞)."""
    try:
        built = METHODS.build(method)
    except UebenchError:  # a method with required options: it will say so itself later
        return True
    threat = getattr(built, "threat_model", None)
    return threat is None or threat().norm == "linf"


def _with_options(spec: str, registry: Registry, options: dict[str, Any]) -> str:
    """Append ``:key=value`` for each option the plugin has and the spec does not set."""
    if not options:
        return spec
    parsed = parse_spec(spec)
    params = registry.options(parsed.name)
    given = set(parsed.options)
    if parsed.positional is not None and params:
        given.add(next(iter(params)))
    extra = [
        f":{key}={spec_value(value)}"
        for key, value in options.items()
        if key in params and key not in given
    ]
    return spec + "".join(extra)


def spec_value(value: Any) -> str:
    """A value as the spec grammar reads it back (nested specs in brackets)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        value = ",".join(map(str, value))
    text = str(value)
    return f"[{text}]" if any(char in text for char in ":,=[]") else text


def _whole_if_integral(value: Any) -> int | float:
    """Epochs as the data file gives them: 10 stays an int (cell ids hash it so), 9.9 a float."""
    number = float(value)
    return int(number) if number.is_integer() else number
