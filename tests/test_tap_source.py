"""TAP's source model and augmentation as the official code has them: the official lr
milestones, the mean-filled sub-pixel shift, and a whitening fitted to what the source sees,
for every combination of source (with and without a fitted whitening) and recipe."""

import pytest
import torch
import torch.nn.functional as F
from uebench.methods.targeted_adversarial import (
    Normalized,
    channel_stats,
    differentiable_shift_and_flip,
    official_milestones,
    official_source,
)

from uebench.crafting import start_crafting, trained_source
from uebench.data import to_float
from uebench.datasets import load_dataset
from uebench.method import CraftContext
from uebench.training import TrainConfig

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def data():
    return load_dataset("cluttered-digits", None, 200, 50, seed=0)


def test_official_milestones_are_pythons_floor_divisions():
    # lhfowl/adversarial_poisons, village/clients/training.py: epochs // 2.667, // 1.6, // 1.142
    assert official_milestones(40) == [14, 24, 35]
    # Its comment says 160 epochs drop at 60, 100, 140; Python's floats give 59, 99, 140.
    assert official_milestones(160) == [59, 99, 140]


def test_the_shift_uncovers_the_mean_colour_not_black():
    mean = torch.tensor([0.2, 0.5, 0.8])
    shift = differentiable_shift_and_flip(mean)
    flat = mean.view(1, 3, 1, 1).expand(4, 3, 16, 16).clone()
    assert torch.allclose(shift(flat), flat, atol=1e-5)  # a mean-coloured image stays one
    black = torch.zeros(64, 3, 16, 16)
    shifted = shift(black)
    # Uncovered border pixels take the mean (up to bilinear mixing with the image's edge).
    corner = shifted[..., 0, 0].max(0).values
    assert (corner > 0.5 * mean).all() and float(shifted.amin()) > -1e-6


def whitened_variance(model: torch.nn.Module, seen: torch.Tensor) -> float:
    """The mean variance of the whitening layer's first half of outputs on ``seen``, the
    images as the network receives them (1 when the filters were fitted to them)."""
    whiten = model.whiten
    half = whiten.weight.shape[0] // 2
    with torch.no_grad():
        out = F.conv2d(seen, whiten.weight[:half], whiten.bias[:half])
    return float(out.transpose(0, 1).flatten(1).var(1).mean())


@pytest.mark.parametrize("source", ["airbench:width=4", "smallcnn:width=4"])
@pytest.mark.parametrize("recipe", ["victim", "official"])
def test_the_source_sees_what_its_whitening_was_fitted_to(data, source, recipe):
    ctx = CraftContext(CPU, TrainConfig(epochs=1, batch_size=32), False, None)
    train_source = official_source if recipe == "official" else trained_source
    opening = start_crafting(
        data, ctx, seed=0, source=source, source_epochs=0, train_source=train_source
    )
    model = opening.model
    images = to_float(data.x_train)
    if recipe == "official":
        assert isinstance(model, Normalized)
        mean, std = channel_stats(data)
        assert torch.allclose(model.mean.flatten(), mean) and torch.allclose(
            model.std.flatten(), std
        )
        network, seen = model.model, model.normalize(images)
    else:
        network, seen = model, images
    if source.startswith("airbench"):
        # Fitted to the images it is fed: unit variance along the whitened directions (not the
        # 1/std² ≈ 10× that normalized images give filters fitted in [0, 1]).
        assert 0.7 < whitened_variance(network, seen) < 1.3
    else:
        assert not hasattr(network, "whiten")  # nothing to fit: it sees what it trains on
    with torch.no_grad():
        assert torch.isfinite(model(images[:8])).all()
