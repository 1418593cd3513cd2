"""Every method's perturbation stays inside the ε-ball and the valid pixel range."""

import pytest
import torch

from uebench.api import craft, load
from uebench.training import TrainConfig

QUICK = {
    "random": "random",
    "random:form=class": "random:form=class",
    "emin": "emin:max_rounds=1:model_steps=2:steps=2:source=[smallcnn:width=4]",
    "emin:form=class": "emin:form=class:max_rounds=2:model_steps=2:source=[smallcnn:width=4]",
    "emin:augment=true": "emin:augment=true:max_rounds=1:model_steps=2:steps=2"
    ":source=[smallcnn:width=4]",
    "emax": "emax:steps=2:source=[smallcnn:width=4]:source_epochs=1",
    "emax:form=class": "emax:form=class:steps=2:source=[smallcnn:width=4]:source_epochs=1",
    "emin-lbfgs": "emin-lbfgs:max_rounds=1:model_steps=2:steps=2:source=[smallcnn:width=4]",
}


@pytest.fixture(scope="module")
def data():
    return load("cluttered-digits", train_size=120, test_size=50)


@pytest.mark.parametrize("name", sorted(QUICK))
@pytest.mark.parametrize("eps", [8 / 255, 0.05])
def test_noise_respects_eps_and_pixel_range(data, name, eps):
    poison = craft(
        f"{QUICK[name]}:eps={eps}",
        data,
        device="cpu",
        progress=False,
        train=TrainConfig(epochs=1, batch_size=64),
    )
    assert poison.delta.abs().max() <= eps + 1e-6
    poisoned = poison.apply(data.x_train)
    change = (poisoned.int() - data.x_train.int()).abs()
    assert change.max() <= int(eps * 255 + 1e-4)
    assert change.float().mean() > 0  # the method did perturb the images
    if "class" in name:
        assert len(poison.delta) == data.num_classes and torch.equal(poison.rows, data.y_train)
    else:
        assert len(poison.delta) == len(data.y_train)


@pytest.mark.parametrize("augment", ["false", "true"])
def test_same_spec_gives_the_same_poison(data, augment):
    spec = f"{QUICK['emin:form=class']}:augment={augment}"
    first = craft(spec, data, device="cpu", progress=False)
    second = craft(spec, data, device="cpu", progress=False)
    assert torch.equal(first.delta, second.delta)


def test_eps_out_of_range_is_rejected():
    from uebench.errors import UebenchError

    with pytest.raises(UebenchError, match="did you mean 8/255"):
        craft("emin:eps=8", load("cluttered-digits", train_size=20, test_size=10))


def test_crafting_through_the_augmentation_changes_the_noise(data):
    spec = QUICK["emin:form=class"]
    plain = craft(spec, data, device="cpu", progress=False)
    augmented = craft(f"{spec}:augment=true", data, device="cpu", progress=False)
    assert not torch.equal(plain.delta, augmented.delta)
    assert augmented.delta.abs().max() <= 8 / 255 + 1e-6


def test_through_augmentation_crops_and_flips_and_keeps_the_model_parameters():
    from torch import nn

    from uebench.crafting import ThroughAugmentation

    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 16 * 16, 10))
    seen = ThroughAugmentation(model, 16).eval()
    assert list(seen.parameters()) == list(model.parameters())
    x = torch.rand(64, 3, 16, 16)
    torch.manual_seed(0)
    assert not torch.equal(seen(x), model(x))  # augments in eval mode too, while crafting
    x.requires_grad_(True)
    seen(x).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
