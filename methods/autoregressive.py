"""``ar``: autoregressive perturbations (Sandoval-Segura et al., "Autoregressive Perturbations
for Data Poisoning", NeurIPS 2022; official code psandovalsegura/autoregressive-poisoning,
``autoregressive.py``, ``autoregressive_param_finder.py``, ``create_ar_poisons_3channel.py``).

Algorithm (no model).  Each class gets an AR process with a 3×3 window per channel: C × 3 × 3
coefficients whose bottom-right entry (the pixel being generated) is 0 and whose other eight
entries are Gaussian draws divided by their sum, so they sum to 1.  Generating a pattern
starts from i.i.d. Gaussian noise of (H+4) × (W+4) and, in raster order, replaces every pixel
below the first two rows and right of the first two columns by the weighted sum of its 3×3
window (the pixels above and to its left); the first 4 rows and columns are cropped and the
pattern is scaled to L2 norm ``radius`` over all C × H × W values.

The per-class coefficients are found by rejection sampling as in the paper's parameter finder:
a draw is rejected when any of ``trials`` patterns generated from it (36 × 36, cropped 4, at the
paper's CIFAR size whatever the dataset's) is not finite or has an unscaled L2 norm above
``norm_bound`` (a diverging process), or when the matched filters of the processes already
accepted respond to its last pattern with less than ``min_response`` (the sum of the positive
part of each filter's convolution over all channels; a process's matched filter is its
coefficients with −1 at the generated pixel, whose response to its own patterns is 0).
Non-finite processes are rejected explicitly: a published copy gave NaN (black images) for one
CIFAR-100 class.  Each training image then gets its own pattern from its class's process,
from a fresh random start (sample-wise noise).

Defaults (the paper's CIFAR-10 settings): ``radius=1.0`` (L2 on 32 × 32 × 3),
``norm_bound=50``, ``trials=3``, ``min_response=10`` for up to 10 classes and 3 above (the
settings of the released CIFAR-10 and CIFAR-100 coefficient files), ``max_draws=1_000_000``.

Threat model: L2 with budget ``radius`` per image.  On other image sizes the radius is kept
as given, per image (so per-pixel noise is smaller on larger images); the paper used 3.0 for
96 × 96 STL-10, which ``ar:radius=3`` reproduces.  The coefficient search always runs at the
paper's 32 × 32, so ``min_response`` keeps its meaning on every dataset (the paper, too, used
its CIFAR-10 coefficients for STL-10).

Departures: the code ships fixed coefficients for CIFAR-10 and CIFAR-100 (found once by its
finder); here the finder runs for the dataset's number of classes and channels under ``seed``,
so any dataset works.  The search is exact but batched: a batch of draws is screened on a
growing top-left block of its first trial, then of all trials, before the survivors are grown
to full size (the recursion is causal, so a block that already diverges or exceeds the bound
belongs to a pattern that does); this changes the order the random numbers are drawn in, not
the acceptance rule.  Random numbers are drawn on the CPU and the work runs on the device, so
the result does not depend on the device short of a float-rounding tie at a threshold.  The
search takes seconds to a minute on a CPU for ten classes (most draws diverge, and few stable
ones respond strongly enough to every filter accepted before).  The code rounds the published
image to nearest and clips; here the threat model rounds to nearest and, where that would
leave the L2 ball, toward the original image.
"""

from __future__ import annotations

from math import inf

import torch
import torch.nn.functional as F

from uebench.data import ImageData
from uebench.errors import UebenchError
from uebench.method import CraftContext, Method
from uebench.poison import Poison
from uebench.threat import ThreatModel

#: Rows and columns generated beyond the image and cropped away (the code's ``crop=4``).
CROP = 4
#: The image side the coefficient search generates at (36 × 36 before the crop).
SEARCH_SIDE = 32
#: Candidate coefficient sets per search batch, and the (block side, trials) a batch is screened
#: on before its survivors are grown to the full 36 × 36 and all trials: most random draws
#: diverge, and do so within the first few rows and columns of their first trial.
SEARCH_BATCH = 4096
SCREEN_STAGES = ((12, 1), (20, 3))
#: Bound on the patterns × positions × filters intermediate of a response computation.
RESPONSE_ELEMENTS = 1 << 22
#: Images per batch when generating the noise (fixed: it fixes the order of the random draws).
GENERATE_BATCH = 4096


