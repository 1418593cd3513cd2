"""``uebench report``: one page with a run's tables and plots.

HTML (default) is self-contained: the PNGs are embedded as data URIs, so the single file can be
mailed or attached.  Markdown links the PNGs, written beside it.  The PNGs are written in both
cases.
"""

from __future__ import annotations

import base64
import html
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from uebench.analysis.diagnostics import (
    clean_baselines,
    first_epoch_above,
    record_setting,
    shortcut_speed,
)
from uebench.errors import UebenchError
from uebench.files import atomic_write
from uebench.results import plots
from uebench.results.leaderboard import (
    NEAR_CHANCE_STATUS,
    aggregate,
    cells_frame,
    is_missing,
    markdown_table,
    near_chance_notes,
    public_columns,
    read_records,
    suite_note,
    text_pivot,
)
from uebench.results.references import compare, load_references
from uebench.scoring.suites import Suite, load_suite
from uebench.wording import seed_counts

FORMATS = ("html", "md")


def write_report(
    run_dirs: Sequence[str | Path],
    out_dir: str | Path,
    fmt: str = "html",
    metric: str = "final_acc",
    rank_by: str = "mean",
    references: Iterable[str] = (),
    suite: str | Path | Suite | None = None,
) -> Path:
    """Write ``out_dir/report.html`` (or ``report.md``) and its PNGs; return the page's path.

    With a ``suite`` (an id such as ``v1``, a suite file or a :class:`Suite`) the leaderboard
    carries each method's worst case over it and its ranks, and names the suite's version."""
    if fmt not in FORMATS:
        raise UebenchError(f"report format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    check_run_dirs(run_dirs)
    out_dir = Path(out_dir)
    scored = load_suite(suite) if suite is not None else None
    records = read_records(run_dirs)
    cells = cells_frame(records)
    board = aggregate(cells, metric)
    sources = list(references)
    comparison = compare(load_references(*sources), cells) if sources else None

    figures = [
        ("Method × countermeasure", plots.heatmaps(board, out_dir, rank_by)),
        ("Learning curves (Figure 1 style)", plots.learning_curves(records, out_dir)),
        ("Partial poisoning (Table 2 style)", plots.partial_curves(records, out_dir, metric)),
        ("Confusion matrices", plots.confusion_matrices(records, out_dir)),
    ]
    sections = _sections(run_dirs, records, board, rank_by, comparison, scored)
    page = out_dir / f"report.{fmt}"
    text = _html(sections, figures) if fmt == "html" else _markdown(sections, figures, out_dir)
    atomic_write(page, lambda stream: stream.write(text), mode="w")
    return page


def check_run_dirs(run_dirs: Iterable[str | Path]) -> None:
    """Refuse, in one line, a results folder that does not exist, is a file or has no
    ``cells/`` folder: checked before the report's folder (by default inside the first
    results folder) is created, so a mistyped name leaves nothing behind."""
    for run_dir in run_dirs:
        root = Path(run_dir)
        if (root / "cells").is_dir():
            continue
        # The first and last wordings are those of read_records, which leaderboard and
        # compare report through.
        if not root.exists():
            raise UebenchError(f"results folder {root} does not exist")
        if not root.is_dir():
            raise UebenchError(f"{root} is a file, not a uebench results folder")
        raise UebenchError(f"{root} is not a uebench results folder (it has no cells/ folder)")


#: One section of the report: title, paragraph and table (or None).
Section = tuple[str, str, pd.DataFrame | None]


def _sections(
    run_dirs: Sequence[str | Path],
    records: Sequence[dict[str, Any]],
    board: pd.DataFrame,
    rank_by: str,
    comparison: pd.DataFrame | None,
    suite: Suite | None = None,
) -> list[Section]:
    """``(title, paragraph, table)`` triples, shared by both formats."""
    sections: list[Section] = [("Run", _run_summary(run_dirs, records), None)]
    sections += _board_sections(board, rank_by, suite)
    diagnostics = diagnostics_table(records)
    if not diagnostics.empty:
        sections.append(
            (
                "Why a poison works or fails",
                "separability: held-out accuracy (%) of a linear classifier fit on the applied "
                "perturbations alone (Yu et al., KDD 2022); near 100 for a linear shortcut, "
                "near chance for sample-wise random noise. train ≥ 90%: the first epoch whose "
                "training accuracy passes 90%, poisoned and clean (Zhu et al., AAAI 2024).",
                diagnostics,
            )
        )
    if comparison is not None:
        sections.append(_comparison_section(comparison))
    return sections


def _run_summary(run_dirs: Sequence[str | Path], records: Sequence[dict[str, Any]]) -> str:
    """What the report covers: cells, folders, code commits, devices and cell hours."""
    commits = sorted(
        {
            f"{(r.get('code_version') or {}).get('git_commit') or '?'}"[:10]
            + ("+dirty" if (r.get("code_version") or {}).get("git_dirty") else "")
            for r in records
        }
    )
    devices = sorted({str(r.get("device", "?")) for r in records})
    hours = sum(float(r.get("wall_time_s") or 0) for r in records) / 3600
    return (
        f"{len(records)} cells from {', '.join(str(d) for d in run_dirs)}; "
        f"code {', '.join(commits)}; device {', '.join(devices)}; "
        f"{hours:.2f} h of cell wall time. Generated {time.strftime('%Y-%m-%d %H:%M')}."
    )


def _board_sections(board: pd.DataFrame, rank_by: str, suite: Suite | None) -> list[Section]:
    """The leaderboard (methods × countermeasures) and the table of every cell setting."""
    metric = board["metric"].iloc[0]
    score = "mean over countermeasures" if rank_by == "mean" else "highest accuracy over them"
    if suite is not None:
        score += f"; sorted by worst case: {suite_note(suite)}"
    flagged = "".join(f" {note}." for note in near_chance_notes(board))
    return [
        (
            "Leaderboard",
            f"Clean test accuracy (%), {metric}, mean ± std over {seed_counts(board['n'])}; most "
            "effective method "
            f"(lowest accuracy) first; score = {score}.{flagged}",
            text_pivot(board, rank_by, suite),
        ),
        (
            "All cells",
            "One row per cell setting; rank 1 = most effective; baseline_ok False: clean "
            "training stayed near chance there, so those rows are not ranked.",
            public_columns(board),
        ),
    ]


def _comparison_section(comparison: pd.DataFrame) -> Section:
    """The references this run measured, against the numbers their papers report."""
    measured = comparison[comparison["status"] != "not measured"]
    unjudged = int((measured["status"] == NEAR_CHANCE_STATUS).sum())
    note = (
        f"{len(measured)} of {len(comparison)} references measured in this run; "
        f"{int((measured['status'] == 'MISMATCH').sum())} outside their tolerance"
        + (f"; {unjudged} not judged ({NEAR_CHANCE_STATUS})." if unjudged else ".")
    )
    return ("Against reported numbers", note, measured)


def diagnostics_table(records: Sequence[dict[str, Any]]) -> pd.DataFrame:
    """Per poisoned cell: its shortcut separability and the shortcut-speed reading against the
    clean row of the same dataset, countermeasure, architecture and seed."""
    clean = clean_baselines(list(records))
    rows = []
    for record in records:
        if str(record.get("method_spec", record["method"])) == "clean":
            continue
        base = clean.get(record_setting(record))
        rows.append(
            {
                "dataset": record["dataset"],
                "method": record["method"],
                "defense": record["defense"],
                "arch": record["arch"],
                "seed": record["seed"],
                "separability": record.get("shortcut_separability"),
                "train ≥ 90%": _epoch_text(first_epoch_above(record["history"])),
                "clean train ≥ 90%": (
                    _epoch_text(first_epoch_above(base["history"])) if base else "no clean row"
                ),
                "reading": shortcut_speed(record, base).split(": ")[-1],
            }
        )
    return pd.DataFrame(rows)


def _epoch_text(epoch: int | None) -> str:
    return "never reached" if epoch is None else str(epoch)


def displayed(table: pd.DataFrame) -> pd.DataFrame:
    """The table as the page shows it: numbers with two decimals (whole numbers as they are),
    and every missing value (None, NaN, pandas' NA) an empty cell, never ``None``/``<NA>``."""

    def cell(value: Any) -> str:
        if is_missing(value):
            return ""
        if isinstance(value, float):
            return f"{value:.2f}"
        return str(value)

    return table.astype(object).map(cell)


def _html(sections: list[Section], figures: list[tuple[str, list[Path]]]) -> str:
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8"><title>uebench report</title>',
        "<style>body{font-family:system-ui,sans-serif;margin:2em;max-width:1400px}"
        "table{border-collapse:collapse;font-size:13px;margin:1em 0}"
        "th,td{border:1px solid #ccc;padding:3px 8px;text-align:right}"
        "th{background:#f3f3f3}img{max-width:100%;border:1px solid #eee;margin:.5em 0}"
        "figure{margin:1em 0}figcaption{color:#555;font-size:13px}</style></head><body>",
        "<h1>uebench report</h1>",
    ]
    for title, paragraph, table in sections:
        parts.append(f"<h2>{html.escape(title)}</h2><p>{html.escape(paragraph)}</p>")
        if table is not None:
            parts.append(displayed(table).to_html(index=False, border=0))
    for title, paths in figures:
        if not paths:
            continue
        parts.append(f"<h2>{html.escape(title)}</h2>")
        for path in paths:
            data = base64.b64encode(path.read_bytes()).decode("ascii")
            parts.append(
                f'<figure><img alt="{html.escape(path.stem)}" src="data:image/png;base64,{data}">'
                f"<figcaption>{html.escape(path.name)}</figcaption></figure>"
            )
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def _markdown(
    sections: list[Section],
    figures: list[tuple[str, list[Path]]],
    out_dir: Path,
) -> str:
    parts = ["# uebench report"]
    for title, paragraph, table in sections:
        parts += [f"## {title}", paragraph]
        if table is not None:
            parts.append(markdown_table(displayed(table)))
    for title, paths in figures:
        if paths:
            parts.append(f"## {title}")
            parts += [f"![{p.stem}]({p.relative_to(out_dir).as_posix()})" for p in paths]
    return "\n\n".join(parts) + "\n"
