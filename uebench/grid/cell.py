"""One cell of a grid: its identity, its data and poison, and the run from scratch to its record.

A :class:`Cell` carries everything it needs and shares no state with other cells, so any backend
(the local loop, Ray workers) can run it and every backend produces the same record.
"""

from __future__ import annotations

import functools
import hashlib
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from uebench.analysis.diagnostics import (
    backdoor_success_rate,
    per_class_accuracy,
    poison_separability,
)
from uebench.countermeasure import (
    Countermeasure,
    TrainingContext,
    TrainSet,
    build_countermeasure,
)
from uebench.data import ImageData
from uebench.datasets import load_dataset
from uebench.errors import UebenchError, plugin_errors
from uebench.execution import Execution, execution_for
from uebench.files import atomic_write
from uebench.grid.protocols import resolve_protocol
from uebench.identity import (
    cache_key,
    countermeasure_identity,
    method_identity,
    nested_method_specs,
    plugin_identity,
    poison_key,
    spec_plugins,
)
from uebench.method import CraftContext
from uebench.poison import Poison
from uebench.registry import ARCHS
from uebench.scenarios import spec_poison
from uebench.storage.cache import PoisonCache
from uebench.training import (
    EpochStats,
    TrainConfig,
    confusion_matrix,
    predict,
    resolve_device,
    train,
)
from uebench.version import code_version


@dataclass(frozen=True)
class Cell:
    """One unit of work: train ``arch`` on ``dataset`` poisoned by ``method`` under the
    countermeasure ``defense`` (the field keeps the record key's name, which feeds cell ids)."""

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
    # Not part of the identity: the resolved specs and settings above are what a result
    # depends on, whichever protocol (or flags) brought them.
    protocol: str | None = None
    method_label: str | None = None  # the method as the user wrote it (tables show this)
    defense_label: str | None = None
    # How the cell runs (torch.compile; None: the device's default), not what it computes.
    compile: bool | None = None

    def name(self) -> str:
        """``method/countermeasure/arch/seed`` as the user wrote them."""
        return (
            f"{self.method_label or self.method}/{self.defense_label or self.defense}/"
            f"{self.arch}/seed {self.seed}"
        )

    def identity(self) -> dict[str, Any]:
        """What determines the result (not where data or caches live, nor the device)."""
        return {
            "dataset": plugin_identity("datasets", self.dataset),
            "train_size": self.train_size,
            "test_size": self.test_size,
            "method": method_identity(self.method),
            "defense": countermeasure_identity(self.defense),
            "arch": plugin_identity("archs", self.arch),
            "seed": self.seed,
            "train": self.train.as_dict(),
        }

    @functools.cached_property
    def planned(self) -> dict[str, Any]:
        """:meth:`identity` as it was when the cell was planned (its id is this one's hash):
        what the cell's inputs must still be when it runs (:func:`check_planned_poison`)."""
        return self.identity()

    @functools.cached_property
    def cell_id(self) -> str:
        return cache_key(self.planned)[:16]


def check_planned_poison(cell: Cell, crafted: Poison) -> None:
    """Refuse, in one line, a poison made from another file than the cell was planned on.

    A ``file:`` method's identity holds the sha256 of the file; the poison it crafts names the
    sha256 of the bytes it actually read.  A file replaced while a grid runs would otherwise
    give later cells the new poison under cell ids hashed from the old one, and a rerun with
    the old file back would find their records and return another poison's numbers.
    """
    method = cell.planned.get("method")
    options = method.get("options") if isinstance(method, dict) else None
    planned = options.get("sha256") if isinstance(options, dict) else None
    read = crafted.meta.get("file_sha256")
    if planned is not None and read is not None and read != planned:
        raise UebenchError(
            f"cell {cell.name()}: the poison file of {cell.method!r} changed since the grid was "
            f"planned (sha256 {planned[:12]} then, {read[:12]} now); nothing recorded for it: "
            "rerun to plan the grid on the file as it is now"
        )


