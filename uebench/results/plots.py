"""Plots of a run as PNG files (matplotlib's ``Agg`` backend, seaborn styling).

Heatmaps of the method × countermeasure grid per architecture, learning curves per method
(Figure 1 of Huang et al. style), confusion matrices, and accuracy against the poisoned rate for
``partial:rate=R`` cells (Table 2 as a plot).  matplotlib and seaborn are the ``plots`` extra and
are imported only when a plot is drawn.
"""

from __future__ import annotations

import io
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from uebench.errors import UebenchError
from uebench.files import atomic_write
from uebench.results.leaderboard import cells_frame, pivot
from uebench.wording import seed_counts

_DPI = 110


def plotting() -> tuple[Any, Any]:
    """``(pyplot, seaborn)`` with the non-interactive backend, or a one-line error."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        import seaborn as sns
    except ImportError as error:
        raise UebenchError(
            f"plots need matplotlib and seaborn ({error.name} is missing): "
            "pip install 'uebench[plots]'"
        ) from None
    sns.set_theme(style="whitegrid", context="notebook")
    return plt, sns


def slug(*parts: Any) -> str:
    """A file-name-safe join of ``parts`` (spec strings hold ``:``, ``=`` and brackets)."""
    text = "_".join(str(p) for p in parts if p is not None and str(p) != "")
    return re.sub(r"[^A-Za-z0-9._+-]+", "-", text).strip("-") or "plot"


def save(figure: Any, path: Path) -> Path:
    """Write ``figure`` as a PNG atomically and close it."""
    plt, _ = plotting()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=_DPI, bbox_inches="tight")
    plt.close(figure)
    atomic_write(path, lambda stream: stream.write(buffer.getvalue()), mode="wb")
    return path


def _settings(frame: pd.DataFrame) -> list[tuple[tuple[str, str, str], pd.DataFrame]]:
    """Groups of one dataset × arch × protocol, in order of appearance."""
    keys = ["_key_dataset", "_key_arch", "_key_protocol"]
    groups = []
    for _, group in frame.groupby(keys, sort=False):
        first = group.iloc[0]
        protocol = f"{first['epochs']:g} epochs" if pd.notna(first.get("epochs")) else ""
        groups.append(((first["dataset"], first["arch"], protocol), group))
    return groups


def _label(setting: tuple[str, str, str]) -> str:
    return " · ".join(part for part in setting if part)


def _file(out_dir: Path, kind: str, setting: tuple[str, ...], count: int, index: int) -> Path:
    # Settings that differ only in protocol would share a name; number them then.
    suffix = f"_{index + 1}" if count > 1 else ""
    return Path(out_dir) / f"{slug(kind, *setting[:2])}{suffix}.png"


def heatmaps(board: pd.DataFrame, out_dir: str | Path, rank_by: str = "mean") -> list[Path]:
    """One heatmap per dataset × arch (× protocol) of the board: methods (most effective first)
    × countermeasures, annotated with mean ± std over seeds."""
    plt, sns = plotting()
    paths = []
    groups = _settings(board)
    names = [s[:2] for s, _ in groups]
    for index, (setting, group) in enumerate(groups):
        wide = pivot(group, rank_by=rank_by).set_index("method")
        defenses = [c for c in wide.columns if c in set(group["defense"])]
        means = wide[defenses].astype(float)
        stds = pivot(group, rank_by=rank_by, values="std").set_index("method")[defenses]
        labels = means.copy().astype(object)
        for method in means.index:
            for defense in defenses:
                mean, std = means.at[method, defense], stds.at[method, defense]
                labels.at[method, defense] = (
                    ""
                    if pd.isna(mean)
                    else f"{mean:.1f}" + ("" if pd.isna(std) else f"\n±{std:.1f}")
                )
        height = 1.2 + 0.55 * len(means)
        width = 2.5 + 1.25 * len(defenses) + 0.06 * max(len(m) for m in means.index)
        figure, axes = plt.subplots(figsize=(width, height))
        sns.heatmap(
            means,
            annot=labels.to_numpy(),
            fmt="",
            cmap="mako",
            vmin=0,
            vmax=100,
            linewidths=0.5,
            cbar_kws={"label": "clean test accuracy (%)"},
            ax=axes,
        )
        seeds = seed_counts(group["n"])
        axes.set_title(
            f"{_label(setting)}: {group['metric'].iloc[0]}, mean ± std over {seeds}\n"
            "lower = more effective noise"
        )
        axes.set_xlabel("countermeasure")
        axes.set_ylabel("method")
        axes.tick_params(axis="x", rotation=30)
        axes.tick_params(axis="y", rotation=0)
        paths.append(
            save(figure, _file(out_dir, "heatmap", setting, names.count(setting[:2]), index))
        )
    return paths


def _history_frame(records: Sequence[dict[str, Any]]) -> pd.DataFrame:
    cells = cells_frame(records).reset_index(drop=True)
    rows = []
    for position, record in enumerate(records):
        for stats in record.get("history") or []:
            if stats.get("test_acc") is not None and stats.get("epoch") is not None:
                rows.append(
                    {"_row": position, "epoch": stats["epoch"], "test_acc": stats["test_acc"]}
                )
    history = pd.DataFrame(rows, columns=["_row", "epoch", "test_acc"])
    return history.merge(cells, left_on="_row", right_index=True)


def learning_curves(records: Sequence[dict[str, Any]], out_dir: str | Path) -> list[Path]:
    """Clean test accuracy per epoch, one line per method (mean over seeds, ±std band), one panel
    per countermeasure; one figure per dataset × arch (× protocol)."""
    _, sns = plotting()
    history = _history_frame(records)
    if history.empty:
        return []
    paths = []
    groups = _settings(history)
    names = [s[:2] for s, _ in groups]
    for index, (setting, group) in enumerate(groups):
        defenses = sorted(set(group["defense"]), key=lambda d: (d != "none", d))
        final = group.sort_values("epoch").groupby("method")["test_acc"].last()
        order = list(final.sort_values().index)
        grid = sns.relplot(
            data=group,
            x="epoch",
            y="test_acc",
            hue="method",
            hue_order=order,
            col="defense",
            col_order=defenses,
            col_wrap=min(3, len(defenses)),
            kind="line",
            errorbar="sd",
            marker="o",
            markersize=4,
            height=3.4,
            aspect=1.25,
            facet_kws={"sharey": True},
        )
        grid.set(ylim=(0, 100))
        grid.set_axis_labels("epoch", "clean test accuracy (%)")
        grid.set_titles("countermeasure: {col_name}")
        grid.figure.suptitle(f"Learning curves: {_label(setting)}", y=1.03)
        path = _file(out_dir, "curves", setting, names.count(setting[:2]), index)
        paths.append(save(grid.figure, path))
    return paths


def confusion_matrices(
    records: Sequence[dict[str, Any]], out_dir: str | Path, max_panels: int = 12
) -> list[Path]:
    """Row-normalized confusion matrices (% of each true class, summed over seeds), one panel per
    method; one figure per dataset × arch × countermeasure (× protocol)."""
    plt, sns = plotting()
    cells = cells_frame(records).reset_index(drop=True)
    cells["_record"] = range(len(records))
    paths = []
    for setting, group in _settings(cells):
        for defense, sub in group.groupby("defense", sort=False):
            matrices, classes = _summed_confusions(records, sub)
            if not matrices:
                continue
            methods = sorted(matrices, key=lambda m: (m != "clean", m))[:max_panels]
            figure = _confusion_figure(plt, sns, {m: matrices[m] for m in methods}, classes)
            figure.suptitle(
                f"Confusion matrices (% of true class): {_label(setting)} · {defense}", y=1.02
            )
            figure.tight_layout()
            name = f"{slug('confusion', *setting[:2], defense)}.png"
            paths.append(save(figure, Path(out_dir) / name))
    return paths


def _summed_confusions(
    records: Sequence[dict[str, Any]], cells: pd.DataFrame
) -> tuple[dict[str, np.ndarray], list[str]]:
    """Per method of ``cells`` (rows of :func:`cells_frame` with ``_record``), its records'
    confusion matrices summed over seeds; and the class names (none when no record has one)."""
    matrices: dict[str, np.ndarray] = {}
    classes: list[str] = []
    for method, cell_rows in cells.groupby("method", sort=False):
        total = None
        for position in cell_rows["_record"]:
            matrix = records[position].get("confusion_matrix")
            if not matrix:
                continue
            array = np.asarray(matrix, dtype=float)
            total = array if total is None else total + array
            classes = list(records[position].get("classes") or range(len(array)))
        if total is not None:
            matrices[str(method)] = total
    return matrices, classes


def _confusion_figure(
    plt: Any, sns: Any, matrices: dict[str, np.ndarray], classes: list[str]
) -> Any:
    """One heatmap panel per method (row-normalized, in percent), three panels a row."""
    columns = min(3, len(matrices))
    rows = -(-len(matrices) // columns)
    k = len(classes)
    side = 1.2 + 0.33 * k
    figure, axes = plt.subplots(
        rows, columns, figsize=(0.95 * side * columns, side * rows), squeeze=False
    )
    for axis in axes.flat[len(matrices) :]:
        axis.set_visible(False)
    for axis, (method, matrix) in zip(axes.flat, matrices.items(), strict=False):
        percent = 100 * matrix / np.clip(matrix.sum(axis=1, keepdims=True), 1, None)
        sns.heatmap(
            percent,
            vmin=0,
            vmax=100,
            cmap="rocket_r",
            annot=k <= 10,
            fmt=".0f",
            annot_kws={"size": 7},
            cbar=False,
            square=True,
            xticklabels=classes,
            yticklabels=classes,
            ax=axis,
        )
        accuracy = 100 * np.trace(matrix) / max(matrix.sum(), 1)
        axis.set_title(f"{method}\naccuracy {accuracy:.1f}%", fontsize=9)
        axis.set_xlabel("predicted")
        axis.set_ylabel("true")
    return figure


def partial_curves(
    records: Sequence[dict[str, Any]], out_dir: str | Path, metric: str = "final_acc"
) -> list[Path]:
    """Accuracy against the percentage of poisoned training images (``partial:rate=R`` cells,
    whose notes carry ``rate``), one line per method, mean ± std over seeds; the model trained
    on the clean part alone (``clean_part_acc``) dashed; 0% from ``clean`` and 100% from the
    method's cells without countermeasure, when the run has them.  Table 2 as a plot."""
    plt, sns = plotting()
    cells = cells_frame(records)
    if "rate" not in cells.columns or cells["rate"].isna().all():
        return []
    paths = []
    for setting, group in _settings(cells):
        data = _partial_points(group, metric)
        if data is None:
            continue
        dashed = {
            m: (2, 2) if m.endswith("clean part only)") or m == "clean part only" else ""
            for m in set(data["method"])
        }
        figure, axes = plt.subplots(figsize=(6.4, 4.2))
        sns.lineplot(
            data=data,
            x="percent",
            y="value",
            hue="method",
            style="method",
            dashes=dashed,
            markers=True,
            errorbar="sd",
            ax=axes,
        )
        axes.set_xlim(-3, 103)
        axes.set_ylim(0, 100)
        axes.set_xlabel("poisoned training images (%)")
        axes.set_ylabel(f"clean test accuracy (%), {metric}")
        axes.set_title(f"Partial poisoning: {_label(setting)}")
        axes.legend(loc="upper center", bbox_to_anchor=(0.5, -0.16), fontsize=8, frameon=False)
        paths.append(save(figure, Path(out_dir) / f"{slug('partial', *setting[:2])}.png"))
    return paths


