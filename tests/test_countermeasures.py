"""Countermeasure plugins: what each hook does to batches, datasets and epoch selection."""

from __future__ import annotations

import pytest
import torch

from uebench.countermeasure import Composed, EpochStats, TrainSet, build_countermeasure
from uebench.errors import UebenchError
from uebench.registry import DEFENSES

K = 5


def constant_batch(n: int = 40, side: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """Image i is filled with the value (label_i + 1) / 10, so mixing is readable from pixels."""
    torch.manual_seed(0)
    y = torch.arange(n) % K
    x = ((y.float() + 1) / 10).view(-1, 1, 1, 1).expand(n, 3, side, side).contiguous()
    return x, y


def trainset(n: int = 100, poisoned_share: float = 1.0) -> TrainSet:
    generator = torch.Generator().manual_seed(1)
    clean = torch.randint(0, 256, (n, 3, 8, 8), dtype=torch.uint8, generator=generator)
    y = torch.arange(n) % K
    poisoned = torch.arange(n) < round(poisoned_share * n)
    x = clean.clone()
    x[poisoned] = 255 - x[poisoned]  # an obvious "noise" to tell poisoned from clean copies
    return TrainSet(x, y, clean, poisoned, num_classes=K)


def prepared(spec: str, train: TrainSet | None = None):
    measure = build_countermeasure(spec)
    train = measure.prepare(train or trainset(), torch.Generator().manual_seed(0))
    return measure, train


def test_every_builtin_countermeasure_is_registered():
    expected = {"none", "cutout", "mixup", "cutmix", "autoaugment", "advtrain", "earlystop"}
    expected |= {"partial", "jpeg", "grayscale", "uniform-noise"}
    assert expected <= set(DEFENSES.names())


@pytest.mark.parametrize("spec", ["cutout", "mixup", "cutmix", "autoaugment", "uniform-noise"])
def test_augmentations_change_batches_but_keep_shapes(spec):
    measure, _ = prepared(spec)
    x, y = constant_batch()
    out, labels = measure.augment(x.clone(), y)
    assert out.shape == x.shape and out.dtype == x.dtype
    assert float(out.min()) >= 0 and float(out.max()) <= 1
    assert not torch.equal(out, x)
    assert len(labels) == len(y)


def test_cutout_zeroes_one_square_of_the_given_length():
    measure = DEFENSES.build("cutout:length=8")
    x = torch.ones(64, 3, 32, 32)
    out, y = measure.augment(x, torch.zeros(64, dtype=torch.long))
    zeros = (out[:, 0] == 0).sum((1, 2))
    assert int(zeros.max()) == 64 and int(zeros.min()) > 0  # 8×8 inside, clipped at borders
    assert torch.equal(out[:, 0] == 0, out[:, 2] == 0)  # the same square on every channel
    assert torch.equal(y, torch.zeros(64, dtype=torch.long))


@pytest.mark.parametrize("spec", ["mixup", "cutmix"])
def test_mixing_labels_match_the_mixed_pixels(spec):
    measure, _ = prepared(spec)
    x, y = constant_batch()
    out, soft = measure.augment(x, y)
    assert soft.shape == (len(y), K)
    assert torch.allclose(soft.sum(1), torch.ones(len(y)))
    # Every image is a blend of constant images: its mean pixel is the label-weighted value.
    values = (torch.arange(K).float() + 1) / 10
    assert torch.allclose(out.mean((1, 2, 3)), soft @ values, atol=1e-4)
    assert (soft.max(1).values < 1).any()  # something was actually mixed


def test_mixing_twice_is_refused():
    measure, _ = prepared("mixup+cutmix")
    x, y = constant_batch()
    with pytest.raises(UebenchError, match="hard labels"):
        measure.augment(x, y)


def test_uniform_noise_stays_within_eps():
    measure = DEFENSES.build("uniform-noise:eps=4/255")
    x = torch.full((8, 3, 16, 16), 0.5)
    out, _ = measure.augment(x, torch.zeros(8, dtype=torch.long))
    assert float((out - x).abs().max()) <= 4 / 255 + 1e-6


def test_partial_poisons_exactly_the_requested_fraction():
    original = trainset(200)
    _, train = prepared("partial:rate=0.3", original)
    assert int(train.poisoned.sum()) == 60 == train.notes["poisoned_count"]
    indices = torch.tensor(train.notes["poisoned_indices"])
    assert torch.equal(torch.nonzero(train.poisoned).flatten(), indices)
    assert torch.equal(train.x[train.poisoned], original.x[train.poisoned])
    assert torch.equal(train.x[~train.poisoned], original.clean_x[~train.poisoned])
    _, again = prepared("partial:rate=0.3", original)
    assert torch.equal(again.poisoned, train.poisoned)  # seeded


@pytest.mark.parametrize("part", ["poisoned", "clean"])
def test_partial_can_train_on_one_part_only(part):
    original = trainset(200)
    _, train = prepared(f"partial:rate=0.3:part={part}", original)
    assert len(train.y) == (60 if part == "poisoned" else 140)
    assert bool(train.poisoned.all()) is (part == "poisoned")
    assert not train.poisoned.any() or part == "poisoned"


def test_partial_only_draws_from_images_that_had_noise():
    _, train = prepared("partial:rate=0.5", trainset(100, poisoned_share=0.4))
    assert int(train.poisoned.sum()) == 20
    assert bool(train.poisoned[40:].any()) is False


def test_earlystop_holds_out_clean_images_and_selects_by_validation():
    original = trainset(100)
    measure, train = prepared("earlystop:val_size=0.2", original)
    assert len(train.y) == 80 and len(train.y_val) == 20
    assert torch.bincount(train.y_val, minlength=K).tolist() == [4] * K  # stratified
    # Validation images are clean originals and are no longer in the training set.
    clean_rows = {tuple(img.flatten().tolist()) for img in original.clean_x}
    assert all(tuple(img.flatten().tolist()) in clean_rows for img in train.x_val)
    history = [
        EpochStats(epoch=e, train_loss=0, train_acc=0, test_acc=t, val_acc=v)
        for e, (t, v) in enumerate([(50, 40), (90, 60), (70, 80), (95, 70)], start=1)
    ]
    assert measure.select(history) == 2  # best validation, not the test peak at index 3


@pytest.mark.parametrize("spec", ["jpeg:quality=10", "grayscale"])
def test_dataset_filters_change_every_image_but_not_labels(spec):
    original = trainset(50)
    _, train = prepared(spec, original)
    assert train.x.dtype == torch.uint8 and train.x.shape == original.x.shape
    assert torch.equal(train.y, original.y)
    changed = (train.x != original.x).flatten(1).any(1)
    assert changed.float().mean() > 0.9


def test_grayscale_makes_channels_equal():
    _, train = prepared("grayscale")
    assert torch.equal(train.x[:, 0], train.x[:, 1]) and torch.equal(train.x[:, 1], train.x[:, 2])


def test_lower_jpeg_quality_loses_more():
    original = trainset(50)
    errors = {}
    for quality in (10, 90):
        _, train = prepared(f"jpeg:quality={quality}", original)
        errors[quality] = float((train.x.float() - original.x.float()).abs().mean())
    assert errors[10] > errors[90]


def test_advtrain_perturbs_within_eps_and_raises_the_loss():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, K))
    x = torch.rand(16, 3, 8, 8)
    y = torch.arange(16) % K
    measure = DEFENSES.build("advtrain:eps=8/255:steps=5")
    adversarial = measure.perturb(model, x, y)
    assert float((adversarial - x).abs().max()) <= 8 / 255 + 1e-6
    assert float(adversarial.min()) >= 0 and float(adversarial.max()) <= 1
    loss = torch.nn.functional.cross_entropy
    assert loss(model(adversarial), y) > loss(model(x), y)


def test_advtrain_refuses_soft_labels():
    measure = build_countermeasure("mixup+advtrain")
    measure.prepare(trainset(), torch.Generator())
    x, y = constant_batch(8, 8)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, K))
    images, labels = measure.augment(x, y)
    with pytest.raises(UebenchError, match="hard labels"):
        measure.perturb(model, images, labels)


def test_composition_rejects_two_owners_of_one_hook():
    with pytest.raises(UebenchError, match="select"):
        build_countermeasure("earlystop+earlystop")
    assert isinstance(build_countermeasure("cutmix+earlystop"), Composed)


@pytest.mark.parametrize(
    "spec, message",
    [
        ("cutout:length=0", "length"),
        ("partial:rate=1.5", "rate"),
        ("partial", "needs option 'rate'"),
        ("jpeg:quality=0", "quality"),
        ("advtrain:eps=8", "8/255"),
        ("cutmixx", "valid: advtrain"),
    ],
)
def test_bad_countermeasure_specs_fail_in_one_line(spec, message):
    with pytest.raises(UebenchError, match=message) as error:
        build_countermeasure(spec)
    assert "\n" not in str(error.value)
