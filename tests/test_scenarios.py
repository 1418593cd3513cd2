"""Scenario options: unlearnable classes, mixtures, patches, transfer, and the backdoor rate."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from uebench.analysis.diagnostics import backdoor_success_rate
from uebench.data import ImageData
from uebench.errors import UebenchError
from uebench.grid import GridConfig, run_grid
from uebench.identity import method_identity
from uebench.method import CraftContext
from uebench.poison import Poison
from uebench.registry import METHODS
from uebench.scenarios import only_classes, resolve_classes
from uebench.storage.cache import PoisonCache

CLASSES = ("airplane", "bird", "cat", "ship")


def tiny_data(n: int = 80, side: int = 8, seed: int = 0, classes=CLASSES) -> ImageData:
    generator = torch.Generator().manual_seed(seed)

    def make(count):
        return torch.randint(
            0,
            256,
            (count, 3, side, side),
            dtype=torch.uint8,
            generator=generator,
        )

    y = torch.arange(n) % len(classes)
    return ImageData(
        "tiny", make(n), y, make(n // 2), torch.arange(n // 2) % len(classes), tuple(classes)
    )


def context(tmp_path=None) -> CraftContext:
    cache = PoisonCache(tmp_path / "cache") if tmp_path is not None else None
    return CraftContext(torch.device("cpu"), progress=False, cache=cache)


def test_classes_resolve_from_numbers_and_names():
    assert resolve_classes(["3", "bird", "Bird"], CLASSES) == [1, 3]
    with pytest.raises(UebenchError, match="valid: airplane, bird"):
        resolve_classes(["dog"], CLASSES)
    with pytest.raises(UebenchError, match="out of range"):
        resolve_classes(["7"], CLASSES)


def test_only_classes_leaves_other_classes_clean():
    data = tiny_data()
    poison = METHODS.build("random:form=class").craft(data, context())
    kept = only_classes(poison, data.y_train, [1, 3])
    assert torch.equal(kept.rows >= 0, (data.y_train == 1) | (data.y_train == 3))
    assert kept.meta["classes"] == [1, 3]


def test_a_single_unlearnable_class_run_records_what_was_poisoned(tmp_path, capsys):
    table = run_grid(
        GridConfig(
            dataset="digits:size=8",
            methods=["random:form=class:classes=2", "random:form=class:classes=[0,1]"],
            archs=["smallcnn:width=8"],
            epochs=1,
            train_size=200,
            test_size=100,
            out=str(tmp_path / "run"),
            device="cpu",
            progress=False,
        )
    )
    records = {
        r["method"]: r
        for r in map(json.loads, map(lambda p: p.read_text(), (tmp_path / "run/cells").glob("*")))
    }
    assert records["random:form=class:classes=2"]["poison"]["poisoned_fraction"] == pytest.approx(
        0.1, abs=0.01
    )
    assert records["random:form=class:classes=[0,1]"]["poison"]["classes"] == [0, 1]
    # Both share one crafted class-wise noise set: only which images get it differs.
    assert len(list((tmp_path / "cache").glob("*.pt"))) == 1
    for record in records.values():
        assert 0 <= record["backdoor_success"] <= 100
    assert len(table) == 2

    from uebench.cli import main

    assert main(["diagnose", str(tmp_path / "run"), "--method", "random:form=class:classes=2"]) == 0
    shown = capsys.readouterr().out
    assert "confusion matrix" in shown and "backdoor success" in shown and "classes=2" in shown
    assert main(["diagnose", str(tmp_path / "run"), "--method", "nope"]) == 2


def test_mixture_choose_draws_from_both_sets(tmp_path):
    data = tiny_data(400)
    spec = "mix:first=[random:form=class]:second=[random:form=class:seed=1]"
    poison = METHODS.build(spec).craft(data, context(tmp_path))
    assert len(poison.delta) == 2 * len(CLASSES)
    from_second = poison.rows >= len(CLASSES)
    assert 0.4 < float(from_second.float().mean()) < 0.6
    assert torch.equal(poison.rows % len(CLASSES), data.y_train)  # each image keeps its class
    assert len(list((tmp_path / "cache").glob("*.pt"))) == 2  # the parts are cached for reuse


def test_mixture_add_sums_and_clips_to_eps():
    data = tiny_data()
    spec = "mix:first=[random:form=class]:second=[random:eps=4/255]:combine=add"
    poison = METHODS.build(spec).craft(data, context())
    first = METHODS.build("random:form=class").craft(data, context())
    second = METHODS.build("random:eps=4/255").craft(data, context())
    expected = (first.delta[data.y_train] + second.delta).clamp(-8 / 255, 8 / 255)
    assert torch.allclose(poison.delta[poison.rows], expected)
    assert float(poison.delta.abs().max()) <= 8 / 255 + 1e-7


def test_nested_method_specs_are_canonical_in_the_identity():
    a = method_identity("mix:first=[random:form=class]:second=[random:eps=8/255]")
    b = method_identity("mix:first=[random:form=class:eps=8/255]:second=[random]")
    assert a == b
    assert a["options"]["first"]["name"] == "random"


def test_patch_noise_covers_one_window_per_image():
    data = tiny_data(80)
    spec = "emin-patch:size=4:source=[smallcnn:width=4]:max_rounds=2:model_steps=2"
    poison = METHODS.build(spec).craft(data, context())
    touched = (poison.delta != 0).any(1)  # N×H×W
    for image in touched:
        rows, cols = torch.nonzero(image, as_tuple=True)
        assert int(rows.max() - rows.min()) < 4 and int(cols.max() - cols.min()) < 4
    assert float(poison.delta.abs().max()) <= 8 / 255 + 1e-7
    # Two images of one class carry the same patch, wherever it sits.
    first, second = torch.nonzero(data.y_train == 0).flatten()[:2]

    def patch(noise):
        rows, cols = torch.nonzero((noise != 0).any(0), as_tuple=True)
        top, left = int(rows.min()), int(cols.min())
        return noise[:, top : top + 4, left : left + 4]

    assert torch.allclose(patch(poison.delta[first]), patch(poison.delta[second]))
    with pytest.raises(UebenchError, match="larger than"):
        METHODS.build("emin-patch:size=9").craft(data, context())


def _npz(path, data: ImageData) -> str:
    np.savez(
        path,
        x_train=data.x_train.permute(0, 2, 3, 1).numpy(),
        y_train=data.y_train.numpy(),
        x_test=data.x_test.permute(0, 2, 3, 1).numpy(),
        y_test=data.y_test.numpy(),
        classes=np.array(data.classes),
    )
    return str(path)


def test_transfer_maps_source_class_noise_onto_target_classes(tmp_path):
    source = tiny_data(40, seed=1, classes=("airliner", "hummingbird", "tabby", "liner"))
    target = tiny_data(80)
    mapping = tmp_path / "map.csv"
    mapping.write_text("target,source\nairplane,airliner\nship,liner\n")
    spec = f"transfer:method=[random:form=class]:dataset=[npz:{_npz(tmp_path / 's.npz', source)}]"
    poison = METHODS.build(f"{spec}:mapping={mapping}").craft(target, context(tmp_path))
    crafted = METHODS.build("random:form=class").craft(source, context())
    assert torch.equal(poison.delta[0], crafted.delta[0])  # airplane ← airliner
    assert torch.equal(poison.delta[3], crafted.delta[3])  # ship ← liner
    assert torch.equal(poison.rows >= 0, (target.y_train == 0) | (target.y_train == 3))
    assert poison.meta["class_map"] == {"airplane": "airliner", "ship": "liner"}


def test_transfer_rejects_bad_inputs(tmp_path):
    target = tiny_data(80)
    small = _npz(tmp_path / "small.npz", tiny_data(40, side=4))
    with pytest.raises(UebenchError, match="at the target's size"):
        METHODS.build(f"transfer:method=[random:form=class]:dataset=[npz:{small}]").craft(
            target, context()
        )
    bad = tmp_path / "bad.csv"
    bad.write_text("from,to\na,b\n")
    with pytest.raises(UebenchError, match="'target' and 'source'"):
        METHODS.build(f"transfer:mapping={bad}")
    same = _npz(tmp_path / "same.npz", tiny_data(40, seed=2))
    with pytest.raises(UebenchError, match="no training image of the target"):
        METHODS.build(f"transfer:method=random:dataset=[npz:{same}]").craft(target, context())


def test_samplewise_transfer_follows_images_into_a_merged_dataset(tmp_path):
    from uebench.datasets import load_dataset

    base = _npz(tmp_path / "base.npz", tiny_data(40, seed=3, classes=("a", "b")))
    extra_data = tiny_data(80, seed=4)
    extra = _npz(tmp_path / "extra.npz", extra_data)
    merged = load_dataset(f"add-classes:base=[npz:{base}]:extra=[npz:{extra}]:classes=ship")
    assert merged.num_classes == 3 and merged.classes[2] == "ship (extra)"
    assert int((merged.y_train == 2).sum()) == int((extra_data.y_train == 3).sum())
    poison = METHODS.build(f"transfer:method=random:dataset=[npz:{extra}]").craft(merged, context())
    crafted = METHODS.build("random").craft(extra_data, context())
    assert torch.equal(poison.rows >= 0, merged.y_train == 2)  # only the added ships
    ships = torch.nonzero(extra_data.y_train == 3).flatten()
    assert torch.equal(poison.delta[poison.rows[merged.y_train == 2]], crafted.delta[ships])


def test_backdoor_rate_is_a_rate_and_only_for_class_wise_noise():
    data = tiny_data(80)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 64, len(CLASSES)))
    poison = METHODS.build("random:form=class").craft(data, context())
    rate = backdoor_success_rate(
        model,
        poison,
        data.x_test,
        data.y_test,
        len(CLASSES),
        torch.device("cpu"),
        torch.Generator().manual_seed(0),
    )
    assert rate is not None and 0 <= rate <= 100
    sample = METHODS.build("random").craft(data, context())
    assert (
        backdoor_success_rate(
            model,
            sample,
            data.x_test,
            data.y_test,
            len(CLASSES),
            torch.device("cpu"),
            torch.Generator(),
        )
        is None
    )


def test_backdoor_rate_counts_predictions_of_the_trigger_class():
    """A model that reads the trigger perfectly scores 100%; one that ignores it, its base rate."""
    data = tiny_data(80)
    delta = torch.zeros(len(CLASSES), 3, 8, 8)
    for k in range(len(CLASSES)):
        delta[k, 0, 0, k] = 8 / 255  # a one-pixel trigger per class
    poison = Poison(delta, data.y_train.clone(), 8 / 255, {"form": "class"})

    class TriggerReader(torch.nn.Module):
        def forward(self, x):
            x = x * 255
            lifted = x[:, 0, 0, : len(CLASSES)] - x[:, 1, 0, : len(CLASSES)]  # 8 where triggered
            return lifted

    black = ImageData(
        "black", data.x_train, data.y_train, torch.zeros_like(data.x_test), data.y_test, CLASSES
    )
    rate = backdoor_success_rate(
        TriggerReader(),
        poison,
        black.x_test,
        black.y_test,
        len(CLASSES),
        torch.device("cpu"),
        torch.Generator().manual_seed(0),
    )
    assert rate == 100.0