@functools.lru_cache(maxsize=4)
def load_cell_data(
    dataset: str, data_root: str | None, train_size: int | None, test_size: int | None
) -> ImageData:
    """The cell's data (cached in-process so a grid loads each dataset once)."""
    data = load_dataset(dataset, data_root, train_size, test_size, seed=0)
    if data.num_classes < 2:
        # Every accuracy would be 100% whatever the noise: a grid on it measures nothing.
        raise UebenchError(
            f"dataset {dataset!r} has {data.num_classes} class; a benchmark needs at least 2 "
            "(with one, every model is 100% accurate whatever the noise)"
        )
    return data


#: The tensors of an ImageData that every cell of a process shares (load_cell_data caches it).
SHARED_TENSORS = ("x_train", "y_train", "x_test", "y_test")


def data_digest(data: ImageData) -> dict[str, str]:
    """sha256 of each shared tensor, to verify after a plugin call that it changed nothing.

    Plugins get the process's one copy of the data (copying CIFAR-10 for every call would cost
    more); a plugin that writes into it would silently change every later cell, the clean
    baseline included.  Hashing all of CIFAR-10 (train and test) took about 0.35 s on a
    shared, loaded 2-core machine; it runs three times per cell, never per step.
    """
    # The numpy view is hashed through the buffer protocol: no copy of the images.
    return {
        name: hashlib.sha256(getattr(data, name).contiguous().numpy()).hexdigest()
        for name in SHARED_TENSORS
    }


def check_data_unchanged(data: ImageData, before: dict[str, str], plugin: str) -> None:
    """Refuse, in one line naming ``plugin``, when the shared data differ from ``before``.

    The in-process data cache is emptied first, so later cells load the data afresh.
    """
    after = data_digest(data)
    changed = [name for name in SHARED_TENSORS if after[name] != before[name]]
    if changed:
        load_cell_data.cache_clear()
        raise UebenchError(
            f"{plugin} changed the shared dataset in place ({', '.join(changed)}); a plugin "
            "must copy the data it alters, so this result is refused"
        )


def cell_poison_key(cell: Cell, data: ImageData) -> str:
    """The poison-cache key of the noise ``cell`` needs: cells that share it share one crafting.

    ``classes=`` variants of a method share the key (the harness masks the crafted noise).
    """
    return poison_key(cell.method, data.fingerprint(), cell.train.as_dict())


def uncached_poisons(cell: Cell, data: ImageData) -> list[tuple[str, str]]:
    """``(method spec, poison key)`` of each poison ``cell`` needs (its method's and any nested
    method's) that its poison cache does not hold yet."""
    cache = PoisonCache(cell.cache_dir)
    needed = [(cell.method, cell_poison_key(cell, data))]
    needed += [
        (spec, poison_key(spec, data.fingerprint(), cell.train.as_dict()))
        for spec in nested_method_specs(cell.method)
    ]
    return [(spec, key) for spec, key in needed if not cache.path(key).exists()]


def craft_poison(cell: Cell, data: ImageData, progress: bool = True) -> Poison:
    """The crafted (unmasked) noise the cell's method makes, from the cache when there."""
    cache = PoisonCache(cell.cache_dir)
    device = resolve_device(cell.device)
    ctx = CraftContext(device, cell.train, progress, cache, execution_for(device, cell.compile))
    # The one place a method's own exceptions become one line (nested crafts land here too).
    with plugin_errors(f"method {cell.method!r}", "crafting"):
        return ctx.craft(cell.method, data)


def cell_poison(cell: Cell, crafted: Poison, data: ImageData) -> Poison:
    """The crafted noise restricted to the cell's ``classes=`` (the whole of it otherwise)."""
    return spec_poison(cell.method, crafted, data)


