"""Numeric precision: bf16 autocast on CUDA, and crafting's own setting.

Apart from :mod:`uebench.crafting` so that poison keys (:mod:`uebench.identity`) can name the
crafting precision without importing the crafting code.
"""

from __future__ import annotations

import contextlib

import torch

from uebench.errors import UebenchError

#: Precision of crafting's gradient steps (noise updates and the bi-level loop's source steps).
#: Every official code crafts in fp32; bf16's step near 1 (1/256) is larger than TAP's
#: (0.4/255) and REM's inner steps (0.8/255), so bf16 would quantize the very updates crafting
#: takes.  Victim training keeps its own setting (``TrainConfig.amp``).
CRAFT_PRECISION = "fp32"


def autocast(device: torch.device, enabled: bool = True) -> contextlib.AbstractContextManager:
    """bf16 autocast on CUDA (no loss scaling needed); a no-op on the CPU, where a victim's
    precision is an execution choice (:meth:`uebench.execution.Execution.autocast`) and
    crafting stays fp32."""
    if enabled and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def craft_autocast(
    device: torch.device, precision: str | None = None
) -> contextlib.AbstractContextManager:
    """The autocast context of a crafting step: none for ``fp32`` (the default,
    :data:`CRAFT_PRECISION`, read at call time), bf16 autocast on CUDA for ``bf16``."""
    chosen = CRAFT_PRECISION if precision is None else precision
    if chosen not in ("fp32", "bf16"):
        raise UebenchError(f"crafting precision must be fp32 or bf16, got {chosen!r}")
    return autocast(device) if chosen == "bf16" else contextlib.nullcontext()
