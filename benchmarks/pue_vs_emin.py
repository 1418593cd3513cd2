"""Certified (q, η)-learnability of ``pue`` against ``emin`` at the same ε.

A small grid (clean, emin class-wise, pue class-wise; one victim architecture) is run with
``--save-models``; then every victim, and the crafting surrogate of each poison, is certified
with the same draws (N, σ, q, α, seed).  Lower certified learnability is stronger protection.
The paper's claim is that pue's is lower than emin's; this script reports what comes out.

    OMP_NUM_THREADS=1 python benchmarks/pue_vs_emin.py --out runs/pue_vs_emin

Results are stored with the run: ``OUT/certify/*.json|csv`` and ``OUT/certify/pue_vs_emin.png``.
"""

from __future__ import annotations

import argparse
import itertools
import os
import time
from pathlib import Path

import pandas as pd

from uebench.analysis.certify import certify_model, plot_certificates, save_certificate
from uebench.cli.certify import cell_target
from uebench.grid import GridConfig, run_grid


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/pue_vs_emin")
    parser.add_argument("--train-size", type=int, default=None, help="default: all 4313")
    parser.add_argument("--test-size", type=int, default=500)
    parser.add_argument("--arch", default="resnet18:width=8", help="victim and source")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--eps", default="8/255")
    parser.add_argument("--draws", type=int, default=5, help="pue's M (public default 100)")
    parser.add_argument("--noise-draws", type=int, default=5, help="pue's u (public default 10)")
    parser.add_argument("-n", "--n", type=int, default=1000)
    parser.add_argument(
        "--sigmas", default="0.25,0.1", help="uebench's default, the public code's default"
    )
    parser.add_argument("--q", type=float, default=0.9)
    parser.add_argument("--alpha", type=float, default=0.01)
    parser.add_argument("--etas", default="0,0.01,0.05,0.1,0.2,0.3,0.5")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    source = f"source=[{args.arch}]"
    methods = {
        "clean": "clean",
        "emin": f"emin:form=class:eps={args.eps}:{source}",
        "pue": f"pue:eps={args.eps}:draws={args.draws}:noise_draws={args.noise_draws}:{source}",
    }
    started = time.perf_counter()
    table = run_grid(
        GridConfig(
            # The layout and protocol its quoted numbers were measured with.
            dataset="cluttered-digits:split=image:contrast=0.2:digit_size=8:clutter=0.3",
            protocol="paper",
            methods=list(methods.values()),
            archs=[args.arch],
            epochs=args.epochs,
            train_size=args.train_size,
            test_size=args.test_size,
            out=args.out,
            save_models=True,
            progress=False,
        )
    )
    print(f"grid done in {time.perf_counter() - started:.0f} s (cached parts skipped)")
    names = {spec: name for name, spec in methods.items()}
    etas = [float(v) for v in args.etas.split(",")]
    sigmas = [float(v) for v in args.sigmas.split(",")]
    certificates = {}
    rows = []
    targets = []
    for _, cell in table.iterrows():
        record = Path(args.out) / "cells" / f"{cell['cell_id']}.json"
        kinds = ["victim"] if names[cell["method"]] == "clean" else ["victim", "surrogate"]
        targets += [(f"{names[cell['method']]} {kind}", kind, record) for kind in kinds]
    for sigma, (label, kind, record) in itertools.product(sigmas, targets):
        target = cell_target(record, kind)
        certificate = certify_model(
            target.model,
            target.data.x_test,
            target.data.y_test,
            n=args.n,
            sigma=sigma,
            q=args.q,
            alpha=args.alpha,
            etas=etas,
            seed=args.seed,
            meta=target.meta,
        )
        certificates[f"{label}, σ={sigma:g}"] = certificate
        name = f"{target.name}-sigma{sigma:g}"
        save_certificate(certificate, Path(args.out) / "certify", name, plot=False)
        row = {
            "σ": sigma,
            "model": label,
            "acc": certificate.base_acc,
            "smoothed median": certificate.accuracies[args.n // 2],
            "seconds": certificate.seconds,
        }
        if kind == "surrogate":
            meta = target.meta["poison_meta"]
            row["rounds"] = meta.get("rounds")
            row["craft s"] = meta.get("craft_seconds")
            row["switch"] = meta.get("smoothing_from_round", "-")
        for result in certificate.rows:
            row[f"η={result.eta:g}"] = result.certified_acc
        rows.append(row)
    frame = pd.DataFrame(rows)
    plot_name = f"pue_vs_emin-sigma{args.sigmas.replace(',', '_')}.png"
    plot = plot_certificates(certificates, Path(args.out) / "certify" / plot_name)
    print(
        f"\ncertified (q={args.q:g}, η)-learnability in % (N={args.n}, "
        f"α={args.alpha:g}; NaN = abstain); victim/source {args.arch}, ε={args.eps}, "
        f"{args.train_size or 'all'} train / {args.test_size} test images, {args.epochs} epochs; "
        f"load average {os.getloadavg()[0]:.2f}"
    )
    print(frame.round(2).to_string(index=False))
    print(f"plot: {plot}")


if __name__ == "__main__":
    main()