def cell_plugins(cell: Cell) -> list[dict[str, Any]]:
    """Every plugin the cell ran (dataset, method and its nested specs, each countermeasure
    part, arch) with the distribution, version and source hash of its code, for the record."""
    return [
        *spec_plugins("datasets", cell.dataset),
        *spec_plugins("methods", cell.method),
        *spec_plugins("defenses", cell.defense),
        *spec_plugins("archs", cell.arch),
    ]


@dataclass(frozen=True)
class VictimScores:
    """What a trained victim measures on the clean test set once all training is done."""

    accuracy: float  # clean test accuracy in percent
    confusion: torch.Tensor  # K×K counts, rows the true class
    per_class: torch.Tensor  # accuracy in percent per class (NaN for a class without images)
    backdoor: float | None  # backdoor success rate (None when the poison is not class-wise)


@dataclass
class TrainedVictim:
    """A cell's victim after training under its countermeasure, and what it measured."""

    model: torch.nn.Module
    trainset: TrainSet
    history: list[EpochStats]
    trained_acc: float  # the last epoch's clean test accuracy
    final_acc: float  # the same, or after the countermeasure's ``after_training``
    scores: VictimScores
    best: int  # index into ``history`` of the best epoch
    selected: int  # index into ``history`` of the epoch the countermeasure selects
    precision: str  # what the victim trained and was evaluated in: "bf16" or "fp32"


def run_cell(
    cell: Cell,
    progress: bool = True,
    model_path: Path | None = None,
    crafted: Poison | None = None,
    data: ImageData | None = None,
) -> dict[str, Any]:
    """Run one cell from scratch to its record (a JSON-able dict).

    ``crafted`` is the method's noise when a backend crafted it already (a Ray driver hands it
    over); otherwise it comes from the poison cache, crafted there on a miss.  ``data`` is the
    cell's loaded data when a backend sends it (Ray workers need no dataset files); otherwise
    it is loaded here.  With
    ``model_path`` the trained victim's ``state_dict`` is saved there (atomically), for
    ``uebench certify`` and other analyses of the model itself.
    """
    started = time.perf_counter()
    device = resolve_device(cell.device)
    if data is None:
        data = load_cell_data(cell.dataset, cell.data_root, cell.train_size, cell.test_size)
    pristine = data_digest(data)
    craft_started = time.perf_counter()
    if crafted is None:
        crafted = craft_poison(cell, data, progress)
        check_data_unchanged(data, pristine, f"method {cell.method!r}")
    check_planned_poison(cell, crafted)
    poison = cell_poison(cell, crafted, data)
    craft_seconds = time.perf_counter() - craft_started

    victim = train_victim(cell, data, poison, device, progress, pristine)
    model_sha256 = None
    if model_path is not None:
        state = {name: value.detach().cpu() for name, value in victim.model.state_dict().items()}
        atomic_write(model_path, lambda handle: torch.save(state, handle))
        # `uebench certify` checks the file against this before trusting its weights.
        model_sha256 = hashlib.sha256(model_path.read_bytes()).hexdigest()
    record = cell_record(
        cell, data, poison, victim, device, model_path, model_sha256, craft_seconds
    )
    record["wall_time_s"] = time.perf_counter() - started
    return record


