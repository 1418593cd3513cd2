"""``uebench bench`` and ``uebench.bench`` end to end on tiny data: the new method's row beside
the field's rows of a reference file, scored and ranked; the training images bench uses; a
poison made with numpy (``file:``), in-memory images and a ``Poison``; bad input first."""

import json

import numpy as np
import pandas as pd
import pytest
import torch
from test_plugins_without_install import plugin  # noqa: F401  (a fixture: a module on sys.path)
from tiny_cli import TINY_BENCH, TINY_BENCH_KWARGS, one_line_error

import uebench
import uebench.grid.protocols as protocols
from uebench.cli import main
from uebench.datasets import load_dataset
from uebench.poison import Poison
from uebench.scoring.suites import load_suite
from uebench.storage.poison_files import published_sha256
from uebench.threat import ThreatModel

COLUMNS = ["none", "uniform-noise:eps=64/255"]
FIELD = "uebench-mini-digits"


def bench(spec, field, out, *extra):
    """``uebench bench SPEC`` with the tiny settings, the test suite and, unless ``extra``
    says otherwise, the field's reference file."""
    argv = ["bench", spec, *TINY_BENCH, "--suite", str(field["suite"]), "--out", str(out)]
    if "--reference" not in extra:
        argv += ["--reference", str(field["reference"])]
    return main([*argv, "--no-progress", *extra])


def cells(out):
    return [json.loads(path.read_text()) for path in sorted((out / "cells").glob("*.json"))]


def table_rows(out):
    table = pd.read_csv(out / "bench.csv")
    return {(row["method"], row["source"]): row for row in table.to_dict("records")}


def check_scores(rows):
    """Each row's worst case is the highest of its numbers, reached by its countermeasure, and
    the ranks follow the worst cases (clean unranked)."""
    for row in rows.values():
        numbers = {c: row[c] for c in COLUMNS}
        assert row["worst_case"] == pytest.approx(max(numbers.values()))
        assert row["reached_by"] == max(numbers, key=numbers.get)
    ranked = {k: r for k, r in rows.items() if k[0] != "clean"}
    for row in ranked.values():
        better = [r for r in ranked.values() if r["worst_case"] < row["worst_case"]]
        assert row["rank_overall"] == 1 + len(better)
        same = [r for r in better if r["threat"] == row["threat"]]
        assert row["rank_in_budget"] == 1 + len(same)
    clean = next(r for k, r in rows.items() if k[0] == "clean")
    assert pd.isna(clean["rank_overall"]) and pd.isna(clean["rank_in_budget"])


def test_bench_places_the_method_beside_the_field_rows(bench_field, tmp_path, capsys):
    out = tmp_path / "lsp"
    assert bench("lsp", bench_field, out, "--no-report") == 0
    printed = capsys.readouterr().out
    rows = table_rows(out)
    assert set(rows) == {("lsp", "this run"), ("cuda", FIELD), ("clean", FIELD)}
    # Only the new method's cells ran: the clean rows are the reference's.
    ran = cells(out)
    assert {(r["method"], r["defense"]) for r in ran} == {("lsp", c) for c in COLUMNS}
    lsp = rows["lsp", "this run"]
    for record in ran:
        assert lsp[record["defense"]] == pytest.approx(record["final_acc"], abs=0.01)
        assert lsp["threat"] == record["threat"]
    reference = pd.read_csv(bench_field["reference"])
    for row in reference.to_dict("records"):
        assert rows[row["method"], FIELD][row["defense"]] == pytest.approx(row["value"])
    check_scores(rows)
    suite = load_suite(bench_field["suite"])
    settings = uebench.grid.GridConfig.from_dict(
        {k: v for k, v in TINY_BENCH_KWARGS.items() if k != "progress"}
    )
    assert f"{suite.describe()}; protocol mini on digits" in printed
    assert f"(hash {settings.effective_protocol().content_hash()})" in printed
    # The findings: against the reference's clean rows, by the field table's thresholds.
    clean = rows["clean", FIELD]
    expected = []
    for column in COLUMNS:
        below = clean[column] - lsp[column]
        if column == "none":
            expected.append("unlearnable" if below >= 20 else "not unlearnable")
        else:
            expected.append(f"falls to {column}" if below <= 15 else f"survives {column}")
    for line in expected:
        assert f"\n  {line}" in printed
    markdown = (out / "bench.md").read_text()
    assert "| lsp | this run |" in markdown and "Findings for lsp" in markdown
    assert f"report: uebench report {out} --suite {bench_field['suite']}" in printed


