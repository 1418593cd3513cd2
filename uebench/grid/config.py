"""What `uebench run` takes (flags, a TOML/YAML file or API keywords) and the cells it makes."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from uebench.cache import method_identity
from uebench.countermeasure import build_countermeasure
from uebench.errors import UebenchError
from uebench.grid.cell import Cell
from uebench.grid.protocols import Protocol, resolve_protocol
from uebench.registry import ARCHS
from uebench.spec import split_list
from uebench.training import TrainConfig, resolve_device


@dataclass
class GridConfig:
    """Everything ``uebench run`` takes; also what a TOML/YAML ``--config`` file may hold."""

    dataset: str = "cluttered-digits"
    data_root: str | None = None
    methods: list[str] = field(default_factory=lambda: ["clean", "emin"])
    defenses: list[str] = field(default_factory=lambda: ["none"])
    # None: the protocol's value (archs, epochs, batch_size, lr, train_size, test_size).
    archs: list[str] | None = None
    seeds: list[int] = field(default_factory=lambda: [0])
    epochs: int | None = None
    batch_size: int | None = None
    lr: float | None = None
    train_size: int | None = None
    test_size: int | None = None
    device: str = "auto"
    out: str = "runs/default"
    cache_dir: str | None = None
    save_models: bool = False
    progress: bool = True
    # Named bundle of settings (see uebench.grid.protocols); None: the dataset's default.
    protocol: str | None = None
    # torch threads in this process (local backend) or per cell (Ray); None: uebench decides.
    threads: int | None = None
    # Where cells run: "local" (this process, one after another) or "ray" (a Ray cluster).
    backend: str = "local"
    address: str | None = None  # Ray: "auto", "ray://HOST:PORT"; None starts a local instance
    cpus_per_cell: float | None = None  # Ray resource requests; None: sensible defaults
    gpus_per_cell: float | None = None

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
        for key in ("methods", "defenses", "archs"):
            if key in values:
                values[key] = split_list(values[key])
        if "seeds" in values:
            values["seeds"] = parse_seeds(values["seeds"])
        return cls(**values)

    def resolved_protocol(self) -> Protocol:
        """The grid's protocol (``protocol`` or the dataset's default) for its dataset."""
        return resolve_protocol(self.protocol, self.dataset)

    def train_config(self) -> TrainConfig:
        """The victim's training settings: explicit values, else the protocol's."""
        protocol = self.resolved_protocol()
        epochs = self.epochs if self.epochs is not None else protocol.epochs
        if epochs < 1:
            raise UebenchError(f"epochs must be at least 1, got {epochs}")
        return TrainConfig(
            epochs=epochs,
            batch_size=self.batch_size if self.batch_size is not None else protocol.batch_size,
            lr=self.lr if self.lr is not None else protocol.lr,
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
        for _, spec in methods:
            method_identity(spec)
        for _, spec in defenses:
            build_countermeasure(spec)
        for spec in archs:
            ARCHS.resolve(spec)
        resolve_device(self.device)
        config = self.train_config()
        cache_dir = self.cache_dir or str(Path(self.out).parent / "cache")
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


def parse_seeds(value: Any) -> list[int]:
    """``0,1,2``, ``0-4`` or a list of ints."""
    if isinstance(value, int):
        return [value]
    if isinstance(value, str):
        seeds: list[int] = []
        for part in value.split(","):
            try:
                if "-" in part.strip()[1:]:
                    low, high = part.split("-", 1)
                    seeds.extend(range(int(low), int(high) + 1))
                elif part.strip():
                    seeds.append(int(part))
            except ValueError:
                raise UebenchError(f"bad seeds {value!r}; use e.g. 0,1,2 or 0-4") from None
        return seeds
    return [int(v) for v in value]
