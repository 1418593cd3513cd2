"""The field's model-free methods (ops, ar, lsp, cuda): budget, class structure, determinism,
any class count / image size / channel count, and one end-to-end CLI run of all four."""

import math

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from uebench.methods.autoregressive import (
    Autoregressive,
    ar_fill,
    matched_filters,
    random_coefficients,
)
from uebench.methods.convolution_based import ConvolutionBased
from uebench.methods.linear_separable import LinearSeparable
from uebench.methods.one_pixel_shortcut import OnePixelShortcut

from uebench.data import ImageData
from uebench.errors import UebenchError
from uebench.method import CraftContext, craft_within_threat
from uebench.poison import Poison
from uebench.registry import METHODS
from uebench.scenarios import only_classes
from uebench.threat import ThreatModel

CTX = CraftContext(torch.device("cpu"), progress=False)
#: (images, classes, channels, height, width): 3 classes in colour and non-square, 100 classes
#: in 8-pixel grayscale, and a CIFAR-sized set.
SHAPES = {
    "3cls-rgb-10x12": (60, 3, 3, 10, 12),
    "100cls-gray-8": (300, 100, 1, 8, 8),
    "10cls-rgb-32": (60, 10, 3, 32, 32),
}
#: Each method at its defaults (see spec_for for AR beyond three classes).
FAST = {"ops": "ops", "ar": "ar", "lsp": "lsp", "cuda": "cuda"}


def synthetic(images: int, classes: int, channels: int, height: int, width: int, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (images, channels, height, width), generator=generator)
    y = torch.arange(images) % classes
    return ImageData(
        "synthetic",
        x.to(torch.uint8),
        y,
        x[:10].to(torch.uint8),
        y[:10],
        tuple(str(k) for k in range(classes)),
    )


def craft(spec: str, data: ImageData):
    return craft_within_threat(METHODS.build(spec), data, CTX, spec)


def spec_for(name: str, shape: str) -> str:
    # Ten classes at the paper's threshold take a search of tens of seconds on a CPU; 1 is
    # enough to test the mechanics beyond 3 classes (stability and the response rule are
    # tested on their own below, at the paper's threshold).
    return "ar:min_response=1" if name == "ar" and not shape.startswith("3cls") else FAST[name]


@pytest.fixture(scope="module")
def datasets():
    return {key: synthetic(*shape) for key, shape in SHAPES.items()}


@pytest.fixture(scope="module")
def poisons(datasets):
    return {
        (name, key): craft(spec_for(name, key), data)
        for name in FAST
        for key, data in datasets.items()
    }


def test_declared_threat_models():
    assert METHODS.build("ops").threat_model() == ThreatModel.l0(1)
    assert METHODS.build("ops:pixels=2").threat_model() == ThreatModel.l0(2)
    assert METHODS.build("ar").threat_model() == ThreatModel.l2(1.0)
    assert METHODS.build("lsp").threat_model() == ThreatModel.l2(6 / 255 * math.sqrt(3072))
    assert METHODS.build("lsp:radius=1").threat_model() == ThreatModel.l2(1.0)
    assert METHODS.build("cuda").threat_model() == ThreatModel.unbounded()


@pytest.mark.parametrize("shape", sorted(SHAPES))
@pytest.mark.parametrize("name", sorted(FAST))
def test_budget_on_the_published_images(poisons, datasets, name, shape):
    data, poison = datasets[shape], poisons[(name, shape)]
    assert poison.threat == METHODS.build(spec_for(name, shape)).threat_model()
    assert poison.delta.shape == (len(data.y_train), *data.image_shape)  # sample-wise
    assert torch.equal(poison.rows, torch.arange(len(data.y_train)))
    assert torch.isfinite(poison.delta).all()
    published = poison.apply(data.x_train)
    change = (published.float() - data.x_train.float()) / 255
    assert (change.flatten(1).abs().sum(1) > 0).float().mean() > 0.9  # it does change images
    if name == "ops":
        assert (change != 0).any(1).flatten(1).sum(1).max() <= 1
    elif name in ("ar", "lsp"):
        radius = poison.threat.budget
        assert torch.allclose(poison.delta.flatten(1).norm(dim=1), torch.tensor(radius))
        assert change.flatten(1).norm(dim=1).max() <= radius + 1e-6


