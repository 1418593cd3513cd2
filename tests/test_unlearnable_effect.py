"""The harness shows the unlearnable effect on the embedded dataset (CPU, about seven minutes).

Measured on this 2-core CPU (cluttered-digits, victim resnet18:width=16, 20 epochs, seed 0),
final accuracy (best epoch) with two threads: clean 80.3%, sample-wise random 86.6%,
sample-wise emin 15.9% (17.3%), class-wise emin 23.4% (23.4%); both emin forms crafted with a
width-16 source through the victim's crop and flip (``augment=true``).  With one thread the
emin forms gave 18.6% (22.4%) and 17.3% (18.9%).  Without ``augment`` the paper's noise only
cuts accuracy here (class-wise 61.0%, sample-wise 51.9% or 67.2% by thread count), because a
2-px crop moves noise crafted at fixed pixels of a 16-px image.  Sample-wise crafting takes
5 PGD steps per round and stops at 10% error (at most 20 rounds) to fit the CPU budget.

One unlearnable class (Figure 2c-d, ``classes=3``) uses ε=10/255: at the paper's 8/255 the
recall of class 3 spread from 9% to 69% over seeds 0-2 and one or two threads (it was always
the worst class, but not always misclassified); at 10/255 it was 3% to 12%, with every other
class at 70% or more (``benchmarks/one_class_spread.py``).  At 12/255 the other classes are
learned much later (33% overall after 20 epochs).
"""

import pytest

from uebench.grid import GridConfig, run_grid

# The layout before the glyph split and the digits' new contrast: the default run's end-to-end
# check is tests/test_headline.py, on today's default; these run with ``pytest -m slow``.
pytestmark = pytest.mark.slow

CHANCE = 10.0
DATASET = "cluttered-digits:split=image:contrast=0.2:digit_size=8:clutter=0.3"
ARCH = "resnet18:width=16"
EMIN_SAMPLE = f"emin:augment=true:steps=5:stop_error=0.1:max_rounds=20:source=[{ARCH}]"
EMIN_CLASS = f"emin:form=class:augment=true:source=[{ARCH}]"
ONE_CLASS = f"emin:form=class:augment=true:eps=10/255:source=[{ARCH}]:classes=3"


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    out = tmp_path_factory.mktemp("effect")
    table = run_grid(
        GridConfig(
            # The image-split layout and the paper protocol these numbers were measured with
            # (the default now splits by glyph and runs the mini protocol: see
            # benchmarks/headline.py for the checks on it).
            dataset=DATASET,
            protocol="paper",
            methods=["clean", "random", EMIN_SAMPLE, EMIN_CLASS, ONE_CLASS],
            archs=[ARCH],
            out=str(out / "grid"),
            device="cpu",
            progress=False,
        )
    )
    records = {r["method"]: r for r in _records(out / "grid")}
    return table.set_index("method"), records


def _records(grid):
    import json

    return [json.loads(path.read_text()) for path in (grid / "cells").glob("*.json")]


def test_clean_training_learns(results):
    table, _ = results
    assert table.loc["clean", "final_acc"] >= 70.0


def test_samplewise_random_noise_is_learnable(results):
    table, _ = results
    assert table.loc["random", "final_acc"] >= table.loc["clean", "final_acc"] - 10


def test_classwise_error_minimizing_noise_holds_accuracy_near_chance(results):
    table, records = results
    assert max(h["test_acc"] for h in records[EMIN_CLASS]["history"]) <= CHANCE + 20
    assert table.loc[EMIN_CLASS, "final_acc"] <= table.loc["clean", "final_acc"] - 50


def test_samplewise_error_minimizing_noise_holds_accuracy_near_chance(results):
    table, records = results
    assert max(h["test_acc"] for h in records[EMIN_SAMPLE]["history"]) <= CHANCE + 20
    assert table.loc[EMIN_SAMPLE, "final_acc"] <= table.loc["random", "final_acc"] - 40


def _recalls(confusion):
    return [row[k] / sum(row) for k, row in enumerate(confusion)]


def test_one_unlearnable_class_is_misclassified_and_the_others_are_learned(results):
    _, records = results
    recall = _recalls(records[ONE_CLASS]["confusion_matrix"])
    clean = _recalls(records["clean"]["confusion_matrix"])
    others = [value for k, value in enumerate(recall) if k != 3]
    assert recall[3] <= 0.3
    assert recall[3] <= clean[3] - 0.4
    assert min(others) >= recall[3] + 0.4
    assert sum(others) / len(others) >= 0.75