def train_victim(
    cell: Cell,
    data: ImageData,
    poison: Poison,
    device: torch.device,
    progress: bool = True,
    pristine: dict[str, str] | None = None,
) -> TrainedVictim:
    """Train the cell's victim on its poisoned data under its countermeasure and measure it:
    clean test accuracy per epoch, after training, per class, and the backdoor success rate.

    A countermeasure's or architecture's own exceptions become one line naming the cell.  With
    ``pristine`` (:func:`data_digest` of the shared data) a countermeasure that changed the
    data in place is refused (:func:`check_data_unchanged`).
    """

    def check_unchanged() -> None:
        if pristine is not None:
            check_data_unchanged(data, pristine, f"countermeasure {cell.defense!r}")

    generator = torch.Generator().manual_seed(cell.seed)
    torch.manual_seed(cell.seed)
    execution = execution_for(device, cell.compile)
    training = f"cell {cell.name()} (countermeasure {cell.defense!r}, arch {cell.arch!r})"
    with plugin_errors(training, "training"):
        countermeasure = build_countermeasure(cell.defense)
        trainset = countermeasure.prepare(poisoned_trainset(data, poison), generator)
        check_unchanged()
        model = ARCHS.build(cell.arch, data.num_classes, data.image_shape)
        history = train_with_progress(
            cell, model, trainset, data, countermeasure, device, generator, execution, progress
        )
        hooked = countermeasure.overrides("after_training")
        if hooked:
            after_training(cell, countermeasure, model, trainset, data, device, generator)
        # Untouched since its last epoch, the model is scored on that epoch's predictions.
        predicted = None if hooked else history[-1].test_predictions
        scores = score_victim(cell, model, poison, data, device, execution, predicted)
        selected = countermeasure.select(history)
    # Training hooks (augment, train_step, after_training) see the data too.
    check_unchanged()
    trained_acc = history[-1].test_acc
    return TrainedVictim(
        model=model,
        trainset=trainset,
        history=history,
        trained_acc=trained_acc,
        final_acc=scores.accuracy if hooked else trained_acc,
        scores=scores,
        best=max(range(len(history)), key=lambda i: history[i].test_acc),
        selected=selected,
        precision=execution.precision(device, cell.train.amp),
    )


def poisoned_trainset(data: ImageData, poison: Poison) -> TrainSet:
    """The training set a data thief collects: the training images with ``poison`` applied,
    before any countermeasure."""
    return TrainSet(
        poison.apply(data.x_train),
        data.y_train,
        data.x_train,
        poison.rows >= 0,
        num_classes=data.num_classes,
    )


def train_with_progress(
    cell: Cell,
    model: torch.nn.Module,
    trainset: TrainSet,
    data: ImageData,
    countermeasure: Countermeasure,
    device: torch.device,
    generator: torch.Generator,
    execution: Execution,
    progress: bool,
) -> list[EpochStats]:
    """:func:`uebench.training.train` on ``trainset`` under ``countermeasure``, with a progress
    bar that shows each epoch's clean test accuracy."""
    with tqdm(
        total=cell.train.whole_epochs,
        desc=cell.name(),
        leave=False,
        disable=not progress,
        dynamic_ncols=True,
    ) as bar:

        def on_epoch(stats: EpochStats) -> None:
            bar.update()
            bar.set_postfix(test_acc=f"{stats.test_acc:.1f}")

        val = (trainset.x_val, trainset.y_val) if trainset.x_val is not None else None
        return train(
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
            execution=execution,
        )


def after_training(
    cell: Cell,
    countermeasure: Countermeasure,
    model: torch.nn.Module,
    trainset: TrainSet,
    data: ImageData,
    device: torch.device,
    generator: torch.Generator,
) -> None:
    """The countermeasure's model-level hook (recovery fine-tuning, ...) on the trained
    victim; the notes it returns join the training set's, which the record keeps."""
    test = (data.x_test, data.y_test)
    context = TrainingContext(device, cell.train, generator, test, data.num_classes, cell.arch)
    trainset.notes.update(countermeasure.after_training(model, trainset, context))


def score_victim(
    cell: Cell,
    model: torch.nn.Module,
    poison: Poison,
    data: ImageData,
    device: torch.device,
    execution: Execution,
    predicted: torch.Tensor | None = None,
) -> VictimScores:
    """The trained victim's clean test accuracy, confusion matrix, per-class accuracy and
    backdoor success rate, evaluated as the cell's training config evaluates; ``predicted``
    is the model's test predictions when its last epoch's evaluation made them already."""
    config = cell.train
    if predicted is None:
        predicted = predict(
            model, data.x_test, device, config.eval_batch_size, config.amp, config.tta, execution
        )
    confusion = confusion_matrix(predicted, data.y_test, data.num_classes)
    backdoor = backdoor_success_rate(
        model,
        poison,
        data.x_test,
        data.y_test,
        data.num_classes,
        device,
        torch.Generator().manual_seed(cell.seed),
        config.eval_batch_size,
    )
    return VictimScores(
        accuracy=100.0 * float((predicted == data.y_test).float().mean()),
        confusion=confusion,
        per_class=per_class_accuracy(confusion),
        backdoor=backdoor,
    )