@pytest.mark.parametrize("name", sorted(FAST))
def test_same_seed_same_poison_other_seed_other_poison(datasets, name):
    data = datasets["3cls-rgb-10x12"]
    first, again = craft(FAST[name], data), craft(FAST[name], data)
    assert torch.equal(first.delta, again.delta)
    assert first.content_hash() == again.content_hash()
    if name != "ops":  # ops has no randomness: its search is deterministic given the data
        assert not torch.equal(first.delta, craft(f"{name}:seed=1", data).delta)


@pytest.mark.parametrize("name", sorted(FAST))
def test_saved_poison_loads_with_its_threat_model_and_classes_subset(
    poisons, datasets, name, tmp_path
):
    data, poison = datasets["3cls-rgb-10x12"], poisons[(name, "3cls-rgb-10x12")]
    poison.save(tmp_path / "p.pt")
    loaded = Poison.load(tmp_path / "p.pt")
    assert loaded.threat == poison.threat and loaded.content_hash() == poison.content_hash()
    assert torch.equal(loaded.apply(data.x_train), poison.apply(data.x_train))
    # classes=: only class 1's images change.
    published = only_classes(poison, data.y_train, [1]).apply(data.x_train)
    changed = (published != data.x_train).flatten(1).any(1)
    assert not changed[data.y_train != 1].any() and changed[data.y_train == 1].all()


@pytest.mark.parametrize(
    ("spec", "fragment"),
    [
        ("ops:pixels=0", "pixels must be at least 1"),
        ("ar:radius=0", "radius must be a positive"),
        ("ar:trials=0", "trials must be at least 1"),
        ("ar:min_response=-1", "min_response must be >= 0"),
        ("lsp:radius=-1", "radius must be a positive"),
        ("lsp:patch=0", "patch must be at least 1"),
        ("cuda:kernel=2", "kernel must be an odd size"),
        ("cuda:blur=-0.1", "blur must be >= 0"),
    ],
)
def test_bad_options_are_one_line_errors(spec, fragment):
    with pytest.raises(UebenchError, match=fragment) as error:
        METHODS.build(spec)
    assert "\n" not in str(error.value)


# --- ops ------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_ops_one_shortcut_per_class_never_shared(poisons, datasets, shape):
    data, poison = datasets[shape], poisons[("ops", shape)]
    published = poison.apply(data.x_train)
    pairs = set()
    for label, [(row, col, colour)] in enumerate(poison.meta["shortcuts"]):
        bits = [(colour >> (data.image_shape[0] - 1 - c)) & 1 for c in range(data.image_shape[0])]
        images = published[data.y_train == label]
        # Every image of the class holds the class's colour at the class's pixel...
        assert (images[:, :, row, col] == torch.tensor(bits, dtype=torch.uint8) * 255).all()
        pairs.add((row, col, colour))
    assert len(pairs) == data.num_classes  # ...and no two classes share a (pixel, colour)


def test_ops_with_two_pixels_uses_two_positions_per_class(datasets):
    data = datasets["3cls-rgb-10x12"]
    poison = craft("ops:pixels=2", data)
    assert poison.threat == ThreatModel.l0(2)
    change = poison.apply(data.x_train) != data.x_train
    assert change.any(1).flatten(1).sum(1).max() <= 2
    for shortcuts in poison.meta["shortcuts"]:
        assert len({(row, col) for row, col, _ in shortcuts}) == 2


def test_ops_matches_the_official_score_by_brute_force():
    data = synthetic(90, 3, 3, 5, 7, seed=3)
    found = OnePixelShortcut().craft(data, CTX).meta["shortcuts"]
    # The official search: per class, mean/std of |colour − x| over the class's images and
    # channels, for every (pixel, colour); a pair an earlier class took scores 0.
    images = data.x_train.permute(0, 2, 3, 1).numpy() / 255.0
    taken = []
    for label in range(3):
        members = images[data.y_train.numpy() == label]
        best, best_score = None, -1.0
        for row in range(5):
            for col in range(7):
                for colour in range(8):
                    target = np.array([(colour >> (2 - c)) & 1 for c in range(3)])
                    change = np.abs(target - members[:, row, col, :])
                    score = 0.0 if (row, col, colour) in taken else change.mean() / change.std()
                    if score > best_score:
                        best, best_score = (row, col, colour), score
        taken.append(best)
        assert found[label] == [list(best)]


