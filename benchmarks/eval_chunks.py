"""Eval-mode work on a CPU in whole batches and in chunks of 128 images (a script, not a test).

    python benchmarks/eval_chunks.py                       # mini's victim, one thread
    python benchmarks/eval_chunks.py --arch resnet18:width=16 --threads 2

In eval mode images do not affect each other, so a batch can run in chunks and give the same
outputs.  Timed both ways, alternating ``--rounds`` times (each first in half of them) so a
drift of the machine's speed falls on both:

* ``test``: one evaluation of ``mini``'s 2000 test images at ``eval_batch_size`` 1024 through
  ``uebench.training.predict`` (a ``mini`` cell makes 9 plain ones and one with 6-pass TTA),
  whole (``Execution(channels_last=True)``) and as a CPU runs it (``eval_chunk=128``);
* ``advtrain``: one batch of 256 through ``advtrain``'s PGD as ``mini`` runs it (torchattacks,
  2 steps of 4/255, random start), whole and as two attacks of 128;
* ``tap``: the input gradient of one batch of ``tap``'s 512, whole and chunk by chunk (each
  chunk's forward and backward before the next).

Random images: the time does not depend on what they show.  Prints each round's times and the
median speed-up of each.
"""

from __future__ import annotations

import argparse
import statistics
from collections.abc import Callable

import torch
import torch.nn.functional as F
import torchattacks
from whitening_freeze import seconds_per_step

from uebench import ARCHS
from uebench.execution import Execution
from uebench.training import predict

CHUNK = 128
WHOLE = Execution(channels_last=True)
CHUNKED = Execution(channels_last=True, eval_chunk=CHUNK)


def workloads(model: torch.nn.Module) -> dict[str, tuple[Callable[[], object], ...]]:
    """Each kind of work (module docstring): its whole-batch and its chunked form."""
    device = torch.device("cpu")
    test = torch.randint(0, 256, (2000, 3, 32, 32), dtype=torch.uint8)
    batch = WHOLE.inputs(torch.rand(512, 3, 32, 32))
    labels = torch.randint(0, 10, (512,))
    attack = torchattacks.PGD(model, eps=8 / 255, alpha=4 / 255, steps=2, random_start=True)

    def gradient(images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        delta = torch.zeros_like(images, requires_grad=True)
        loss = F.cross_entropy(model(images + delta).float(), targets, reduction="sum")
        return torch.autograd.grad(loss / len(batch), delta)[0]

    def chunks(work: Callable[..., torch.Tensor], size: int) -> Callable[[], torch.Tensor]:
        return lambda: torch.cat(
            [
                work(images, targets)
                for images, targets in zip(
                    batch[:size].split(CHUNK), labels[:size].split(CHUNK), strict=True
                )
            ]
        )

    return {
        "test": (
            lambda: predict(model, test, device, 1024, False, 0, WHOLE),
            lambda: predict(model, test, device, 1024, False, 0, CHUNKED),
        ),
        "advtrain": (lambda: attack(batch[:256], labels[:256]), chunks(attack, 256)),
        "tap": (lambda: gradient(batch, labels), chunks(gradient, 512)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="airbench:width=16")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: a grid worker's)")
    args = parser.parse_args()
    for flag in ("rounds", "repeats", "threads"):
        if getattr(args, flag) < 1:
            parser.error(
                f"--{flag.replace('_', '-')} must be at least 1, got {getattr(args, flag)}"
            )
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = WHOLE.place(ARCHS.build(args.arch, 10, (3, 32, 32)), torch.device("cpu")).eval()
    runs = workloads(model)
    print(f"{args.arch}, {args.threads} thread(s), eval mode; whole batches / chunks of {CHUNK}")
    ratios: dict[str, list[float]] = {name: [] for name in runs}
    for round_ in range(1, args.rounds + 1):
        parts = []
        for name, (whole_work, chunked_work) in runs.items():
            if round_ % 2:  # each goes first in half the rounds
                whole = seconds_per_step(whole_work, args.repeats)
                chunked = seconds_per_step(chunked_work, args.repeats)
            else:
                chunked = seconds_per_step(chunked_work, args.repeats)
                whole = seconds_per_step(whole_work, args.repeats)
            ratios[name].append(whole / chunked)
            parts.append(f"{name} {whole * 1000:.0f}/{chunked * 1000:.0f} ms")
        print(f"round {round_}: " + ", ".join(parts))
    print(
        "median speed-up in chunks: "
        + ", ".join(f"{name} {statistics.median(r):.2f}×" for name, r in ratios.items())
    )


if __name__ == "__main__":
    main()
