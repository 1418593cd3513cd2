"""Issue 19's diagnostics: shortcut separability of the applied perturbations and shortcut
learning speed against the clean row, in records, results.csv, diagnose and the report."""

import json

import pandas as pd
import torch

from uebench.analysis.diagnostics import first_epoch_above, poison_separability, shortcut_speed
from uebench.api import craft
from uebench.cli import main
from uebench.data import ImageData
from uebench.grid import GridConfig, run_grid


def synthetic(n: int = 240, side: int = 16, classes: int = 4) -> ImageData:
    generator = torch.Generator().manual_seed(0)
    x = torch.randint(40, 216, (n, 3, side, side), generator=generator, dtype=torch.uint8)
    y = torch.arange(n) % classes
    return ImageData("synthetic", x, y, x[:8], y[:8], tuple(f"c{i}" for i in range(classes)))


def test_separability_is_high_for_lsp_and_near_chance_for_sample_wise_random():
    data = synthetic()
    lsp = poison_separability(craft("lsp", data), data)
    random = poison_separability(craft("random", data), data)
    assert lsp is not None and lsp >= 90.0
    assert random is not None and random <= 25.0 + 15.0  # chance 25 %, held-out noise
    assert poison_separability(craft("clean", data), data) is None  # nothing to separate


def _record(train_accs: list[float]) -> dict:
    return {"history": [{"epoch": i + 1, "train_acc": a} for i, a in enumerate(train_accs)]}


def test_shortcut_speed_reads_the_epoch_training_accuracy_passes_90():
    clean = _record([40, 70, 85, 92])
    fast = _record([60, 95, 99, 99])
    slow = _record([20, 40, 60, 70])
    assert first_epoch_above(fast["history"]) == 2 and first_epoch_above(slow["history"]) is None
    assert "taking the shortcut" in shortcut_speed(fast, clean)
    assert "not being learned at this scale" in shortcut_speed(slow, clean)
    assert "no sooner" in shortcut_speed(_record([40, 70, 85, 92]), clean)
    assert "no clean row" in shortcut_speed(fast, None)
    # Neither passes 90 %: the whole curves decide.
    weak_clean = _record([20, 30, 40, 50])
    assert "taking the shortcut" in shortcut_speed(_record([40, 60, 70, 80]), weak_clean)
    assert "not being learned" in shortcut_speed(_record([20, 32, 41, 50]), weak_clean)


def test_separability_and_speed_reach_records_csv_diagnose_and_report(tmp_path, capsys):
    out = tmp_path / "run"
    run_grid(
        GridConfig(
            dataset="digits:size=8",
            methods=["clean", "random:form=class"],
            archs=["smallcnn:width=4"],
            epochs=1,
            train_size=200,
            test_size=100,
            out=str(out),
            device="cpu",
            progress=False,
        )
    )
    records = {
        r["method"]: r for r in (json.loads(p.read_text()) for p in (out / "cells").glob("*"))
    }
    assert records["clean"]["shortcut_separability"] is None
    assert records["random:form=class"]["shortcut_separability"] >= 90.0  # class-wise: linear
    csv = pd.read_csv(out / "results.csv")
    assert "shortcut_separability" in csv.columns
    assert main(["diagnose", str(out), "--method", "random:form=class"]) == 0
    shown = capsys.readouterr().out
    assert "shortcut separability:" in shown and "shortcut speed:" in shown
    assert "training accuracy per epoch" in shown and "no clean row" not in shown
    assert main(["report", str(out), "--format", "md"]) == 0
    page = next(out.rglob("report.md")).read_text()
    assert "Why a poison works or fails" in page and "separability" in page
