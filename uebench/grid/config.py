"""What `uebench run` takes (flags, a TOML/YAML file or API keywords) and the cells it makes."""

from __future__ import annotations

import math
import numbers
import os
import tempfile
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np

from uebench.cache import method_identity
from uebench.countermeasure import build_countermeasure
from uebench.errors import UebenchError, plugin_errors
from uebench.grid.cell import Cell
from uebench.grid.protocols import Protocol, resolve_protocol
from uebench.registry import ARCHS, METHODS
from uebench.spec import split_list
from uebench.training import TrainConfig, resolve_device

#: The default bound on a grid's cell count (``max_cells``).
DEFAULT_MAX_CELLS = 10_000
#: No seed list may hold more seeds than this, whatever ``max_cells`` says: expanding
#: ``0-100000000`` alone would take gigabytes before any bound could be checked.
MAX_SEEDS = 1_000_000


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

    def __post_init__(self) -> None:
        # Every value is checked against its field's annotation (and the bounds in its
        # metadata) here, so a config file, flags and API keywords all fail before any work.
        hints = typing.get_type_hints(type(self))
        for spec in fields(self):
            value = getattr(self, spec.name)
            setattr(self, spec.name, _checked(spec.name, value, hints[spec.name], spec.metadata))
        for key in ("out", "cache_dir", "data_root"):
            value = getattr(self, key)
            if value is not None and not value.strip():  # "" would mean the current folder
                raise UebenchError(f"{key}: expected a folder name, got {value!r}")

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
            _check_writable(key, folder)
        # results.csv is replaced atomically after each cell: a folder (or other non-file) in
        # its place, or a file its owner made read-only, would only fail after the first cell.
        table = out / "results.csv"
        if table.exists() or table.is_symlink():
            if not table.is_file():
                raise UebenchError(f"out: {table} is in the way (not a file); move it away")
            if not os.access(table, os.W_OK):
                raise UebenchError(f"out: {table} is read-only; make it writable or move it")

    def resolved_protocol(self) -> Protocol:
        """The grid's protocol (``protocol`` or the dataset's default) for its dataset."""
        return resolve_protocol(self.protocol, self.dataset)

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
        count = len(set(self.seeds)) * len(archs) * len(defenses) * len(methods)
        if count > self.max_cells:
            raise UebenchError(
                f"the grid has {count} cells ({len(methods)} methods × {len(defenses)} "
                f"defenses × {len(archs)} archs × {len(set(self.seeds))} seeds), more than "
                f"max_cells={self.max_cells}; raise --max-cells to run it"
            )
        for _, spec in methods:
            method_identity(spec)
            # Building is cheap and runs the plugin's own option checks (its __init__).
            with plugin_errors(f"method {spec!r}", "checking its options"):
                METHODS.resolve(spec).without_common().build()
        for _, spec in defenses:
            with plugin_errors(f"countermeasure {spec!r}", "checking its options"):
                build_countermeasure(spec)
        for spec in archs:
            ARCHS.resolve(spec)  # building one needs the data's classes and image shape
        resolve_device(self.device)
        config = self.train_config()
        cache_dir = str(self.cache_folder())
        cells: dict[str, Cell] = {}
        for seed in self.seeds:
            for arch in archs:
                for defense_label, defense in defenses:
                    for method_label, method in methods:
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
                        )
                        first = cells.setdefault(cell.cell_id, cell)
                        if first is not cell and report is not None:
                            report(
                                f"{cell.name()} is the same cell as {first.name()}; running it once"
                            )
        if not cells:
            raise UebenchError("the grid is empty: give at least one method, defense and seed")
        return list(cells.values())


def _first(value: Any, fallback: Any) -> Any:
    return value if value is not None else fallback


def _checked(key: str, value: Any, annotation: Any, bounds: Mapping[str, Any]) -> Any:
    """``value`` as a value of ``annotation`` (``int | None``, ``list[str]``, ...) within
    ``bounds`` (``min``, ``above``), or a one-line error naming the key, value and expectation.

    Lists may also be given as comma-separated strings (seeds also as ranges, ``0-4``);
    booleans must be real booleans; integers may not be floats with a fraction; floats must be
    finite.
    """
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        if value is None:
            return None
        (annotation,) = [a for a in typing.get_args(annotation) if a is not type(None)]
    if typing.get_origin(annotation) is list:
        (item_type,) = typing.get_args(annotation)
        items = _as_list(key, value, item_type)
        return [_checked_item(key, item, item_type, bounds, in_list=True) for item in items]
    return _checked_item(key, value, annotation, bounds)


def _as_list(key: str, value: Any, item_type: type) -> list[Any]:
    kind = "integers" if item_type is int else "specs"
    if isinstance(value, str):
        items = parse_seeds(value) if item_type is int else split_list(value)
    elif isinstance(value, (list, tuple)):
        items = list(value)
        if item_type is str:
            for item in items:
                _checked_item(key, item, str, {}, in_list=True)
            items = split_list(items)
    elif item_type is int and _is_int(value):
        items = [value]
    else:
        raise UebenchError(
            f"{key}: expected a list of {kind} or a comma-separated string, got {value!r}"
        )
    if not items:
        raise UebenchError(f"{key} is empty: give at least one {kind[:-1]}")
    return items


