"""Issue 19: fidelity to the official code (crafting precision, TAP's source, emin-lbfgs's
solvers, orthogonal projection's pipeline, reference provenance)."""

import pytest
import torch

import uebench.crafting as crafting
import uebench.precision as precision
from uebench.errors import UebenchError
from uebench.identity import poison_key


def test_crafting_runs_in_fp32_and_bf16_only_when_asked(monkeypatch):
    calls = []
    real = precision.autocast
    monkeypatch.setattr(precision, "autocast", lambda device: calls.append(device) or real(device))
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 3))
    x, y = torch.rand(4, 3, 2, 2), torch.tensor([0, 1, 2, 0])
    crafting.minimize_error(model, x, y, torch.zeros_like(x), eps=0.1, alpha=0.01, steps=2)
    steps = crafting.SourceModelSteps(
        model, 4, lr=0.1, batch_size=4, generator=torch.Generator(), device=torch.device("cpu")
    )
    steps.step(x, y)
    assert calls == []  # fp32: the crafting steps never enter autocast
    monkeypatch.setattr(precision, "CRAFT_PRECISION", "bf16")
    crafting.minimize_error(model, x, y, torch.zeros_like(x), eps=0.1, alpha=0.01, steps=1)
    assert calls  # bf16, when asked, goes through the training autocast (bf16 on CUDA)
    with pytest.raises(UebenchError, match="fp32 or bf16"):
        crafting.craft_autocast(torch.device("cpu"), "fp16")


def test_gradient_methods_craft_without_the_training_autocast():
    import methods.error_maximizing
    import methods.error_minimizing_lbfgs
    import methods.targeted_adversarial

    for module in (
        methods.error_maximizing,
        methods.error_minimizing_lbfgs,
        methods.targeted_adversarial,
    ):
        assert not hasattr(module, "autocast"), module.__name__


def test_only_gradient_crafted_poisons_change_key_with_precision(monkeypatch):
    before = {m: poison_key(m, "fp", {"epochs": 1}) for m in ("emin", "tap", "random", "ar")}
    monkeypatch.setattr(precision, "CRAFT_PRECISION", "bf16")
    after = {m: poison_key(m, "fp", {"epochs": 1}) for m in before}
    assert before["emin"] != after["emin"] and before["tap"] != after["tap"]
    assert before["random"] == after["random"] and before["ar"] == after["ar"]


def test_tap_official_source_recipe_records_its_quality_and_warns_when_weak(capsys):
    from tests.test_rem_tap import synthetic
    from uebench.api import craft
    from uebench.grid.protocols import resolve_protocol
    from uebench.identity import method_identity

    data = synthetic(num_classes=3, per_class=20)
    spec = "tap:steps=1:restarts=1:batch_size=32:source_epochs=1:source=[smallcnn:width=4]"
    poison = craft(f"{spec}:eps=1/255:source_recipe=official", data)
    meta = poison.meta
    assert meta["source_recipe"] == "official" and meta["source_epochs"] == 1
    assert 0 <= meta["source_clean_acc"] <= 100 and 0 <= meta["target_rate"] <= 1
    assert poison.surrogate is None  # the normalizing wrapper is not an arch spec
    assert meta["target_rate"] < 0.5  # one step of 1/255 reaches few targets: warned
    assert "tap reaches its target class on only" in capsys.readouterr().err
    # The victim recipe stays the default, under the identity it always had.
    assert "source_recipe" not in method_identity("tap")["options"]
    assert method_identity("tap") != method_identity("tap:source_recipe=official")
    paper = resolve_protocol("paper", "cifar10").methods
    assert paper["tap"]["source_recipe"] == "official"


def test_unverified_references_are_shown_never_judged_and_ueraser_rows_name_a_variant(tmp_path):
    from uebench.results.references import (
        UNVERIFIED_STATUS,
        judge,
        load_references,
        read_reference_file,
    )

    apbench = load_references("apbench")
    assert len(apbench) == 7 and all("unverified" in r.marks for r in apbench)
    verdict = judge(apbench[0], [99.0])  # far outside any tolerance, yet not a MISMATCH
    assert verdict.status == UNVERIFIED_STATUS
    header = "id,dataset,method,defense,arch,value,tolerance\n"
    bare = tmp_path / "bare.csv"
    bare.write_text(header + "a,cifar10,emin,ueraser,resnet18,50,5\n")
    with pytest.raises(UebenchError, match="must name its variant"):
        read_reference_file(bare)
    named = tmp_path / "named.csv"
    named.write_text(header + "a,cifar10,emin,ueraser:variant=max,resnet18,50,5\n")
    assert read_reference_file(named)[0].defense == "ueraser:variant=max"


def test_emin_lbfgs_offers_a_true_lbfgs_solver_within_the_budget(tiny_cnn):
    import torch.nn.functional as F

    from uebench.identity import method_identity
    from uebench.registry import METHODS

    model = tiny_cnn()
    generator = torch.Generator().manual_seed(1)
    x = torch.rand(12, 3, 6, 6, generator=generator)
    x[:, 0, 0, 0] = 0.0  # pixels at the range's ends: the change of variables must respect them
    x[:, 1, 0, 0] = 1.0
    y = torch.arange(12) % 3
    eps = 8 / 255

    def objective(delta):
        with torch.no_grad():
            loss = F.cross_entropy(model(x + delta), y, reduction="sum")
            return float(loss + delta.pow(2).sum())

    solved = {}
    for solver in ("adam", "lbfgs"):
        method = METHODS.resolve(f"emin-lbfgs:solver={solver}:steps=20").build()
        delta = method._solve(model, x, y, torch.zeros_like(x))
        assert float(delta.abs().max()) <= eps + 1e-6
        assert float((x + delta).min()) >= -1e-6 and float((x + delta).max()) <= 1 + 1e-6
        solved[solver] = objective(delta)
    assert solved["lbfgs"] < objective(torch.zeros_like(x))
    assert solved["lbfgs"] <= solved["adam"] + 1e-3  # 20 L-BFGS iterations do at least as well
    # Adam stays the default under the identity it always had.
    assert "solver" not in method_identity("emin-lbfgs")["options"]
    with pytest.raises(UebenchError, match="not one of adam, lbfgs"):
        METHODS.resolve("emin-lbfgs:solver=newton").build()


def test_orthoproj_paper_pipeline_adds_strong_augmentation_and_cutmix():
    from tests.test_field_countermeasures import uint8_trainset
    from uebench.grid.cell import build_countermeasure
    from uebench.identity import countermeasure_identity

    train = uint8_trainset(90, shape=(3, 8, 8), k=3)
    plain = build_countermeasure("orthoproj:epochs=1:device=cpu")
    paper = build_countermeasure("orthoproj:epochs=1:device=cpu:pipeline=paper")
    for measure in (plain, paper):
        measure.prepare(train, torch.Generator().manual_seed(0))
    x = torch.rand(64, 3, 8, 8)
    y = train.y[:64]
    same_x, same_y = plain.augment(x, y)
    assert same_x is x and same_y is y  # the projection alone leaves batches alone
    torch.manual_seed(0)
    soft = 0
    for _ in range(12):
        out_x, out_y = paper.augment(x, y)
        assert not torch.equal(out_x, x) and float(out_x.min()) >= 0 and float(out_x.max()) <= 1
        soft += out_y.dim() == 2  # a CutMixed batch has soft labels
    assert 2 <= soft <= 10  # CutMix on about half the batches
    assert "pipeline" not in countermeasure_identity("orthoproj")[0]["options"]
