"""The reference writer: a finished multi-seed run under a suite as a reference file whose rows
the regression plugin checks (a fresh run that matches passes, a shifted value fails), its
leaderboard page, the tolerance rule, and runs it refuses."""

import json
import math

import pandas as pd
import pytest
from tiny_cli import TINY_BENCH

from uebench.benchmark.reference import main as reference_main
from uebench.benchmark.reference import parse_command, tolerance, write_reference
from uebench.cli import main
from uebench.errors import UebenchError
from uebench.scoring.suites import load_suite
from uebench.version import __version__

pytest_plugins = ["pytester"]


def records(run):
    return [json.loads(path.read_text()) for path in sorted((run / "cells").glob("*.json"))]


def test_the_tolerance_spans_three_deviations_of_a_difference_of_means():
    assert tolerance(0.0, 3) == 2.0  # never below two points
    assert tolerance(2.0, 2) == pytest.approx(6.0)  # 3 · 2 · √(2/2)
    assert tolerance(1.0, 3) == pytest.approx(math.ceil(30 * math.sqrt(2 / 3)) / 10)


def test_one_row_per_method_and_countermeasure_with_what_it_was_measured_under(bench_field):
    frame = pd.read_csv(bench_field["reference"])
    suite = load_suite(bench_field["suite"])
    assert len(frame) == 4 and frame["id"].is_unique
    assert set(zip(frame["method"], frame["defense"], strict=True)) == {
        (m, c) for m in ("clean", "cuda") for c in suite.countermeasures
    }
    found = records(bench_field["run"])
    for row in frame.to_dict("records"):
        values = [
            r["final_acc"]
            for r in found
            if (r["method"], r["defense"]) == (row["method"], row["defense"])
        ]
        assert row["value"] == pytest.approx(sum(values) / len(values), abs=0.005)
        assert row["n"] == 2 and row["std"] == pytest.approx(pd.Series(values).std(), abs=0.005)
        assert row["tolerance"] == tolerance(row["std"], 2) >= 2.0
        assert row["where"] == "measured by uebench (mini protocol)"
        assert (row["suite"], row["suite_hash"]) == ("tiny-v1", suite.content_hash())
        assert row["uebench_version"] == __version__
        assert row["threat"] == ("no noise" if row["method"] == "clean" else "unbounded")
    # The command makes exactly the run's cells, and its settings are the recorded hash.
    config = parse_command(frame["command"].iloc[0])
    assert {r["cell_id"] for r in found} <= {cell.cell_id for cell in config.cells()}
    assert set(frame["protocol_hash"]) == {config.effective_protocol().content_hash()}


def test_its_leaderboard_page_ranks_by_the_worst_case(bench_field):
    page = bench_field["reference"].with_name("uebench-mini-digits-board.md").read_text()
    assert (
        "Sorted by worst case" in page
        and "hash " + load_suite(bench_field["suite"]).content_hash() in page
    )
    pivot = pd.read_csv(bench_field["reference"].with_name("uebench-mini-digits-board.pivot.csv"))
    assert {"worst_case", "reached_by", "rank_in_budget", "rank_overall"} <= set(pivot.columns)


def test_a_fresh_run_that_matches_passes(pytester, bench_field):
    outcome = pytester.runpytest(
        "-p", "uebench.regression", str(bench_field["reference"]), "-k", "cuda--none"
    )
    outcome.assert_outcomes(passed=1)


def test_a_shifted_value_fails(pytester, bench_field):
    frame = pd.read_csv(bench_field["reference"])
    frame.loc[frame["id"] == "cuda--none", "value"] += 30.0
    shifted = pytester.path / "shifted.csv"
    frame.to_csv(shifted, index=False)
    outcome = pytester.runpytest(
        "-p", "uebench.regression", "--uebench-results", str(bench_field["run"]), str(shifted)
    )
    outcome.assert_outcomes(passed=3, failed=1)
    outcome.stdout.fnmatch_lines(["*shifted/cuda--none*expected*MISMATCH*"])


def test_a_changed_protocol_is_not_rerun_against_old_numbers(pytester, bench_field):
    frame = pd.read_csv(bench_field["reference"])
    frame["protocol_hash"] = "0123456789abcdef"
    stale = pytester.path / "stale.csv"
    frame.to_csv(stale, index=False)
    outcome = pytester.runpytest("-p", "uebench.regression", str(stale), "-k", "cuda--none")
    outcome.assert_outcomes(failed=1)
    outcome.stdout.fnmatch_lines(["*the protocol changed since, so measure the reference again*"])


def test_a_single_seed_run_is_refused(bench_field, tmp_path):
    run = tmp_path / "one"
    argv = ["run", *TINY_BENCH, "--methods", "clean", "--defenses", "none", "--seeds", "0"]
    assert main([*argv, "--out", str(run), "--no-progress"]) == 0
    with pytest.raises(UebenchError, match="has 1 seed; a reference row needs at least 2"):
        write_reference([run], tmp_path / "x.csv", bench_field["suite"])
    assert not (tmp_path / "x.csv").exists()


def test_runs_of_two_settings_are_refused(bench_field, tmp_path, capsys):
    run = tmp_path / "other"
    argv = ["run", *TINY_BENCH, "--methods", "clean", "--defenses", "none", "--seeds", "0,1"]
    assert main([*argv, "--epochs", "1", "--out", str(run), "--no-progress"]) == 0
    out = tmp_path / "x.csv"
    code = reference_main(
        [str(run), str(bench_field["run"]), "-o", str(out), "--suite", str(bench_field["suite"])]
    )
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(lines) == 1
    assert "a reference file holds one protocol and settings" in lines[0]
    assert not out.exists()


def test_the_module_entry_point_writes_the_file_and_its_page(bench_field, tmp_path, capsys):
    out = tmp_path / "references" / "uebench-mini-digits.csv"
    argv = [str(bench_field["run"]), "-o", str(out), "--suite", str(bench_field["suite"])]
    assert reference_main(argv) == 0
    printed = capsys.readouterr().out
    assert f"wrote {out}" in printed and f"wrote {tmp_path / 'uebench-mini-digits.md'}" in printed
    assert set(pd.read_csv(out)["marks"]) == {"slow"}  # the default: the cells take minutes