def _checked_item(
    key: str, value: Any, kind: type, bounds: Mapping[str, Any], in_list: bool = False
) -> Any:
    where = f"{key}: expected {'every item to be ' if in_list else ''}"
    if kind is bool:
        if not isinstance(value, (bool, np.bool_)):  # not "no", 0 or None
            raise UebenchError(f"{where}true or false, got {value!r}")
        return bool(value)
    if kind is str:
        if isinstance(value, os.PathLike):
            value = os.fspath(value)
        if not isinstance(value, str):
            raise UebenchError(f"{where}a string, got {value!r}")
        return value
    if kind is int:
        if not _is_int(value):
            raise UebenchError(f"{where}an integer{_bounds_text(bounds)}, got {value!r}")
        number: int | float = int(value)
    elif kind is float:
        number = float(value) if _is_real(value) else math.nan
        if not math.isfinite(number):
            raise UebenchError(f"{where}a finite number{_bounds_text(bounds)}, got {value!r}")
    else:  # pragma: no cover - a field of a type this function does not know
        raise TypeError(f"GridConfig.{key}: unsupported annotation {kind!r}")
    low, above = bounds.get("min"), bounds.get("above")
    if (low is not None and number < low) or (above is not None and number <= above):
        noun = "an integer" if kind is int else "a finite number"
        raise UebenchError(f"{where}{noun}{_bounds_text(bounds)}, got {value!r}")
    return number


def _is_real(value: Any) -> bool:
    """A number (numpy's too), not a bool."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _is_int(value: Any) -> bool:
    """An integer, or a float without a fraction (``3.0`` for 3), not a bool."""
    if not _is_real(value):
        return False
    return isinstance(value, numbers.Integral) or (
        math.isfinite(value) and float(value).is_integer()
    )


def _bounds_text(bounds: Mapping[str, Any]) -> str:
    if bounds.get("above") is not None:
        return f" > {bounds['above']}"
    if bounds.get("min") is not None:
        return f" >= {bounds['min']}"
    return ""


def _check_writable(key: str, folder: Path) -> None:
    """Create ``folder`` and write and remove a probe file in it; one line if either fails."""
    # A name longer than the file system allows fails every call below with a traceback-worthy
    # OSError; 255 bytes is the limit of ext4, xfs, btrfs, APFS and NTFS alike.
    long = next((part for part in folder.parts if len(os.fsencode(part)) > 255), None)
    if long is not None:
        raise UebenchError(
            f"{key}: the folder name {long[:40]}... is {len(os.fsencode(long))} bytes long; "
            "file systems allow at most 255"
        )
    # mkdir's own errors for these ("File exists", "Not a directory") do not say which file.
    try:
        blocker = next(
            (p for p in (folder, *folder.parents) if p.exists() and not p.is_dir()), None
        )
    except OSError as error:
        raise UebenchError(
            f"{key}: cannot use {folder} ({error.strerror or type(error).__name__})"
        ) from None
    if blocker == folder:
        raise UebenchError(f"{key}: {folder} is a file, not a folder")
    if blocker is not None:
        raise UebenchError(f"{key}: cannot create {folder}: {blocker} is a file")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        handle, probe = tempfile.mkstemp(dir=folder, prefix=".uebench-probe-")
        os.close(handle)
        os.unlink(probe)
    except OSError as error:
        raise UebenchError(
            f"{key}: cannot write to {folder} ({error.strerror or type(error).__name__})"
        ) from None


def parse_seeds(value: Any) -> list[int]:
    """``0,1,2``, ``0-4`` or a list of ints; a reversed range or no seed at all is an error."""
    if _is_int(value):
        return [int(value)]
    if isinstance(value, (list, tuple)):
        bad = next((v for v in value if not _is_int(v)), None)
        if bad is not None or not value:
            raise UebenchError(f"seeds: expected a list of integers, got {list(value)!r}")
        return [int(v) for v in value]
    if not isinstance(value, str):
        raise UebenchError(f"seeds: expected e.g. 0,1,2, 0-4 or a list of integers, got {value!r}")
    seeds: list[int] = []
    for part in (part.strip() for part in value.split(",")):
        try:
            if "-" in part[1:]:
                low, high = (int(end) for end in part.split("-", 1))
                if high < low:
                    raise UebenchError(f"seeds: the range {part} is reversed; write {high}-{low}")
                if high - low + 1 + len(seeds) > MAX_SEEDS:
                    raise UebenchError(
                        f"seeds: {part} holds {high - low + 1} seeds; at most {MAX_SEEDS} "
                        "in one grid"
                    )
                seeds.extend(range(low, high + 1))
            elif part:
                seeds.append(int(part))
        except ValueError:
            raise UebenchError(f"bad seeds {value!r}; use e.g. 0,1,2 or 0-4") from None
    if not seeds:
        raise UebenchError(f"seeds {value!r} names no seed; use e.g. 0,1,2 or 0-4")
    return seeds
