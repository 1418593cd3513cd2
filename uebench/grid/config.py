"""What `uebench run` takes (flags, a TOML/YAML file or API keywords) and the cells it makes."""

from __future__ import annotations

import argparse
import itertools
import os
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import tomllib

from uebench.countermeasure import build_countermeasure
from uebench.errors import UebenchError, plugin_errors
from uebench.execution import execution_for
from uebench.files import check_writable, os_error_line
from uebench.grid.cell import Cell
from uebench.grid.protocols import GRID_KEYS, Protocol, resolve_protocol
from uebench.identity import method_identity
from uebench.options import convert
from uebench.registry import ARCHS, METHODS
from uebench.training import TrainConfig, resolve_device

#: The default bound on a grid's cell count (``max_cells``).
DEFAULT_MAX_CELLS = 10_000

#: The flags of ``uebench run`` with their help: each sets the GridConfig field of its name.
RUN_FLAGS = {
    "dataset": "dataset spec (default: cluttered-digits, embedded, offline)",
    "data_root": "folder holding the dataset files",
    "methods": "comma-separated method specs, e.g. clean,emin,emin:form=class (options the "
    "spec leaves unset: the protocol's)",
    "defenses": "comma-separated countermeasure specs, e.g. none,cutmix+earlystop (options "
    "the spec leaves unset: the protocol's)",
    "archs": "comma-separated architecture specs, e.g. resnet18:width=16 (default: the protocol's)",
    "seeds": "victim training seeds, e.g. 0,1,2 or 0-4",
    "epochs": "training epochs (default: the protocol's)",
    "batch_size": "training batch size (default: the protocol's)",
    "lr": "initial learning rate (default: the protocol's)",
    "train_size": "stratified subset of the training set (default: the protocol's, else all)",
    "test_size": "stratified subset of the test set (default: the protocol's, else all)",
    "device": "auto, cpu or cuda[:N] (default auto)",
    "out": "results folder (default runs/default)",
    "cache_dir": "poison cache folder (default: cache/ beside the results folder)",
    "protocol": "named settings bundle (uebench list protocols; default: the dataset's)",
    "threads": "torch threads per cell (default: one per idle core; docs/running.md)",
    "backend": "local (default) or ray",
    "address": "Ray cluster address: auto or ray://HOST:PORT (default: start a local Ray)",
    "cpus_per_cell": "Ray: CPUs each cell requests",
    "gpus_per_cell": "Ray: GPUs each cell requests (default 1 when the cluster has GPUs)",
    "max_cells": "refuse a grid of more cells than this (default 10000)",
}
_INT_FLAGS = {"epochs", "batch_size", "train_size", "test_size", "threads", "max_cells"}
_FLOAT_FLAGS = {"lr", "cpus_per_cell", "gpus_per_cell"}
#: Settings only the Ray backend reads.
_RAY_ONLY = ("address", "cpus_per_cell", "gpus_per_cell")


