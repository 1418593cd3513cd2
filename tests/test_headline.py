"""The headline grid under the default protocol shows the paper's findings, end to end.

``uebench run --methods emin,random,emax --defenses cutmix,advtrain`` on the embedded default
(``cluttered-digits`` under ``mini``), with ``clean`` and standard training to judge it by.
The default run checks the four findings that need no error-maximizing noise on five cells
(sample-wise error-minimizing noise near chance; random noise as learnable as clean data;
CutMix does not rescue; adversarial training does), about four minutes on two cores, most of
it crafting the error-minimizing noise; the error-maximizing check crafts a second poison and
is slow (``pytest -m slow``).  ``benchmarks/headline.py`` times the whole grid and prints the
same checks.

Measured (``benchmarks/headline.py``, seed 0): the poison's effect holds over crafting seeds
and thread counts (sample-wise emin 11.2–16.2% under standard training at crafting seeds 0–2
and one or two threads), so the bounds below are the issue's, not fitted to one run.
"""

import pandas as pd
import pytest

from uebench.grid import GridConfig, run_grid

CHANCE = 10.0


@pytest.fixture(scope="module")
def acc(tmp_path_factory):
    out = tmp_path_factory.mktemp("headline") / "grid"
    cells = [("clean", "none"), ("emin", "none"), ("random", "none")]
    cells += [("emin", "cutmix"), ("emin", "advtrain")]
    tables = [
        run_grid(GridConfig(methods=[method], defenses=[defense], out=str(out), progress=False))
        for method, defense in cells
    ]
    table = pd.concat(tables, ignore_index=True)
    assert set(table["protocol"]) == {"mini"} and set(table["num_classes"]) == {10}
    return table.set_index(["method", "defense"])["final_acc"]


def test_error_minimizing_noise_holds_standard_training_near_chance(acc):
    assert acc["clean", "none"] >= 80
    assert acc["emin", "none"] <= CHANCE + 15


def test_random_noise_leaves_clean_accuracy(acc):
    assert abs(acc["random", "none"] - acc["clean", "none"]) <= 10


def test_cutmix_does_not_rescue(acc):
    assert acc["emin", "cutmix"] <= CHANCE + 20


def test_adversarial_training_rescues(acc):
    assert acc["emin", "advtrain"] >= acc["emin", "none"] + 15


@pytest.mark.slow
def test_error_maximizing_noise_leaves_clean_accuracy(acc, tmp_path):
    table = run_grid(GridConfig(methods=["emax"], out=str(tmp_path / "grid"), progress=False))
    assert abs(float(table["final_acc"].iloc[0]) - acc["clean", "none"]) <= 10