def test_a_plugin_never_installed_benches_with_the_flag(bench_field, plugin, tmp_path, capsys):  # noqa: F811
    out = tmp_path / "mine"
    flag = ["--plugin", f"my-noise={plugin}:MyNoise", "--no-report"]
    assert bench("my-noise", bench_field, out, *flag) == 0, capsys.readouterr().err
    rows = table_rows(out)
    assert set(rows) == {("my-noise", "this run"), ("cuda", FIELD), ("clean", FIELD)}
    ran = cells(out)
    assert {(r["method"], r["defense"]) for r in ran} == {("my-noise", c) for c in COLUMNS}
    check_scores(rows)


def test_without_field_rows_clean_runs_here_and_the_cells_are_a_runs(bench_field, tmp_path, capsys):
    out = tmp_path / "cuda"
    assert bench("cuda", bench_field, out, "--reference", "none") == 0
    printed = capsys.readouterr().out
    assert "note: no field rows (--reference none)" in printed
    # The method's cells and the clean ones run as two grids, each saying which it is.
    announced = [line.split(" under ")[0] for line in printed.splitlines() if "estimated" in line]
    assert announced == ["uebench: 2 cells of cuda", "uebench: 2 cells of clean"]
    rows = table_rows(out)
    assert set(rows) == {("cuda", "this run"), ("clean", "this run")}
    check_scores(rows)
    # The same cells `uebench run` made for the field (seed 0): same ids, same numbers.
    field = {r["cell_id"]: r for r in cells(bench_field["run"])}
    for record in cells(out):
        assert record["cell_id"] in field
        assert record["final_acc"] == pytest.approx(field[record["cell_id"]]["final_acc"], abs=0.5)
    report = out / "report" / "report.html"
    assert report.is_file() and f"report: {report}" in printed


def test_a_poison_made_with_numpy_benches_as_file_on_the_exact_training_images(
    bench_field, tmp_path, capsys
):
    data = uebench.load("digits:size=8", train_size=400, test_size=150, protocol="mini")
    x = data.x_train.numpy().transpose(0, 2, 3, 1).astype(np.int16)  # N×H×W×C
    signs = np.random.default_rng(0).choice([-16, 16], size=(data.num_classes, *x.shape[1:]))
    poisoned = np.clip(x + signs[data.y_train.numpy()], 0, 255).astype(np.uint8)
    path = tmp_path / "poisoned.npz"
    np.savez(path, x_train=poisoned, y_train=data.y_train.numpy())
    spec = f"file:path={path}:eps=16/255"
    out = tmp_path / "file"
    assert bench(spec, bench_field, out, "--no-report") == 0
    assert (spec, "this run") in table_rows(out)
    for record in cells(out):
        # The cells trained on the images uebench.load gave, in that order, poisoned as saved.
        assert record["data_fingerprint"] == data.fingerprint()
        published = torch.from_numpy(poisoned.transpose(0, 3, 1, 2).copy())
        assert record["poison"]["published_sha256"] == published_sha256(published, data.y_train)
        assert record["threat"] == "L∞ ≤ 16/255"
    capsys.readouterr()


def test_load_takes_the_protocols_sizes(monkeypatch):
    table = json.loads(json.dumps(protocols._table()))
    table["protocols"]["mini"]["digits"] = {"train_size": 300, "test_size": 100}
    monkeypatch.setattr(protocols, "_table", lambda: table)
    data = uebench.load("digits", protocol="mini")
    assert (len(data.y_train), len(data.y_test)) == (300, 100)
    assert len(uebench.load("digits", protocol="mini", train_size=200).y_train) == 200
    whole = load_dataset("digits")
    assert len(uebench.load("digits").y_train) == len(whole.y_train)  # paper: no subset