@dataclass
class GridConfig:
    """Everything ``uebench run`` takes; also what a TOML/YAML ``--config`` file may hold."""

    dataset: str = "cluttered-digits"
    data_root: str | None = None
    methods: list[str] = field(default_factory=lambda: ["clean", "emin"])
    defenses: list[str] = field(default_factory=lambda: ["none"])
    # None: the protocol's value (archs, epochs, batch_size, lr, train_size, test_size).
    archs: list[str] | None = None
    seeds: list[int] = field(default_factory=lambda: [0], metadata={"min": 0})
    epochs: int | None = field(default=None, metadata={"min": 1})
    batch_size: int | None = field(default=None, metadata={"min": 1})
    lr: float | None = field(default=None, metadata={"above": 0})
    train_size: int | None = field(default=None, metadata={"min": 1})
    test_size: int | None = field(default=None, metadata={"min": 1})
    device: str = "auto"
    out: str = "runs/default"
    cache_dir: str | None = None
    save_models: bool = False
    progress: bool = True
    # Named bundle of settings (see uebench.grid.protocols); None: the dataset's default.
    protocol: str | None = None
    # torch threads in this process (local backend) or per cell (Ray); None: uebench decides.
    threads: int | None = field(default=None, metadata={"min": 1})
    # Where cells run: "local" (this process, one after another) or "ray" (a Ray cluster).
    backend: str = "local"
    address: str | None = None  # Ray: "auto", "ray://HOST:PORT"; None starts a local instance
    # Ray resource requests; None: sensible defaults
    cpus_per_cell: float | None = field(default=None, metadata={"above": 0})
    gpus_per_cell: float | None = field(default=None, metadata={"min": 0})
    # A grid of more cells is refused before any work (a typo such as seeds 0-100000000
    # would otherwise plan for hours); raise it to run a larger grid on purpose.
    max_cells: int = field(default=DEFAULT_MAX_CELLS, metadata={"min": 1})
    # torch.compile the training, evaluation and crafting steps; None: the device's measured
    # default (uebench.execution).  How cells run, not what they compute: not in cell ids.
    compile: bool | None = None

    def __post_init__(self) -> None:
        # Every value is checked against its field's annotation (and the bounds in its
        # metadata) here, so a config file, flags and API keywords all fail before any work.
        hints = typing.get_type_hints(type(self))
        for spec in fields(self):
            value = getattr(self, spec.name)
            setattr(
                self, spec.name, convert(value, hints[spec.name], spec.name, bounds=spec.metadata)
            )
        for key in ("out", "cache_dir", "data_root"):
            value = getattr(self, key)
            if value is not None and not value.strip():  # "" would mean the current folder
                raise UebenchError(f"{key}: expected a folder name, got {value!r}")
        # The local backend reads none of Ray's settings: one given would be silently ignored.
        ignored = [key for key in _RAY_ONLY if getattr(self, key) is not None]
        if self.backend == "local" and ignored:
            flags = ", ".join(f"--{key.replace('_', '-')}" for key in ignored)
            raise UebenchError(
                f"{flags} {'is' if len(ignored) == 1 else 'are'} for --backend ray; the local "
                "backend would ignore it: drop it or add --backend ray"
            )

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> GridConfig:
        """Build from a config mapping; list fields accept lists or comma-separated strings."""
        known = {f.name for f in fields(cls)}
        values = {key.replace("-", "_"): value for key, value in values.items()}
        unknown = sorted(set(values) - known)
        if unknown:
            raise UebenchError(
                f"unknown config key {unknown[0]!r}; valid: {', '.join(sorted(known))}"
            )
        return cls(**values)

    def cache_folder(self) -> Path:
        """Where poisons are cached: ``cache_dir``, else ``cache/`` beside the results folder."""
        return Path(self.cache_dir) if self.cache_dir else Path(self.out).parent / "cache"

    def check_folders(self) -> None:
        """Create the results and cache folders and write a probe file in each, so a file in
        the way or a read-only place is one line before any data loads, not after a cell."""
        out = Path(self.out)
        folders = [("out", out), ("out", out / "cells"), ("cache_dir", self.cache_folder())]
        if self.save_models:
            folders.append(("out", out / "models"))
        for key, folder in folders:
            check_writable(key, folder)
        # results.csv is rewritten as a run starts and grows by a row after each cell: a folder
        # (or other non-file) in its place, or a file its owner made read-only, would
        # otherwise fail only once the run has started.
        table = out / "results.csv"
        if table.exists() or table.is_symlink():
            if not table.is_file():
                raise UebenchError(f"out: {table} is in the way (not a file); move it away")
            if not os.access(table, os.W_OK):
                raise UebenchError(f"out: {table} is read-only; make it writable or move it")

    def resolved_protocol(self) -> Protocol:
        """The grid's protocol (``protocol`` or the dataset's default) for its dataset."""
        return resolve_protocol(self.protocol, self.dataset)

    def effective_protocol(self) -> Protocol:
        """The grid's protocol with each grid setting given explicitly (``archs``, ``epochs``,
        ``batch_size``, ``lr``, ``train_size``, ``test_size``) in place of its own: what the
        cells run with, and what :meth:`Protocol.content_hash` of a result should say."""
        given = {key: getattr(self, key) for key in GRID_KEYS if getattr(self, key) is not None}
        if "archs" in given:
            given["archs"] = tuple(given["archs"])
        return replace(self.resolved_protocol(), **given)

    def train_config(self) -> TrainConfig:
        """The victim's training settings: explicit values, else the protocol's."""
        protocol = self.resolved_protocol()
        epochs = self.epochs if self.epochs is not None else protocol.epochs
        if epochs < 1:
            raise UebenchError(f"epochs must be at least 1, got {epochs}")
        recipe = dict(protocol.train)
        valid = {f.name for f in fields(TrainConfig)} - {"epochs", "batch_size", "lr"}
        unknown = sorted(set(recipe) - valid)
        if unknown:  # a typo in the data file must not be silently ignored
            raise UebenchError(
                f"protocol {protocol.name!r} has an unknown train key {unknown[0]!r}; "
                f"valid: {', '.join(sorted(valid))}"
            )
        return TrainConfig(
            epochs=epochs,
            batch_size=self.batch_size if self.batch_size is not None else protocol.batch_size,
            lr=self.lr if self.lr is not None else protocol.lr,
            **recipe,
        )

    def cells(self, report: Callable[[str], None] | None = None) -> list[Cell]:
        """Every distinct cell of the grid, after checking every spec (typos fail before work).

        Specs are completed with the protocol's options; two spellings of one cell
        (``random`` and ``random:form=sample``) run once, under the spelling given first, and
        ``report`` (if given) is told of each such alias.
        """
        protocol = self.resolved_protocol()
        methods = [(label, protocol.method_spec(label)) for label in self.methods]
        defenses = [(label, protocol.defense_spec(label)) for label in self.defenses]
        archs = self.archs if self.archs is not None else list(protocol.archs)
        self._check_size(len(methods), len(defenses), len(archs))
        _check_specs([spec for _, spec in methods], [spec for _, spec in defenses], archs)
        # The execution's switches (UEBENCH_COMPILE, UEBENCH_CPU_BF16) are checked here too,
        # before any folder is made.
        execution_for(resolve_device(self.device), self.compile)
        config = self.train_config()
        cache_dir = str(self.cache_folder())
        cells: dict[str, Cell] = {}
        grid = itertools.product(self.seeds, archs, defenses, methods)
        for seed, arch, (defense_label, defense), (method_label, method) in grid:
            cell = Cell(
                dataset=self.dataset,
                method=method,
                defense=defense,
                arch=arch,
                seed=seed,
                train=config,
                data_root=self.data_root,
                train_size=_first(self.train_size, protocol.train_size),
                test_size=_first(self.test_size, protocol.test_size),
                device=self.device,
                cache_dir=cache_dir,
                protocol=protocol.name,
                method_label=method_label,
                defense_label=defense_label,
                compile=self.compile,
            )
            first = cells.setdefault(cell.cell_id, cell)
            if first is not cell and report is not None:
                report(f"{cell.name()} is the same cell as {first.name()}; running it once")
        if not cells:
            raise UebenchError(
                "the grid is empty: give at least one method, countermeasure and seed"
            )
        return list(cells.values())

    def _check_size(self, methods: int, defenses: int, archs: int) -> None:
        """Refuse a grid of more than ``max_cells`` cells before any spec is checked."""
        seeds = len(set(self.seeds))
        count = seeds * archs * defenses * methods
        if count > self.max_cells:
            raise UebenchError(
                f"the grid has {count} cells ({methods} methods × {defenses} "
                f"defenses × {archs} archs × {seeds} seeds), more than "
                f"max_cells={self.max_cells}; raise --max-cells to run it"
            )


