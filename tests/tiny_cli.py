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
