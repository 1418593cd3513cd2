"""What a grid will cost, said before its first cell: its protocol and a rough time estimate.

The estimate times a few training steps of each architecture the grid trains (victims and
crafting sources) at the grid's batch size on this device (:func:`step_seconds`, a second or
two each; untimed runs take the one-time costs first), then multiplies:

* a cell: its steps (epochs × ⌈training images / batch⌉) × its countermeasure's
  :meth:`~uebench.countermeasure.Countermeasure.cost_factor`, plus its test evaluations
  (forward passes, a third of a training pass each);
* a poison not in the cache yet: its method's
  :meth:`~uebench.method.Method.crafting_passes` × the time of one image's pass through its
  source model; crafting that stops once good enough gives a range (one round to its limit).

Only unfinished cells and uncached poisons count.  It is a rough guide: it leaves out data
loading and every cost a method or countermeasure does not declare, and a shared machine's
load changes it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import torch

from uebench.countermeasure import build_countermeasure
from uebench.data import ImageData
from uebench.errors import plugin_errors
from uebench.execution import execution_for
from uebench.grid.cell import Cell, load_cell_data, uncached_poisons
from uebench.grid.config import GridConfig
from uebench.grid.data_checks import check_cells_against_data
from uebench.grid.protocols import Protocol
from uebench.registry import ARCHS, METHODS
from uebench.training import TrainConfig, resolve_device, train

#: Seconds one architecture's probe aims to spend on timed steps.
PROBE_BUDGET_S = 1.0
#: Images per step of the probe's first runs (and a quarter of its second small batch).
PROBE_SMALL_BATCH = 8
#: A step this many probe budgets long (judged from two small batches) is not timed whole.
LONG_STEP_BUDGETS = 5
#: Up to this many methods, the line before a grid names them.
NAMED_METHODS = 3
#: A forward pass alone, as a share of a training step's forward and backward pass.
FORWARD_SHARE = 1 / 3


@dataclass(frozen=True)
class GridEstimate:
    """Seconds a grid's unfinished cells will take here: training them, and crafting the
    poisons they need that the cache does not hold (fewest, most)."""

    cells: int
    training_s: float
    crafting_s: tuple[float, float]
    poisons: int  # poisons to craft at a cost the estimate counts

    @property
    def total_s(self) -> tuple[float, float]:
        """The whole grid's seconds, fewest and most."""
        return self.training_s + self.crafting_s[0], self.training_s + self.crafting_s[1]


def step_seconds(
    arch: str,
    data: ImageData,
    config: TrainConfig,
    device: torch.device,
    budget: float = PROBE_BUDGET_S,
) -> float:
    """Seconds one training step of ``arch`` takes at ``config.batch_size`` on ``device``
    (:func:`probe_step` over :func:`probe_runs`); the global random state is left as it was."""
    devices = [device] if device.type == "cuda" else []
    doing = plugin_errors(f"architecture {arch!r}", "timing a training step")
    with doing, torch.random.fork_rng(devices=devices):
        return probe_step(probe_runs(arch, data, config, device), config.batch_size, budget)


def probe_runs(
    arch: str, data: ImageData, config: TrainConfig, device: torch.device
) -> Callable[[int, int], float]:
    """``timed(images, batch_size)``: the seconds of building ``arch`` and training it for one
    epoch on ``images`` random images of the data's shape, as cells run it
    (:func:`uebench.execution.execution_for`, compilation aside)."""
    generator = torch.Generator().manual_seed(0)

    def timed(images: int, size: int) -> float:
        shape = (images, *data.image_shape)
        x = torch.randint(0, 256, shape, generator=generator, dtype=torch.uint8)
        y = torch.randint(0, data.num_classes, (images,), generator=generator)
        model = ARCHS.build(arch, data.num_classes, data.image_shape)
        recipe = replace(config, epochs=1, batch_size=size)
        execution = execution_for(device, compile=False)
        _synchronize(device)
        started = time.perf_counter()
        train(model, x, y, recipe, device, generator=generator, execution=execution)
        _synchronize(device)
        return time.perf_counter() - started

    return timed