def _check_specs(methods: list[str], defenses: list[str], archs: list[str]) -> None:
    """Resolve every spec and build every method and countermeasure once: unknown names,
    bad options and a plugin's own option checks (its ``__init__``) fail in one line here."""
    for spec in methods:
        method_identity(spec)
        # Building is cheap and runs the plugin's own option checks (its __init__).
        with plugin_errors(f"method {spec!r}", "checking its options"):
            METHODS.resolve(spec).without_common().build()
    for spec in defenses:
        with plugin_errors(f"countermeasure {spec!r}", "checking its options"):
            build_countermeasure(spec)
    for spec in archs:
        ARCHS.resolve(spec)  # building one needs the data's classes and image shape


def add_run_flags(parser: argparse.ArgumentParser) -> None:
    """Add ``uebench run``'s flags to ``parser``: ``--config`` and one per :data:`RUN_FLAGS`."""
    parser.add_argument("--config", help="TOML or YAML file with the same keys; flags override it")
    for name, text in RUN_FLAGS.items():
        kind = int if name in _INT_FLAGS else float if name in _FLOAT_FLAGS else str
        parser.add_argument(f"--{name.replace('_', '-')}", dest=name, type=kind, help=text)
    parser.add_argument(
        "--save-models", action="store_true", default=None, help="keep each trained victim model"
    )
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
    parser.add_argument(
        "--compile",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="torch.compile the steps (default: where it measured faster on the device; also "
        "UEBENCH_COMPILE=0/1); how cells run, not what they compute",
    )


