"""The worst-case score under a suite: the strongest thief, missing countermeasures, ranks
within a threat budget and overall, the leaderboard's suite columns, and the findings."""

import math

import pandas as pd
import pytest
from test_leaderboard import write_cell

from uebench.cli import main
from uebench.results.leaderboard import board_markdown, leaderboard, pivot
from uebench.scoring.findings import MARGIN, UNLEARNABLE, findings
from uebench.scoring.score import worst_case, worst_of
from uebench.scoring.suites import Suite

COLUMNS = ["none", "grayscale", "jpeg:quality=10"]
LINF, L2 = "L∞ ≤ 8/255", "L2 ≤ 1"


def long(rows):
    """(method, threat, {countermeasure: mean}) rows as the long frame worst_case reads."""
    return pd.DataFrame(
        [
            {"method": method, "threat": threat, "countermeasure": c, "mean": mean}
            for method, threat, means in rows
            for c, mean in means.items()
        ]
    )


def by_method(table):
    return {row["method"]: row for row in table.to_dict("records")}


def test_the_score_is_the_strongest_thief_with_the_countermeasure_reaching_it():
    table = worst_case(
        long([("ar", L2, {"none": 10.0, "grayscale": 22.4, "jpeg:quality=10": 70.2})]),
        COLUMNS,
        ["method"],
    )
    ar = by_method(table)["ar"]
    assert (ar["worst_case"], ar["reached_by"], ar["missing"]) == (70.2, "jpeg:quality=10", "")
    assert [ar[c] for c in COLUMNS] == [10.0, 22.4, 70.2]


def test_a_tie_goes_to_the_first_countermeasure_of_the_suite():
    assert worst_of({"none": 50.0, "grayscale": 60.0, "jpeg": 60.0}) == (60.0, "grayscale", [])


def test_a_method_missing_a_countermeasure_has_no_score_and_says_which():
    table = worst_case(
        long(
            [
                ("random", LINF, {"none": 75.0}),
                ("emin", LINF, {"none": 11.6, "grayscale": 54.2, "jpeg:quality=10": 69.6}),
            ]
        ),
        COLUMNS,
        ["method"],
    )
    random = by_method(table)["random"]
    assert pd.isna(random["worst_case"]) and pd.isna(random["reached_by"])
    assert random["missing"] == "grayscale,jpeg:quality=10"
    assert pd.isna(random["rank_in_budget"]) and pd.isna(random["rank_overall"])
    # Never a partial score: 75.0 (its one number) would rank it behind emin otherwise.
    assert by_method(table)["emin"]["rank_overall"] == 1


def test_ranks_within_the_budget_and_overall_and_clean_is_not_ranked():
    rows = [
        ("clean", "no noise", {"none": 76.6, "grayscale": 73.4, "jpeg:quality=10": 69.8}),
        ("emin", LINF, {"none": 11.6, "grayscale": 54.2, "jpeg:quality=10": 69.6}),
        ("tap", LINF, {"none": 10.3, "grayscale": 48.4, "jpeg:quality=10": 69.3}),
        ("cuda", "unbounded", {"none": 19.5, "grayscale": 17.3, "jpeg:quality=10": 25.7}),
        ("lsp", L2, {"none": 13.6, "grayscale": 74.1, "jpeg:quality=10": 65.2}),
        ("ar", L2, {"none": 10.0, "grayscale": 22.4, "jpeg:quality=10": 70.2}),
    ]
    table = by_method(worst_case(long(rows), COLUMNS, ["method"]))
    assert pd.isna(table["clean"]["rank_in_budget"]) and pd.isna(table["clean"]["rank_overall"])
    budget = {m: table[m]["rank_in_budget"] for m in ("emin", "tap", "cuda", "lsp", "ar")}
    assert budget == {"tap": 1, "emin": 2, "cuda": 1, "ar": 1, "lsp": 2}
    overall = {m: table[m]["rank_overall"] for m in ("emin", "tap", "cuda", "lsp", "ar")}
    assert overall == {"cuda": 1, "tap": 2, "emin": 3, "ar": 4, "lsp": 5}
    assert table["lsp"]["reached_by"] == "grayscale" and table["lsp"]["worst_case"] == 74.1


