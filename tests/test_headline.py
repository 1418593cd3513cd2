"""The headline grid under the mini protocol shows the paper's findings (slow: about 15 minutes).

``uebench run --methods emin,random,emax --defenses cutmix,advtrain`` on the embedded default,
plus ``clean`` and standard training to judge it by (twelve cells).  Deselected by default
(``pytest -m slow``): with the six comparison cells it does not fit CI's ten-minute test
budget on two cores.  ``benchmarks/headline.py`` times the same grid and prints the same checks.
"""

import pytest

from uebench.cli import main

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def acc(tmp_path_factory):
    import pandas as pd

    out = tmp_path_factory.mktemp("headline") / "grid"
    grid = ["--methods", "clean,emin,random,emax", "--defenses", "none,cutmix,advtrain"]
    assert main(["run", *grid, "--out", str(out), "--no-progress"]) == 0
    table = pd.read_csv(out / "results.csv")
    assert set(table["protocol"]) == {"mini"}
    return table.set_index(["method", "defense"])["final_acc"]


CHANCE = 10.0


def test_error_minimizing_noise_holds_standard_training_near_chance(acc):
    assert acc["emin", "none"] <= CHANCE + 15


def test_random_and_error_maximizing_noise_leave_clean_accuracy(acc):
    assert abs(acc["random", "none"] - acc["clean", "none"]) <= 10
    assert abs(acc["emax", "none"] - acc["clean", "none"]) <= 10


def test_cutmix_does_not_rescue(acc):
    assert acc["emin", "cutmix"] <= CHANCE + 20


def test_adversarial_training_rescues(acc):
    assert acc["emin", "advtrain"] >= acc["emin", "none"] + 15
