"""``lsp``: linear-separable synthetic perturbations (Yu et al., "Availability Attacks Create
Shortcuts", KDD 2022; official code dayu11/Availability-Attacks-Create-Shortcuts,
``synthetic_perturbations/cifar_train.py``).

Algorithm (no model).  Synthetic points, one per training image, are drawn from a
Gaussian-cluster generator with one cluster per class — scikit-learn's ``make_classification``,
as in the paper: class means on the vertices of a hypercube of side 2·``class_sep`` = 20, each
class's points a standard normal pushed through a random linear map (within-class spread a few
units), so the classes are far apart and linearly separable.  Each image of class k gets its
own point of cluster k (sample-wise noise, not one pattern per class).  A point has one value
per patch and channel: it is reshaped to a grid of ⌈H/patch⌉ × ⌈W/patch⌉ patches × C
(row, column, channel order, as the code reshapes it), every value repeated over its
patch × patch block (nearest upsampling), cropped to H × W, and scaled to L2 norm ``radius``
over all C × H × W values.

Defaults (the paper's CIFAR-10 settings): ``patch=8`` on 32 × 32 images (a 4 × 4 grid, 48
features), ``class_sep=10``, and ``radius = 6/255 · √3072 ≈ 1.304``: the code's default
``--eps 6`` is an L∞-equivalent strength turned into an L2 norm by ``√(ε² · C·H·W)``; the
APBench reimplementation (lafeat/apbench ``lsp_poisons.py``) uses the same 6/255.  The ISS
table (liuzrcc/ImageShortcutSqueezing) labels LSP ``L2 = 1.0``; ``lsp:radius=1`` gives that
budget.

Threat model: L2 with budget ``radius`` per image.  On other image sizes the radius is kept
as given, per image (the code's formula would give 6/255 · √(C·H·W); pass that as
``radius`` to follow it).  ``patch`` unset means a 4 × 4 grid on any image size, ⌈H/4⌉ × ⌈W/4⌉
pixels per patch (8 on CIFAR; APBench used 32-pixel patches on 224-pixel ImageNet, a 7 × 7
grid: ``lsp:patch=32``).

Departures: the code draws as many points as there are images and takes, per class, the first
points with that label, which breaks when a class has more images than points (it doubles the
count for SVHN to get by); here the generator draws ``classes × (largest class size)`` points,
the same number per class, and each class takes its first points in draw order, so any class
balance works.  The code's patch grid is fixed to 32-pixel, 3-channel images and its feature
count is wrong when the patch does not divide the image; here both follow the data.  The code
truncates the published image to 8 bits; here the threat model rounds to nearest and, where
that would leave the L2 ball, toward the original image.
"""

from __future__ import annotations

import math

import torch
from sklearn.datasets import make_classification

from uebench.data import ImageData
from uebench.errors import UebenchError
from uebench.method import CraftContext, Method
from uebench.poison import Poison
from uebench.threat import ThreatModel

#: The code's default strength, 6/255 in L∞ terms, as an L2 norm on 32 × 32 × 3.
CIFAR_RADIUS = 6 / 255 * math.sqrt(3 * 32 * 32)
#: Patches per image side when ``patch`` is not given (the paper's 8-pixel patches on 32 px).
GRID = 4


class LinearSeparable(Method):
    """Per image, a point of its class's Gaussian cluster, patch-upsampled, in an L2 ball."""

    def __init__(
        self,
        *,
        radius: float = CIFAR_RADIUS,
        patch: int | None = None,
        class_sep: float = 10.0,
        seed: int = 0,
    ) -> None:
        if not 0 < radius < math.inf:
            raise UebenchError(f"lsp: radius must be a positive L2 norm, got {radius:g}")
        if patch is not None and patch < 1:
            raise UebenchError(f"lsp: patch must be at least 1 pixel, got {patch}")
        if not 0 < class_sep < math.inf:
            raise UebenchError(f"lsp: class_sep must be positive, got {class_sep:g}")
        self.radius = radius
        self.patch = patch
        self.class_sep = class_sep
        self.seed = seed

    def threat_model(self) -> ThreatModel:
        return ThreatModel.l2(self.radius)

    def patch_size(self, height: int, width: int) -> tuple[int, int]:
        """Pixels per patch, rows × columns."""
        if self.patch is not None:
            return self.patch, self.patch
        return math.ceil(height / GRID), math.ceil(width / GRID)

    def points(self, data: ImageData) -> torch.Tensor:
        """Each training image's synthetic point (N × features, float64), from the generator."""
        channels, height, width = data.image_shape
        patch_h, patch_w = self.patch_size(height, width)
        features = math.ceil(height / patch_h) * math.ceil(width / patch_w) * channels
        classes = data.num_classes
        if classes > 2**features:  # the generator puts each class on its own hypercube vertex
            raise UebenchError(
                f"lsp: {features} features per image cannot hold {classes} class clusters; "
                "use a smaller patch"
            )
        counts = torch.bincount(data.y_train, minlength=classes)
        per_class = max(int(counts.max()), 1)
        points, labels = make_classification(
            n_samples=classes * per_class,
            n_features=features,
            n_informative=features,
            n_redundant=0,
            n_repeated=0,
            n_classes=classes,
            n_clusters_per_class=1,
            class_sep=self.class_sep,
            flip_y=0.0,
            random_state=self.seed,
        )
        # Group the points by class, draw order kept, then give the r-th image of class k (in
        # dataset order) the r-th point of class k.
        by_class = torch.from_numpy(points)[torch.argsort(torch.from_numpy(labels), stable=True)]
        order = torch.argsort(data.y_train, stable=True)
        first = torch.cumsum(counts, 0) - counts
        rank = torch.empty_like(order)
        rank[order] = torch.arange(len(order)) - first[data.y_train[order]]
        return by_class[data.y_train * per_class + rank]

    def craft(self, data: ImageData, ctx: CraftContext) -> Poison:
        channels, height, width = data.image_shape
        patch_h, patch_w = self.patch_size(height, width)
        rows, cols = math.ceil(height / patch_h), math.ceil(width / patch_w)
        points = self.points(data).to(ctx.device, torch.float32)
        grid = points.view(-1, rows, cols, channels).permute(0, 3, 1, 2)
        noise = grid.repeat_interleave(patch_h, 2).repeat_interleave(patch_w, 3)
        noise = noise[:, :, :height, :width]
        noise = noise * (self.radius / noise.flatten(1).norm(dim=1)).view(-1, 1, 1, 1)
        meta = {"form": "sample", "patch": [patch_h, patch_w]}
        return Poison(noise.cpu(), torch.arange(len(data.y_train)), self.threat_model(), meta)
