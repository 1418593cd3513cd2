"""The bench table: a method's accuracies under a suite beside the field's, scored and ranked.

Rows come from two places: the cells a bench ran (mean over their seeds) and a reference file
of field rows (:mod:`uebench.benchmark.reference` writes them), which count only when measured
under the same settings (the protocol's hash), the same dataset and the same suite version.
Every row states its threat model, its accuracy under each countermeasure of the suite, its
worst case and the countermeasure reaching it, and its rank within its threat budget and
overall (:mod:`uebench.scoring.score`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from uebench.analysis.baseline import near_chance, near_chance_warning
from uebench.errors import UebenchError
from uebench.files import atomic_write
from uebench.grid.protocols import Protocol
from uebench.results.leaderboard import aggregate, cells_frame, markdown_table, spec_key
from uebench.results.references import Reference, read_reference_file
from uebench.scoring.findings import findings
from uebench.scoring.score import SCORE_COLUMNS, is_clean, suite_columns, suite_keys, worst_case
from uebench.scoring.suites import Suite

#: The ``source`` of the rows a bench measured itself.
THIS_RUN = "this run"
_LONG = ["arch", "method", "source", "threat", "countermeasure", "mean", "n"]


@dataclass
class FieldRows:
    """The field's rows of a reference file usable beside a bench (``long``: one row per
    method × countermeasure × arch), the file they came from, and why rows were left out."""

    long: pd.DataFrame
    source: str | None = None
    notes: list[str] = field(default_factory=list)


def no_field_rows(note: str) -> FieldRows:
    """No usable field rows, and why."""
    return FieldRows(pd.DataFrame(columns=_LONG), None, [note])


def field_rows(path: Path, suite: Suite, protocol: Protocol, dataset: str) -> FieldRows:
    """The rows of reference file ``path`` measured under ``suite``, under the settings of
    ``protocol`` (the bench's effective protocol, compared by hash) and on ``dataset`` (a spec).

    A row naming the suite's id with another content hash is an error: the suite was edited
    after those numbers were measured, and a changed suite must be a new version."""
    references = read_reference_file(path)
    wanted, suite_hash = protocol.content_hash(), suite.content_hash()
    dataset_key = spec_key("dataset", dataset)
    archs = {spec_key("arch", arch): arch for arch in protocol.archs}
    rows, other_settings = [], 0
    for reference in references:
        if reference.suite != suite.id:
            continue
        if reference.suite_hash != suite_hash:
            raise UebenchError(
                f"{path} ({reference.name}) was measured under suite {suite.id} with hash "
                f"{reference.suite_hash or '(none)'}, but {suite.id} now hashes to "
                f"{suite_hash}: a changed suite must be a new version"
            )
        if reference.protocol_hash != wanted or spec_key("arch", reference.arch) not in archs:
            other_settings += 1
            continue
        if spec_key("dataset", reference.dataset) != dataset_key or reference.metric != "final_acc":
            continue
        column = _reference_column(reference, suite, protocol, dataset)
        if column is not None:
            rows.append(
                {
                    "arch": archs[spec_key("arch", reference.arch)],
                    "method": reference.method,
                    "source": reference.source,
                    "threat": reference.threat or None,
                    "countermeasure": column,
                    "mean": reference.value,
                    "n": reference.n,
                }
            )
    notes = []
    if other_settings:
        notes.append(
            f"{other_settings} row(s) of {path} were measured under other settings than "
            f"protocol {protocol.name} (hash {wanted}) as this bench runs it"
        )
    if not rows:
        return no_field_rows(
            f"no field rows: {path} has none measured under {suite.describe()} on "
            f"{dataset} under protocol {protocol.name} (hash {wanted})"
        )
    return FieldRows(pd.DataFrame(rows, columns=_LONG), references[0].source, notes)


def _reference_column(
    reference: Reference, suite: Suite, protocol: Protocol, dataset: str
) -> str | None:
    """The suite column a reference row's countermeasure is, or None."""
    keys = suite_keys(suite, reference.protocol or protocol.name, dataset)
    return keys.get(reference.keys()["_key_defense"])


def run_rows(
    records: Sequence[dict[str, Any]], suite: Suite, labels: dict[str, str]
) -> pd.DataFrame:
    """The bench's own cells as long rows: mean ``final_acc`` over seeds per method ×
    countermeasure × arch; ``labels`` renames methods for the table (an in-memory poison)."""
    board = aggregate(cells_frame(records))
    board = board.assign(countermeasure=suite_columns(board, suite))
    board = board[board["countermeasure"].notna()]
    long = pd.DataFrame(
        {
            "arch": board["arch"],
            "method": board["method"].map(lambda m: labels.get(m, m)),
            "source": THIS_RUN,
            "threat": board["threat"],
            "countermeasure": board["countermeasure"],
            "mean": board["mean"],
            "n": board["n"],
        }
    )
    return long.reset_index(drop=True)


def clean_columns(long: pd.DataFrame, suite: Suite, arch: str) -> list[str]:
    """The suite columns under which ``long`` has a clean row for ``arch``."""
    clean = long[long["method"].map(is_clean) & (long["arch"] == arch)]
    return [c for c in suite.countermeasures if c in set(clean["countermeasure"])]


@dataclass
class BenchTable:
    """A bench's table (``frame``: one row per method and source), the findings for the benched
    method, notes on where the field rows came from, and the line naming the report."""

    frame: pd.DataFrame
    suite: Suite
    protocol: Protocol
    method: str
    findings: list[str]
    notes: list[str]
    report: str = ""  # where the run's `uebench report` page is, or why it is not

    def text(self) -> str:
        """The table as plain text, one decimal, with the suite and settings it was made under."""
        shown = self.frame.copy()
        for column in [*self.suite.countermeasures, "worst_case"]:
            shown[column] = shown[column].map(lambda v: "" if _missing(v) else f"{v:.1f}")
        for column in ("n", "rank_in_budget", "rank_overall"):
            shown[column] = shown[column].map(lambda v: "" if _missing(v) else str(int(v)))
        with pd.option_context("display.width", 250, "display.max_columns", 50):
            body = shown.fillna("").to_string(index=False)
        return "\n".join([self.heading(), body])

    def heading(self) -> str:
        """Which suite, protocol and hash the table is under, and what its numbers are."""
        return (
            f"{self.suite.describe()}; protocol {self.protocol.name} on {self.protocol.dataset} "
            f"(hash {self.protocol.content_hash()}); clean test accuracy (%), final epoch, mean "
            "over n seeds; worst_case = the highest over the suite (lower is more unlearnable)"
        )

    def markdown(self) -> str:
        """The heading, the table, the findings and the notes as Markdown."""
        parts = [
            f"# uebench bench: {self.method}",
            self.heading() + ".",
            markdown_table(self.frame),
        ]
        if self.findings:
            parts.append(
                f"Findings for {self.method} (against clean training, same countermeasure):"
            )
            parts.append("\n".join(f"- {line}" for line in self.findings))
        parts += [f"- {note}" for note in self.notes]
        if self.report:
            parts.append(self.report)
        return "\n\n".join(parts) + "\n"

    def write(self, out: Path) -> list[Path]:
        """``out/bench.csv`` and ``out/bench.md``, atomically."""
        csv_path, md_path = out / "bench.csv", out / "bench.md"
        csv_text = self.frame.to_csv(index=False, float_format="%.4g")
        markdown = self.markdown()
        for path, text in ((csv_path, csv_text), (md_path, markdown)):
            atomic_write(path, lambda stream, text=text: stream.write(text), mode="w")
        return [csv_path, md_path]


def bench_table(
    measured: pd.DataFrame,
    field: FieldRows,
    suite: Suite,
    protocol: Protocol,
    method: str,
    num_classes: int | None = None,
) -> BenchTable:
    """Score and rank the bench's rows and the field's together; the findings for ``method``
    (its label in ``measured``) against the clean rows, the reference's where it has them;
    with ``num_classes``, a note for each countermeasure whose clean row is near chance."""
    long = pd.concat([field.long, measured], ignore_index=True) if len(field.long) else measured
    several = long["arch"].nunique() > 1
    index = ["arch", "method", "source"] if several else ["method", "source"]
    table = worst_case(long, suite.countermeasures, index, setting=index[:-2])
    seeds = long.groupby(index, sort=False, dropna=False)["n"].max().rename("n").reset_index()
    table = table.merge(seeds, on=index, how="left")
    columns = [*index, "threat", "n", *suite.countermeasures, *SCORE_COLUMNS]
    table = table[columns].sort_values(
        [*index[:-2], "worst_case", "method"], kind="stable", na_position="last"
    )
    table = table.reset_index(drop=True)
    if not table["missing"].astype(bool).any():
        table = table.drop(columns=["missing"])
    lines = []
    for arch in dict.fromkeys(long["arch"]):
        mine = _means(long, method, THIS_RUN, arch)
        clean = {}
        for source in (THIS_RUN, field.source):
            clean = {**clean, **_means(long, "clean", source, arch, clean_only=True)}
        prefix = f"{arch}: " if several else ""
        lines += [prefix + line for line in findings(mine, clean)]
    notes = [*field.notes, *chance_notes(long, num_classes)]
    return BenchTable(table, suite, protocol, method, lines, notes)


def _means(
    long: pd.DataFrame, method: str, source: str | None, arch: str, clean_only: bool = False
) -> dict[str, float | None]:
    rows = long[(long["source"] == source) & (long["arch"] == arch)]
    rows = rows[rows["method"].map(is_clean)] if clean_only else rows[rows["method"] == method]
    return {row.countermeasure: float(row.mean) for row in rows.itertuples()}


def _missing(value: Any) -> bool:
    return value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value))


def chance_notes(long: pd.DataFrame, num_classes: int | None) -> list[str]:
    """A line per countermeasure (and arch) whose clean row stayed near chance: there no
    number, the worst case included, can show what the noise does."""
    clean = long[long["method"].map(is_clean)]
    notes = []
    for row in clean.drop_duplicates(["arch", "countermeasure"]).itertuples():
        if near_chance(float(row.mean), num_classes):
            where = f"{row.countermeasure} ({row.arch})"
            notes.append(near_chance_warning(float(row.mean), float(num_classes or 0), where))
    return notes
