"""``pue``: smoothed crafting steps, the switch from plain emin, the surrogate kept with poisons."""

import copy

import pytest
import torch
import torch.nn.functional as F

from uebench.api import craft, load
from uebench.crafting import SmoothedSourceSteps, WeightNoise, minimize_error, perturbed_weights
from uebench.errors import UebenchError
from uebench.poison import Poison, Surrogate
from uebench.registry import ARCHS, METHODS

SOURCE = "source=[smallcnn:width=4]"
QUICK = f"max_rounds=2:model_steps=2:{SOURCE}"


@pytest.fixture(scope="module")
def data():
    return load("cluttered-digits", train_size=150, test_size=50)


def test_perturbed_weights_moves_parameters_only_and_restores_them_exactly(tiny_cnn):
    model = tiny_cnn()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with perturbed_weights(model, 0.5, torch.Generator().manual_seed(0)):
        moved = {k: v.clone() for k, v in model.state_dict().items()}
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    for name, value in moved.items():
        if name.endswith(("running_mean", "running_var", "num_batches_tracked")):
            assert torch.equal(value, before[name])  # BatchNorm statistics are not parameters
        else:
            change = value - before[name]
            assert change.abs().max() > 0
    weights = torch.cat([(moved[k] - before[k]).flatten() for k in ("0.weight", "5.weight")])
    assert 0.35 < float(weights.std()) < 0.65  # σ = 0.5 on 120 entries


def test_smoothed_noise_step_follows_the_sign_of_the_summed_input_gradient(tiny_cnn):
    model, generator = tiny_cnn(), torch.Generator()
    x = torch.rand(6, 3, 5, 5, generator=torch.Generator().manual_seed(1)) * 0.8 + 0.1
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    eps, alpha = 8 / 255, 0.8 / 255
    noise = WeightNoise((0.0, 0.3, 0.6), draws=2, generator=generator.manual_seed(5))
    smoothed = minimize_error(
        model, x, y, torch.zeros_like(x), eps=eps, alpha=alpha, steps=1, weight_noise=noise
    )
    # By hand: σ=0 once weighted by the draw count, then two draws at each nonzero level,
    # taken from the same stream in the same order.
    generator.manual_seed(5)
    total = torch.zeros_like(x)
    for sigma, weight in [(0.0, 2.0), (0.3, 1.0), (0.3, 1.0), (0.6, 1.0), (0.6, 1.0)]:
        delta = torch.zeros_like(x, requires_grad=True)
        with perturbed_weights(model, sigma, generator):
            loss = F.cross_entropy(model(x + delta), y)
            total += weight * torch.autograd.grad(loss, delta)[0]
    # (x + δ) − x rounds in float, hence the tolerance, far below the step α.
    assert torch.allclose(smoothed, -alpha * total.sign(), rtol=0, atol=1e-6)
    plain = minimize_error(model, x, y, torch.zeros_like(x), eps=eps, alpha=alpha, steps=1)
    assert not torch.allclose(smoothed, plain, rtol=0, atol=1e-6)


def test_smoothed_source_step_uses_the_mean_gradient_over_the_draws(tiny_cnn):
    model, generator = tiny_cnn(), torch.Generator()
    x = torch.rand(8, 3, 5, 5, generator=torch.Generator().manual_seed(2))
    y = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    noise = WeightNoise((0.0, 0.2, 0.4), draws=3, generator=generator)
    source = SmoothedSourceSteps(
        model,
        8,
        lr=0.1,
        batch_size=8,
        generator=torch.Generator(),
        device=torch.device("cpu"),
        weight_noise=noise,
    )
    reference = copy.deepcopy(model).train()
    source.smoothing = True
    generator.manual_seed(3)
    source.step(x, y)
    # By hand on an untouched copy: mean of the gradients at the perturbed weights.
    generator.manual_seed(3)
    expected = [torch.zeros_like(p) for p in reference.parameters()]
    for sigma, weight in noise.samples():
        with perturbed_weights(reference, sigma, generator):
            grads = torch.autograd.grad(
                F.cross_entropy(reference(x), y), list(reference.parameters())
            )
        for total, grad in zip(expected, grads, strict=True):
            total += grad * weight / noise.total
    for param, grad in zip(model.parameters(), expected, strict=True):
        assert torch.allclose(param.grad, grad, atol=1e-6)  # .grad is kept until the next step


