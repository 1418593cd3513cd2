"""The fast protocol: airbench's network and recipe, each ingredient switchable and recorded."""

import math
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import uebench
from uebench.archs.airbench import AirbenchNet, airbench
from uebench.data import to_float
from uebench.errors import UebenchError
from uebench.grid.config import GridConfig
from uebench.grid.protocols import protocol_names, resolve_protocol
from uebench.method import CraftContext
from uebench.registry import ARCHS
from uebench.results.leaderboard import leaderboard, read_records
from uebench.training import (
    Lookahead,
    TrainConfig,
    make_optimizer,
    predict,
    train,
    triangle,
    tta_logits,
)

CPU = torch.device("cpu")
CIFAR = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10"


def images(n: int, side: int = 8, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (n, 3, side, side), generator=torch.Generator().manual_seed(seed))


def plain(**recipe) -> TrainConfig:
    """One deterministic epoch: no crop, no flip, one batch."""
    return TrainConfig(epochs=1, batch_size=64, lr=0.05, crop_padding=0, flip=False, **recipe)


def test_recipe_fields_join_ids_only_when_set():
    base = TrainConfig().as_dict()
    assert set(base) == {
        "epochs",
        "batch_size",
        "lr",
        "momentum",
        "weight_decay",
        "crop_padding",
        "flip",
        "amp",
        "eval_batch_size",
    }
    assert TrainConfig(tta=2, lookahead=True).as_dict() == {**base, "tta": 2, "lookahead": True}
    assert TrainConfig().recipe()["label_smoothing"] == 0.0  # records name every ingredient
    with pytest.raises(UebenchError, match="schedule must be one of cosine, triangle"):
        TrainConfig(schedule="linear")
    with pytest.raises(UebenchError, match="tta must be 0, 1 or 2"):
        TrainConfig(tta=3)
    with pytest.raises(UebenchError, match="crop_padding must be >= 0 or unset, got -1"):
        TrainConfig(crop_padding=-1)


def test_fast_protocol_declares_the_recipe_and_airbench_sources():
    assert "fast" in protocol_names()
    config = GridConfig(dataset="cifar10", protocol="fast", methods=["emin", "tap"]).train_config()
    assert (config.batch_size, config.epochs, config.nesterov, config.schedule) == (
        1024,
        9.9,
        True,
        "triangle",
    )
    # airbench94's 476 steps on CIFAR-10, its whitening bias trained 3 epochs.
    assert config.total_steps(50_000) == 476 and config.whiten_bias_epochs == 3
    assert (config.label_smoothing, config.lookahead, config.tta, config.pad_mode) == (
        0.2,
        True,
        2,
        "reflect",
    )
    protocol = resolve_protocol("fast", "cifar100")
    assert protocol.archs == ("airbench",) and protocol.train_size is None
    for method in ("emin", "emax", "rem", "tap", "pue"):
        assert ":source=airbench" in protocol.method_spec(method)
    svhn = GridConfig(dataset="svhn", protocol="fast").train_config()
    assert svhn.flip is False and svhn.schedule == "triangle"


def test_airbench_widths_and_registry():
    model = ARCHS.build("airbench", 10, (3, 32, 32))
    convs = [m.out_channels for m in model.groups.modules() if isinstance(m, nn.Conv2d)]
    assert convs == [64, 64, 256, 256, 256, 256] and model.whiten.out_channels == 24
    assert not model.whiten.weight.requires_grad
    narrow = airbench(100, (3, 32, 32), width=16)
    assert narrow.head.in_features == 64 and narrow(torch.rand(2, 3, 32, 32)).shape == (2, 100)
    assert airbench(10, (3, 8, 8), width=4)(torch.rand(2, 3, 8, 8)).shape == (2, 10)
    with pytest.raises(UebenchError, match="width must be at least 1"):
        airbench(10, (3, 32, 32), width=0)