def _partial_points(group: pd.DataFrame, metric: str) -> pd.DataFrame | None:
    """One setting's points of :func:`partial_curves` (``method``, ``percent``, ``value``);
    None when it has no partial-poisoning cell."""
    # ``clean`` under partial poisoning has nothing to poison: it is the 0% point instead.
    partial = group[group["rate"].notna() & (group["method"] != "clean")]
    if partial.empty:
        return None
    points = [partial.assign(percent=100 * partial["rate"], value=partial[metric])]
    methods = set(partial["method"])
    if "clean_part_acc" in partial.columns:
        part = partial[partial["clean_part_acc"].notna()]
        # The clean part depends on the rate and seed, not on the noise, so every method
        # usually gives the same numbers (Table 2's Dc column): draw one line then.
        same = part.groupby(["rate", "seed"])["clean_part_acc"].nunique().le(1).all()
        if same:
            part = part.drop_duplicates(["rate", "seed"])
        label = "clean part only" if same else part["method"] + " (clean part only)"
        points.append(
            part.assign(percent=100 * part["rate"], value=part["clean_part_acc"], method=label)
        )
    plain = group[(group["defense"] == "none") & group["rate"].isna()]
    full = plain[plain["method"].isin(methods)]
    points.append(full.assign(percent=100.0, value=full[metric]))
    clean = plain[plain["method"] == "clean"]
    for method in methods:
        points.append(clean.assign(percent=0.0, value=clean[metric], method=method))
    return pd.concat(points, ignore_index=True).dropna(subset=["value"])
