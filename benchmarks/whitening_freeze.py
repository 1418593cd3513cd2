"""An eager training step of an airbench victim with the whitening bias's gradient computed
and with it stopped, as the fast recipe's frozen epochs run (a script, not a test).

    python benchmarks/whitening_freeze.py                     # mini's victim, width 16, batch 256
    python benchmarks/whitening_freeze.py --width 64 --batch-size 1024   # fast's victim

Once the fast recipe freezes the whitening bias (after 3 epochs), its gradient is never used;
stopping it lets the backward pass skip the input gradient of the first convolution (the
largest, at 31×31).  The two variants alternate ``--rounds`` times on one random batch, so a
drift of the machine's speed falls on both; it prints each round's seconds per step and the
ratio.
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from uebench.archs.airbench import airbench
from uebench.execution import execution_for


def seconds_per_step(step, steps: int) -> float:
    step()  # warm
    started = time.perf_counter()
    for _ in range(steps):
        step()
    return (time.perf_counter() - started) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--width", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: a grid worker's)")
    args = parser.parse_args()
    for flag in ("width", "batch_size", "steps", "rounds", "threads"):
        if getattr(args, flag) < 1:
            parser.error(
                f"--{flag.replace('_', '-')} must be at least 1, got {getattr(args, flag)}"
            )
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device = torch.device("cpu")
    execution = execution_for(device)
    model = execution.place(airbench(10, (3, 32, 32), width=args.width), device)
    images = torch.rand(args.batch_size, 3, 32, 32)
    labels = torch.randint(0, 10, (args.batch_size,))
    model.fit_to_training_images((images * 255).to(torch.uint8))
    inputs = execution.inputs(images)
    trained = [p for p in model.parameters() if p.requires_grad and p is not model.whitening_bias]
    optimizer = torch.optim.SGD(trained, lr=0.01, momentum=0.85, nesterov=True)

    def step() -> None:
        loss = F.cross_entropy(model(inputs), labels, label_smoothing=0.2)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    print(
        f"airbench width {args.width}, batch {args.batch_size}, "
        f"{args.threads} thread(s), {execution}"
    )
    ratios = []
    for round_ in range(1, args.rounds + 1):
        model.whitening_bias.requires_grad_(True)
        computed = seconds_per_step(step, args.steps)
        model.whitening_bias.requires_grad_(False)
        stopped = seconds_per_step(step, args.steps)
        ratios.append(computed / stopped)
        print(
            f"round {round_}: bias gradient computed {computed * 1000:.0f} ms/step, "
            f"stopped {stopped * 1000:.0f} ms/step, {ratios[-1]:.2f}×"
        )
    print(f"median: {sorted(ratios)[len(ratios) // 2]:.2f}× faster with the gradient stopped")


if __name__ == "__main__":
    main()
