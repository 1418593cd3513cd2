"""Torch threads of the local backend: a --threads above the usable cores warns and still runs."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from tiny_cli import TINY_CLI

from uebench.cli import main
from uebench.grid import threads


def test_more_threads_than_cores_warns_once_and_still_runs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(threads, "usable_cores", lambda: 1)
    out = tmp_path / "o"
    argv = ["run", *TINY_CLI, "--methods", "clean", "--no-progress", "--out", str(out)]
    assert main([*argv, "--threads", "2"]) == 0
    warnings = [line for line in capsys.readouterr().err.splitlines() if "--threads" in line]
    assert warnings == [
        "uebench: warning: --threads 2 is more than the 1 core this process may use; the extra "
        "threads wait on each other and training runs slower (--threads 1 or fewer, or leave it "
        "out to choose)"
    ]
    assert len(pd.read_csv(out / "results.csv")) == 1


def test_threads_within_the_cores_or_chosen_do_not_warn(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(threads, "usable_cores", lambda: 4)
    assert threads.threads_warning(4) is None and threads.threads_warning(None) is None
    assert "--threads 5 is more than the 4 cores" in (threads.threads_warning(5) or "")