def test_ops_finds_a_planted_consistent_pixel():
    data = synthetic(60, 3, 3, 6, 6, seed=1)
    x = data.x_train.clone()
    x[data.y_train == 1, :, 4, 2] = 0  # class 1 is black at (4, 2): white changes it by 1 always
    planted = ImageData("planted", x, data.y_train, data.x_test, data.y_test, data.classes)
    assert OnePixelShortcut().craft(planted, CTX).meta["shortcuts"][1] == [[4, 2, 7]]


# --- ar -------------------------------------------------------------------------------------


def test_ar_noise_follows_its_own_class_process(poisons, datasets):
    data, poison = datasets["3cls-rgb-10x12"], poisons[("ar", "3cls-rgb-10x12")]
    filters = matched_filters(Autoregressive().coefficients(data.num_classes, 3))
    # Residual energy of each image's noise under each class's matched filter (summed over
    # channels one by one: a process's filter cancels its pattern channel by channel).
    residual = torch.stack(
        [F.conv2d(poison.delta, f.unsqueeze(1), groups=3).square().sum((1, 2, 3)) for f in filters],
        1,
    )
    own = residual[torch.arange(len(data.y_train)), data.y_train]
    others = residual.masked_fill(F.one_hot(data.y_train, 3).bool(), math.inf).amin(1)
    assert (residual.argmin(1) == data.y_train).all()
    assert (own / others).max() < 1e-6


def test_ar_accepts_only_finite_stable_processes():
    method = Autoregressive()
    coefficients = method.coefficients(3, 3)
    assert torch.isfinite(coefficients).all()
    assert torch.allclose(coefficients.sum((-2, -1)), torch.ones(3, 3))  # the paper's normalizing
    assert (coefficients[..., 2, 2] == 0).all()
    # A NaN process and a diverging one are rejected; an averaging one (positive weights
    # summing to 1: every value a convex combination of earlier ones) is kept.
    averaging = torch.full((1, 3, 3, 3), 1 / 8)
    averaging[..., 2, 2] = 0
    candidates = torch.cat([torch.full((1, 3, 3, 3), math.nan), averaging * 4, averaging])
    kept, patterns = method._screen(candidates, torch.Generator().manual_seed(5))
    assert kept.tolist() == [2]
    assert torch.isfinite(patterns).all()
    assert torch.allclose(patterns.flatten(1).norm(dim=1), torch.ones(1))


def test_ar_response_rule():
    coefficients = Autoregressive().coefficients(3, 3)
    start = torch.randn(36, 36, 3, 3, generator=torch.Generator().manual_seed(5))
    patterns = ar_fill(start, coefficients.permute(2, 3, 0, 1))[4:, 4:].permute(2, 3, 0, 1)
    patterns = patterns / patterns.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
    windows = F.unfold(patterns.double(), 3).transpose(1, 2)
    flat = matched_filters(coefficients).double().flatten(1).T
    response = F.relu(windows @ flat).sum(1)  # [pattern of i, filter of j]
    assert response.diagonal().max() < 1e-3  # a process's own filter cancels its patterns
    assert response[~torch.eye(3, dtype=torch.bool)].min() > 1  # the others' do not
    # An unreachable threshold accepts the first stable draw (nothing to respond to yet) only.
    with pytest.raises(UebenchError, match="found 1 of 3 AR processes"):
        Autoregressive(min_response=1e9, max_draws=20000).coefficients(3, 3)


def test_ar_draws_exhausted_is_a_one_line_error(datasets):
    with pytest.raises(UebenchError, match=r"found 0 of 3 AR processes in 5 draws"):
        craft("ar:max_draws=5", datasets["3cls-rgb-10x12"])


def test_ar_recursion_matches_the_window_rule():
    coef = random_coefficients(2, 3, torch.Generator().manual_seed(0))
    start = torch.randn(2, 3, 7, 9, generator=torch.Generator().manual_seed(1))
    filled = ar_fill(start.permute(2, 3, 0, 1).clone(), coef.permute(2, 3, 0, 1))
    filled = filled.permute(2, 3, 0, 1)
    expected = start.clone()
    for i in range(2, 7):
        for j in range(2, 9):
            window = expected[:, :, i - 2 : i + 1, j - 2 : j + 1]
            expected[:, :, i, j] = (window * coef).sum((-2, -1))
    assert torch.allclose(filled, expected, rtol=1e-5, atol=1e-5)


