"""Why error-minimizing noise keeps part of its effect under grayscale at ``mini``'s scale: what
grayscale leaves of the noise, and whether that residue is a shortcut or a corruption.

    python benchmarks/grayscale_em.py --data-root ../shared/data/cifar10 \\
        [--out runs/field-table] [--epochs 20]

1. Crafts (or reads from the grid's poison cache) ``mini``'s sample-wise EM poison on CIFAR-10.
2. Measures the published noise before and after grayscale (the ISS filter, BT.601 luminance
   rounded to 8 bits): its RMS and L∞ in [0, 1] units, and its shortcut separability (held-out
   accuracy of a linear classifier on the perturbations alone; 10% is chance) in colour and in
   grayscale.
3. Trains ``mini``'s victim under grayscale on the clean images, on the EM-poisoned images, and on
   the same EM noise shuffled across images (each image gets another image's noise: the same
   corruption, no tie to the label), as cells of one grid (``--out`` resumes the field table's
   cells).  If the shuffled noise costs as much as EM's, what grayscale leaves is a corruption;
   if it costs little, the residue is still a shortcut the victim learns.
4. ``--epochs N`` adds clean and EM under grayscale trained for N epochs: whether the gap closes
   with more training.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

import uebench
from uebench.analysis.diagnostics import shortcut_separability
from uebench.grid.cell import craft_poison, load_cell_data
from uebench.grid.config import GridConfig

LUMINANCE = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)


def grayscale(x: torch.Tensor) -> torch.Tensor:
    """The grayscale countermeasure's image: luminance rounded to 8 bits (one channel)."""
    return (x.float() * LUMINANCE).sum(1, keepdim=True).round().clamp(0, 255)


def describe(name: str, change: torch.Tensor, labels: torch.Tensor) -> None:
    """One line: RMS, L∞ and shortcut separability of a perturbation in [0, 1] units."""
    separability = shortcut_separability(change, labels)
    print(
        f"  {name:34s} RMS {float(change.square().mean().sqrt()) * 255:5.2f}/255  "
        f"L∞ {float(change.abs().amax()) * 255:5.1f}/255  separability {separability:5.1f}%"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", default="../shared/data/cifar10")
    parser.add_argument("--out", default="runs/field-table")
    parser.add_argument("--epochs", type=int, default=None, help="also train this long")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    grid = dict(dataset="cifar10", data_root=args.data_root, protocol="mini", out=args.out)
    (cell,) = GridConfig(**grid, methods=["emin"], defenses=["grayscale"]).cells()
    data = load_cell_data(cell.dataset, cell.data_root, cell.train_size, cell.test_size)
    poison = craft_poison(cell, data, progress=False)
    x, y = data.x_train, data.y_train
    published = poison.apply(x).float() - x.float()  # what the images actually carry
    residue = grayscale(x.float() + published) - grayscale(x)
    print(f"EM poison of mini on CIFAR-10 ({len(y)} images), published change:")
    describe("colour noise", published / 255, y)
    describe("what grayscale leaves of it", residue / 255, y)

    # The same noise on other images: a corruption of the same size with no tie to the labels.
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    shuffled = (x.float() + published[order]).clamp(0, 255).to(torch.uint8)
    folder = Path(args.out).parent / "grayscale-em"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "emin-shuffled.npz"
    np.savez(path, x_train=shuffled.permute(0, 2, 3, 1).numpy(), y_train=y.numpy())
    method = f"file:path={path}:eps=8/255"
    table = uebench.run(
        **grid, methods=["clean", "emin", method], defenses=["grayscale"], progress=False
    )
    rows = {row.method.split(":")[0]: row.final_acc for row in table.itertuples()}
    print("mini's victim under grayscale, final clean test accuracy:")
    print(f"  clean images                       {rows['clean']:5.1f}%")
    print(f"  EM-poisoned images                 {rows['emin']:5.1f}%")
    print(f"  EM noise shuffled across images    {rows['file']:5.1f}%")
    if args.epochs:
        longer = uebench.run(
            **grid, methods=["clean", "emin"], defenses=["grayscale"], epochs=args.epochs,
            progress=False,
        )  # fmt: skip
        for row in longer.itertuples():
            print(f"  {row.method:10s} at {args.epochs} epochs            {row.final_acc:5.1f}%")


if __name__ == "__main__":
    main()