def probe_step(
    timed: Callable[[int, int], float], batch: int, budget: float = PROBE_BUDGET_S
) -> float:
    """Seconds of one training step at ``batch`` images, from ``timed(images, batch_size)``
    (the seconds of one epoch on ``images`` images at ``batch_size``, one-time costs of a
    run included).

    A first run at a small batch pays the process's one-time costs.  Two small batches (8 and
    32 images) then give the cost of each added image; when that puts the full step over
    ``LONG_STEP_BUDGETS`` × ``budget``, it is the estimate (a step that long grows with its
    images, as on a CPU).  Otherwise a run at the full batch pays that size's one-time costs
    (kernel choices, memory); a step over ``budget`` is read from one more such run, and a
    shorter one from one step subtracted from up to six (each the faster of two runs), so that
    what every run pays once (building the model, fitting a data-dependent layer) is not
    counted per step.  A small batch's time scaled up would count those fixed costs once per
    step and read a short step many times too long; the cost per added image cannot stand for
    a short step either, as a GPU runs a small batch in about the time of a large one.
    """
    small = min(batch, PROBE_SMALL_BATCH)
    larger = min(batch, 4 * small)
    timed(small, small)
    if larger > small:
        one_small = timed(small, small)
        first = timed(larger, larger)
        one_larger = first if first > budget else timed(larger, larger)
        guess = max(one_larger - one_small, 0.0) / (larger - small) * batch
        if guess > LONG_STEP_BUDGETS * budget:
            return guess
    timed(batch, batch)
    once = timed(batch, batch)
    if once > budget:
        return once
    # A busy machine only ever slows a run down, by a second now and then: the faster of two
    # runs is the truer (each run half the budget).
    once = min(once, timed(batch, batch))
    steps = max(1, min(5, int(budget / 2 / once) - 1)) if once > 0 else 5
    many = min(timed((steps + 1) * batch, batch) for _ in range(2))
    return max(many - once, 0.0) / steps or once


def _synchronize(device: torch.device) -> None:
    """Wait for the device's queued work, so a timer measures it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def estimate_grid(
    todo: list[Cell], probe: Callable[[str, ImageData, TrainConfig], float] | None = None
) -> GridEstimate:
    """The time ``todo``'s cells will take on their device (the module docstring says how).

    ``probe(arch, data, train)`` gives a training step's seconds (:func:`step_seconds` on the
    cells' device by default); each architecture and batch size is probed once.
    """
    timings: dict[tuple[str, int], float] = {}

    def step(arch: str, data: ImageData, config: TrainConfig) -> float:
        key = (arch, config.batch_size)
        if key not in timings:
            if probe is not None:
                timings[key] = probe(arch, data, config)
            else:
                device = resolve_device(todo[0].device)
                timings[key] = step_seconds(arch, data, config, device)
        return timings[key]

    training = fewest = most = 0.0
    seen: set[str] = set()
    crafted = 0
    for cell in todo:
        data = load_cell_data(cell.dataset, cell.data_root, cell.train_size, cell.test_size)
        training += cell_seconds(cell, data, step(cell.arch, data, cell.train))
        for spec, key in uncached_poisons(cell, data):
            if key in seen:
                continue
            seen.add(key)
            method = METHODS.resolve(spec).without_common().build()
            low, high = crafting_passes(method, spec, len(data.y_train), cell.train)
            if high > 0:
                source = getattr(method, "source", None)
                arch = source if isinstance(source, str) else cell.arch
                per_image = step(arch, data, cell.train) / cell.train.batch_size
                fewest += low * per_image
                most += high * per_image
                crafted += 1
    return GridEstimate(len(todo), training, (fewest, most), crafted)


def crafting_passes(
    method: Any, spec: str, train_size: int, train: TrainConfig
) -> tuple[float, float]:
    """:meth:`~uebench.method.Method.crafting_passes` of a method plugin ((0, 0) for one that
    does not subclass ``Method`` and has no such hook); its own errors become one line."""
    hook = getattr(method, "crafting_passes", None)
    if hook is None:
        return 0.0, 0.0
    with plugin_errors(f"method {spec!r}", "estimating its crafting cost"):
        low, high = hook(train_size, train)
    return float(low), float(high)


def cell_seconds(cell: Cell, data: ImageData, step_s: float) -> float:
    """One cell's training under its countermeasure and its test evaluations, from the
    seconds of one training step."""
    config = cell.train
    steps = config.total_steps(len(data.y_train))
    countermeasure = build_countermeasure(cell.defense)
    with plugin_errors(f"countermeasure {cell.defense!r}", "estimating its cost"):
        factor = float(getattr(countermeasure, "cost_factor", lambda: 1.0)())
    # Each epoch's test evaluation; test-time augmentation multiplies the last one's passes.
    tta_passes = {0: 1, 1: 2, 2: 6}[config.tta]
    evaluated = len(data.y_test) * (config.whole_epochs - 1 + tta_passes)
    return step_s * steps * factor + step_s / config.batch_size * evaluated * FORWARD_SHARE


def describe_duration(seconds: float) -> str:
    """``40 s``, ``41 min``, ``3.5 h`` or ``2.1 days``."""
    if seconds < 90:
        return f"{max(seconds, 1):.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    if seconds < 48 * 3600:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"


def describe_range(seconds: tuple[float, float]) -> str:
    """``41 min``, or ``3 min to 2.5 h`` when the two ends read differently."""
    low, high = (describe_duration(value) for value in seconds)
    return low if low == high else f"{low} to {high}"


def describe_device(device: torch.device, threads: int) -> str:
    """``cpu with 2 threads`` (``, victims in bf16`` when ``UEBENCH_CPU_BF16=1`` asks) or the
    GPU's name."""
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    bf16 = ", victims in bf16" if execution_for(device).cpu_bf16 else ""
    return f"{device.type} with {_plural(threads, 'thread')}{bf16}"


