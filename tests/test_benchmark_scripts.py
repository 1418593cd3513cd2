"""Benchmark scripts run end to end on a few images (their figures are not checked: timing on a
test machine means nothing), and refuse bad input in one line before any work."""

from __future__ import annotations

import importlib.util
import re
import shlex
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def write_tiny_cifar10(root: Path, train: int = 64, test: int = 20) -> Path:
    """A CIFAR-10-shaped ``cifar10.npz`` of random 32×32 images, every class in both splits."""
    rng = np.random.default_rng(0)
    root.mkdir(parents=True, exist_ok=True)
    np.savez(
        root / "cifar10.npz",
        x_train=rng.integers(0, 256, (train, 32, 32, 3), dtype=np.uint8),
        y_train=np.arange(train) % 10,
        x_test=rng.integers(0, 256, (test, 32, 32, 3), dtype=np.uint8),
        y_test=np.arange(test) % 10,
    )
    return root


def load_peer_loop(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    """benchmarks/peer_loop.py as a module (it imports its sibling fast_cell, as a script)."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    spec = importlib.util.spec_from_file_location("peer_loop", BENCHMARKS / "peer_loop.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_peer_loop_trains_both_sides_on_the_same_steps(tmp_path):
    root = write_tiny_cifar10(tmp_path / "cifar10")
    flags = shlex.split(
        "--arch smallcnn:width=4 --train-size 64 --test-size 20 --batch-size 24 --threads 1 "
        "--device cpu --probe-batches 1 --bare-steps 1"
    )
    done = subprocess.run(
        [sys.executable, str(BENCHMARKS / "peer_loop.py"), "--data-root", str(root), *flags],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    out = done.stdout
    # 64 images at batch 24: two full batches and a kept last one of 16, on both sides.
    assert "each side: 3 optimizer steps, 64 images (the last batch, of 16, kept" in out
    probed = re.findall(r"probe: (\d) worker\(s\) \d+ img/s", out)
    assert probed == ["0", "1", "2"]
    chosen = re.search(r"DataLoader, (\d) worker\(s\)\): \d+ img/s", out)
    assert chosen and chosen.group(1) in probed
    assert re.search(r"uebench trainer \(Execution\(.*\)\): \d+ img/s", out)
    # Two rounds, the sides taking turns to go first: peer, uebench, uebench, peer.
    sides = re.findall(r"^(peer loop|uebench trainer) \(", out, flags=re.MULTILINE)
    assert sides == ["peer loop", "uebench trainer", "uebench trainer", "peer loop"]
    assert "median over 2 rounds" in out
    assert re.search(r"uebench / peer: \d+\.\d\d×", out)
    # The bare step is timed right after each run of the trainer, and the ratio is theirs.
    beside = re.findall(
        r"^  bare step right after: \d+ img/s, trainer / it (\d+\.\d\d)$", out, re.M
    )
    assert len(beside) == 2
    assert re.search(r"uebench trainer / bare eager step: \d+\.\d\d \(the median", out)


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--workers", "-1"], "--workers must be at least 0, got -1"),
        (["--batch-size", "0"], "--batch-size must be at least 1, got 0"),
        (["--rounds", "0"], "--rounds must be at least 1, got 0"),
        (["--arch", "nonesuch"], "nonesuch"),
        (["--device", "gpu7"], "unknown device 'gpu7'"),
    ],
)
def test_peer_loop_refuses_bad_flags_in_one_line(monkeypatch, capsys, flags, message):
    peer_loop = load_peer_loop(monkeypatch)
    monkeypatch.setattr(peer_loop, "load", lambda *a, **k: pytest.fail("data loaded"))
    with pytest.raises(SystemExit) as exit_:
        peer_loop.main(flags)
    assert exit_.value.code == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("peer_loop.py: error: ")
    assert message in last


def test_peer_loop_names_a_missing_data_root_in_one_line(monkeypatch, tmp_path):
    peer_loop = load_peer_loop(monkeypatch)
    with pytest.raises(SystemExit) as exit_:
        peer_loop.main(["--data-root", str(tmp_path / "absent"), "--device", "cpu"])
    text = str(exit_.value.code)
    assert text.startswith("peer_loop.py: error: ") and "\n" not in text
    assert "absent" in text


@pytest.mark.parametrize(
    ("script", "flags", "message"),
    [
        ("eval_chunks.py", ["--rounds", "0"], "--rounds must be at least 1, got 0"),
        ("whitening_freeze.py", ["--batch-size", "0"], "--batch-size must be at least 1, got 0"),
        ("batch_augment.py", ["--batch-sizes", "8,x"], "must be positive integers, got '8,x'"),
        ("batch_augment.py", ["--rounds", "0"], "--rounds must be at least 1, got 0"),
        (
            "estimate_accuracy.py",
            ["--records", "x", "--rounds", "0"],
            "--rounds must be at least 1, got 0",
        ),
    ],
)
def test_timing_scripts_refuse_bad_flags_in_one_line(script, flags, message):
    done = subprocess.run(
        [sys.executable, str(BENCHMARKS / script), *flags],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1].endswith(message)
    assert "Traceback" not in done.stderr


def test_the_estimate_benchmark_needs_a_finished_table_before_any_timing(tmp_path):
    done = subprocess.run(
        [sys.executable, str(BENCHMARKS / "estimate_accuracy.py"), "--records", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 1
    assert done.stderr.strip().splitlines()[-1] == (
        f"estimate_accuracy: no cell records in {tmp_path / 'cells'}; run field_table.py"
    )
    assert done.stdout == ""


def test_the_augmentation_benchmark_times_both_pipelines():
    done = subprocess.run(
        [
            sys.executable,
            str(BENCHMARKS / "batch_augment.py"),
            "--batch-sizes",
            "8",
            "--batches",
            "1",
            "--rounds",
            "2",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert re.search(r"batch 8: median [0-9.]+× faster than kornia", done.stdout)
