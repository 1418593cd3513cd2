"""A source model trained for crafting is trained once per architecture, data, recipe, training
settings and seed, shared by every method that asks for it, and the poisons are unchanged."""

import pytest
import torch

import uebench.crafting as crafting
from uebench.datasets import load_dataset
from uebench.errors import UebenchError
from uebench.method import CraftContext
from uebench.storage.cache import PoisonCache
from uebench.training import TrainConfig

CPU = torch.device("cpu")
SOURCE = "source_epochs=1:batch_size=32:source=[smallcnn:width=4]"
EMAX = f"emax:steps=2:{SOURCE}"
TAP = f"tap:steps=2:restarts=1:targets=random:{SOURCE}"


@pytest.fixture(scope="module")
def data():
    return load_dataset("digits:size=8", None, 60, 30, seed=0)


def counting(monkeypatch) -> list[float]:
    """Record the epochs of every source training that trains (a cache hit's skeleton is
    built with 0 epochs)."""
    trained: list[float] = []
    real = crafting.train

    def spy(model, x, y, config, *args, **kwargs):
        if config.epochs:
            trained.append(config.epochs)
        return real(model, x, y, config, *args, **kwargs)

    monkeypatch.setattr(crafting, "train", spy)
    return trained


def context(cache=None, epochs=1) -> CraftContext:
    return CraftContext(CPU, TrainConfig(epochs=epochs, batch_size=32), False, cache)


def test_emax_and_tap_share_one_source_and_craft_what_they_would_alone(data, monkeypatch, tmp_path):
    alone = context().craft(TAP, data)  # no cache: TAP trains its own source
    trained = counting(monkeypatch)
    shared = context(PoisonCache(tmp_path))
    shared.craft(EMAX, data)
    tap = shared.craft(TAP, data)
    assert trained == [1]  # emax trained it; TAP found it
    assert len(list((tmp_path / "sources").glob("*.pt"))) == 1
    assert torch.equal(tap.delta, alone.delta)  # the restored random state: the same poison
    assert tap.meta["target_loss"] == alone.meta["target_loss"]


def test_another_seed_or_training_setting_trains_its_own_source(data, monkeypatch, tmp_path):
    trained = counting(monkeypatch)
    cache = PoisonCache(tmp_path)
    context(cache).craft(EMAX, data)
    context(cache).craft(f"{EMAX}:seed=1", data)
    context(cache, epochs=2).craft(EMAX.replace("source_epochs=1", "source_epochs=2"), data)
    assert trained == [1, 1, 2]
    assert len(list((tmp_path / "sources").glob("*.pt"))) == 3


def test_a_corrupt_source_file_is_named_not_used(data, tmp_path):
    context(PoisonCache(tmp_path)).craft(EMAX, data)
    (model_file,) = (tmp_path / "sources").glob("*.pt")
    model_file.write_bytes(b"not a model")
    (tmp_path / next(p.name for p in tmp_path.glob("*.pt"))).unlink()  # the poison: recraft
    with pytest.raises(UebenchError, match=r"source model file .* is unreadable"):
        context(PoisonCache(tmp_path)).craft(EMAX, data)
