"""The flags of the smallest grid the CLI tests run (8-px digits, a 4-wide CNN, one epoch), and
how the bad-input tests read the CLI's one error line."""

import pytest

TINY_CLI = [
    "--dataset", "digits:size=8", "--archs", "smallcnn:width=4", "--epochs", "1",
    "--train-size", "200", "--test-size", "100", "--device", "cpu",
]  # fmt: skip


def one_line_error(capsys: pytest.CaptureFixture[str], code: int) -> str:
    """The CLI exited 2 with exactly one ``uebench: error:`` line; return it."""
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 2, lines
    assert len(lines) == 1 and lines[0].startswith("uebench: error: "), lines
    return lines[0]


#: The settings of the bench tests (8-px digits, an 8-wide CNN, 4 epochs of batches of 32 at
#: lr 0.1, one thread): about a second a cell, and clean training well above chance, so
#: unlearnable noise (cuda) shows.
TINY_BENCH = [
    "--dataset", "digits:size=8", "--protocol", "mini", "--archs", "smallcnn:width=8",
    "--epochs", "4", "--batch-size", "32", "--lr", "0.1", "--train-size", "400",
    "--test-size", "150", "--device", "cpu", "--threads", "1",
]  # fmt: skip
#: The same as keyword arguments of ``uebench.bench``.
TINY_BENCH_KWARGS = {
    "dataset": "digits:size=8",
    "protocol": "mini",
    "archs": ["smallcnn:width=8"],
    "epochs": 4,
    "batch_size": 32,
    "lr": 0.1,
    "train_size": 400,
    "test_size": 150,
    "device": "cpu",
    "threads": 1,
    "progress": False,
}
#: A two-countermeasure suite that runs on one-channel images.
TINY_SUITE = """[suites.tiny-v1]
version = 1
description = "standard training and strong uniform noise, for tests"
countermeasures = ["none", "uniform-noise:eps=64/255"]
"""
