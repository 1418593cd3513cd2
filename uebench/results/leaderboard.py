"""Leaderboards: per-cell records from run folders, aggregated over seeds.

One row per dataset × method × countermeasure × architecture (and training protocol), with the
mean, standard deviation and count over seeds of one accuracy column, ranked so that the most
effective method (lowest clean test accuracy) comes first; plus the wide method × countermeasure
pivot and both as Markdown.

A setting (dataset × arch × protocol × countermeasure) whose ``clean`` row stayed near chance
(:func:`near_chance`) says nothing about the noise: every method's accuracy there is near chance
too.  Such a setting is flagged (``baseline_ok`` False), gets no ranks, and is left out of the
pivot's score; the summary at the end of a run, the report and ``uebench compare`` use the same
test.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from uebench.analysis.baseline import (
    chance_level,
    near_chance,
    near_chance_warning,
    stated_num_classes,
)
from uebench.errors import UebenchError
from uebench.files import atomic_write, check_writable, write_csv
from uebench.identity import countermeasure_identity, method_identity, plugin_identity
from uebench.scoring.score import SCORE_COLUMNS, board_worst_case
from uebench.scoring.suites import Suite
from uebench.spec import parse_spec
from uebench.storage.records import ACCURACY_METRICS, is_number, read_record
from uebench.threat import ThreatModel

#: How the pivot orders methods: by their mean over countermeasures, or by their worst case
#: for the poisoner (the highest accuracy any countermeasure recovers).
RANK_BY = ("mean", "worst")

_KINDS = ("dataset", "method", "defense", "arch")
_SETTING = ["dataset", "arch", "epochs", "train_size", "test_size"]
#: The keys of one setting: the cells a method's numbers are compared within.
SETTING_KEYS = ["_key_dataset", "_key_arch", "_key_protocol", "_key_defense"]

#: What a near-chance setting gets instead of a verdict in ``uebench compare``.
NEAR_CHANCE_STATUS = "baseline near chance"


# --- reading records ---------------------------------------------------------------------------


def read_records(run_dirs: Iterable[str | Path]) -> list[dict[str, Any]]:
    """Every cell record (``RUN_DIR/cells/*.json``) of the given run folders, validated.

    A cell id found in two folders is the same cell (same configuration and seed) and is counted
    once, from the first folder.  Each record gets ``_path``, the file it came from.
    """
    records: list[dict[str, Any]] = []
    seen: set[str] = set()
    for run_dir in run_dirs:
        root = Path(run_dir)
        cells = root / "cells"
        if not cells.is_dir():
            if not root.exists():
                raise UebenchError(f"results folder {root} does not exist")
            raise UebenchError(f"{root} is not a uebench results folder (it has no cells/ folder)")
        for path in sorted(cells.glob("*.json")):
            record = read_record(path, cell_id=path.stem)
            cell_id = path.stem
            if cell_id not in seen:
                seen.add(cell_id)
                records.append({**record, "_path": str(path)})
    if not records:
        names = ", ".join(str(d) for d in run_dirs)
        raise UebenchError(f"no finished cells in {names}")
    return records


def metric_value(record: dict[str, Any], metric: str) -> float | None:
    """``record[metric]``, else ``record['countermeasure_notes'][metric]``, as a float or None."""
    value = record.get(metric)
    if value is None:
        value = (record.get("countermeasure_notes") or {}).get(metric)
    return float(value) if is_number(value) else None


# --- spelling-independent keys -----------------------------------------------------------------


@functools.cache
def spec_key(kind: str, spec: str) -> str:
    """A key equal for two spellings of one configuration (``emin`` and ``emin:form=sample``).

    The key is the registry's canonical form (the one cell ids are hashed from); a spec whose
    plugin is not installed here falls back to its normalized text, so it still matches itself.
    """
    try:
        return json.dumps(_canonical(kind, spec), sort_keys=True)
    except UebenchError:
        return "?" + _normalized(spec)


def _canonical(kind: str, spec: str) -> Any:
    """The identity a cell records for ``spec`` (``config.identity``), the plugin's code
    included for outside plugins (:func:`uebench.identity.plugin_identity`)."""
    if kind == "method":
        return method_identity(spec)
    if kind == "defense":
        return countermeasure_identity(spec)
    if kind in ("arch", "dataset"):
        return plugin_identity(f"{kind}s", spec)
    raise ValueError(f"unknown spec kind {kind!r}")


def _normalized(spec: str) -> str:
    try:
        parts = [parse_spec(part) for part in spec.split("+")]
    except UebenchError:
        return spec.strip()
    return "+".join(
        p.name + "".join(f":{k}={v}" for k, v in sorted(p.options.items())) for p in parts
    )


def _record_keys(record: dict[str, Any]) -> dict[str, str]:
    identity = (record.get("config") or {}).get("identity")
    if isinstance(identity, dict) and all(k in identity for k in _KINDS):
        keys = {f"_key_{k}": json.dumps(identity[k], sort_keys=True) for k in _KINDS}
        protocol = {k: identity.get(k) for k in ("train", "train_size", "test_size")}
    else:
        keys = {f"_key_{k}": spec_key(k, record[k]) for k in _KINDS}
        protocol = {k: record.get(k) for k in ("epochs", "train_size", "test_size")}
    # The named protocol joins the key: cells of different protocols are never pooled.
    protocol["name"] = record.get("protocol")
    keys["_key_protocol"] = json.dumps(protocol, sort_keys=True)
    return keys


# --- tables ------------------------------------------------------------------------------------


def cells_frame(records: Sequence[dict[str, Any]]) -> pd.DataFrame:
    """One row per cell: its fields, every accuracy column and every numeric countermeasure note
    (``rate``, ``clean_part_acc``, ...), plus the ``_key_*`` columns used for grouping."""
    rows = []
    for record in records:
        row: dict[str, Any] = {
            key: record.get(key)
            for key in ("cell_id", "dataset", "method", "defense", "arch", "seed")
        }
        for key in ("epochs", "train_size", "test_size"):
            row[key] = record.get(key)
        row["num_classes"] = stated_num_classes(record)
        row["threat"] = _threat(record)
        separability = record.get("shortcut_separability")
        row["separability"] = float(separability) if is_number(separability) else None
        row["_clean"] = _is_clean(record)
        for key in ACCURACY_METRICS:
            row[key] = metric_value(record, key)
        for key, value in (record.get("countermeasure_notes") or {}).items():
            if key not in row and is_number(value):
                row[key] = float(value)
        row["_path"] = record.get("_path")
        row.update(_record_keys(record))
        rows.append(row)
    frame = pd.DataFrame(rows)
    if not frame.empty:
        frame["method"] = _distinct_labels(frame)
    return frame


def _distinct_labels(cells: pd.DataFrame) -> list[str]:
    """Method labels that tell configurations apart: where one label (``file:poison.npz``)
    names several methods (two files that were at that path), each gets a short tag of its
    identity (the file's sha256, else the identity's hash), so they are two rows, not one
    label twice."""
    keys_of = cells.groupby("method", sort=False)["_key_method"].nunique()
    shared = set(keys_of[keys_of > 1].index)
    return [
        f"{label} [{_identity_tag(key)}]" if label in shared else label
        for label, key in zip(cells["method"], cells["_key_method"], strict=True)
    ]


def _identity_tag(key: str) -> str:
    """8 hex digits naming a method's identity: its file's sha256 when it has one."""
    try:
        options = json.loads(key).get("options", {})
    except (ValueError, AttributeError):
        options = {}
    sha256 = options.get("sha256") if isinstance(options, dict) else None
    if isinstance(sha256, str) and sha256:
        return f"sha256 {sha256[:8]}"
    return hashlib.sha256(key.encode()).hexdigest()[:8]


def _threat(record: dict[str, Any]) -> str | None:
    """The poison's threat model as a record states it (``L∞ ≤ 8/255``); records written
    before threat models existed give their ε."""
    poison = record.get("poison") or {}
    if poison.get("threat"):
        return str(poison["threat"])
    eps = poison.get("eps")
    return ThreatModel.linf(float(eps)).describe() if is_number(eps) else None


def _is_clean(record: dict[str, Any]) -> bool:
    """Whether a record is the no-noise baseline (method ``clean``, any options)."""
    try:
        return parse_spec(str(record.get("method_spec") or record["method"])).name == "clean"
    except UebenchError:
        return False


def baselines(cells: pd.DataFrame, metric: str = "final_acc") -> pd.DataFrame:
    """Per setting (:data:`SETTING_KEYS`) with a ``clean`` row: its mean accuracy over seeds
    (``baseline``, in ``metric``, else ``final_acc``), ``num_classes``, ``chance`` and
    ``near_chance`` (True, False, or None where the class count is unknown)."""
    columns = [*SETTING_KEYS, "baseline", "num_classes", "chance", "near_chance"]
    if cells.empty or "_clean" not in cells.columns or not cells["_clean"].any():
        return pd.DataFrame(columns=columns)
    clean = cells[cells["_clean"]].copy()
    value = clean[metric] if metric in clean.columns else pd.Series(float("nan"), clean.index)
    clean["_baseline"] = value.fillna(clean["final_acc"])
    grouped = (
        clean.groupby(SETTING_KEYS, sort=False, dropna=False)
        .agg(baseline=("_baseline", "mean"), num_classes=("num_classes", "max"))
        .reset_index()
    )
    grouped["chance"] = grouped["num_classes"].map(chance_level)
    grouped["near_chance"] = [
        near_chance(b, k) for b, k in zip(grouped["baseline"], grouped["num_classes"], strict=True)
    ]
    return grouped[columns]


def aggregate(cells: pd.DataFrame, metric: str = "final_acc") -> pd.DataFrame:
    """Mean, std (sample, n-1) and count over seeds per dataset × method × countermeasure × arch
    and protocol, with ``rank`` 1 for the most effective method in each dataset × arch ×
    countermeasure group; rows sorted by that group, then by accuracy (lowest first).

    ``baseline_ok`` is False for a group whose clean row is near chance (:func:`near_chance`;
    those rows get no rank), True when it is not, empty when the group has no clean row or the
    class count is unknown."""
    if metric not in cells.columns or cells[metric].isna().all():
        known = [c for c in cells.columns if not c.startswith("_") and _numeric(cells[c])]
        raise UebenchError(
            f"no cell has a number for {metric!r}; numeric columns: {', '.join(known)}"
        )
    cells = cells.dropna(subset=[metric])
    board = _ranked(_over_seeds(cells, metric), baselines(cells, metric))
    if board["_key_protocol"].nunique() > 1:
        codes = {key: i + 1 for i, key in enumerate(dict.fromkeys(board["_key_protocol"]))}
        board["protocol"] = board["_key_protocol"].map(
            lambda key: json.loads(key).get("name") or codes[key]
        )
    board["_defense_order"] = board["defense"].map(lambda d: (d != "none", d))
    board = board.sort_values(
        ["dataset", "arch", "epochs", "train_size", "_key_protocol", "_defense_order", "mean"],
        kind="stable",
    )
    board = board.drop(columns=["_defense_order"]).reset_index(drop=True)
    return board[_board_columns(board)]


def _over_seeds(cells: pd.DataFrame, metric: str) -> pd.DataFrame:
    """One row per dataset × arch × protocol × countermeasure × method: ``metric``'s mean, std,
    count, min and max over seeds, and the seeds."""
    keys = ["_key_dataset", "_key_arch", "_key_protocol", "_key_defense", "_key_method"]
    grouped = cells.groupby(keys, sort=False, dropna=False)
    board = grouped.agg(
        dataset=("dataset", "first"),
        arch=("arch", "first"),
        defense=("defense", "first"),
        method=("method", "first"),
        threat=("threat", "first"),
        separability=("separability", "mean"),
        epochs=("epochs", "first"),
        train_size=("train_size", "first"),
        test_size=("test_size", "first"),
        mean=(metric, "mean"),
        std=(metric, "std"),
        n=(metric, "count"),
        min=(metric, "min"),
        max=(metric, "max"),
        seeds=("seed", lambda s: ",".join(str(v) for v in sorted(set(s)))),
    ).reset_index()
    board["metric"] = metric
    return board


def _ranked(board: pd.DataFrame, base: pd.DataFrame) -> pd.DataFrame:
    """``board`` with its setting's clean baseline (:func:`baselines`), ``baseline_ok`` and
    ``rank`` within each setting (none where the clean row is near chance)."""
    board = board.merge(base, on=SETTING_KEYS, how="left")
    verdicts = [_truth(v) for v in board["near_chance"]]
    near = pd.Series([v is True for v in verdicts], index=board.index)
    board["baseline_ok"] = pd.array([None if v is None else not v for v in verdicts], "boolean")
    board["_baseline"] = board["baseline"]
    board["_num_classes"] = board["num_classes"]
    rank = board.groupby(SETTING_KEYS)["mean"].rank(method="min").astype("Int64")
    board["rank"] = rank.mask(near, pd.NA)
    return board


def _board_columns(board: pd.DataFrame) -> list[str]:
    """The board's columns in the order shown, then the hidden ones later steps read."""
    columns = [
        "dataset",
        "arch",
        "defense",
        "method",
        "threat",
        "rank",
        "baseline_ok",
        "metric",
        "mean",
        "std",
        "n",
        "seeds",
        "min",
        "max",
        "epochs",
        "train_size",
        "test_size",
    ]
    if board["separability"].notna().any():  # shortcut separability (%), where recorded
        columns.insert(columns.index("threat") + 1, "separability")
    if "protocol" in board.columns:
        columns.append("protocol")
    hidden = [k for k in board.columns if k.startswith("_key_")] + ["_baseline", "_num_classes"]
    return columns + hidden


def _truth(value: Any) -> bool | None:
    """A True/False/None cell of a pandas column (NaN and NA read as None)."""
    if value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value)):
        return None
    return bool(value)


def _numeric(column: pd.Series) -> bool:
    return pd.api.types.is_numeric_dtype(column) and column.notna().any()


def leaderboard(
    run_dirs: Iterable[str | Path], metric: str = "final_acc"
) -> tuple[pd.DataFrame, list[dict[str, Any]]]:
    """The aggregated board of the run folders, and the records it was built from."""
    records = read_records(run_dirs)
    return aggregate(cells_frame(records), metric), records


def _setting_columns(board: pd.DataFrame) -> list[str]:
    """The columns that tell settings apart: dataset and arch always, the rest when they vary."""
    extra = [c for c in _SETTING[2:] if board[c].nunique(dropna=False) > 1]
    if "protocol" in board.columns:
        extra.append("protocol")
    return ["dataset", "arch", *extra]


def pivot(
    board: pd.DataFrame, rank_by: str = "mean", values: str = "mean", suite: Suite | None = None
) -> pd.DataFrame:
    """Wide table: one row per setting × method, one column per countermeasure, plus ``score``
    (the method's mean over countermeasures, or its worst case with ``rank_by='worst'``); methods
    sorted by score, most effective first.

    Countermeasures under which the setting's clean row is near chance are left out of the
    score and named in a ``baseline_near_chance`` column (present only when there are any).

    With a ``suite`` the worst case over the suite's countermeasures joins as
    :data:`uebench.scoring.score.SCORE_COLUMNS` (``worst_case``, ``reached_by``,
    ``rank_in_budget``, ``rank_overall``, ``missing``), and methods are sorted by it instead;
    a ``†`` cell counts as missing there, as it is left out of ``score``."""
    if rank_by not in RANK_BY:
        raise UebenchError(f"rank_by must be one of {', '.join(RANK_BY)}, got {rank_by!r}")
    index = [*_setting_columns(board), "method"]
    defenses = sorted(dict.fromkeys(board["defense"]), key=lambda d: (d != "none", d))
    wide = board.pivot_table(
        index=index, columns="defense", values=values, aggfunc="first", sort=False, dropna=False
    )
    wide = wide.reindex(columns=defenses)
    wide.columns.name = None
    flagged = _flagged(board)
    scored = board.assign(mean=board["mean"].mask(flagged))
    means = scored.groupby(index, sort=False, dropna=False)["mean"]
    wide = wide.join((means.mean() if rank_by == "mean" else means.max()).rename("score"))
    if flagged.any():
        names = board[flagged].groupby(index[:-1], sort=False, dropna=False)["defense"]
        near = names.agg(lambda d: ",".join(dict.fromkeys(d))).rename("baseline_near_chance")
        wide = wide.join(near, on=index[:-1])
        wide["baseline_near_chance"] = wide["baseline_near_chance"].fillna("")
    wide = wide.reset_index()
    if "threat" in board.columns and board["threat"].notna().any():  # each method's budget
        threats = board.groupby(index, sort=False, dropna=False)["threat"].first()
        keys = pd.MultiIndex.from_frame(wide[index])
        wide.insert(len(index), "threat", threats.reindex(keys).to_numpy())
    if "separability" in board.columns and board["separability"].notna().any():
        # A property of the poison, the same under every countermeasure: shown once per method.
        found = board.groupby(index, sort=False, dropna=False)["separability"].mean()
        keys = pd.MultiIndex.from_frame(wide[index])
        at = list(wide.columns).index("threat") + 1 if "threat" in wide.columns else len(index)
        wide.insert(at, "separability", found.reindex(keys).to_numpy())
    order = "score"
    if suite is not None:
        # † numbers measure a setting where clean training failed too: taking the worst case
        # over the rest would be a partial score, so a method with one has none.
        worst = board_worst_case(scored, suite, index)
        wide = wide.merge(worst[[*index, *SCORE_COLUMNS]], on=index, how="left")
        if not wide["missing"].fillna("").astype(bool).any():
            wide = wide.drop(columns=["missing"])  # every method has a score
        order = "worst_case"
    return wide.sort_values([*index[:-1], order, "method"], kind="stable").reset_index(drop=True)


def _flagged(board: pd.DataFrame) -> pd.Series:
    """Rows of a board whose setting's clean row is near chance."""
    if "baseline_ok" not in board.columns:
        return pd.Series(False, index=board.index)
    return board["baseline_ok"].eq(False).fillna(False).astype(bool)


#: Marks a pivot cell whose countermeasure's clean row is near chance.
NEAR_CHANCE_MARK = "†"


def near_chance_notes(board: pd.DataFrame) -> list[str]:
    """One warning line per flagged setting of a board (empty when none is flagged)."""
    flagged = board[_flagged(board)]
    settings = flagged.drop_duplicates(subset=SETTING_KEYS)
    notes = []
    for row in settings.to_dict("records"):
        where = f"{row['defense']} on {row['dataset']} / {row['arch']}"
        warning = near_chance_warning(row["_baseline"], row["_num_classes"], where)
        notes.append(f"{NEAR_CHANCE_MARK} {warning}; it is not ranked nor scored")
    return notes


# --- Markdown and files ------------------------------------------------------------------------


def format_mean_std(mean: float, std: float, n: int | None = None, show_n: bool = False) -> str:
    """``45.20 ± 0.80`` (no ± for a single seed), with ``(n=2)`` when asked."""
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return ""
    text = f"{mean:.2f}" if std is None or math.isnan(std) else f"{mean:.2f} ± {std:.2f}"
    return f"{text} (n={n})" if show_n and n is not None else text


def is_missing(value: Any) -> bool:
    """None, NaN or pandas' NA: a cell a page shows empty."""
    return value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value))


def markdown_table(frame: pd.DataFrame, floatfmt: str = ".2f") -> str:
    """A GitHub-flavoured Markdown table (pandas' own needs the optional ``tabulate``)."""

    def cell(value: Any) -> str:
        if is_missing(value):
            return ""
        if isinstance(value, float):
            return format(value, floatfmt)
        return str(value).replace("|", "\\|").replace("\n", " ")

    header = [str(c) for c in frame.columns]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for row in frame.itertuples(index=False):
        lines.append("| " + " | ".join(cell(v) for v in row) + " |")
    return "\n".join(lines)


def public_columns(board: pd.DataFrame) -> pd.DataFrame:
    """The board without its internal ``_key_*`` columns."""
    return board[[c for c in board.columns if not c.startswith("_")]]


def text_pivot(
    board: pd.DataFrame, rank_by: str = "mean", suite: Suite | None = None
) -> pd.DataFrame:
    """The pivot with ``mean ± std`` text cells (``n`` shown where seed counts differ), and the
    worst case over ``suite`` when one is given."""
    show_n = board["n"].nunique() > 1
    marks = _flagged(board).map({True: f" {NEAR_CHANCE_MARK}", False: ""})
    text_board = board.assign(
        cell=[
            format_mean_std(m, s, n, show_n) + mark
            for m, s, n, mark in zip(board["mean"], board["std"], board["n"], marks, strict=True)
        ]
    )
    wide = pivot(text_board, rank_by=rank_by, values="cell", suite=suite)
    for column in ("score", "worst_case"):
        if column in wide.columns:
            wide[column] = wide[column].map(_two_decimals)
    return wide.drop(columns=["baseline_near_chance"], errors="ignore")


def _two_decimals(value: Any) -> str:
    return "" if value is None or value != value else f"{value:.2f}"


def suite_note(suite: Suite) -> str:
    """What the worst-case columns mean, naming the suite's version and hash."""
    return (
        f"worst_case = the highest accuracy any countermeasure of {suite.describe()} reaches "
        f"({', '.join(suite.countermeasures)}; the strongest thief), reached_by = that "
        "countermeasure; lower is more unlearnable; ranked within each threat budget "
        "(rank_in_budget) and over all budgets (rank_overall); a method without a number under "
        f"some countermeasure of the suite, or with a {NEAR_CHANCE_MARK} one, has no worst case "
        "and no rank (missing names those countermeasures)"
    )


def board_markdown(board: pd.DataFrame, rank_by: str = "mean", suite: Suite | None = None) -> str:
    """The pivot (``mean ± std`` over seeds) and the long table, as one Markdown document;
    with a ``suite``, the pivot ranks by the worst case over it (:func:`pivot`)."""
    metric = board["metric"].iloc[0] if len(board) else "final_acc"
    counts = set(board["n"])
    wide = text_pivot(board, rank_by, suite)
    seeds = f"n = {counts.pop()} seeds per cell" if len(counts) == 1 else "n = seeds per cell"
    score = "mean over countermeasures" if rank_by == "mean" else "worst case (highest accuracy)"
    long = public_columns(board).drop(columns=["metric"])
    notes = near_chance_notes(board)
    scored = f"score = {score}" + (f" ({NEAR_CHANCE_MARK} cells left out)" if notes else "")
    # One sentence says how rows are sorted: by score, or with a suite by the worst case only.
    if suite is None:
        legend = f"Sorted by score, most effective method first; {seeds}; {scored}."
    else:
        legend = (
            f"Sorted by worst case, most effective method first: {suite_note(suite)}; {seeds}; "
            f"{scored}."
        )
    return "\n\n".join(
        [
            f"## Clean test accuracy (%), `{metric}`: mean ± std over seeds",
            legend,
            markdown_table(wide),
            *(["\n".join(f"- {note}" for note in notes)] if notes else []),
            "## All cells",
            markdown_table(long),
        ]
    )


def write_board(
    board: pd.DataFrame, out: str | Path, rank_by: str = "mean", suite: Suite | None = None
) -> list[Path]:
    """Write ``NAME.csv`` (long), ``NAME.pivot.csv`` and ``NAME.md`` beside ``out``, atomically;
    with a ``suite``, the pivot and the page carry the worst case over it."""
    out = Path(out)
    check_board_path(out)
    pivot_path = out.with_name(out.stem + ".pivot.csv")
    markdown_path = out.with_suffix(".md")
    markdown = board_markdown(board, rank_by, suite) + "\n"
    write_csv(out, public_columns(board), float_format="%.4g")
    write_csv(pivot_path, pivot(board, rank_by=rank_by, suite=suite), float_format="%.4g")
    atomic_write(markdown_path, lambda stream: stream.write(markdown), mode="w")
    return [out, pivot_path, markdown_path]


def check_board_path(out: Path) -> None:
    """Refuse, before any record is read, a leaderboard output that cannot be written."""
    if out.suffix != ".csv":
        raise UebenchError(f"leaderboard output must end in .csv, got {out}")
    check_writable("leaderboard -o", out.parent)
