"""The grid: dataset × method × countermeasure × architecture × seed, one cell at a time.

Each :class:`Cell` carries everything it needs, so a cell can run in another process (Ray later)
and writes its own record; the grid only decides which cells are still missing.
"""

from __future__ import annotations

import functools
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from tqdm.auto import tqdm

from uebench.cache import PoisonCache, cache_key, method_identity
from uebench.countermeasure import TrainingContext, TrainSet, build_countermeasure
from uebench.data import ImageData
from uebench.diagnostics import backdoor_success_rate, per_class_accuracy
from uebench.errors import UebenchError
from uebench.method import CraftContext
from uebench.poison import Poison, atomic_write
from uebench.registry import ARCHS, DATASETS, DEFENSES, METHODS
from uebench.scenarios import only_classes, resolve_classes
from uebench.spec import split_list
from uebench.store import ResultStore
from uebench.training import (
    EpochStats,
    TrainConfig,
    confusion_matrix,
    predict,
    resolve_device,
    train,
)
from uebench.version import code_version

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


@dataclass(frozen=True)
class Cell:
    """One unit of work: train ``arch`` on ``dataset`` poisoned by ``method`` under ``defense``."""

    dataset: str
    method: str
    defense: str
    arch: str
    seed: int
    train: TrainConfig
    data_root: str | None = None
    train_size: int | None = None
    test_size: int | None = None
    device: str = "auto"
    cache_dir: str = "runs/cache"

    def identity(self) -> dict[str, Any]:
        """What determines the result (not where data or caches live, nor the device)."""
        return {
            "dataset": DATASETS.resolve(self.dataset).canonical(),
            "train_size": self.train_size,
            "test_size": self.test_size,
            "method": method_identity(self.method),
            "defense": [DEFENSES.resolve(part).canonical() for part in self.defense.split("+")],
            "arch": ARCHS.resolve(self.arch).canonical(),
            "seed": self.seed,
            "train": self.train.as_dict(),
        }

    @functools.cached_property
    def cell_id(self) -> str:
        return cache_key(self.identity())[:16]


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


@functools.lru_cache(maxsize=4)
def load_cell_data(
    dataset: str, data_root: str | None, train_size: int | None, test_size: int | None
) -> ImageData:
    """The cell's data (cached in-process so a grid loads each dataset once)."""
    from uebench.datasets import load_dataset

    return load_dataset(dataset, data_root, train_size, test_size, seed=0)


def craft_poison(cell: Cell, data: ImageData, progress: bool = True) -> Poison:
    """The cell's poison, from the cache when any cell crafted it before."""
    resolved = METHODS.resolve(cell.method)
    cache = PoisonCache(cell.cache_dir)
    ctx = CraftContext(resolve_device(cell.device), cell.train, progress, cache)
    poison = ctx.craft(cell.method, data)
    classes = resolved.options.get("classes")
    if classes:
        poison = only_classes(poison, data.y_train, resolve_classes(classes, data.classes))
    return poison


