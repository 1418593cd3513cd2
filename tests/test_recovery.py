"""``recover``: the projection, the fine-tuning within η, the baselines, the runner's record."""

import copy
import json

import pytest
import torch
from uebench.attacks_defenses.recovery import Recovery, distance, project_, trainable

from uebench.countermeasure import TrainingContext, TrainSet
from uebench.errors import UebenchError
from uebench.grid import GridConfig, run_grid
from uebench.registry import ARCHS, DEFENSES
from uebench.training import TrainConfig


def test_projection_onto_the_sphere_and_into_the_ball():
    generator = torch.Generator().manual_seed(0)
    anchor = [torch.randn(3, 4, generator=generator), torch.randn(5, generator=generator)]
    far = [a + 2.0 * torch.randn(a.shape, generator=generator) for a in anchor]
    near = [a + 1e-3 * torch.randn(a.shape, generator=generator) for a in anchor]
    for mode in ("sphere", "ball"):
        params = [p.clone() for p in far]
        before = project_(params, anchor, 0.7, mode)
        assert before == pytest.approx(distance(far, anchor))
        assert distance(params, anchor) == pytest.approx(0.7, rel=1e-5)
        # The direction from the anchor is kept.
        cosine = torch.nn.functional.cosine_similarity(
            torch.cat([(p - a).flatten() for p, a in zip(params, anchor, strict=True)]),
            torch.cat([(p - a).flatten() for p, a in zip(far, anchor, strict=True)]),
            dim=0,
        )
        assert float(cosine) == pytest.approx(1.0, abs=1e-5)
    inside = [p.clone() for p in near]
    project_(inside, anchor, 0.7, "ball")
    assert all(
        torch.equal(p, q) for p, q in zip(inside, near, strict=True)
    )  # the ball leaves it alone
    project_(inside, anchor, 0.7, "sphere")
    assert distance(inside, anchor) == pytest.approx(0.7, rel=1e-5)  # the sphere pushes out


def _setup(n=120, classes=3, side=8):
    generator = torch.Generator().manual_seed(0)
    y = torch.arange(n) % classes
    # Class-coloured images: learnable in a few steps, so fine-tuning has something to find.
    base = torch.zeros(n, 3, side, side)
    base[torch.arange(n), y] = 0.8
    clean = (base + 0.2 * torch.rand(n, 3, side, side, generator=generator)).mul(255).byte()
    test_x, test_y = clean[:60].clone(), y[:60].clone()
    model = ARCHS.build("smallcnn:width=4", classes, (3, side, side))
    train = TrainSet(clean, y, clean, torch.ones(n, dtype=torch.bool))
    context = TrainingContext(
        torch.device("cpu"),
        TrainConfig(epochs=2, batch_size=32),
        torch.Generator().manual_seed(0),
        (test_x, test_y),
        classes,
        "smallcnn:width=4",
    )
    return model, train, context


@pytest.mark.parametrize("mode", ["sphere", "ball"])
def test_recovery_fine_tunes_within_eta_and_reports_baselines(mode):
    model, train, context = _setup()
    poisoned = copy.deepcopy(model)
    notes = Recovery(eta=0.5, project=mode, directions=3, epochs=3).after_training(
        model, train, context
    )
    moved = distance(trainable(model), [p.detach() for p in trainable(poisoned)])
    if mode == "sphere":
        assert moved == pytest.approx(0.5, rel=1e-4)
    else:
        assert 0 < moved <= 0.5 + 1e-5
    assert notes["recover_distance"] == pytest.approx(moved, rel=1e-6)
    assert notes["recover_projection"] == mode
    assert notes["recover_clean_size"] == 24  # stratified 20% of 120
    assert notes["recover_steps"] == 3  # one batch of 24 per epoch
    for key in ("baseline_acc", "scratch_acc", "directions_acc", "directions_oracle_acc"):
        assert 0 <= notes[key] <= 100
    assert notes["directions_oracle_acc"] >= notes["directions_acc"]


def test_a_ball_never_reached_is_plain_fine_tuning():
    # With η far beyond where 3 epochs can move, projected fine-tuning is the unconstrained one
    # exactly: same initialization, batch order, augmentation and steps.
    _, train, context = _setup()
    recovery = Recovery(eta=1e6, project="ball", epochs=3)
    x, y = train.clean_x[:48], train.y[:48]
    free, inside = recovery._fresh_model(context), recovery._fresh_model(context)
    start = [p.detach().clone() for p in trainable(inside)]
    recovery._finetune(free, None, x, y, 3, context)
    recovery._finetune(inside, start, x, y, 3, context)
    assert 0 < distance(trainable(inside), start) < 1e6
    assert all(
        torch.equal(a, b)
        for a, b in zip(free.state_dict().values(), inside.state_dict().values(), strict=True)
    )
    sphere = Recovery(eta=1e6, project="sphere", directions=0, epochs=3, baseline=False)
    far = sphere.after_training(free, train, context)
    assert far["recover_distance"] == pytest.approx(1e6, rel=1e-4)


def test_random_directions_sit_at_distance_eta_and_leave_the_model_alone():
    model, train, context = _setup()
    before = copy.deepcopy(model.state_dict())
    recovery = Recovery(eta=0.3, directions=4, baseline=False)
    x, y = train.clean_x[:20], train.y[:20]
    seen = []

    def evaluate(probe, images, labels):
        seen.append(distance(trainable(probe), [p.detach() for p in trainable(model)]))
        return 50.0

    recovery._random_directions(model, x, y, context, evaluate)
    assert seen and all(d == pytest.approx(0.3, rel=1e-5) for d in seen)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_options_and_spec():
    assert DEFENSES.build("recover:0.5").eta == 0.5
    with pytest.raises(UebenchError, match="eta > 0"):
        DEFENSES.build("recover:eta=0")
    with pytest.raises(UebenchError, match="fraction"):
        DEFENSES.build("recover:fraction=1.5")
    with pytest.raises(UebenchError, match="not one of"):
        DEFENSES.build("recover:project=cube")


def test_grid_cell_records_trained_and_recovered_accuracy(tmp_path):
    table = run_grid(
        GridConfig(
            dataset="digits:size=8",
            methods=["random:form=class"],
            defenses=["recover:eta=0.5:directions=2:epochs=1"],
            archs=["smallcnn:width=4"],
            epochs=1,
            train_size=200,
            test_size=100,
            progress=False,
            device="cpu",
            out=str(tmp_path / "run"),
        )
    )
    assert len(table) == 1
    (path,) = (tmp_path / "run" / "cells").glob("*.json")
    record = json.loads(path.read_text())
    notes = record["countermeasure_notes"]
    assert notes["recover_eta"] == 0.5 and notes["recover_clean_size"] == 40
    assert record["trained_acc"] is not None and record["final_acc"] is not None
    assert notes["recover_distance"] == pytest.approx(0.5, rel=1e-4)
