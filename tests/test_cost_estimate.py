"""What a grid says before its first cell: the protocol, an estimate of its time on this device,
and a warning when the ``paper`` protocol is about to train on a CPU; and ``--help`` leaving the
protocol's defaults to the protocol."""

from __future__ import annotations

import pytest
import torch
from tiny_cli import TINY_CLI

import uebench.grid.runner as runner
from uebench.cli import _parser, main
from uebench.grid import GridConfig
from uebench.grid.cell import load_cell_data
from uebench.grid.estimate import (
    describe_device,
    describe_duration,
    estimate_grid,
    paper_on_cpu_warning,
    probe_step,
    protocol_phrase,
    step_seconds,
)
from uebench.training import TrainConfig


class Stopped(Exception):
    """Raised by the stand-in for a cell: the test has seen what came before it."""


@pytest.fixture
def first_cell(monkeypatch: pytest.MonkeyPatch, capsys) -> list[tuple[str, str]]:
    """Replace the cell runner by one that records the output printed before it and stops."""
    seen: list[tuple[str, str]] = []

    def record(*args, **kwargs):
        captured = capsys.readouterr()
        seen.append((captured.out, captured.err))
        raise Stopped

    monkeypatch.setattr(runner, "run_cell", record)
    return seen


def test_the_estimate_comes_before_any_training_even_without_progress(tmp_path, first_cell):
    argv = ["run", *TINY_CLI, "--methods", "clean,emin", "--defenses", "none,advtrain"]
    with pytest.raises(Stopped):
        main([*argv, "--out", str(tmp_path / "o"), "--no-progress", "--protocol", "mini"])
    ((out, err),) = first_cell
    (line,) = [line for line in out.splitlines() if "estimated" in line]
    assert line.startswith(
        "uebench: 4 cells of clean, emin under protocol mini on digits (200 training images)"
    )
    assert "on cpu with" in line and "a rough guide" in line
    assert "crafting" in line and "1 poison" in line  # emin's; clean costs nothing to craft
    assert "warning" not in err


def test_the_paper_protocol_on_a_cpu_warns_and_names_its_choice(tmp_path, first_cell):
    # digits runs under paper by default; its own architecture and epochs are left to it.
    argv = ["run", "--dataset", "digits:size=8", "--train-size", "200", "--test-size", "100"]
    with pytest.raises(Stopped):
        main([*argv, "--device", "cpu", "--methods", "clean", "--out", str(tmp_path / "o"),
              "--no-progress"])  # fmt: skip
    ((out, err),) = first_cell
    (warning,) = err.strip().splitlines()
    assert warning.startswith("uebench: warning: protocol paper trains resnet18 for 15 epochs")
    assert "--protocol mini" in warning
    assert "protocol paper (the default for digits; --protocol to choose)" in out
    assert "estimated" in out


def test_cifar10_without_a_protocol_says_it_chose_paper_and_warns_on_a_cpu():
    config = GridConfig(dataset="cifar10", methods=["clean"], device="cpu")
    protocol = config.resolved_protocol()
    assert protocol_phrase(config, protocol) == (
        "protocol paper (the default for cifar10; --protocol to choose)"
    )
    cells = config.cells()
    warning = paper_on_cpu_warning(config, cells, torch.device("cpu"))
    assert warning is not None and "resnet18 for 60 epochs" in warning
    assert "--protocol mini" in warning
    assert paper_on_cpu_warning(config, cells, torch.device("cuda")) is None
    mini = GridConfig(dataset="cifar10", protocol="mini", methods=["clean"], device="cpu")
    assert paper_on_cpu_warning(mini, mini.cells(), torch.device("cpu")) is None


def fixed_probe(arch: str, data, train: TrainConfig) -> float:
    """A training step's seconds, the same on every machine: the tests compare estimates."""
    return 0.01


def test_the_estimate_scales_with_epochs_and_countermeasure_cost(tmp_path, tiny_grid):
    def estimate(**values):
        config = GridConfig(**{**tiny_grid, "out": str(tmp_path / "o"), **values})
        return estimate_grid(config.cells(), fixed_probe)

    short, double = estimate(methods=["clean"], epochs=2), estimate(methods=["clean"], epochs=4)
    assert double.training_s > 1.9 * short.training_s
    plain = estimate(methods=["clean"], defenses=["none"])
    adversarial = estimate(methods=["clean"], defenses=["advtrain:steps=3"])
    assert adversarial.training_s > 3.5 * plain.training_s  # 1 + 3 PGD steps a step
    assert plain.crafting_s == (0.0, 0.0) and plain.poisons == 0