def run_cell(cell: Cell, progress: bool = True, model_path: Path | None = None) -> dict[str, Any]:
    """Run one cell from scratch to its record (a JSON-able dict).

    With ``model_path`` the trained victim's ``state_dict`` is saved there (atomically), for
    ``uebench certify`` and other analyses of the model itself.
    """
    started = time.perf_counter()
    device = resolve_device(cell.device)
    data = load_cell_data(cell.dataset, cell.data_root, cell.train_size, cell.test_size)
    craft_started = time.perf_counter()
    poison = craft_poison(cell, data, progress)
    craft_seconds = time.perf_counter() - craft_started

    generator = torch.Generator().manual_seed(cell.seed)
    torch.manual_seed(cell.seed)
    countermeasure = build_countermeasure(cell.defense)
    trainset = countermeasure.prepare(
        TrainSet(
            poison.apply(data.x_train),
            data.y_train,
            data.x_train,
            poison.rows >= 0,
            num_classes=data.num_classes,
        ),
        generator,
    )
    model = ARCHS.build(cell.arch, data.num_classes, data.image_shape)
    bar = tqdm(
        total=cell.train.epochs,
        desc=f"{cell.method}/{cell.defense}/{cell.arch}",
        leave=False,
        disable=not progress,
        dynamic_ncols=True,
    )

    def on_epoch(stats: EpochStats) -> None:
        bar.update()
        bar.set_postfix(test_acc=f"{stats.test_acc:.1f}")

    val = (trainset.x_val, trainset.y_val) if trainset.x_val is not None else None
    history = train(
        model,
        trainset.x,
        trainset.y,
        cell.train,
        device,
        test=(data.x_test, data.y_test),
        val=val,
        countermeasure=countermeasure,
        generator=generator,
        on_epoch=on_epoch,
    )
    bar.close()

    trained_acc = history[-1].test_acc
    final_acc = trained_acc
    if countermeasure.overrides("after_training"):
        context = TrainingContext(
            device, cell.train, generator, (data.x_test, data.y_test), data.num_classes, cell.arch
        )
        trainset.notes.update(countermeasure.after_training(model, trainset, context))

    predicted = predict(model, data.x_test, device, cell.train.eval_batch_size, cell.train.amp)
    confusion = confusion_matrix(predicted, data.y_test, data.num_classes)
    per_class = per_class_accuracy(confusion)
    backdoor = backdoor_success_rate(
        model,
        poison,
        data.x_test,
        data.y_test,
        data.num_classes,
        device,
        torch.Generator().manual_seed(cell.seed),
        cell.train.eval_batch_size,
    )
    if countermeasure.overrides("after_training"):
        final_acc = 100.0 * float((predicted == data.y_test).float().mean())
    best = max(range(len(history)), key=lambda i: history[i].test_acc)
    selected = countermeasure.select(history)
    if model_path is not None:
        state = {name: value.detach().cpu() for name, value in model.state_dict().items()}
        atomic_write(model_path, lambda handle: torch.save(state, handle))
    return {
        "model_path": str(model_path) if model_path is not None else None,
        "cell_id": cell.cell_id,
        "dataset": cell.dataset,
        "method": cell.method,
        "defense": cell.defense,
        "arch": cell.arch,
        "seed": cell.seed,
        "epochs": cell.train.epochs,
        "train_size": len(data.y_train),
        "test_size": len(data.y_test),
        "final_acc": final_acc,
        "trained_acc": trained_acc,
        "best_acc": history[best].test_acc,
        "best_epoch": history[best].epoch,
        "selected_acc": history[selected].test_acc,
        "selected_epoch": history[selected].epoch,
        "history": [asdict(stats) for stats in history],
        "classes": list(data.classes),
        "confusion_matrix": confusion.tolist(),
        "per_class_acc": [None if value != value else value for value in per_class.tolist()],
        "backdoor_success": backdoor,
        "poison_hash": poison.content_hash(),
        "poison": {
            **poison.meta,
            "eps": poison.eps,
            "poisoned_fraction": float(trainset.poisoned.float().mean()),
        },
        "countermeasure_notes": trainset.notes,
        "data_fingerprint": data.fingerprint(),
        "config": {**asdict(cell), "identity": cell.identity()},
        "code_version": code_version(),
        "device": str(device),
        "craft_time_s": craft_seconds,
        "wall_time_s": time.perf_counter() - started,
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def run_grid(config: GridConfig) -> pd.DataFrame:
    """Run every unfinished cell of the grid; return results.csv as a DataFrame."""
    store = ResultStore(config.out)
    cells = config.cells()
    todo = [cell for cell in cells if store.read(cell.cell_id) is None]
    if len(todo) < len(cells):
        tqdm.write(
            f"uebench: {len(cells) - len(todo)} of {len(cells)} cells already done in "
            f"{store.root}; running {len(todo)}"
        )
    for cell in tqdm(
        todo, desc="grid", disable=not config.progress or not todo, dynamic_ncols=True
    ):
        model_path = store.root / "models" / f"{cell.cell_id}.pt" if config.save_models else None
        store.write(run_cell(cell, config.progress, model_path))
        store.write_csv()
    store.write_csv()
    table = store.table()
    ids = {cell.cell_id for cell in cells}
    return table[table["cell_id"].isin(ids)].reset_index(drop=True)


def summary(table: pd.DataFrame) -> str:
    """Clean test accuracy (final epoch, mean over seeds): methods × (defense, arch)."""
    if table.empty:
        return "(no results)"
    pivot = table.pivot_table(
        index="method", columns=["defense", "arch"], values="final_acc", aggfunc="mean", sort=False
    )
    return pivot.round(2).to_string()