def protocol_phrase(config: GridConfig, protocol: Protocol) -> str:
    """``protocol mini``, or, when the dataset's default chose it, ``protocol paper (the
    default for cifar10; --protocol to choose)``."""
    if config.protocol is not None:
        return f"protocol {protocol.name}"
    return f"protocol {protocol.name} (the default for {protocol.dataset}; --protocol to choose)"


def paper_on_cpu_warning(config: GridConfig, todo: list[Cell], device: torch.device) -> str | None:
    """One line when the ``paper`` protocol's victims (its architectures or its epochs, not
    both replaced by flags) are about to train on a CPU, naming ``--protocol mini``."""
    protocol = config.resolved_protocol()
    own_victims = config.archs is None or config.epochs is None
    if protocol.name != "paper" or device.type != "cpu" or not todo or not own_victims:
        return None
    archs = ", ".join(sorted({cell.arch for cell in todo}))
    return (
        f"uebench: warning: protocol paper trains {archs} for "
        f"{_plural(todo[0].train.epochs, 'epoch')} a cell, the papers' GPU-scale setting: "
        "slow on a CPU; --protocol mini is uebench's CPU protocol"
    )


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}{'s' if count != 1 else ''}"


def announce_grid(
    config: GridConfig,
    todo: list[Cell],
    threads: int | None,
    write: Callable[[str], None],
    warn: Callable[[str], None],
) -> GridEstimate | None:
    """Say, before the first cell, the protocol the grid runs under and (with ``threads``,
    the backend's threads on this device) an estimate of its time here; warn first when the
    ``paper`` protocol is about to train on a CPU.  Returns the estimate (None without one).

    The data is loaded first (the cells' own loads then reuse it), so a dataset that is not
    there is one line with nothing before it, and every method and countermeasure is checked
    against it (:func:`~uebench.grid.data_checks.check_cells_against_data`).
    """
    sample = todo[0]
    data = load_cell_data(sample.dataset, sample.data_root, sample.train_size, sample.test_size)
    check_cells_against_data(todo, data)
    protocol = config.resolved_protocol()
    device = resolve_device(config.device)
    warning = paper_on_cpu_warning(config, todo, device)
    if warning is not None:
        warn(warning)
    cells = _plural(len(todo), "cell")
    methods = list(dict.fromkeys(cell.method_label or cell.method for cell in todo))
    if len(methods) <= NAMED_METHODS:  # a grid run in parts (bench) says which part this is
        cells += f" of {', '.join(methods)}"
    where = (
        f"{cells} under {protocol_phrase(config, protocol)} on {protocol.dataset} "
        f"({len(data.y_train)} training images)"
    )
    if threads is None:
        write(f"uebench: {where}; the cells run on Ray's workers, so no time estimate here")
        return None
    estimate = estimate_grid(todo)
    parts = f"training {describe_duration(estimate.training_s)}"
    if estimate.poisons:
        parts += (
            f", crafting {describe_range(estimate.crafting_s)} for "
            f"{_plural(estimate.poisons, 'poison')}"
        )
        if estimate.crafting_s[0] != estimate.crafting_s[1]:
            parts += " (from stopping after one round to running to the round limit)"
    write(
        f"uebench: {where}; estimated "
        f"{describe_range(estimate.total_s)} on {describe_device(device, threads)} "
        f"({parts}; a rough guide)"
    )
    return estimate
