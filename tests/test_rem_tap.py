"""``rem`` (robust error-minimizing) and ``tap`` (targeted adversarial poisoning) on tiny data.

Budget and pixel range, determinism under a seed, 3 and 100 classes and a 1-channel 12-px image,
TAP's pull toward the target classes, REM's inner maximization, and one CLI run of each.
"""

import math

import pandas as pd
import pytest
import torch
import torch.nn.functional as F
import torchattacks
from torch.nn.modules.module import register_module_forward_pre_hook

from uebench.api import craft
from uebench.crafting import chunked_input_gradient
from uebench.data import ImageData, to_float
from uebench.errors import UebenchError
from uebench.execution import Execution
from uebench.method import CraftContext
from uebench.registry import ARCHS
from uebench.training import TrainConfig, train

SOURCE = "source=[smallcnn:width=4]"
QUICK = {
    "rem": f"rem:train_steps=3:steps=2:rho_steps=1:samples=2:batch_size=32:{SOURCE}",
    "tap": f"tap:steps=2:restarts=2:batch_size=32:source_epochs=1:{SOURCE}",
}
TRAIN = TrainConfig(epochs=1, batch_size=32)


def synthetic(
    num_classes: int, per_class: int, channels: int = 3, side: int = 8, contrast: float = 0.1
) -> ImageData:
    """Images of a per-class colour plus pixel noise: learnable by a width-4 CNN in seconds,
    under any crop and flip, with margins an 8/255 perturbation can cross."""
    generator = torch.Generator().manual_seed(0)
    colours = torch.rand(num_classes, channels, 1, 1, generator=generator)

    def split(count: int) -> tuple[torch.Tensor, torch.Tensor]:
        y = torch.arange(num_classes).repeat_interleave(count)
        noise = 0.05 * torch.randn(len(y), channels, side, side, generator=generator)
        x = 0.5 + contrast * (2 * colours[y] - 1) + noise
        return (x.clamp(0, 1) * 255).round().to(torch.uint8), y

    x_train, y_train = split(per_class)
    x_test, y_test = split(max(1, per_class // 2))
    return ImageData(
        "synthetic", x_train, y_train, x_test, y_test, tuple(f"c{i}" for i in range(num_classes))
    )


SHAPES = {
    "3 classes": dict(num_classes=3, per_class=20),
    "100 classes": dict(num_classes=100, per_class=2),
    "1-channel 12 px": dict(num_classes=3, per_class=20, channels=1, side=12),
}


@pytest.mark.parametrize("shape", sorted(SHAPES))
@pytest.mark.parametrize("method", sorted(QUICK))
def test_noise_stays_in_the_eps_ball_and_the_pixel_range(method, shape):
    data = synthetic(**SHAPES[shape])
    eps = 6 / 255 if "1-channel" in shape else 8 / 255
    poison = craft(f"{QUICK[method]}:eps={eps}", data, device="cpu", progress=False, train=TRAIN)
    assert poison.eps == eps
    assert poison.delta.abs().max() <= eps + 1e-6
    perturbed = to_float(data.x_train) + poison.delta
    assert perturbed.min() >= -1e-6 and perturbed.max() <= 1 + 1e-6
    change = (poison.apply(data.x_train).int() - data.x_train.int()).abs()
    assert change.max() <= math.floor(eps * 255 + 1e-4)
    assert change.float().mean() > 0.5  # most pixels moved, by about a level or more
    assert torch.equal(poison.rows, torch.arange(len(data.y_train)))
    assert poison.surrogate is not None and poison.surrogate.num_classes == data.num_classes
    if method == "tap":
        assert poison.meta["targets"] == [
            (k + 1) % data.num_classes for k in range(data.num_classes)
        ]


@pytest.mark.parametrize("method", sorted(QUICK))
def test_same_seed_same_poison_another_seed_another(method):
    data = synthetic(3, 20)
    run = lambda spec: craft(spec, data, device="cpu", progress=False, train=TRAIN)  # noqa: E731
    first, second = run(QUICK[method]), run(QUICK[method])
    assert torch.equal(first.delta, second.delta)
    assert not torch.equal(first.delta, run(f"{QUICK[method]}:seed=1").delta)


def test_tap_crafts_the_same_noise_with_its_gradient_in_chunks():
    data = synthetic(3, 20)  # 60 images: tap's batches of 32 and 28
    noise, sizes = {}, {}
    for execution in (Execution(), Execution(eval_chunk=16)):
        context = CraftContext(torch.device("cpu"), TRAIN, False, execution=execution)
        seen = sizes[execution.eval_chunk] = set()
        hook = register_module_forward_pre_hook(
            lambda _, inputs, seen=seen: seen.add(len(inputs[0]))
        )
        try:
            noise[execution.eval_chunk] = context.craft(QUICK["tap"], data).delta
        finally:
            hook.remove()
    assert 16 in sizes[16] and 12 in sizes[16]  # the batches went through in chunks
    assert 16 not in sizes[None]
    moved = (noise[None] - noise[16]).abs()
    assert float((moved > 1e-6).float().mean()) < 0.01  # a sign flip on a float tie, at most
    assert float(noise[None].abs().max()) > 1 / 255  # the noise is not empty


def test_tap_pushes_source_predictions_toward_the_target_classes():
    data = synthetic(3, 40)
    poison = craft(
        f"tap:eps=16/255:steps=20:alpha=2/255:restarts=1:{SOURCE}",
        data,
        device="cpu",
        progress=False,
        train=TrainConfig(epochs=10, batch_size=32, lr=0.1),
    )
    source = poison.surrogate.build()
    target = (data.y_train + 1) % 3
    with torch.no_grad():
        on_clean = source(to_float(data.x_train)).argmax(1)
        on_poison = source(to_float(poison.apply(data.x_train))).argmax(1)
    clean_rate = float((on_clean == target).float().mean())
    poison_rate = float((on_poison == target).float().mean())
    # Measured 1.00 against 0.00 on the clean images; chance is 1/3.  The budget is twice the
    # paper's: at 8/255 this tiny source's margins leave the rate between 0.17 and 0.64 by seed
    # (seeds 0-3), at 16/255 between 0.66 and 1.00 (seeds 0-4).
    assert poison_rate > 1 / 3 + 0.15
    assert poison_rate > clean_rate + 0.3
    assert poison.meta["target_rate"] == pytest.approx(poison_rate, abs=0.05)  # float vs uint8


def test_rem_noise_resists_an_adversary_that_plain_error_minimizing_noise_does_not():
    """The inner max at work: against the same trained model, noise crafted with radius ρ
    leaves a lower loss under a fresh radius-ρ PGD attack than the same loop with ρ = 0, in the
    geometric mean over four trained models."""
    from uebench.methods.robust_error_minimizing import RobustErrorMinimizing

    data = synthetic(3, 40)
    x, y, rho = to_float(data.x_train), data.y_train, 8 / 255
    ratios = []
    for seed in range(4):
        torch.manual_seed(seed)
        model = ARCHS.build("smallcnn:width=4", 3, data.image_shape)
        train(
            model,
            data.x_train,
            data.y_train,
            TrainConfig(epochs=10, batch_size=32, lr=0.1),
            torch.device("cpu"),
            generator=torch.Generator().manual_seed(seed),
        )
        model.eval()
        attacked_loss = {}
        for radius in (rho, 0.0):
            rem = RobustErrorMinimizing(rho=radius, steps=10, rho_steps=5, samples=1, augment=False)
            torch.manual_seed(0)
            delta = rem.robust_noise(
                model,
                rem.adversary(model),
                torch.nn.Identity(),
                x,
                y,
                torch.Generator().manual_seed(0),
            )
            attack = torchattacks.PGD(model, eps=rho, alpha=rho / 4, steps=10, random_start=True)
            attacked = attack((x + delta).clamp(0, 1), y)
            with torch.no_grad():
                attacked_loss[radius] = float(F.cross_entropy(model(attacked), y))
        ratios.append(attacked_loss[rho] / attacked_loss[0.0])
    # Measured 0.10, 0.61, 0.50, 0.93 (geometric mean 0.41).  On so small a task one model's
    # ratio is luck (at ρ = 4/255 the four gave 0.34 to 1.02), hence the mean over models.
    assert math.exp(sum(map(math.log, ratios)) / len(ratios)) < 0.9, ratios


def test_bad_options_fail_in_one_line_before_any_work():
    data = synthetic(3, 2)
    for spec in ("rem:rho=2", "rem:steps=0", "rem:eps=8", "tap:restarts=0", "tap:steps=0"):
        with pytest.raises(UebenchError):
            craft(spec, data, device="cpu", progress=False)
    one_class = ImageData(
        "one", data.x_train, data.y_train * 0, data.x_test, data.y_test * 0, ("a",)
    )
    with pytest.raises(UebenchError, match="at least 2 classes"):
        craft("tap", one_class, device="cpu", progress=False)


def test_random_targets_are_a_seeded_permutation_without_fixed_points():
    from uebench.methods.targeted_adversarial import target_classes

    for classes in (2, 3, 10, 100):
        mapping = target_classes(classes, "random", torch.Generator().manual_seed(0))
        assert sorted(mapping.tolist()) == list(range(classes))
        assert not bool((mapping == torch.arange(classes)).any())
        again = target_classes(classes, "random", torch.Generator().manual_seed(0))
        assert torch.equal(mapping, again)
    assert target_classes(4, "next", torch.Generator()).tolist() == [1, 2, 3, 0]


def test_cli_runs_rem_and_tap_end_to_end(tmp_path):
    from uebench.cli import main

    methods = f"{QUICK['rem']},{QUICK['tap']}:targets=random"
    args = [
        "run",
        "--dataset",
        "digits:size=8",
        "--methods",
        methods,
        "--archs",
        "smallcnn:width=4",
    ]
    args += ["--epochs", "1", "--train-size", "100", "--test-size", "50", "--device", "cpu"]
    assert main([*args, "--out", str(tmp_path / "run"), "--no-progress"]) == 0
    table = pd.read_csv(tmp_path / "run" / "results.csv")
    assert sorted(table["method"].str.split(":").str[0]) == ["rem", "tap"]
    assert table["final_acc"].between(0, 100).all()


def test_a_chunked_gradient_is_the_whole_batch_s_and_keeps_training_batches_whole():
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 3), torch.nn.BatchNorm1d(3)
    )
    sizes: list[int] = []
    model.register_forward_pre_hook(lambda _, inputs: sizes.append(len(inputs[0])))
    x, y = torch.rand(10, 3, 8, 8), torch.randint(0, 3, (10,))
    gradient = chunked_input_gradient(model, torch.nn.Identity(), 4)
    for mode, expected in ((model.train, [10]), (model.eval, [4, 4, 2])):
        mode()
        inputs = x.clone().requires_grad_(True)
        (whole,) = torch.autograd.grad(F.cross_entropy(model(inputs), y), inputs)
        sizes.clear()
        torch.testing.assert_close(gradient(x, y), whole, rtol=1e-5, atol=1e-7)
        assert sizes == expected  # BatchNorm's batch statistics need the training batch whole
