"""The field's countermeasures (bdr, blur, ueraser, orthoproj, coin): what each does to images,
that it is seeded, and that each runs in a grid through the CLI."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from scipy.ndimage import map_coordinates
from uebench.attacks_defenses.orthogonal_projection import fit_linear_classifier, linear_accuracy
from uebench.attacks_defenses.pixel_displacement import displace_pixels

from uebench.cli import main
from uebench.countermeasure import Composed, Countermeasure, TrainSet, build_countermeasure
from uebench.data import to_float
from uebench.errors import UebenchError
from uebench.registry import DEFENSES
from uebench.training import TrainConfig, train

FIELD = ["bdr", "blur", "ueraser", "orthoproj", "coin"]


def uint8_trainset(n: int = 60, shape: tuple[int, ...] = (3, 8, 8), k: int = 3) -> TrainSet:
    generator = torch.Generator().manual_seed(3)
    x = torch.randint(0, 256, (n, *shape), dtype=torch.uint8, generator=generator)
    y = torch.arange(n) % k
    return TrainSet(x, y, x.clone(), torch.ones(n, dtype=torch.bool), num_classes=k)


def shortcut_trainset(amplitude: int, n: int = 1000, k: int = 5) -> TrainSet:
    """Random backgrounds (no class information) plus one ±``amplitude`` sign pattern per class:
    a linearly separable class-wise shortcut, as LSP or class-wise noise make."""
    generator = torch.Generator().manual_seed(0)
    shape = (3, 6, 6)
    y = torch.arange(n) % k
    background = torch.randint(64, 193, (n, *shape), generator=generator)
    patterns = (torch.randint(0, 2, (k, *shape), generator=generator) * 2 - 1) * amplitude
    x = (background + patterns[y]).to(torch.uint8)
    return TrainSet(
        x, y, background.to(torch.uint8), torch.ones(n, dtype=torch.bool), num_classes=k
    )


def test_field_countermeasures_are_registered():
    assert set(FIELD) <= set(DEFENSES.names())


@pytest.mark.parametrize(
    "spec, message",
    [
        ("bdr:bits=0", "bits"),
        ("blur:kernel_size=4", "odd"),
        ("blur:sigma=0", "sigma"),
        ("ueraser:variant=huge", "variant"),
        ("ueraser:repeats=0", "repeats"),
        ("ueraser:adv_fraction=1.5", "adv_fraction"),
        ("orthoproj:epochs=0", "epochs"),
        ("coin:alpha=0", "alpha"),
    ],
)
def test_bad_options_fail_in_one_line(spec, message):
    with pytest.raises(UebenchError, match=message) as error:
        build_countermeasure(spec)
    assert "\n" not in str(error.value)


# --- bdr ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(3, 8, 8), (1, 5, 7)])
def test_bdr_keeps_two_bits_per_channel(shape):
    original = uint8_trainset(shape=shape)
    train = build_countermeasure("bdr").prepare(original, torch.Generator())
    assert train.x.dtype == torch.uint8 and train.x.shape == original.x.shape
    assert torch.equal(train.y, original.y) and train.notes["bdr_bits"] == 2
    for channel in range(shape[0]):
        levels = set(train.x[:, channel].unique().tolist())
        assert levels <= {0, 64, 128, 192} and len(levels) <= 4
    # the high bits survive: each value is its original with the low six bits masked off
    assert torch.equal(train.x, original.x - original.x % 64)


def test_bdr_bit_count_sets_the_levels():
    original = uint8_trainset(200)
    one = build_countermeasure("bdr:bits=1").prepare(original, torch.Generator())
    assert set(one.x.unique().tolist()) == {0, 128}
    eight = build_countermeasure("bdr:bits=8").prepare(original, torch.Generator())
    assert torch.equal(eight.x, original.x)


# --- blur --------------------------------------------------------------------------------------


def high_frequency_energy(x: torch.Tensor) -> float:
    """Energy of differences between neighbouring pixels (what a low-pass filter removes)."""
    return float(x.diff(dim=-1).square().mean() + x.diff(dim=-2).square().mean())


@pytest.mark.parametrize("shape", [(8, 3, 16, 16), (8, 1, 6, 10)])
def test_blur_lowers_high_frequency_energy(shape):
    torch.manual_seed(0)
    x = torch.rand(shape)
    out, _ = build_countermeasure("blur:sigma=1").augment(x, torch.zeros(8, dtype=torch.long))
    assert out.shape == x.shape and out.dtype == x.dtype
    assert float(out.min()) >= 0 and float(out.max()) <= 1
    assert high_frequency_energy(out) < 0.5 * high_frequency_energy(x)
    assert torch.allclose(out.mean((2, 3)), x.mean((2, 3)), atol=0.05)  # low frequencies stay


def test_blur_defaults_are_the_fields_near_identity_setting():
    # ISS/APBench's GaussianBlur(3, sigma=0.1): the off-centre weights are ~2e-22.
    x = torch.rand(4, 3, 8, 8)
    out, _ = build_countermeasure("blur").augment(x, torch.zeros(4, dtype=torch.long))
    assert torch.allclose(out, x, atol=1e-6)


def test_blur_narrows_a_kernel_wider_than_the_image():
    x = torch.rand(2, 1, 3, 9)
    out, _ = build_countermeasure("blur:kernel_size=7:sigma=2").augment(x, torch.zeros(2))
    assert out.shape == x.shape and high_frequency_energy(out) < high_frequency_energy(x)


# --- coin --------------------------------------------------------------------------------------


def test_pixel_displacement_matches_scipy_bilinear_wrap():
    """The official COIN transform is scipy's map_coordinates(order=1, mode='wrap') per image."""
    generator = torch.Generator().manual_seed(0)
    x = torch.rand(3, 2, 5, 7, generator=generator)
    dy = (torch.rand(3, 5, 7, generator=generator) * 2 - 1) * 3.2
    dx = (torch.rand(3, 5, 7, generator=generator) * 2 - 1) * 3.2
    ours = displace_pixels(x, dy, dx)
    rows, cols = np.meshgrid(np.arange(5), np.arange(7), indexing="ij")
    for i in range(3):
        coords = [rows + dy[i].numpy(), cols + dx[i].numpy()]
        for c in range(2):
            expected = map_coordinates(x[i, c].double().numpy(), coords, order=1, mode="wrap")
            np.testing.assert_allclose(ours[i, c].numpy(), expected, atol=1e-5)


