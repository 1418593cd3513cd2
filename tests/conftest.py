"""Test-session setup shared by every test module, and the tiny fixtures several share."""

import pytest
import torch
from tiny_cli import TINY_BENCH, TINY_SUITE

import uebench.grid.runner as runner
from uebench.benchmark.reference import write_reference
from uebench.cli import main

# The reference-regression plugin (options --uebench-results etc., the uebench_check fixture and
# marks for reference cases).  Loaded here rather than through a pytest11 entry point so that it
# runs only in this project's test sessions, not in every pytest session of a uebench user.
pytest_plugins = ["uebench.regression"]


@pytest.fixture(scope="session")
def tiny_grid() -> dict:
    """GridConfig fields for a seconds-long grid: 8-px digits, a width-4 CNN, one epoch."""
    return {
        "dataset": "digits:size=8",
        "archs": ["smallcnn:width=4"],
        "epochs": 1,
        "train_size": 200,
        "test_size": 100,
        "progress": False,
        "device": "cpu",
    }


def make_tiny_cnn() -> torch.nn.Module:
    """A seeded 3-class CNN in eval mode, with BatchNorm statistics that are not the defaults."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3, padding=1),
        torch.nn.BatchNorm2d(4),
        torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(),
        torch.nn.Linear(4, 3),
    )
    model.train()
    model(torch.rand(16, 3, 6, 6))
    return model.eval()


@pytest.fixture
def tiny_cnn():
    """A factory of identical :func:`make_tiny_cnn` models (a test may need two)."""
    return make_tiny_cnn


@pytest.fixture
def no_work(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any cell that starts (and so loads data) fails the test: errors must come first."""

    def refuse(*args, **kwargs):
        raise AssertionError("a cell started before the bad input was reported")

    monkeypatch.setattr(runner, "run_cell", refuse)


@pytest.fixture(scope="session")
def bench_field(tmp_path_factory) -> dict:
    """A tiny field for the bench tests: ``clean`` and ``cuda`` under the two countermeasures of
    :data:`tiny_cli.TINY_SUITE` at seeds 0 and 1, written as a reference file by the reference
    writer (no marks, so the regression plugin runs its rows).  Paths: ``suite``, ``run``,
    ``reference``."""
    root = tmp_path_factory.mktemp("bench-field")
    suite = root / "tiny-v1.toml"
    suite.write_text(TINY_SUITE)
    run = root / "field"
    argv = ["run", *TINY_BENCH, "--methods", "clean,cuda", "--seeds", "0,1", "--no-progress"]
    argv += ["--defenses", "none,uniform-noise:eps=64/255", "--out", str(run)]
    assert main(argv) == 0
    reference = root / "refs" / "uebench-mini-digits.csv"
    write_reference([run], reference, suite, marks=())
    return {"suite": suite, "run": run, "reference": reference}