class Autoregressive(Method):
    """A stable, mutually distinguishable AR process per class; one pattern per image."""

    def __init__(
        self,
        *,
        radius: float = 1.0,
        min_response: float | None = None,
        norm_bound: float = 50.0,
        trials: int = 3,
        max_draws: int = 1_000_000,
        seed: int = 0,
    ) -> None:
        if not 0 < radius < inf:
            raise UebenchError(f"ar: radius must be a positive L2 norm, got {radius:g}")
        if min_response is not None and not min_response >= 0:
            raise UebenchError(f"ar: min_response must be >= 0, got {min_response:g}")
        if not 0 < norm_bound < inf:
            raise UebenchError(f"ar: norm_bound must be positive, got {norm_bound:g}")
        if trials < 1:
            raise UebenchError(f"ar: trials must be at least 1, got {trials}")
        if max_draws < 1:
            raise UebenchError(f"ar: max_draws must be at least 1, got {max_draws}")
        self.radius = radius
        self.min_response = min_response
        self.norm_bound = norm_bound
        self.trials = trials
        self.max_draws = max_draws
        self.seed = seed

    def threat_model(self) -> ThreatModel:
        return ThreatModel.l2(self.radius)

    def response_threshold(self, num_classes: int) -> float:
        """``min_response``, or the paper's setting for this many classes."""
        if self.min_response is not None:
            return self.min_response
        return 10.0 if num_classes <= 10 else 3.0

    def coefficients(
        self, num_classes: int, channels: int, device: torch.device | str = "cpu"
    ) -> torch.Tensor:
        """The per-class AR coefficients (classes × C × 3 × 3, on the CPU), found by rejection
        sampling on ``device``; the random draws are made on the CPU, so the coefficients do not
        depend on the device (short of a float-rounding tie at a threshold)."""
        generator = torch.Generator().manual_seed(self.seed)
        threshold = self.response_threshold(num_classes)
        accepted = torch.empty(0, channels, 3, 3, device=device)
        drawn = 0
        while len(accepted) < num_classes:
            if drawn >= self.max_draws:
                raise UebenchError(
                    f"ar: found {len(accepted)} of {num_classes} AR processes in "
                    f"{self.max_draws} draws; lower min_response or raise max_draws"
                )
            batch = min(SEARCH_BATCH, self.max_draws - drawn)
            drawn += batch
            candidates = random_coefficients(batch, channels, generator).to(device)
            stable, patterns = self._screen(candidates, generator)
            candidates, windows = candidates[stable], pattern_windows(patterns)
            # Each candidate's weakest response to the processes of earlier batches, at once;
            # to the ones accepted from this batch (in draw order), when its turn comes.
            weakest = [inf] * len(candidates)
            if len(accepted):
                weakest = filter_response(windows, matched_filters(accepted)).amin(1).tolist()
            taken: list[int] = []
            for i in range(len(candidates)):
                if len(accepted) + len(taken) == num_classes:
                    break
                if weakest[i] < threshold:
                    continue
                if taken:
                    newer = filter_response(windows[i : i + 1], matched_filters(candidates[taken]))
                    if float(newer.min()) < threshold:
                        continue
                taken.append(i)
            accepted = torch.cat([accepted, candidates[taken]])
        return accepted.cpu()

    def _screen(
        self, candidates: torch.Tensor, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Indices of the candidates whose trial patterns all stay finite and within the norm
        bound, and their last trial's pattern (survivors × C × 32 × 32) at unit L2 norm."""
        count, channels = candidates.shape[:2]
        device = candidates.device
        # coef: 3 × 3 × candidates × 1 (trials) × C; starts: side × side × candidates × trials × C
        coef = candidates.permute(2, 3, 0, 1).unsqueeze(3)
        alive = torch.arange(count, device=device)
        start = torch.empty(0, 0, count, 0, channels, device=device)
        for side, trials in (*SCREEN_STAGES, (SEARCH_SIDE + CROP, self.trials)):
            trials = min(trials, self.trials)
            shape = (side, side, len(alive), trials, channels)
            grown = torch.randn(shape, generator=generator).to(device)
            grown[: start.shape[0], : start.shape[1], :, : start.shape[3]] = start
            start = grown
            pattern = ar_fill(start.clone(), coef[:, :, alive])[CROP:, CROP:]
            norms = pattern.square().sum((0, 1, 4)).sqrt()  # candidates × trials
            finite = torch.isfinite(pattern).all(0).all(0).all(-1)
            keep = (finite & (norms <= self.norm_bound)).all(1)
            alive, start = alive[keep], start[:, :, keep]
            pattern, norms = pattern[:, :, keep], norms[keep]
        last = pattern[:, :, :, -1].permute(2, 3, 0, 1) / norms[:, -1, None, None, None]
        return alive, last

    def craft(self, data: ImageData, ctx: CraftContext) -> Poison:
        channels, height, width = data.image_shape
        coefficients = self.coefficients(data.num_classes, channels, ctx.device).to(ctx.device)
        generator = torch.Generator().manual_seed(self.seed + 1)
        delta = torch.empty(len(data.y_train), channels, height, width)
        for start in range(0, len(data.y_train), GENERATE_BATCH):
            labels = data.y_train[start : start + GENERATE_BATCH]
            signal = torch.randn(
                height + CROP, width + CROP, len(labels), channels, generator=generator
            ).to(ctx.device)
            coef = coefficients[labels.to(ctx.device)].permute(2, 3, 0, 1).contiguous()
            pattern = ar_fill(signal, coef)[CROP:, CROP:].permute(2, 3, 0, 1)  # N × C × H × W
            norms = pattern.square().sum((1, 2, 3)).sqrt()
            usable = torch.isfinite(norms) & (norms > 0)
            if not bool(usable.all()):
                bad = int(labels[~usable.cpu()][0])
                raise UebenchError(
                    f"ar: the AR process of class {bad} diverged on this image size; "
                    "try another seed or a lower norm_bound"
                )
            delta[start : start + len(labels)] = (
                pattern * (self.radius / norms).view(-1, 1, 1, 1)
            ).cpu()
        meta = {"form": "sample", "min_response": self.response_threshold(data.num_classes)}
        return Poison(delta, torch.arange(len(data.y_train)), self.threat_model(), meta)


def random_coefficients(count: int, channels: int, generator: torch.Generator) -> torch.Tensor:
    """``count`` candidate coefficient sets (count × C × 3 × 3), as the paper draws them:
    Gaussian, 0 at the generated pixel, each channel's entries divided by their sum."""
    coef = torch.randn(count, channels, 3, 3, generator=generator)
    coef[..., 2, 2] = 0
    return coef / coef.sum((-2, -1), keepdim=True)


def ar_fill(signal: torch.Tensor, coef: torch.Tensor) -> torch.Tensor:
    """Run AR processes over ``signal`` in place and return it.

    ``signal`` is laid out pixel-major, H × W × (series...), and ``coef`` is 3 × 3 ×
    (series...), or broadcastable to it: each recursion step then reads and writes one
    contiguous block of all series (images, trials, channels) at once, where a series-major
    layout would touch one strided value per series.  Every pixel at row ≥ 2 and column ≥ 2,
    in raster order, becomes the coefficient-weighted sum of its 3×3 window, the window's
    bottom-right entry (the pixel itself) having weight 0.  The part from the two rows above is
    vectorized over the row; the two left neighbours make the rest a recursion along the row.
    """
    height, width = signal.shape[:2]
    # Broadcasting inside an in-place op costs several times a same-shape one: expand once.
    coef = coef.expand(3, 3, *signal.shape[2:]).contiguous()
    left2, left1 = coef[2, 0], coef[2, 1]
    for i in range(2, height):
        above = coef[0, 0] * signal[i - 2, : width - 2]
        for dr, dc in ((0, 1), (0, 2), (1, 0), (1, 1), (1, 2)):
            above.addcmul_(coef[dr, dc], signal[i - 2 + dr, dc : dc + width - 2])
        row = signal[i]
        for j in range(2, width):
            torch.addcmul(above[j - 2], left2, row[j - 2], out=row[j])
            row[j].addcmul_(left1, row[j - 1])
    return signal


def matched_filters(coef: torch.Tensor) -> torch.Tensor:
    """Each process's matched filter (K × C × 3 × 3): its coefficients with −1 at the generated
    pixel, so that convolving one of its patterns gives 0."""
    filters = coef.clone()
    filters[..., 2, 2] = -1
    return filters


def pattern_windows(patterns: torch.Tensor) -> torch.Tensor:
    """Every 3×3 window of every pattern (patterns × positions × (C·3·3)), in float64 where
    the device has it, so responses compare with the threshold clear of TF32 and the like."""
    windows = F.unfold(patterns.to(exact_dtype(patterns.device)), 3)
    return windows.transpose(1, 2).contiguous()


def filter_response(windows: torch.Tensor, filters: torch.Tensor) -> torch.Tensor:
    """The paper's response of each filter to each pattern (patterns × filters): the sum of
    the positive part of their valid convolution, summed over channels.

    One matrix product with the unfolded windows (:func:`pattern_windows`, computed once per
    batch) rather than ``conv2d``: the search adds one filter at a time, and a one-filter
    convolution is a slow case for convolution kernels.
    """
    count, positions, size = windows.shape
    response = windows.new_zeros(count, len(filters))
    if not count or not len(filters):
        return response
    flat = filters.to(windows.dtype).flatten(1).T  # (C·3·3) × filters, the order unfold uses
    step = max(1, RESPONSE_ELEMENTS // (positions * len(filters)))
    for start in range(0, count, step):
        chunk = windows[start : start + step]
        products = (chunk.reshape(-1, size) @ flat).view(len(chunk), positions, -1)
        response[start : start + step] = F.relu(products).sum(1)
    return response


def exact_dtype(device: torch.device | str) -> torch.dtype:
    """float64, or float32 on devices without it (Apple MPS)."""
    return torch.float32 if torch.device(device).type == "mps" else torch.float64