def run_values(args: argparse.Namespace) -> dict[str, Any]:
    """The GridConfig values of parsed ``uebench run`` flags: the ``--config`` file's, with the
    flags given on top (:func:`merge_config`)."""
    wanted = {*RUN_FLAGS, "save_models", "compile"}
    flags = {key: value for key, value in vars(args).items() if key in wanted}
    values = merge_config(getattr(args, "config", None), flags)
    if getattr(args, "no_progress", False):
        values["progress"] = False
    return values


def merge_config(path: str | None, flags: Mapping[str, Any]) -> dict[str, Any]:
    """A config file's values (none without ``path``) with every flag that is not None over
    them: how ``uebench run`` and a reference's command read a file and flags."""
    values = read_config_file(path) if path else {}
    if values:
        # A flag overriding a key does not make the file's own value right: check it alone too.
        try:
            GridConfig.from_dict(values)
        except UebenchError as error:
            raise UebenchError(f"{path}: {error}") from None
    values.update({key: value for key, value in flags.items() if value is not None})
    return values


def read_config_file(path: str) -> dict[str, Any]:
    """A grid config from TOML (``.toml``) or YAML (``.yaml``/``.yml``)."""
    file = Path(path)
    try:
        text = file.read_text()
    except (OSError, UnicodeDecodeError) as error:
        raise UebenchError(f"config: {os_error_line(error, path, 'reading')}") from None
    try:
        if file.suffix == ".toml":
            values = tomllib.loads(text)
        elif file.suffix in {".yaml", ".yml"}:
            import yaml

            values = yaml.safe_load(text) or {}
        else:
            raise UebenchError(f"config {path} must end in .toml, .yaml or .yml")
    except (tomllib.TOMLDecodeError, ValueError) as error:
        raise UebenchError(f"config {path} is not valid: {str(error).splitlines()[0]}") from None
    except Exception as error:  # yaml's errors are many classes; all mean a malformed file
        if isinstance(error, UebenchError):
            raise
        raise UebenchError(f"config {path} is not valid: {str(error).splitlines()[0]}") from None
    if not isinstance(values, dict):
        raise UebenchError(f"config {path} must be a mapping of keys to values")
    return values.get("run", values) if isinstance(values.get("run"), dict) else values


def _first(value: Any, fallback: Any) -> Any:
    return value if value is not None else fallback