@pytest.mark.parametrize("shape", [(16, 3, 8, 8), (16, 1, 7, 12)])
def test_coin_moves_pixels_on_the_uint8_grid_and_is_seeded(shape):
    measure = build_countermeasure("coin")
    torch.manual_seed(0)
    x = torch.randint(0, 256, shape).float() / 255
    y = torch.arange(shape[0])
    torch.manual_seed(1)
    out, labels = measure.augment(x, y)
    assert out.shape == x.shape and out.dtype == x.dtype and torch.equal(labels, y)
    assert float(out.min()) >= 0 and float(out.max()) <= 1
    assert torch.allclose(out * 255, (out * 255).round(), atol=1e-3)  # quantised as the code does
    assert (out != x).float().mean() > 0.9
    torch.manual_seed(1)
    assert torch.equal(measure.augment(x, y)[0], out)
    assert not torch.equal(measure.augment(x, y)[0], out)  # fresh offsets every batch


def test_coin_keeps_flat_images_and_blends_only_nearby_pixels():
    measure = build_countermeasure("coin:alpha=0.5")
    flat = torch.full((4, 3, 8, 8), 100.0) / 255
    assert torch.equal(measure.augment(flat, torch.zeros(4))[0], flat)
    # a single bright pixel can only spread to neighbours within one pixel (α = 0.5 < 1)
    spot = torch.zeros(64, 1, 9, 9)
    spot[:, :, 4, 4] = 1
    out, _ = measure.augment(spot, torch.zeros(64))
    far = torch.ones(9, 9, dtype=torch.bool)
    far[3:6, 3:6] = False
    assert float(out[:, :, far].abs().max()) == 0 and float(out.sum()) > 0