def test_pue_respects_eps_keeps_its_surrogate_and_is_class_wise(data):
    eps = 0.05  # not the default, so the option is seen to reach the noise
    poison = craft(
        f"pue:{QUICK}:draws=2:noise_draws=2:switch_acc=0:eps={eps}", data, "cpu", progress=False
    )
    assert poison.delta.abs().max() <= eps + 1e-6
    assert len(poison.delta) == data.num_classes and torch.equal(poison.rows, data.y_train)
    change = (poison.apply(data.x_train).int() - data.x_train.int()).abs()
    assert 0 < change.max() <= int(eps * 255 + 1e-4)
    assert poison.meta["smoothing_from_round"] == 2  # accuracy > 0 after the first round
    assert poison.surrogate is not None and poison.surrogate.arch == "smallcnn:width=4"
    model = poison.surrogate.build()
    assert sum(p.numel() for p in model.parameters()) > 0


def test_pue_is_plain_emin_until_the_switch_and_differs_after(data):
    # λ=0.1 stops the loop before accuracy passes 95%, so the switch never comes: the
    # smoothed machinery must then reproduce emin bit for bit.
    options = f"form=class:{QUICK}"
    emin = craft(f"emin:{options}", data, "cpu", progress=False)
    never = craft(f"pue:{options}:switch_acc=0.95:draws=2:noise_draws=2", data, "cpu", False)
    assert never.meta["smoothing_from_round"] is None
    assert torch.equal(emin.delta, never.delta)
    early = craft(f"pue:{options}:switch_acc=0:draws=2:noise_draws=2", data, "cpu", False)
    assert not torch.equal(emin.delta, early.delta)
    again = craft(f"pue:{options}:switch_acc=0:draws=2:noise_draws=2", data, "cpu", False)
    assert torch.equal(early.delta, again.delta)  # seeded: same spec, same poison


def test_sample_wise_pue(data):
    poison = craft(
        f"pue:form=sample:{QUICK}:steps=2:subset=0.3:draws=1:noise_draws=1:switch_acc=0",
        data,
        "cpu",
        progress=False,
    )
    assert len(poison.delta) == len(data.y_train)
    assert poison.delta.abs().max() <= 8 / 255 + 1e-6


def test_emin_keeps_its_surrogate_through_save_and_load(data, tmp_path):
    poison = craft(f"emin:form=class:{QUICK}", data, "cpu", progress=False)
    assert poison.surrogate is not None
    path = tmp_path / "p.pt"
    poison.save(path)
    loaded = Poison.load(path)
    assert loaded.content_hash() == poison.content_hash()
    state = loaded.surrogate.state
    assert all(torch.equal(state[k], v) for k, v in poison.surrogate.state.items())
    x = data.x_test.float() / 255
    with torch.no_grad():
        assert torch.equal(loaded.surrogate.build()(x), poison.surrogate.build()(x))

    payload = torch.load(path, weights_only=True)
    name = next(k for k in payload["surrogate"]["state"] if k.endswith("weight"))
    payload["surrogate"]["state"][name].view(-1)[0] += 1.0
    torch.save(payload, path)
    with pytest.raises(UebenchError, match="surrogate hash mismatch"):
        Poison.load(path)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("pue:draws=0", "draws >= 1"),
        ("pue:sigma_step=0", "sigma_step > 0"),
        ("pue:switch_acc=1", "switch_acc"),
        ("pue:eps=8", "did you mean 8/255"),
    ],
)
def test_bad_options_are_one_line_errors(spec, message):
    with pytest.raises(UebenchError, match=message):
        METHODS.build(spec)


def test_a_surrogate_keeps_its_weights_in_the_standard_layout():
    model = ARCHS.build("smallcnn:width=4", 10, (3, 8, 8)).to(memory_format=torch.channels_last)
    assert any(not value.is_contiguous() for value in model.state_dict().values())
    surrogate = Surrogate.of(model, "smallcnn:width=4", 10, (3, 8, 8))
    assert all(value.is_contiguous() for value in surrogate.state.values())
    x = torch.rand(4, 3, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(surrogate.build()(x), model.eval()(x))
