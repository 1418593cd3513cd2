"""Measure the cost of ``uebench certify`` (a script, not a test).

1. Per-draw cost of evaluating one perturbed model on the clean test set, one model at a time
   (``batch_draws=1``) and several at once with ``torch.func.vmap`` (``batch_draws>1``).
2. Wall time of a whole certification (draws + the bound) for N in ``--scaling`` with the
   cheapest ``batch_draws`` found in 1, on the first architecture.

    OMP_NUM_THREADS=1 python benchmarks/certify_cost.py --archs smallcnn:width=8,resnet18:width=16

Weights are a fresh initialization: the cost does not depend on their values.
"""

from __future__ import annotations

import argparse
import os
import time

import torch

from uebench.analysis.certify import certify_model, smoothed_accuracies
from uebench.datasets import load_dataset
from uebench.registry import ARCHS
from uebench.training import resolve_device


def per_draw_ms(model, data, device, batch_draws: int, draws: int) -> float:
    """Milliseconds per perturbed model, measured over ``draws`` draws (after one warm-up)."""
    smoothed_accuracies(
        model, data.x_test, data.y_test, n=batch_draws, device=device, batch_draws=batch_draws
    )
    started = time.perf_counter()
    smoothed_accuracies(
        model, data.x_test, data.y_test, n=draws, device=device, batch_draws=batch_draws
    )
    if device.type == "cuda":
        torch.cuda.synchronize()
    return 1000 * (time.perf_counter() - started) / draws


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="cluttered-digits")
    parser.add_argument("--test-size", type=int, default=None)
    parser.add_argument("--archs", default="smallcnn:width=8,resnet18:width=16")
    parser.add_argument("--batch-draws", default="1,8,32")
    parser.add_argument("--probe", type=int, default=32, help="draws per batch_draws probe")
    parser.add_argument("--scaling", default="100,250,500,1000")
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()

    device = resolve_device(args.device)
    data = load_dataset(args.dataset, None, None, args.test_size, seed=0)
    threads = torch.get_num_threads()
    print(
        f"device {device}, torch threads {threads}, load average {os.getloadavg()[0]:.2f}, "
        f"{len(data.y_test)} test images of {data.image_shape}"
    )
    batch_options = [int(b) for b in args.batch_draws.split(",")]
    archs = args.archs.split(",")
    best: dict[str, int] = {}
    print(
        f"\n{'arch':22s} {'params':>9s} " + " ".join(f"{f'b={b} ms':>10s}" for b in batch_options)
    )
    for arch in archs:
        torch.manual_seed(0)
        model = ARCHS.build(arch, data.num_classes, data.image_shape)
        params = sum(p.numel() for p in model.parameters() if p.requires_grad)
        costs = {b: per_draw_ms(model, data, device, b, max(args.probe, b)) for b in batch_options}
        best[arch] = min(costs, key=costs.get)
        print(f"{arch:22s} {params:>9d} " + " ".join(f"{costs[b]:>10.1f}" for b in batch_options))

    arch = archs[0]
    torch.manual_seed(0)
    model = ARCHS.build(arch, data.num_classes, data.image_shape)
    print(f"\nwhole certification, {arch}, batch_draws={best[arch]}:")
    print(f"{'N':>6s} {'seconds':>9s} {'ms/draw':>9s}")
    for n in [int(v) for v in args.scaling.split(",")]:
        started = time.perf_counter()
        certify_model(model, data.x_test, data.y_test, n=n, device=device, batch_draws=best[arch])
        seconds = time.perf_counter() - started
        print(f"{n:>6d} {seconds:>9.1f} {1000 * seconds / n:>9.1f}")


if __name__ == "__main__":
    main()
