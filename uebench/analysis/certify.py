"""Certified (q, η)-learnability by parametric smoothing (Wang et al., 2024).

Given a model θ̂ trained on (possibly unlearnable) data, draw N Gaussian perturbations
ε ~ N(0, σ²I) of its trainable parameters, measure the clean test accuracy of each θ̂+ε (eval
mode; BatchNorm running statistics are buffers and stay unperturbed) and sort them,
a(1) ≤ … ≤ a(N).  For a radius η:

    q̄ = Φ(Φ⁻¹(q) + η/σ),  k* = min{k ≥ ⌈q̄N⌉ : BinomCDF(k−1; N, q̄) > 1−α}

and the certified learnability is a(k*), or an abstention when no such k ≤ N exists.  With
probability at least 1−α over the draws, a(k*) is at least the q̄-quantile of the smoothed
accuracy at θ̂, which upper-bounds the q-quantile of the smoothed accuracy at every θ within
ℓ2 distance η of θ̂.  Lower is stronger protection.

:func:`certified_index` is the bound alone (pure arithmetic, tested against scipy's Beta
distribution of order statistics); :func:`smoothed_accuracies` the N evaluations;
:func:`certify_model` both, as a :class:`Certificate`.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.func import functional_call, vmap
from tqdm.auto import tqdm

from uebench.data import to_float
from uebench.errors import UebenchError
from uebench.files import atomic_write
from uebench.precision import autocast

#: The radii the public code sweeps.
DEFAULT_ETAS: tuple[float, ...] = (
    0.001,
    0.005,
    0.01,
    0.05,
    0.1,
    0.15,
    0.2,
    0.25,
    0.3,
    0.4,
    0.5,
    0.6,
    0.7,
    0.8,
    0.9,
    1.0,
    1.2,
    1.4,
    1.6,
    1.8,
    2.0,
)


def check_settings(n: int, sigma: float, q: float, alpha: float, etas: Sequence[float]) -> None:
    """One-line errors for settings the bound is undefined for."""
    if n < 1:
        raise UebenchError(f"certify needs at least one draw, got n={n}")
    if not sigma > 0:
        raise UebenchError(f"sigma must be positive, got {sigma:g}")
    if not 0 < q < 1:
        raise UebenchError(f"q must be in (0, 1), got {q:g}")
    if not 0 < alpha < 1:
        raise UebenchError(f"alpha must be in (0, 1), got {alpha:g}")
    if not etas:
        raise UebenchError("certify needs at least one radius eta")
    if any(not (eta >= 0 and math.isfinite(eta)) for eta in etas):
        raise UebenchError(f"every eta must be a finite number >= 0, got {list(etas)}")


def upper_quantile_level(q: float, eta: float, sigma: float) -> float:
    """q̄ = Φ(Φ⁻¹(q) + η/σ): the smoothed quantile at θ̂ that bounds the q-quantile within η."""
    from scipy.stats import norm  # here: scipy.stats costs every uebench import half a second

    return float(norm.cdf(norm.ppf(q) + eta / sigma))


def certified_index(n: int, q: float, eta: float, sigma: float, alpha: float) -> int | None:
    """k* (1-based) of the order statistic a(k*) certified at radius η, or None to abstain.

    k* is the smallest k ≥ ⌈q̄N⌉ (and ≤ N) with BinomCDF(k−1; N, q̄) > 1−α, the probability that
    fewer than k of N draws fall below the smoothed q̄-quantile.
    """
    from scipy.stats import binom

    check_settings(n, sigma, q, alpha, [eta])
    q_bar = upper_quantile_level(q, eta, sigma)
    first = max(1, math.ceil(q_bar * n))
    if first > n:
        return None
    ks = np.arange(first, n + 1)
    confident = binom.cdf(ks - 1, n, q_bar) > 1 - alpha
    if not confident.any():
        return None
    return int(ks[confident.argmax()])


@dataclass
class CertifiedRow:
    """The certificate at one radius: q̄, k* and a(k*) (both None when abstaining)."""

    eta: float
    q_bar: float
    k: int | None
    certified_acc: float | None


def certify_accuracies(
    accuracies: Sequence[float],
    *,
    q: float = 0.9,
    sigma: float = 0.25,
    alpha: float = 0.01,
    etas: Sequence[float] = DEFAULT_ETAS,
) -> list[CertifiedRow]:
    """Certified learnability at every η from N smoothed accuracies (any order)."""
    ordered = sorted(float(a) for a in accuracies)
    check_settings(len(ordered), sigma, q, alpha, etas)
    rows = []
    for eta in etas:
        k = certified_index(len(ordered), q, eta, sigma, alpha)
        value = ordered[k - 1] if k is not None else None
        rows.append(CertifiedRow(float(eta), upper_quantile_level(q, eta, sigma), k, value))
    return rows


@dataclass
class Certificate:
    """Smoothed accuracies of one model and the certified learnability at each radius."""

    accuracies: list[float]  # sorted, percent
    base_acc: float  # the unperturbed model's clean test accuracy, percent
    n: int
    sigma: float
    q: float
    alpha: float
    seed: int
    rows: list[CertifiedRow]
    seconds: float
    meta: dict[str, Any] = field(default_factory=dict)

    def table(self) -> pd.DataFrame:
        """One row per η: ``eta``, ``q_bar``, ``k``, ``certified_acc`` (NaN = abstain)."""
        frame = pd.DataFrame([asdict(row) for row in self.rows])
        frame["k"] = frame["k"].astype("Int64")
        frame["certified_acc"] = frame["certified_acc"].astype(float)
        return frame

    def to_dict(self) -> dict[str, Any]:
        """Everything, as JSON-able types (what ``save_certificate`` writes)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> Certificate:
        """The inverse of :meth:`to_dict`."""
        rows = [CertifiedRow(**row) for row in values["rows"]]
        return cls(**{**values, "rows": rows})

    def summary(self) -> str:
        """A plain-text table for the terminal."""
        lines = [
            f"certified (q={self.q:g}, η)-learnability, σ={self.sigma:g}, N={self.n}, "
            f"α={self.alpha:g}; unperturbed accuracy {self.base_acc:.2f}%, smoothed median "
            f"{self.accuracies[len(self.accuracies) // 2]:.2f}% ({self.seconds:.1f} s)",
            f"{'eta':>8} {'q_bar':>8} {'k':>6} {'certified %':>12}",
        ]
        for row in self.rows:
            value = f"{row.certified_acc:.2f}" if row.certified_acc is not None else "abstain"
            k = str(row.k) if row.k is not None else "-"
            lines.append(f"{row.eta:>8g} {row.q_bar:>8.4f} {k:>6} {value:>12}")
        return "\n".join(lines)


