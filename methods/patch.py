"""``emin-patch``: class-wise error-minimizing noise on a P×P patch at a random place (App. F).

While crafting, every image of a class carries its class's patch at a fresh random location on
every source-model step and every noise step; the noise step is Algorithm 1's, taken on the
window each image's patch occupies, and a class's patch becomes the mean of its images' updates.
The published poison pastes the class's patch at one random (seeded) location per image.
"""

from __future__ import annotations

import torch

from uebench.crafting import alternate, class_mean, minimize_error, start_crafting
from uebench.data import ImageData
from uebench.errors import UebenchError
from uebench.method import CraftContext, Method, check_eps, check_fraction
from uebench.poison import Poison


def _window_index(
    top: torch.Tensor, left: torch.Tensor, size: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Advanced-index triples selecting each image's size×size window (N×P×P each)."""
    span = torch.arange(size, device=top.device)
    images = torch.arange(len(top), device=top.device).view(-1, 1, 1)
    rows = (top.view(-1, 1, 1) + span.view(1, -1, 1)).expand(-1, size, size)
    cols = (left.view(-1, 1, 1) + span.view(1, 1, -1)).expand(-1, size, size)
    return images.expand(-1, size, size), rows, cols


def place_patches(
    patches: torch.Tensor, top: torch.Tensor, left: torch.Tensor, height: int, width: int
) -> torch.Tensor:
    """N×C×H×W zeros with patch n (N×C×P×P) pasted at (top[n], left[n])."""
    n, channels, size, _ = patches.shape
    out = patches.new_zeros(n, height, width, channels)
    out[_window_index(top, left, size)] = patches.permute(0, 2, 3, 1)
    return out.permute(0, 3, 1, 2)


def crop_windows(x: torch.Tensor, top: torch.Tensor, left: torch.Tensor, size: int) -> torch.Tensor:
    """The size×size window of each image at (top[n], left[n]), N×C×P×P."""
    return x.permute(0, 2, 3, 1)[_window_index(top, left, size)].permute(0, 3, 1, 2)


class PatchErrorMinimizing(Method):
    """Class-wise error-minimizing noise confined to a random ``size``×``size`` patch."""

    crafts_by_gradient = True

    def __init__(
        self,
        *,
        size: int = 16,
        eps: float = 8 / 255,
        steps: int = 1,
        alpha: float | None = None,
        model_steps: int = 10,
        stop_error: float = 0.1,
        subset: float = 0.2,
        max_rounds: int = 100,
        lr: float = 0.1,
        batch_size: int = 128,
        source: str = "resnet18",
        seed: int = 0,
    ) -> None:
        if size < 1:
            raise UebenchError(f"emin-patch size must be at least 1 pixel, got {size}")
        self.size = size
        self.eps = check_eps(eps)
        self.steps = steps
        self.alpha = alpha if alpha is not None else eps / 10
        self.model_steps = model_steps
        self.stop_error = stop_error
        self.subset = check_fraction("subset", subset)
        self.max_rounds = max_rounds
        self.lr = lr
        self.batch_size = batch_size
        self.source = source
        self.seed = seed

    def craft(self, data: ImageData, ctx: CraftContext) -> Poison:
        _, height, width = data.image_shape
        if self.size > min(height, width):
            raise UebenchError(
                f"emin-patch size {self.size} is larger than the {height}×{width} images"
            )
        opening = start_crafting(data, ctx, seed=self.seed, source=self.source, subset=self.subset)
        generator, device, model = opening.generator, opening.device, opening.model
        x, y = opening.x, opening.y
        source = opening.source_steps(self.lr, self.batch_size)
        patches = torch.zeros(
            data.num_classes, data.image_shape[0], self.size, self.size, device=device
        )

        def corners(count: int) -> tuple[torch.Tensor, torch.Tensor]:
            return self._corners(count, data.image_shape, generator, device)

        def noise_of(index: torch.Tensor) -> torch.Tensor:
            return place_patches(patches[y[index]], *corners(len(index)), height, width)

        def update_noise(index: torch.Tensor) -> None:
            top, left = corners(len(index))
            placed = place_patches(patches[y[index]], top, left, height, width)
            updated = minimize_error(
                model,
                x[index],
                y[index],
                placed,
                eps=self.eps,
                alpha=self.alpha,
                steps=self.steps,
            )
            # Pixels outside a patch stay zero (their gradient is discarded with the window).
            windows = crop_windows(updated, top, left, self.size)
            patches.copy_(class_mean(patches, windows, y[index]).clamp_(-self.eps, self.eps))

        rounds, error = alternate(
            source,
            x,
            y,
            noise_of,
            update_noise,
            model_steps=self.model_steps,
            stop_error=self.stop_error,
            max_rounds=self.max_rounds,
            bar=ctx.bar(self.max_rounds, f"emin-patch:{self.size}"),
        )
        return self._poison(patches, data, rounds, error, opening.seconds())

    def _corners(
        self,
        count: int,
        image_shape: tuple[int, int, int],
        draw: torch.Generator,
        device: torch.device | str,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Top and left corners of ``count`` patches at random places inside the images."""
        _, height, width = image_shape
        top = torch.randint(0, height - self.size + 1, (count,), generator=draw)
        left = torch.randint(0, width - self.size + 1, (count,), generator=draw)
        return top.to(device), left.to(device)

    def _poison(
        self, patches: torch.Tensor, data: ImageData, rounds: int, error: float, seconds: float
    ) -> Poison:
        """Each training image's class patch at a random place (drawn from its own seed, apart
        from crafting's draws), with what crafting measured."""
        _, height, width = data.image_shape
        count = len(data.y_train)
        draw = torch.Generator().manual_seed(self.seed + 1)
        top, left = self._corners(count, data.image_shape, draw, "cpu")
        bank = place_patches(patches.cpu()[data.y_train], top, left, height, width)
        meta = {
            "form": "class-patch",
            "patch_size": self.size,
            "class_patches_sha": _digest(patches.cpu()),
            "rounds": rounds,
            "final_error": error,
            "converged": error < self.stop_error,
            "craft_seconds": seconds,
        }
        return Poison(bank.clamp(-self.eps, self.eps), torch.arange(count), self.eps, meta)


def _digest(tensor: torch.Tensor) -> str:
    import hashlib

    return hashlib.sha256(tensor.numpy().tobytes()).hexdigest()[:16]