def cell_record(
    cell: Cell,
    data: ImageData,
    poison: Poison,
    victim: TrainedVictim,
    device: torch.device,
    model_path: Path | None,
    model_sha256: str | None,
    craft_seconds: float,
) -> dict[str, Any]:
    """The cell's record (one JSON file in the result store): what ran, on which code and data,
    and what the victim measured; :func:`run_cell` adds ``wall_time_s``."""
    return {
        "model_path": str(model_path) if model_path is not None else None,
        "model_sha256": model_sha256,
        **cell_fields(cell),
        "train_size": len(data.y_train),
        "test_size": len(data.y_test),
        **victim_fields(victim, data),
        **poison_fields(poison, data, victim.trainset),
        "countermeasure_notes": victim.trainset.notes,
        "data_fingerprint": data.fingerprint(),
        "config": {**asdict(cell), "identity": cell.planned},
        "code_version": code_version(),
        "plugins": cell_plugins(cell),
        "device": str(device),
        "craft_time_s": craft_seconds,
        "wall_time_s": None,  # run_cell's, once the record is built
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def cell_fields(cell: Cell) -> dict[str, Any]:
    """A record's part that says which cell ran: its id, specs as written and as resolved,
    protocol, seed and training recipe."""
    return {
        "cell_id": cell.cell_id,
        "dataset": cell.dataset,
        "method": cell.method_label or cell.method,
        "defense": cell.defense_label or cell.defense,
        "method_spec": cell.method,
        "defense_spec": cell.defense,
        "protocol": cell.protocol,
        "protocol_values": (
            resolve_protocol(cell.protocol, cell.dataset).as_dict() if cell.protocol else None
        ),
        "arch": cell.arch,
        "seed": cell.seed,
        "epochs": cell.train.epochs,
        "recipe": cell.train.recipe(),  # every ingredient of the training recipe, set or not
    }


def victim_fields(victim: TrainedVictim, data: ImageData) -> dict[str, Any]:
    """A record's part that says what the victim measured: accuracies (final, best, selected,
    per epoch, per class), the confusion matrix and the backdoor success rate."""
    history, best, selected = victim.history, victim.best, victim.selected
    per_class = victim.scores.per_class.tolist()
    return {
        "final_acc": victim.final_acc,
        "trained_acc": victim.trained_acc,
        "best_acc": history[best].test_acc,
        "best_epoch": history[best].epoch,
        "selected_acc": history[selected].test_acc,
        "selected_epoch": history[selected].epoch,
        "history": [stats.record() for stats in history],
        "classes": list(data.classes),
        "num_classes": data.num_classes,
        "confusion_matrix": victim.scores.confusion.tolist(),
        "per_class_acc": [None if value != value else value for value in per_class],
        "backdoor_success": victim.scores.backdoor,
        "victim_precision": victim.precision,
    }


def poison_fields(poison: Poison, data: ImageData, trainset: TrainSet) -> dict[str, Any]:
    """A record's part that says what the poison was: its hash, threat model, metadata, the
    share of the training set it reached and how separable its noise is."""
    return {
        "shortcut_separability": poison_separability(poison, data),
        "poison_hash": poison.content_hash(),
        "threat": poison.threat.describe(),
        "poison": {
            **poison.meta,
            "eps": poison.eps,
            "threat_model": poison.threat.as_dict(),
            "threat": poison.threat.describe(),
            "poisoned_fraction": float(trainset.poisoned.float().mean()),
        },
    }
