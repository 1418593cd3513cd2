"""Test-session setup shared by every test module, and the tiny fixtures several share."""

import pytest
import torch

import uebench.grid.runner as runner

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