def _weight_draw(
    shapes: list[torch.Size], total: int, generator: torch.Generator
) -> list[torch.Tensor]:
    """One standard-normal draw over all trainable parameters, split into their shapes.

    Drawn on the CPU one whole vector per draw, so the same seed gives the same perturbations
    on any device and for any ``batch_draws``.
    """
    flat = torch.randn(total, generator=generator)
    return [
        chunk.view(shape)
        for chunk, shape in zip(flat.split([s.numel() for s in shapes]), shapes, strict=True)
    ]


class _PerturbableModel:
    """A model in eval mode with its trainable parameters (θ̂, what smoothing perturbs) apart
    from its fixed ones and buffers (shared by every draw), evaluated by functional calls."""

    def __init__(self, model: nn.Module, device: torch.device) -> None:
        self.model, self.device = model, device
        trainable = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
        self.names = [name for name, _ in trainable]
        self.base = {name: p.detach() for name, p in trainable}
        self.fixed = {n: p.detach() for n, p in model.named_parameters() if not p.requires_grad}
        self.fixed.update({name: b for name, b in model.named_buffers()})
        self.shapes = [self.base[name].shape for name in self.names]
        self.total = sum(s.numel() for s in self.shapes)
        self._batched = vmap(self.correct, in_dims=(0, None, None))

    def perturbed(self, draws: list[list[torch.Tensor]], sigma: float) -> dict[str, torch.Tensor]:
        """θ̂ + σ·draw for each of ``draws`` (:func:`_weight_draw`), stacked along a new
        first dimension, on the device."""
        return {
            name: self.base[name] + sigma * torch.stack([d[i] for d in draws]).to(self.device)
            for i, name in enumerate(self.names)
        }

    def correct(
        self, params: dict[str, torch.Tensor], batch: torch.Tensor, truth: torch.Tensor
    ) -> torch.Tensor:
        """How many of ``batch`` (float images) the model with ``params`` labels ``truth``."""
        with autocast(self.device):
            logits = functional_call(self.model, {**params, **self.fixed}, (batch,))
        return (logits.argmax(-1) == truth).sum()

    def hits(
        self,
        stacked: dict[str, torch.Tensor],
        count: int,
        images: list[torch.Tensor],
        labels: list[torch.Tensor],
    ) -> torch.Tensor:
        """Correct predictions of each of the ``count`` stacked perturbed models over every
        batch of uint8 ``images`` (one model alone plainly, several at once by ``vmap``)."""
        hits = torch.zeros(count, dtype=torch.long, device=self.device)
        for raw, truth in zip(images, labels, strict=True):
            batch = to_float(raw)
            if count == 1:
                single = {name: value[0] for name, value in stacked.items()}
                hits += self.correct(single, batch, truth)
            else:
                hits += self._batched(stacked, batch, truth)
        return hits