def poisoned_images(data, level):
    """Class-wise ±level/255 noise on the training images, as a uint8 N×C×H×W tensor."""
    generator = torch.Generator().manual_seed(level)
    signs = torch.randint(0, 2, (data.num_classes, *data.image_shape), generator=generator) * 2 - 1
    noisy = data.x_train.to(torch.int16) + level * signs[data.y_train]
    return noisy.clamp(0, 255).to(torch.uint8)


def test_the_api_benches_images_in_memory_by_their_content(bench_field, tmp_path):
    data = uebench.load("digits:size=8", train_size=400, test_size=150, protocol="mini")
    options = {
        **TINY_BENCH_KWARGS,
        "suite": bench_field["suite"],
        "reference": bench_field["reference"],
        "out": tmp_path / "memory",
        "report": False,
    }
    first = uebench.bench(poisoned_images(data, 16), eps="16/255", **options)
    mine = first[first["source"] == "this run"]
    assert len(mine) == 1 and mine["method"].iloc[0].startswith("in-memory ")
    assert {"cuda", "clean"} <= set(first["method"])
    assert first.attrs["suite"] == "tiny-v1" and isinstance(first.attrs["findings"], list)
    once = {r["cell_id"] for r in cells(tmp_path / "memory")}
    assert len(once) == 2
    # Other images: other cells (their content hash is in the cell id); the same: resumed.
    uebench.bench(poisoned_images(data, 12), eps="16/255", **options)
    twice = {r["cell_id"] for r in cells(tmp_path / "memory")}
    assert len(twice) == 4 and once < twice
    again = uebench.bench(poisoned_images(data, 16), eps="16/255", **options)
    assert {r["cell_id"] for r in cells(tmp_path / "memory")} == twice
    pd.testing.assert_frame_equal(again, first)
    hashes = {r["poison"]["file_sha256"] for r in cells(tmp_path / "memory")}
    assert len(hashes) == 2


def test_the_api_benches_a_poison(bench_field, tmp_path):
    data = uebench.load("digits:size=8", train_size=400, test_size=150, protocol="mini")
    generator = torch.Generator().manual_seed(3)
    delta = (
        (torch.rand((data.num_classes, *data.image_shape), generator=generator) * 2 - 1) * 8 / 255
    )
    poison = Poison(delta, data.y_train, ThreatModel.linf(8 / 255), {"form": "class"})
    table = uebench.bench(
        poison,
        suite=bench_field["suite"],
        reference=bench_field["reference"],
        out=tmp_path / "poison",
        name="my noise",
        seeds=0,
        report=False,
        **TINY_BENCH_KWARGS,
    )
    mine = table[table["method"] == "my noise"].iloc[0]
    assert mine["source"] == "this run" and mine["threat"] == "L∞ ≤ 8/255"
    published = poison.apply(data.x_train)
    for record in cells(tmp_path / "poison"):
        assert record["poison"]["published_sha256"] == published_sha256(published, data.y_train)


def test_a_suite_edited_after_its_reference_is_refused_before_any_work(
    bench_field, tmp_path, capsys, no_work
):
    edited = tmp_path / "tiny-v1.toml"
    edited.write_text(bench_field["suite"].read_text().replace("64/255", "32/255"))
    field = {**bench_field, "suite": edited}
    line = one_line_error(capsys, bench("lsp", field, tmp_path / "x"))
    assert "was measured under suite tiny-v1 with hash" in line
    assert "a changed suite must be a new version" in line


@pytest.mark.parametrize(
    ("spec", "extra", "problem"),
    [
        ("nosuch", [], "unknown method 'nosuch'"),
        ("lsp", ["--suite", "v9"], "unknown suite 'v9'"),
        ("lsp", ["--reference", "missing.csv"], "reference file missing.csv does not exist"),
        ("file:path=absent.npz", [], "absent.npz does not exist"),
    ],
)
def test_bad_input_is_one_line_before_any_work(
    bench_field, tmp_path, capsys, no_work, spec, extra, problem
):
    argv = ["bench", spec, *TINY_BENCH, "--out", str(tmp_path / "x"), "--no-progress", *extra]
    if "--suite" not in extra:
        argv += ["--suite", str(bench_field["suite"])]
    assert problem in one_line_error(capsys, main(argv))