# --- ueraser -----------------------------------------------------------------------------------


class BrightnessLoss(torch.nn.Module):
    """Logits (10·mean, 0): for label 0 the loss falls as the image gets brighter, so the
    max-loss augmentation of an image is its darkest draw.  Counts its forward passes."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        score = 10 * x.mean((1, 2, 3))
        return torch.stack([score, torch.zeros_like(score)], 1)


@pytest.mark.parametrize("shape", [(12, 3, 16, 16), (12, 1, 8, 12)])
def test_ueraser_trains_on_the_max_loss_draw(shape):
    measure = build_countermeasure("ueraser:repeats=4")
    model = BrightnessLoss()
    x = torch.rand(shape)
    y = torch.zeros(shape[0], dtype=torch.long)
    torch.manual_seed(5)
    chosen = measure.perturb(model, x, y)
    assert chosen.shape == x.shape and chosen.dtype == x.dtype and model.calls == 4
    assert float(chosen.min()) >= 0 and float(chosen.max()) <= 1
    torch.manual_seed(5)  # the same four draws again, by hand
    draws = torch.stack([measure.augmented(x) for _ in range(4)])
    losses = torch.stack([F.cross_entropy(model(d), y, reduction="none") for d in draws])
    expected = draws[losses.argmax(0), torch.arange(shape[0])]
    assert torch.equal(chosen, expected)
    assert torch.equal(losses.argmax(0), draws.mean((2, 3, 4)).argmin(0))  # the darkest draw
    assert (losses.argmax(0) != 0).any()  # not simply the first draw


@pytest.mark.parametrize(
    "spec, adversarial_epochs",
    [
        ("ueraser", [1]),
        ("ueraser:adv_fraction=0.3", [1, 2]),  # ⌈0.3 · 4⌉ = 2
        ("ueraser:variant=max", [1, 2, 3, 4]),
        ("ueraser:variant=lite", []),
    ],
)
def test_ueraser_stops_its_adversarial_part_on_schedule(spec, adversarial_epochs):
    measure = build_countermeasure(spec)
    model = BrightnessLoss()
    x, y = torch.rand(4, 3, 8, 8), torch.zeros(4, dtype=torch.long)
    used_model = []
    for epoch in range(1, 5):  # standard: the first ⌈0.25 · 4⌉ = 1 of 4 epochs
        measure.on_epoch_start(epoch, 4)
        before = model.calls
        out = measure.perturb(model, x, y)
        assert out.shape == x.shape and not torch.equal(out, x)  # augmented in every epoch
        if model.calls > before:
            assert model.calls - before == 5
            used_model.append(epoch)
    assert used_model == adversarial_epochs


def test_ueraser_follows_cutmix_soft_labels_but_not_advtrain():
    measure = build_countermeasure("cutmix+ueraser")
    measure.prepare(uint8_trainset(k=2), torch.Generator())
    x, y = measure.augment(torch.rand(8, 3, 8, 8), torch.arange(8) % 2)
    assert y.shape == (8, 2)  # soft labels reach the per-image loss
    assert measure.perturb(BrightnessLoss(), x, y).shape == x.shape
    with pytest.raises(UebenchError, match="perturb"):
        build_countermeasure("ueraser+advtrain")


def test_trainer_tells_composed_countermeasures_each_epoch():
    class Recorder(Countermeasure):
        def __init__(self) -> None:
            self.calls: list[tuple[int, int]] = []

        def on_epoch_start(self, epoch: int, epochs: int) -> None:
            self.calls.append((epoch, epochs))

    first, second = Recorder(), Recorder()
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 4 * 4, 2))
    x = torch.randint(0, 256, (8, 3, 4, 4), dtype=torch.uint8)
    composed = Composed([first, Countermeasure(), second])
    config = TrainConfig(epochs=3, batch_size=4)
    train(model, x, torch.arange(8) % 2, config, torch.device("cpu"), countermeasure=composed)
    assert first.calls == second.calls == [(1, 3), (2, 3), (3, 3)]


# --- orthoproj ---------------------------------------------------------------------------------


def test_orthoproj_removes_the_learned_class_directions():
    original = shortcut_trainset(amplitude=12)
    measure = build_countermeasure("orthoproj:batch_size=50:device=cpu")
    train = measure.prepare(original, torch.Generator().manual_seed(0))
    assert train.x.dtype == torch.uint8 and train.x.shape == original.x.shape
    assert torch.equal(train.y, original.y)
    assert train.notes["orthoproj_linear_acc"] > 90  # the shortcut is linearly separable
    basis = measure.basis
    assert torch.allclose(basis.T @ basis, torch.eye(5), atol=1e-5)
    along = lambda x: float((to_float(x).flatten(1) @ basis).norm())  # noqa: E731
    assert along(train.x) < 0.02 * along(original.x)  # only uint8 rounding is left
    # A linear model fitted afresh on the projected images finds much less of the shortcut.
    assert refit_accuracy(train) < refit_accuracy(original) - 40


def refit_accuracy(data: TrainSet) -> float:
    """Training accuracy of a fresh bias-free linear model fitted as orthoproj fits its own."""
    generator = torch.Generator().manual_seed(1)
    weights = fit_linear_classifier(
        data.x,
        data.y,
        5,
        epochs=20,
        lr=0.1,
        batch_size=50,
        generator=generator,
        device=torch.device("cpu"),
    )
    return linear_accuracy(data, weights)


def test_orthoproj_is_seeded_and_fits_any_image_shape():
    original = uint8_trainset(90, shape=(1, 6, 10), k=7)
    measure = build_countermeasure("orthoproj:device=cpu")
    first = measure.prepare(original, torch.Generator().manual_seed(0))
    again = measure.prepare(original, torch.Generator().manual_seed(0))
    other = measure.prepare(original, torch.Generator().manual_seed(1))
    assert first.x.shape == original.x.shape and torch.equal(first.x, again.x)
    assert not torch.equal(first.x, other.x)
    assert measure.basis.shape == (60, 7)


def test_orthoproj_refuses_more_classes_than_pixel_values():
    with pytest.raises(UebenchError, match="fewer classes"):
        build_countermeasure("orthoproj:device=cpu").prepare(
            uint8_trainset(40, shape=(1, 2, 2), k=4), torch.Generator()
        )


# --- every one in a grid -----------------------------------------------------------------------


def test_each_countermeasure_runs_in_a_grid(tmp_path, tiny_grid):
    defenses = "bdr,blur:sigma=1,ueraser,orthoproj:device=cpu,coin"
    argv = ["run", "--dataset", tiny_grid["dataset"], "--archs", tiny_grid["archs"][0]]
    argv += ["--methods", "random", "--defenses", defenses, "--epochs", "1", "--device", "cpu"]
    argv += ["--train-size", "200", "--test-size", "100", "--out", str(tmp_path), "--no-progress"]
    assert main(argv) == 0
    table = pd.read_csv(tmp_path / "results.csv")
    assert sorted(table["defense"]) == sorted(defenses.split(","))
    assert table["final_acc"].between(0, 100).all()
    notes = {}
    for path in (tmp_path / "cells").glob("*.json"):
        record = json.loads(path.read_text())
        notes.update(record["countermeasure_notes"])
    assert notes["bdr_bits"] == 2 and 0 <= notes["orthoproj_linear_acc"] <= 100