@torch.no_grad()
def smoothed_accuracies(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    n: int = 1000,
    sigma: float = 0.25,
    seed: int = 0,
    device: torch.device | str = "cpu",
    batch_draws: int = 1,
    eval_batch_size: int = 1024,
    progress: bool = False,
) -> list[float]:
    """Clean accuracy (percent) of θ̂+ε for ``n`` draws ε ~ N(0, σ²I), in draw order.

    ``x`` are uint8 test images.  Perturbs every parameter with ``requires_grad`` (weights,
    biases, normalization affine parameters); buffers (BatchNorm running statistics) are
    shared.  ``batch_draws`` > 1 evaluates that many perturbed models at once with
    ``torch.func.vmap`` (slower on the CPU; see benchmarks/certify_cost.py).  The model is
    moved to ``device``; its weights and mode are left as they were.
    """
    if batch_draws < 1:
        raise UebenchError(f"batch_draws must be at least 1, got {batch_draws}")
    device = torch.device(device)
    was_training = model.training
    perturbable = _PerturbableModel(model.to(device).eval(), device)
    generator = torch.Generator().manual_seed(seed)
    # Kept as uint8 on the device and converted per batch: float copies of a large test set
    # (ImageNet-sized images) would not fit.
    images = [chunk.to(device) for chunk in x.split(eval_batch_size)]
    labels = [chunk.to(device) for chunk in y.split(eval_batch_size)]
    accuracies: list[float] = []
    bar = tqdm(total=n, desc="certify", leave=False, disable=not progress, dynamic_ncols=True)
    for start in range(0, n, batch_draws):
        count = min(batch_draws, n - start)
        shapes, total = perturbable.shapes, perturbable.total
        draws = [_weight_draw(shapes, total, generator) for _ in range(count)]
        hits = perturbable.hits(perturbable.perturbed(draws, sigma), count, images, labels)
        accuracies.extend((100.0 * hits.double() / max(len(y), 1)).tolist())
        bar.update(count)
    bar.close()
    model.train(was_training)
    return accuracies


def certify_model(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    n: int = 1000,
    sigma: float = 0.25,
    q: float = 0.9,
    alpha: float = 0.01,
    etas: Sequence[float] = DEFAULT_ETAS,
    seed: int = 0,
    device: torch.device | str = "cpu",
    batch_draws: int = 1,
    progress: bool = False,
    meta: dict[str, Any] | None = None,
) -> Certificate:
    """Certified (q, η)-learnability of ``model`` on clean uint8 test images ``x``, labels ``y``."""
    check_settings(n, sigma, q, alpha, etas)
    if len(x) == 0:
        raise UebenchError("certify needs a non-empty test set")
    started = time.perf_counter()
    accuracies = smoothed_accuracies(
        model,
        x,
        y,
        n=n,
        sigma=sigma,
        seed=seed,
        device=device,
        batch_draws=batch_draws,
        progress=progress,
    )
    seconds = time.perf_counter() - started
    base = smoothed_accuracies(model, x, y, n=1, sigma=0.0, device=device)[0]
    return Certificate(
        accuracies=sorted(accuracies),
        base_acc=base,
        n=n,
        sigma=sigma,
        q=q,
        alpha=alpha,
        seed=seed,
        rows=certify_accuracies(accuracies, q=q, sigma=sigma, alpha=alpha, etas=etas),
        seconds=seconds,
        meta=dict(meta or {}),
    )


def plot_certificates(certificates: dict[str, Certificate], path: str | Path) -> Path:
    """Certified learnability against η, one line per labelled certificate, saved as an image.

    Abstentions are left out of the lines.  Needs matplotlib and seaborn (``uebench[plots]``).
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        import seaborn as sns
    except ImportError:
        raise UebenchError(
            "plotting needs matplotlib and seaborn: pip install 'uebench[plots]' (or --no-plot)"
        ) from None
    frames = []
    for label, certificate in certificates.items():
        frame = certificate.table().dropna(subset=["certified_acc"])
        frame["model"] = label
        frames.append(frame)
    data = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    with sns.axes_style("whitegrid"):  # scoped: a library must not restyle the caller's plots
        figure, axes = plt.subplots(figsize=(6, 4))
    if not data.empty:
        sns.lineplot(data=data, x="eta", y="certified_acc", hue="model", marker="o", ax=axes)
    settings = {(c.q, c.sigma, c.n) for c in certificates.values()}
    if len(settings) == 1:
        ((q, sigma, n),) = settings
        axes.set_title(f"certified (q={q:g}, η)-learnability, σ={sigma:g}, N={n}")
    else:
        axes.set_title("certified (q, η)-learnability")
    axes.set_xlabel("η (ℓ2 radius in parameter space)")
    axes.set_ylabel("certified clean accuracy (%)")
    figure.tight_layout()
    path = Path(path)
    atomic_write(
        path, lambda handle: figure.savefig(handle, format=path.suffix.lstrip(".") or "png")
    )
    plt.close(figure)
    return path


def save_certificate(
    certificate: Certificate, folder: str | Path, name: str, plot: bool = True
) -> list[Path]:
    """``folder/name.json`` (everything), ``name.csv`` (the table) and ``name.png`` (the plot)."""
    folder = Path(folder)
    text = json.dumps(certificate.to_dict(), indent=1, sort_keys=True)
    written = [folder / f"{name}.json", folder / f"{name}.csv"]
    atomic_write(written[0], lambda stream: stream.write(text), mode="w")
    csv = certificate.table().to_csv(index=False, float_format="%.4f")
    atomic_write(written[1], lambda stream: stream.write(csv), mode="w")
    if plot:
        written.append(plot_certificates({name: certificate}, folder / f"{name}.png"))
    return written