def test_crafting_counts_only_poisons_not_cached(tmp_path, tiny_grid):
    config = GridConfig(
        **{**tiny_grid, "out": str(tmp_path / "o"), "methods": ["emin:source=[smallcnn:width=4]"]}
    )
    cells = config.cells()
    before = estimate_grid(cells, fixed_probe)
    fewest, most = before.crafting_s
    assert before.poisons == 1 and 0 < fewest < most  # one round ... max_rounds
    restarts = [
        estimate_grid(config.cells(), fixed_probe).crafting_s
        for config in (
            GridConfig(
                **{**tiny_grid, "out": str(tmp_path / "o"), "methods": [f"tap:restarts={n}"]}
            )
            for n in (1, 2)
        )
    ]
    assert restarts[1][0] > restarts[0][0] and restarts[0][0] == restarts[0][1]
    # Once the poison is in the cache only training is left.
    quick = "emin:source=[smallcnn:width=4]:max_rounds=1"
    argv = ["run", *TINY_CLI, "--methods", quick, "--out", str(tmp_path / "o"), "--no-progress"]
    assert main(argv) == 0
    crafted = GridConfig(**{**tiny_grid, "out": str(tmp_path / "o"), "methods": [quick]})
    after = estimate_grid(crafted.cells(), fixed_probe)
    assert after.poisons == 0 and after.crafting_s == (0.0, 0.0)


def test_the_probe_times_real_steps_and_leaves_the_random_state():
    data = load_cell_data("digits:size=8", None, 200, 100)
    state = torch.get_rng_state()
    config = TrainConfig(batch_size=32)
    seconds = step_seconds("smallcnn:width=4", data, config, torch.device("cpu"))
    assert 0 < seconds < 5
    assert torch.equal(torch.get_rng_state(), state)


class FakeDevice:
    """Seconds of a probe run on a made-up device: a one-time cost for the process and for each
    batch size's first run, a cost per run (building the model) and one per step."""

    def __init__(self, step_fixed: float, per_image: float, per_run: float = 0.05) -> None:
        self.step_fixed, self.per_image, self.per_run = step_fixed, per_image, per_run
        self.sizes: set[int] = set()
        self.spent = 0.0

    def step(self, size: int) -> float:
        return self.step_fixed + self.per_image * size

    def timed(self, images: int, size: int) -> float:
        first = (0.5 if not self.sizes else 0.0) + (0.3 if size not in self.sizes else 0.0)
        self.sizes.add(size)
        seconds = first + self.per_run + (images // size) * self.step(size)
        self.spent += seconds
        return seconds


@pytest.mark.parametrize(
    ("device", "batch", "tolerance"),
    [
        (FakeDevice(0.01, 0.0007), 256, 0.02),  # mini's victim on one busy core: 0.19 s a step
        (FakeDevice(0.005, 0.00001, per_run=0.1), 1024, 0.02),  # a GPU: short and flat
        (FakeDevice(0.2, 0.002), 256, 0.1),  # 0.7 s: one run, its fixed cost in
        (FakeDevice(0.1, 0.2), 256, 0.1),  # 51 s: from two small batches, not timed whole
    ],
)
def test_the_probe_reads_the_step_without_its_one_time_costs(device, batch, tolerance):
    seconds = probe_step(device.timed, batch, budget=1.0)
    assert seconds == pytest.approx(device.step(batch), rel=tolerance)
    assert device.spent < 12.0  # a probe stays short even when one step is long


def test_the_probe_handles_a_batch_no_larger_than_its_small_one():
    device = FakeDevice(0.01, 0.001)
    assert probe_step(device.timed, 4, budget=1.0) == pytest.approx(device.step(4), rel=0.02)


def test_durations_read_as_a_person_would():
    assert describe_duration(30) == "30 s"
    assert describe_duration(41 * 60) == "41 min"
    assert describe_duration(5 * 3600) == "5.0 h"
    assert describe_duration(3 * 86400) == "3.0 days"


def test_help_leaves_the_protocols_defaults_to_it():
    run = _parser()._subparsers._group_actions[0].choices["run"]
    flags = {action.dest: action.help for action in run._actions}
    for name in ("epochs", "batch_size", "lr", "archs", "train_size", "test_size"):
        assert "the protocol's" in flags[name], name
    text = run.format_help()
    assert "0.025" not in text and "default 128" not in text and "paper's" not in text


def test_the_line_before_a_grid_says_when_victims_train_in_bf16_on_the_cpu(monkeypatch):
    cpu = torch.device("cpu")
    monkeypatch.setenv("UEBENCH_CPU_BF16", "1")
    assert describe_device(cpu, 1) == "cpu with 1 thread, victims in bf16"
    monkeypatch.setenv("UEBENCH_CPU_BF16", "0")
    assert describe_device(cpu, 2) == "cpu with 2 threads"
