"""What `uebench run` takes (flags, a TOML/YAML file or API keywords) and the cells it makes."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from uebench.cache import method_identity
from uebench.countermeasure import build_countermeasure
from uebench.errors import UebenchError
from uebench.grid.cell import Cell
from uebench.registry import ARCHS, DATASETS
from uebench.spec import split_list
from uebench.training import TrainConfig, resolve_device

# Appendix B's epochs (and the embedded sets'); other datasets fall back to DEFAULT_EPOCHS.
PAPER_EPOCHS = {
    "svhn": 30,
    "cifar10": 60,
    "cifar100": 100,
    "imagenet-subset": 100,
    "cluttered-digits": 20,
    "digits": 15,
}
DEFAULT_EPOCHS = 30


@dataclass
class GridConfig:
    """Everything ``uebench run`` takes; also what a TOML/YAML ``--config`` file may hold."""

    dataset: str = "cluttered-digits"
    data_root: str | None = None
    methods: list[str] = field(default_factory=lambda: ["clean", "emin"])
    defenses: list[str] = field(default_factory=lambda: ["none"])
    archs: list[str] = field(default_factory=lambda: ["resnet18"])
    seeds: list[int] = field(default_factory=lambda: [0])
    epochs: int | None = None
    batch_size: int = 128
    lr: float = 0.025
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

    def train_config(self) -> TrainConfig:
        name = DATASETS.resolve(self.dataset).spec.name
        epochs = self.epochs if self.epochs is not None else PAPER_EPOCHS.get(name, DEFAULT_EPOCHS)
        if epochs < 1:
            raise UebenchError(f"epochs must be at least 1, got {epochs}")
        return TrainConfig(epochs=epochs, batch_size=self.batch_size, lr=self.lr)

    def cells(self) -> list[Cell]:
        """Every cell of the grid, after checking every spec (so typos fail before any work)."""
        for spec in self.methods:
            method_identity(spec)
        for spec in self.defenses:
            build_countermeasure(spec)
        for spec in self.archs:
            ARCHS.resolve(spec)
        resolve_device(self.device)
        config = self.train_config()
        cache_dir = self.cache_dir or str(Path(self.out).parent / "cache")
        return [
            Cell(
                self.dataset,
                method,
                defense,
                arch,
                seed,
                config,
                self.data_root,
                self.train_size,
                self.test_size,
                self.device,
                cache_dir,
            )
            for seed in self.seeds
            for arch in self.archs
            for defense in self.defenses
            for method in self.methods
        ]


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
