"""Architecture factories: output shapes, width option, parameter count, gradients, validation."""

from __future__ import annotations

import inspect
import subprocess
import sys

import pytest
import torch
from torch import nn

from uebench import archs
from uebench.errors import UebenchError
from uebench.registry import Registry

FACTORIES = ["resnet18", "resnet50", "vgg11", "densenet121", "smallcnn"]
WITH_STEM = ["resnet18", "resnet50", "densenet121"]
SHAPES = [(3, 32, 32), (1, 16, 16), (1, 8, 8)]


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def first_conv(model: nn.Module) -> nn.Conv2d:
    return next(m for m in model.modules() if isinstance(m, nn.Conv2d))


def build(name: str, in_shape: tuple[int, int, int], num_classes: int = 5, **options):
    return getattr(archs, name)(num_classes, in_shape, **options)


@pytest.fixture(autouse=True)
def _few_threads():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("in_shape", SHAPES)
@pytest.mark.parametrize("name", FACTORIES)
def test_output_shape(name, in_shape):
    model = build(name, in_shape, width=4).eval()
    with torch.no_grad():
        out = model(torch.rand(2, *in_shape))
    assert out.shape == (2, 5)


@pytest.mark.parametrize("name", WITH_STEM)
def test_imagenet_stem(name):
    auto = build(name, (3, 64, 64), width=4)
    forced = build(name, (3, 64, 64), width=4, stem="imagenet")
    cifar = build(name, (3, 64, 64), width=4, stem="cifar")
    convs = [first_conv(model) for model in (auto, forced, cifar)]
    assert [c.kernel_size for c in convs] == [(7, 7), (7, 7), (3, 3)]
    assert [c.stride for c in convs] == [(2, 2), (2, 2), (1, 1)]
    with torch.no_grad():
        assert auto.eval()(torch.rand(2, 3, 64, 64)).shape == (2, 5)


@pytest.mark.parametrize("name", WITH_STEM)
def test_auto_stem_is_cifar_below_64(name):
    conv = first_conv(build(name, (3, 32, 32), width=4))
    assert conv.kernel_size == (3, 3) and conv.stride == (1, 1)


@pytest.mark.parametrize("name", FACTORIES)
def test_width_changes_parameter_count(name):
    assert n_params(build(name, (3, 32, 32), width=4)) < n_params(build(name, (3, 32, 32), width=8))


def test_resnet18_parameter_count_matches_cifar_figure():
    count = n_params(archs.resnet18(10, (3, 32, 32)))
    assert abs(count - 11_170_000) / 11_170_000 < 0.01


@pytest.mark.parametrize("name", FACTORIES)
def test_gradients_reach_first_conv(name):
    model = build(name, (1, 8, 8), width=4).train()
    model(torch.rand(3, 1, 8, 8)).logsumexp(1).sum().backward()
    first = first_conv(model)
    assert first.in_channels == 1
    assert first.weight.grad is not None and first.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("name", FACTORIES)
@pytest.mark.parametrize("width", [0, -3])
def test_bad_width(name, width):
    with pytest.raises(UebenchError, match="width"):
        build(name, (3, 32, 32), width=width)


@pytest.mark.parametrize("name", WITH_STEM)
def test_bad_stem(name):
    with pytest.raises(UebenchError, match="stem"):
        build(name, (3, 32, 32), width=4, stem="tiny")


@pytest.mark.parametrize(("in_shape", "stem"), [((3, 7, 7), "cifar"), ((3, 28, 28), "imagenet")])
def test_densenet_too_small_is_a_clear_error(in_shape, stem):
    with pytest.raises(UebenchError, match="at least"):
        archs.densenet121(10, in_shape, width=4, stem=stem)


def test_densenet_smallest_imagenet_input():
    model = archs.densenet121(3, (3, 29, 29), width=4, stem="imagenet").eval()
    with torch.no_grad():
        assert model(torch.rand(1, 3, 29, 29)).shape == (1, 3)


@pytest.mark.parametrize("name", FACTORIES)
def test_options_are_keyword_only_and_typed(name):
    params = inspect.signature(getattr(archs, name)).parameters
    options = {k: p for k, p in params.items() if p.kind is p.KEYWORD_ONLY}
    assert "width" in options and options["width"].default >= 1
    assert ("stem" in options) == (name in WITH_STEM)


def test_registry_resolves_options():
    registry = Registry("uebench.test-archs", "architecture")  # private: no global state touched
    registry.register("resnet18", archs.resnet18)
    resolved = registry.resolve("resnet18:width=4:stem=cifar")
    assert resolved.options == {"width": 4, "stem": "cifar"}
    with pytest.raises(UebenchError):
        registry.resolve("resnet18:stem=tiny")
    model = resolved.build(10, (3, 16, 16))
    assert n_params(model) < 200_000


def test_a_grid_process_does_not_pay_for_torchvision_or_scipy_stats():
    """Every process (the CLI, each Ray worker) imports uebench and trains a small network;
    torchvision.models (torch._dynamo) and scipy.stats cost it seconds and only densenet121 and
    certification need them, so they are imported where used."""
    script = (
        "import sys, uebench, uebench.grid.ray_backend, uebench.analysis.certify\n"
        "from uebench.registry import ARCHS\n"
        "ARCHS.build('smallcnn', 10, (1, 16, 16))\n"
        "ARCHS.build('resnet18:width=4', 10, (3, 32, 32))\n"
        "print(sorted(m for m in ('torchvision', 'scipy.stats') if m in sys.modules))\n"
    )
    found = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True
    ).stdout
    assert found.strip() == "[]"