def whitened_covariance(model: AirbenchNet, x: torch.Tensor) -> torch.Tensor:
    """Covariance of the whitening layer's first half of outputs (before GELU) over ``x``."""
    with torch.no_grad():
        out = model.whiten(to_float(x))[:, : model.whiten.out_channels // 2]
    flat = out.permute(0, 2, 3, 1).reshape(-1, out.shape[1]).double()
    flat = flat - flat.mean(0)
    return flat.T @ flat / len(flat)


def test_whitening_and_the_first_conv_run_in_fp32_under_bf16_autocast():
    """Fitted on grayscale images, the filters along colour differences are scaled by about
    1/sqrt(eps), and a gray image must give them nothing: in bf16 their rounding gave O(1).
    The convolution reading them stays in fp32 too; the rest of the network takes bf16."""
    gray = images(64)[:, :1].expand(-1, 3, -1, -1).contiguous()
    torch.manual_seed(0)
    model = airbench(10, (3, 8, 8), width=4)
    model.fit_to_training_images(gray)
    # 2×2 patches of gray images span 4 of 12 dimensions; the filters come by falling variance.
    colour = slice(4, 12)
    seen = []
    for layer in (model.whiten, model.groups[0].conv1, model.groups[1].conv1):
        layer.register_forward_hook(lambda _, __, out: seen.append(out))
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        model(to_float(gray))
    out, first, later = seen
    assert (out.dtype, first.dtype, later.dtype) == (torch.float32, torch.float32, torch.bfloat16)
    assert float(out[:, colour].abs().max()) < 1e-2 * float(out[:, :4].abs().max())


def test_whitening_is_fitted_on_the_images_the_victim_is_given():
    clean = images(64)
    poisoned = (clean.int() + torch.randint(-40, 41, clean.shape)).clamp(0, 255).to(torch.uint8)
    models = {}
    for name, x in (("clean", clean), ("poisoned", poisoned)):
        torch.manual_seed(0)
        models[name] = airbench(2, (3, 8, 8), width=4)
        train(models[name], x, torch.arange(64) % 2, plain(), CPU)
        assert models[name].fitted_on == 64
    # Whitened on the images it trained on: unit variance along every direction (up to eps).
    cov = whitened_covariance(models["poisoned"], poisoned)
    assert torch.allclose(cov, torch.eye(len(cov), dtype=cov.dtype), atol=0.02)
    assert not torch.allclose(models["clean"].whiten.weight, models["poisoned"].whiten.weight)
    # ... and not on others: the clean-fitted filters do not whiten the poisoned images.
    other = whitened_covariance(models["clean"], poisoned)
    assert not torch.allclose(other, torch.eye(len(other), dtype=other.dtype), atol=0.02)


def test_crafting_sources_are_fitted_to_the_crafters_images():
    data = uebench.load("digits:size=8", train_size=60, test_size=30)
    model = CraftContext(CPU).build_model("airbench:width=4", data)
    assert model.fitted_on == 60


def test_label_smoothing_changes_the_loss_to_the_smoothed_one():
    x, y = images(64), torch.arange(64) % 4
    for smoothing in (0.0, 0.2):
        torch.manual_seed(0)
        model = airbench(4, (3, 8, 8), width=4)
        model.fit_to_training_images(x)
        with torch.no_grad():  # one batch in train mode: the loss the first step sees
            expected = F.cross_entropy(model(to_float(x)), y, label_smoothing=smoothing)
        torch.manual_seed(0)
        model = airbench(4, (3, 8, 8), width=4)
        (stats,) = train(model, x, y, plain(label_smoothing=smoothing), CPU)
        assert math.isclose(stats.train_loss, float(expected), rel_tol=1e-5)
        if smoothing:
            with torch.no_grad():
                plain_loss = float(F.cross_entropy(model(to_float(x)), y))
            assert not math.isclose(stats.train_loss, plain_loss, rel_tol=1e-3)


def test_lookahead_averages_from_the_first_step_and_ends_on_the_average():
    """airbench94: the average starts from the weights before training, moves every 5 steps
    with decay 0.95**5 × (t/T)**3, and the network takes it after the last step only."""
    model = nn.Linear(2, 1, bias=False)
    nn.init.zeros_(model.weight)
    averaged = Lookahead(model, total_steps=100)  # the average starts at 0
    with torch.no_grad():
        model.weight.fill_(1.0)
    averaged.step(4)  # not a multiple of 5: untouched
    assert float(model.weight.detach()[0, 0]) == 1.0
    averaged.step(5)
    first = 0.95**5 * 0.05**3
    assert torch.allclose(model.weight, torch.full((1, 2), 1 - first))
    with torch.no_grad():
        model.weight.fill_(3.0)
    averaged.step(50)
    decay = 0.95**5 * 0.5**3
    expected = decay * (1 - first) + (1 - decay) * 3.0
    assert torch.allclose(model.weight, torch.full((1, 2), expected))
    with torch.no_grad():
        model.weight.fill_(5.0)
    averaged.finish()  # after the last step: back to the average, untouched by the 5.0
    assert torch.allclose(model.weight, torch.full((1, 2), expected))


class StepCounter(nn.Module):
    """Counts training forward passes and the images they saw."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(3 * 4 * 4, 2)
        self.batches: list[int] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            self.batches.append(len(x))
        return self.linear(x.flatten(1))


def test_fractional_epochs_and_dropped_last_batch_take_airbench94s_steps():
    """airbench94 on CIFAR-10: 48 full batches of 1024 a pass, 9.9 passes, ceil(475.2) = 476
    steps; here 10 images in batches of 4: 2 full batches a pass, 2.5 passes, 5 steps."""
    config = TrainConfig(epochs=2.5, batch_size=4, lr=0.01, crop_padding=0, drop_last=True)
    assert config.total_steps(10) == 5 and config.whole_epochs == 3
    assert TrainConfig(epochs=9.9, batch_size=1024, drop_last=True).total_steps(50_000) == 476
    model = StepCounter()
    history = train(model, images(10, side=4), torch.arange(10) % 2, config, CPU)
    assert model.batches == [4, 4, 4, 4, 4] and len(history) == 3
    kept = StepCounter()
    train(kept, images(10, side=4), torch.arange(10) % 2, replace(config, drop_last=False), CPU)
    assert kept.batches == [4, 4, 2, 4, 4, 2, 4, 4]  # ceil(3 × 2.5) = 8 steps, partial kept
    assert TrainConfig(epochs=10.0).epochs == 10 and "10.0" not in str(TrainConfig(epochs=10.0))
    with pytest.raises(UebenchError, match="epochs must be >= 0"):
        TrainConfig(epochs=-1)


def test_whitening_bias_trains_its_epochs_then_stays():
    x, y = images(32), torch.arange(32) % 2
    biases = []

    def record(_stats) -> None:
        biases.append(model.whitening_bias.detach().clone())

    torch.manual_seed(0)
    model = airbench(2, (3, 8, 8), width=4)
    config = TrainConfig(
        epochs=4, batch_size=8, lr=0.05, crop_padding=0, flip=False, whiten_bias_epochs=2
    )
    train(model, x, y, config, CPU, on_epoch=record)
    assert not torch.equal(biases[0], biases[1])  # epochs 1 and 2 move it
    assert torch.equal(biases[1], biases[2]) and torch.equal(biases[2], biases[3])
    assert TrainConfig(whiten_bias_epochs=3).as_dict()["whiten_bias_epochs"] == 3
    assert "whiten_bias_epochs" not in TrainConfig().as_dict()  # unset: ids as they were


def test_a_frozen_whitening_bias_stops_its_gradient_without_changing_training(monkeypatch):
    """Eager training stops the frozen bias's gradient (a cheaper backward pass); the weights
    come out as when the gradient is still computed (a compiled model's path), and the bias
    trains again afterwards."""
    import uebench.training as training

    x, y = images(32), torch.arange(32) % 2
    config = TrainConfig(
        epochs=3, batch_size=8, lr=0.05, crop_padding=0, flip=False, whiten_bias_epochs=1
    )
    keeps_gradient = SimpleNamespace(compile=True)  # what a compiled model's freeze does
    freeze = training.freeze_whitening_bias
    weights, trains = [], []
    for stop_gradient in (True, False):
        torch.manual_seed(0)
        model = airbench(2, (3, 8, 8), width=4)
        if not stop_gradient:
            monkeypatch.setattr(
                training,
                "freeze_whitening_bias",
                lambda model, opt, config, epoch, _: freeze(
                    model, opt, config, epoch, keeps_gradient
                ),
            )
        seen = []
        train(
            model,
            x,
            y,
            config,
            CPU,
            on_epoch=lambda _, seen=seen, bias=model.whitening_bias: seen.append(
                bias.requires_grad
            ),
        )
        trains.append(seen)
        weights.append([p.detach().clone() for p in model.parameters()])
        assert model.whitening_bias.requires_grad  # given back for later training
    assert trains == [[True, False, False], [True, True, True]]
    for stopped, computed in zip(*weights, strict=True):
        torch.testing.assert_close(stopped, computed, rtol=1e-5, atol=1e-6)


def test_lookahead_changes_training_and_stays_out_of_paper_ids():
    x, y = images(64), torch.arange(64) % 2
    weights = []
    for lookahead in (False, True):
        torch.manual_seed(0)
        model = airbench(2, (3, 8, 8), width=4)
        config = TrainConfig(
            epochs=5, batch_size=8, lr=0.05, crop_padding=0, flip=False, lookahead=lookahead
        )
        train(model, x, y, config, CPU)
        weights.append(model.head.weight.detach().clone())
    assert not torch.allclose(*weights)


def test_tta_averages_mirrored_and_translated_views():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 6 * 6, 3)).eval()
    x = torch.rand(4, 3, 6, 6)
    assert torch.equal(tta_logits(model, x, 0), model(x))
    mirror = 0.5 * (model(x) + model(x.flip(-1)))
    assert torch.allclose(tta_logits(model, x, 1), mirror)
    padded = F.pad(x, (1, 1, 1, 1), mode="reflect")
    shifts = [padded[..., :6, :6], padded[..., 2:, 2:]]
    views = [0.5 * (model(s) + model(s.flip(-1))) for s in shifts]
    assert torch.allclose(tta_logits(model, x, 2), 0.5 * mirror + 0.25 * (views[0] + views[1]))
    # A model that reads only the left half: mirroring changes its predictions.
    uint8 = images(32, side=6)
    left = nn.Sequential(nn.Flatten(), nn.Linear(3 * 6 * 6, 3))
    with torch.no_grad():
        left[1].weight.view(3, 3, 6, 6)[..., 3:] = 0
    assert not torch.equal(predict(left, uint8, CPU, tta=0), predict(left, uint8, CPU, tta=1))


class Recorder(nn.Module):
    """Remembers every training batch it sees."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(3 * 4 * 4, 2)
        self.seen: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            self.seen.append(x.detach().clone())
        return self.linear(x.flatten(1))


def test_alternating_flip_shows_each_image_both_ways_every_two_epochs():
    x = images(16, side=4)
    model = Recorder()
    config = TrainConfig(epochs=3, batch_size=16, lr=0.01, crop_padding=0, alternate_flip=True)
    train(model, x, torch.arange(16) % 2, config, CPU)
    original = to_float(x)
    orientation = []  # per epoch, whether each image came flipped
    for batch in model.seen:
        flipped = torch.zeros(16, dtype=torch.bool)
        for row in batch:
            same = (original == row).flatten(1).all(1)
            mirrored = (original.flip(-1) == row).flatten(1).all(1)
            assert same.any() != mirrored.any()  # each row is one image, one way
            index = int((same | mirrored).nonzero()[0])
            flipped[index] = bool(mirrored.any())
        orientation.append(flipped)
    assert torch.equal(orientation[1], ~orientation[0])
    assert torch.equal(orientation[2], orientation[0])
    assert 0 < int(orientation[0].sum()) < 16  # epoch 1's flips are random


def test_triangular_schedule_and_bias_lr():
    assert math.isclose(triangle(0, 100), 0.2) and math.isclose(triangle(23, 100), 1.0)
    assert math.isclose(triangle(100, 100), 0.07)
    model = airbench(2, (3, 8, 8), width=4)
    config = TrainConfig(epochs=1, lr=0.1, bias_lr_scale=64.0, schedule="triangle")
    optimizer, _ = make_optimizer(model, config, total_steps=100)
    biases, other = optimizer.param_groups
    assert math.isclose(biases["lr"], 0.2 * 6.4) and math.isclose(other["lr"], 0.2 * 0.1)
    assert math.isclose(biases["weight_decay"] * 64, config.weight_decay)
    norm_biases = {id(m.bias) for m in model.modules() if isinstance(m, nn.BatchNorm2d)}
    assert {id(p) for p in biases["params"]} == norm_biases
    assert not any(
        p is model.whiten.weight for group in optimizer.param_groups for p in group["params"]
    )


def test_fast_smoke_run_records_its_recipe_and_never_pools_with_paper(tmp_path):
    # The same arch, data and epochs under both protocols: only the protocol (and its recipe)
    # differs, and that alone keeps the leaderboard's rows apart.
    grid = {
        "dataset": "digits:size=8",
        "archs": ["airbench:width=4"],
        "methods": ["clean"],
        "epochs": 1,
        "batch_size": 64,
        "lr": 0.1,
        "train_size": 200,
        "test_size": 100,
        "progress": False,
        "device": "cpu",
        "out": str(tmp_path / "run"),
    }
    fast = uebench.run(**grid, protocol="fast")
    paper = uebench.run(**grid, protocol="paper")
    assert set(fast["cell_id"]).isdisjoint(paper["cell_id"])
    board, records = leaderboard([tmp_path / "run"])
    assert len(records) == 2 and len(board) == 2  # one cell per protocol, not pooled
    assert set(board["protocol"]) == {"fast", "paper"}
    by_protocol = {record["protocol"]: record for record in records}
    assert by_protocol["fast"]["recipe"]["nesterov"] is True
    assert by_protocol["fast"]["recipe"]["tta"] == 2
    assert by_protocol["paper"]["recipe"]["lookahead"] is False
    assert by_protocol["fast"]["config"]["train"]["label_smoothing"] == 0.2


def test_countermeasures_keep_working_with_the_fast_victim(tmp_path):
    table = uebench.run(
        dataset="cluttered-digits",  # colour images: grayscale needs three channels
        protocol="fast",
        archs=["airbench:width=4"],
        methods=["random"],
        defenses=[
            "advtrain:steps=1",
            "cutmix",
            "ueraser:repeats=1",
            "earlystop",
            "partial:rate=0.5",
            "grayscale",
        ],
        epochs=1,
        batch_size=64,
        lr=0.1,
        train_size=60,
        test_size=30,
        progress=False,
        device="cpu",
        out=str(tmp_path / "run"),
    )
    assert len(table) == 6 and table["final_acc"].between(0, 100).all()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.skipif(not (CIFAR / "README.md").exists(), reason="needs ../shared/data/cifar10")
def test_fast_clean_cifar10_cell_on_a_gpu(tmp_path):
    """The issue's GPU goal: a clean fast cell at ≥ 93% clean accuracy within 10 seconds."""
    table = uebench.run(
        dataset="cifar10",
        data_root=str(CIFAR),
        protocol="fast",
        methods=["clean"],
        progress=False,
        out=str(tmp_path / "run"),
    )
    (record,) = read_records([tmp_path / "run"])
    assert float(table["final_acc"].iloc[0]) >= 93.0
    assert sum(epoch["seconds"] for epoch in record["history"]) <= 10.0