def test_ranks_are_taken_within_each_setting():
    frame = long([("emin", LINF, {"none": 10.0}), ("tap", LINF, {"none": 20.0})])
    frame = pd.concat([frame.assign(arch="a"), frame.assign(arch="b", mean=[30.0, 5.0])])
    table = worst_case(frame, ["none"], ["arch", "method"], setting=["arch"])
    ranks = {(r["arch"], r["method"]): r["rank_overall"] for r in table.to_dict("records")}
    assert ranks == {("a", "emin"): 1, ("a", "tap"): 2, ("b", "emin"): 2, ("b", "tap"): 1}


def test_findings_against_clean_under_the_same_countermeasure():
    clean = {"none": 76.5, "grayscale": 73.4, "jpeg:quality=10": 69.8}
    lines = findings({"none": 11.6, "grayscale": 54.1, "jpeg:quality=10": 69.6}, clean)
    assert lines == [
        "unlearnable under standard training: 11.6% vs clean 76.5%",
        "survives grayscale: 54.1% vs clean 73.4%",
        "falls to jpeg:quality=10: 69.6% vs clean 69.8%",
    ]
    edge = findings({"none": 76.5 - UNLEARNABLE + 0.1, "grayscale": 73.4 - MARGIN}, clean)
    assert edge[0].startswith("not unlearnable under standard training")
    assert edge[1].startswith("falls to grayscale")  # within 15 points, 15 included
    assert findings({"jpeg:quality=10": 30.0}, {"none": 70.0}) == []  # no clean number: nothing


@pytest.fixture
def field(tmp_path):
    """Hand-made records: three methods under three countermeasures, one of them partial."""
    run = tmp_path / "run"
    numbers = {
        "clean": {"none": 90.0, "cutout": 88.0, "grayscale": 85.0},
        "emin": {"none": 12.0, "cutout": 20.0, "grayscale": 60.0},
        "ops": {"none": 30.0, "cutout": 25.0},
    }
    for method, means in numbers.items():
        for defense, acc in means.items():
            for seed, shift in enumerate([-1.0, 1.0]):
                threat = {"clean": "no noise", "emin": LINF, "ops": "L0 ≤ 1 px"}[method]
                write_cell(run, method, defense, seed, acc + shift, poison={"threat": threat})
    return run


SUITE = Suite("test-v1", 1, "for tests", ("none", "cutout", "grayscale"))


def test_leaderboard_pivot_gains_the_worst_case_and_sorts_by_it(field):
    board, _ = leaderboard([field])
    wide = pivot(board, suite=SUITE)
    assert list(wide["method"]) == ["emin", "clean", "ops"]  # ops has no score: last
    emin = wide[wide["method"] == "emin"].iloc[0]
    assert emin["worst_case"] == pytest.approx(60.0) and emin["reached_by"] == "grayscale"
    ops = wide[wide["method"] == "ops"].iloc[0]
    assert math.isnan(ops["worst_case"]) and ops["missing"] == "grayscale"
    assert "worst_case" not in pivot(board).columns  # without a suite, as before
    text = board_markdown(board, suite=SUITE)
    assert f"suite test-v1 (version 1, hash {SUITE.content_hash()})" in text


def test_cli_leaderboard_and_report_take_a_suite(field, tmp_path, capsys):
    suite = tmp_path / "suite.toml"
    suite.write_text(
        '[suites.test-v1]\nversion = 1\ndescription = "x"\n'
        'countermeasures = ["none", "cutout", "grayscale"]\n'
    )
    assert main(["leaderboard", str(field), "--suite", str(suite)]) == 0
    out = capsys.readouterr().out
    assert "worst_case" in out and f"hash {SUITE.content_hash()}" in out
    assert main(["report", str(field), "--suite", "v9", "-o", str(tmp_path / "r")]) == 2
    assert "unknown suite 'v9'" in capsys.readouterr().err
