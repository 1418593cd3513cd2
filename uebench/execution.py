"""How a model runs on its device: memory format, compilation, evaluation batches and a CPU
victim's precision, never what it computes.

All four are execution details, like the number of threads: a cell's id ignores them, and
``tests/test_execution.py`` trains the same cell each way and compares its accuracy and
per-epoch curve within float noise (bf16: its mean final accuracy over three seeds, within the
2 points a reference allows; each record states the precision).  Each device type gets the
choice its benchmark measured faster (``benchmarks/execution_choices.py``, figures in
``docs/performance.md``):

* channels-last memory (NHWC): oneDNN's CPU convolutions and cuDNN's tensor-core kernels both
  prefer it;
* ``torch.compile`` of the model's forward and backward: on where it paid on the device with its
  compile time counted, off where it did not or where it has not been measured;
* the batch an evaluation runs at (:meth:`Execution.eval_batch`): in eval mode images do not
  affect each other, so the predictions do not depend on it.  On a CPU 128 images at a time
  keep the activations in cache and predicted 1.55× faster than 1024 on ``mini``'s victim
  (``benchmarks/eval_chunks.py``); a GPU takes the whole evaluation batch.
* on a CPU, victims train in fp32 unless ``UEBENCH_CPU_BF16=1`` asks for bf16 autocast of the
  training step and evaluation, as ``TrainConfig.amp`` runs them on CUDA.  On a CPU with bf16
  units (AVX512-BF16 or AMX) that trained ``mini``'s CIFAR-10 cells 1.2× faster with one thread
  per process, as ``benchmarks/field_table.py`` runs them, and no faster with two
  (``benchmarks/cpu_bf16.py``, ``benchmarks/fast_cell.py``), so it is not the default.
  Crafting never takes it (:meth:`Execution.for_crafting`): a poison, and the source model it
  is crafted against, does not depend on the precision its victims train in.

``UEBENCH_COMPILE=0`` or ``1`` (or ``uebench run --compile/--no-compile``)
overrides the compile default; compiled graphs are cached by PyTorch per process and on disk,
so a grid compiles each shape once.
"""

from __future__ import annotations

import contextlib
import os
import weakref
from collections.abc import Callable
from dataclasses import dataclass, replace

import torch
from torch import nn

from uebench.errors import UebenchError
from uebench.precision import autocast

#: Whether ``torch.compile`` is on by default, per device type (measured: see module docstring).
COMPILE_BY_DEFAULT = {"cpu": False, "cuda": False}
#: Whether models run channels-last, per device type.
CHANNELS_LAST_BY_DEFAULT = {"cpu": True, "cuda": True}
#: The most images an evaluation (and ``tap``'s input gradient) runs at once, per device type
#: (None: no limit).
EVAL_CHUNK_BY_DEFAULT: dict[str, int | None] = {"cpu": 128, "cuda": None}
#: The environment variable that overrides :data:`COMPILE_BY_DEFAULT`.
COMPILE_ENV = "UEBENCH_COMPILE"
#: The environment variable that asks for bf16 victims on a CPU (see the module docstring).
CPU_BF16_ENV = "UEBENCH_CPU_BF16"

_compiled: weakref.WeakKeyDictionary[nn.Module, Callable[..., torch.Tensor]] = (
    weakref.WeakKeyDictionary()
)


@dataclass(frozen=True)
class Execution:
    """How models run on one device (see the module docstring)."""

    channels_last: bool = False
    compile: bool = False
    eval_chunk: int | None = None
    cpu_bf16: bool = False

    def autocast(self, device: torch.device, amp: bool) -> contextlib.AbstractContextManager:
        """The precision a victim's training step or evaluation runs in with ``amp`` on: bf16
        autocast on CUDA (:func:`uebench.precision.autocast`) and, with ``cpu_bf16``, on the
        CPU; fp32 otherwise."""
        if amp and self.cpu_bf16 and device.type == "cpu":
            return torch.autocast("cpu", dtype=torch.bfloat16)
        return autocast(device, amp)

    def precision(self, device: torch.device, amp: bool) -> str:
        """``bf16`` or ``fp32``: what :meth:`autocast` runs a victim in (a record states it)."""
        on_cpu = device.type == "cpu" and self.cpu_bf16
        return "bf16" if amp and (device.type == "cuda" or on_cpu) else "fp32"

    def for_crafting(self) -> Execution:
        """This execution for crafting, source models included: fp32 on every CPU, so that a
        poison and its cache key do not depend on the precision its victims train in."""
        return replace(self, cpu_bf16=False)

    def place(self, model: nn.Module, device: torch.device) -> nn.Module:
        """Move ``model`` to ``device`` in this memory format (in place; returns it)."""
        model.to(device)
        if self.channels_last:
            model.to(memory_format=torch.channels_last)
        return model

    def inputs(self, images: torch.Tensor) -> torch.Tensor:
        """A float image batch in the memory format the model runs in."""
        if self.channels_last and images.dim() == 4:
            return images.contiguous(memory_format=torch.channels_last)
        return images

    def forward(self, model: nn.Module) -> Callable[..., torch.Tensor]:
        """What to call instead of ``model``: its compiled form (made once per model), or the
        model itself.  Parameters, buffers, train/eval mode and hooks stay the model's."""
        if not self.compile:
            return model
        compiled = _compiled.get(model)
        if compiled is None:
            # Static shapes: a grid's batches come in at most two sizes, and a graph per size
            # runs faster than one dynamic graph.
            compiled = torch.compile(model, dynamic=False)
            _compiled[model] = compiled
        return compiled

    def eval_batch(self, batch_size: int) -> int:
        """The batch an evaluation asked to run ``batch_size`` images at a time runs at here:
        at most ``eval_chunk`` (the device's measured best), so the evaluation batch in a
        config stays a ceiling that memory sets, not a speed choice."""
        return min(batch_size, self.eval_chunk) if self.eval_chunk else batch_size


def compile_setting(value: bool | None = None) -> bool | None:
    """An explicit choice (``value``), else :data:`COMPILE_ENV`'s, else None (the device's)."""
    return value if value is not None else _switch(COMPILE_ENV)


def _switch(name: str) -> bool | None:
    """The environment variable ``name`` as a yes/no switch; None when unset."""
    text = os.environ.get(name, "").strip().lower()
    if not text:
        return None
    if text in {"1", "true", "yes", "on"}:
        return True
    if text in {"0", "false", "no", "off"}:
        return False
    raise UebenchError(f"{name} must be 0 or 1, got {text!r}")


def execution_for(device: torch.device, compile: bool | None = None) -> Execution:
    """The execution of models on ``device``: the measured defaults of its type, with
    ``compile`` (or :data:`COMPILE_ENV`) overriding the compile choice."""
    chosen = compile_setting(compile)
    if chosen is None:
        chosen = COMPILE_BY_DEFAULT.get(device.type, False)
    return Execution(
        CHANNELS_LAST_BY_DEFAULT.get(device.type, False),
        chosen,
        EVAL_CHUNK_BY_DEFAULT.get(device.type),
        cpu_bf16=device.type == "cpu" and bool(_switch(CPU_BF16_ENV)),
    )