# --- lsp ------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_lsp_noise_is_linearly_separable_and_per_sample(poisons, datasets, shape):
    data, poison = datasets[shape], poisons[("lsp", shape)]
    features = torch.cat([poison.delta.flatten(1).double(), torch.ones(len(data.y_train), 1)], 1)
    targets = F.one_hot(data.y_train, data.num_classes).double()
    weights = torch.linalg.lstsq(features, targets).solution
    assert ((features @ weights).argmax(1) == data.y_train).float().mean() == 1.0
    assert len(torch.unique(poison.delta.flatten(1), dim=0)) == len(data.y_train)


def test_lsp_separates_unseen_points_of_the_same_clusters():
    data = synthetic(400, 3, 3, 32, 32)
    noise = LinearSeparable().craft(data, CTX).delta.flatten(1).double()
    features = torch.cat([noise, torch.ones(len(noise), 1)], 1)
    fit, held = torch.arange(400) < 200, torch.arange(400) >= 200
    weights = torch.linalg.lstsq(features[fit], F.one_hot(data.y_train[fit], 3).double()).solution
    accuracy = ((features[held] @ weights).argmax(1) == data.y_train[held]).float().mean()
    assert accuracy >= 0.99


def test_lsp_is_constant_on_its_patches():
    data = synthetic(30, 3, 3, 32, 32)
    delta = LinearSeparable().craft(data, CTX).delta  # 8-pixel patches, a 4 × 4 grid
    blocks = delta.unfold(2, 8, 8).unfold(3, 8, 8)  # N × C × 4 × 4 × 8 × 8
    assert torch.equal(blocks, blocks[..., :1, :1].expand_as(blocks))
    assert not torch.equal(delta[:, :, :8, :8], delta[:, :, 8:16, :8])


def test_lsp_too_few_features_for_the_classes_is_an_error():
    with pytest.raises(UebenchError, match="1 features per image cannot hold 3 class"):
        craft("lsp:patch=8", synthetic(30, 3, 1, 8, 8))


# --- cuda -----------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_cuda_is_each_class_filter_convolution(poisons, datasets, shape):
    data, poison = datasets[shape], poisons[("cuda", shape)]
    channels = data.image_shape[0]
    filters = ConvolutionBased().filters(data.num_classes)
    published = poison.apply(data.x_train).float()
    for label in range(data.num_classes):
        images = data.x_train[data.y_train == label].float() / 255
        weight = filters[label].expand(channels, 1, 3, 3)
        out = F.conv2d(images, weight, padding=1, groups=channels)
        out = out / out.amax((1, 2, 3), keepdim=True)
        expected = (out * 255).floor()
        assert (published[data.y_train == label] - expected).abs().max() <= 1


def test_cuda_draws_one_random_filter_per_class():
    filters = ConvolutionBased().filters(100)
    assert filters.shape == (100, 3, 3)
    flat = filters.flatten(1)
    assert ((flat == 1.0).sum(1) == 1).all()  # one weight at the peak...
    rest = flat[flat != 1.0]
    assert rest.min() >= 0 and rest.max() <= 0.3  # ...the others uniform in [0, blur]
    assert len(torch.unique(flat, dim=0)) == 100


# --- end to end -----------------------------------------------------------------------------


def test_cli_run_with_the_four_methods(tmp_path, tiny_grid, capsys):
    from uebench.cli import main

    methods = "clean,ops,ar:min_response=1,lsp,cuda"
    argv = [
        "run", "--methods", methods, "--dataset", tiny_grid["dataset"],
        "--archs", tiny_grid["archs"][0], "--epochs", str(tiny_grid["epochs"]),
        "--train-size", str(tiny_grid["train_size"]), "--test-size", str(tiny_grid["test_size"]),
        "--device", "cpu", "--out", str(tmp_path / "run"), "--no-progress",
    ]  # fmt: skip
    assert main(argv) == 0
    table = pd.read_csv(tmp_path / "run" / "results.csv")
    assert sorted(table["method"]) == sorted(methods.split(","))
    assert table["final_acc"].between(0, 100).all()
