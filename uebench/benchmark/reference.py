"""A finished multi-seed run under a suite, written as a reference file of field rows and its
leaderboard page.

    python -m uebench.benchmark.reference RUN_DIR [RUN_DIR ...] \\
        -o leaderboard/references/uebench-mini-cifar10.csv [--suite v1] [--board PATH.csv]

One row per method × countermeasure of the suite (× arch): the mean ``final_acc`` over the
seeds, their standard deviation and count, the method's threat model, the protocol and its
hash, the suite's id and hash, uebench's version, and a ``uebench run`` command that makes
exactly these cells (checked: every cell id of the run is one the command makes), so ``pytest
-p uebench.regression FILE`` reruns them.  The tolerance is derived from the spread
(:func:`tolerance`).  ``uebench bench`` reads the file as the field's rows.
"""

from __future__ import annotations

import argparse
import math
import re
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from uebench.errors import UebenchError
from uebench.files import atomic_write
from uebench.grid import GridConfig
from uebench.grid.config import add_run_flags, run_values
from uebench.grid.protocols import resolve_protocol
from uebench.results.leaderboard import aggregate, cells_frame, read_records, write_board
from uebench.results.references import read_reference_file
from uebench.scoring.score import suite_columns
from uebench.scoring.suites import DEFAULT_SUITE, Suite, load_suite
from uebench.version import __version__

#: The tolerance never goes below this many points (a CPU's float order alone moves a cell).
MIN_TOLERANCE = 2.0
#: Standard deviations of the difference of two n-seed means the tolerance spans.
SPREAD_FACTOR = 3.0
#: The grid settings a protocol decides, as ``uebench run`` flags: written into the command
#: only where the run's cells used another value.
_SETTINGS = ("epochs", "batch_size", "lr", "train_size", "test_size")
_COLUMNS = [
    "id", "where", "row", "column", "dataset", "method", "defense", "arch", "metric", "relation",
    "value", "tolerance", "std", "n", "epochs", "train_size", "test_size", "threat", "protocol",
    "protocol_hash", "suite", "suite_hash", "uebench_version", "command", "marks", "note",
]  # fmt: skip


def tolerance(std: float, n: int) -> float:
    """``max(MIN_TOLERANCE, SPREAD_FACTOR · std · √(2/n))``, rounded up to 0.1 point: three
    standard deviations of the difference between two means of ``n`` seeds each (the
    reference's and a fresh run's), with ``std`` the seed-to-seed standard deviation."""
    spread = SPREAD_FACTOR * std * math.sqrt(2.0 / n)
    return math.ceil(max(MIN_TOLERANCE, spread) * 10 - 1e-9) / 10


def reference_frame(
    run_dirs: Sequence[str | Path], suite: Suite, marks: Sequence[str] = ("slow",)
) -> tuple[pd.DataFrame, pd.DataFrame, list[str]]:
    """The reference rows of the run folders (one protocol, one dataset), the run's
    leaderboard board, and notes on what was left out."""
    records = read_records(run_dirs)
    cells = cells_frame(records)
    board = aggregate(cells)
    for key, what in (("_key_protocol", "protocol and settings"), ("_key_dataset", "dataset")):
        if board[key].nunique() > 1:
            raise UebenchError(
                f"a reference file holds one {what}; {', '.join(map(str, run_dirs))} hold "
                f"{board[key].nunique()}"
            )
    first = records[0]
    if not first.get("protocol"):
        raise UebenchError("the run's records name no protocol (made before protocols existed)")
    columns = suite_columns(board, suite)
    kept = board.assign(countermeasure=columns)[columns.notna()]
    if kept.empty:
        raise UebenchError(
            f"no cell of {', '.join(map(str, run_dirs))} ran a countermeasure of {suite.describe()}"
        )
    few = kept[kept["n"] < 2]
    if len(few):
        row = few.iloc[0]
        raise UebenchError(
            f"{row['method']} / {row['countermeasure']} has {int(row['n'])} seed; a reference "
            "row needs at least 2 to derive its tolerance from their spread (--seeds 0-2)"
        )
    labels = _record_columns(cells, kept)
    used = [r for r, label in zip(records, labels, strict=True) if label is not None]
    command = command_text(command_config(used, suite, kept))
    config = parse_command(command)
    made = {cell.cell_id for cell in config.cells()}
    stray = sorted({r["cell_id"] for r in used} - made)
    if stray:
        raise UebenchError(
            f"cell {stray[0]} is not one that the protocol's own command makes (its settings "
            "differ from the other cells'?): a reference holds cells of one protocol run"
        )
    protocol_hash = config.effective_protocol().content_hash()
    notes = []
    missing = _missing_countermeasures(kept, suite)
    if missing:
        notes.append(
            "no worst case (a countermeasure of the suite not run) for: " + "; ".join(missing)
        )
    left_out = len(board) - len(kept)
    if left_out:
        notes.append(f"{left_out} row(s) of countermeasures outside the suite left out")
    rows = [
        _row(row, cells, first, suite, protocol_hash, command, marks)
        for row in kept.to_dict("records")
    ]
    frame = pd.DataFrame(rows, columns=_COLUMNS)
    if frame["id"].duplicated().any():
        frame["id"] = frame["id"] + "--" + frame["arch"].map(_slug)
    return frame, board, notes


def _record_columns(cells: pd.DataFrame, kept: pd.DataFrame) -> list[str | None]:
    """For each cell (row of ``cells``), the suite column it counts under, or None."""
    keys = ["_key_dataset", "_key_arch", "_key_protocol", "_key_defense", "_key_method"]
    index = {tuple(row[k] for k in keys): row["countermeasure"] for row in kept.to_dict("records")}
    return [index.get(tuple(row[k] for k in keys)) for row in cells.to_dict("records")]


def _missing_countermeasures(kept: pd.DataFrame, suite: Suite) -> list[str]:
    lines = []
    for (method, arch), group in kept.groupby(["method", "arch"], sort=False):
        absent = [c for c in suite.countermeasures if c not in set(group["countermeasure"])]
        if absent:
            lines.append(f"{method} ({arch}) lacks {', '.join(absent)}")
    return lines


def command_config(kept: Sequence[dict[str, Any]], suite: Suite, board: pd.DataFrame) -> GridConfig:
    """The grid of the ``uebench run`` command that makes the ``kept`` records' cells: their
    dataset, protocol, methods (``board``'s, in its order) and seeds, the suite's
    countermeasures, and a flag for each grid setting the cells ran otherwise than the protocol
    says (never the data folder, which is the machine's)."""
    first = kept[0]
    protocol = resolve_protocol(first["protocol"], first["dataset"])
    values: dict[str, Any] = {
        "dataset": first["dataset"],
        "protocol": protocol.name,
        "methods": list(dict.fromkeys(board["method"])),
        "defenses": [run for _, run in suite.runs_for(protocol.name, protocol.dataset)],
        "seeds": sorted({int(r["seed"]) for r in kept}),
        "progress": False,
    }
    # No --data-root: where the data lies is the measuring machine's business, and a
    # reference is rerun elsewhere (``--uebench-data-root`` gives the folder there).
    archs = list(dict.fromkeys(r["arch"] for r in kept))
    if tuple(archs) != protocol.archs:
        values["archs"] = archs
    for key in _SETTINGS:
        used = {_setting(r, key) for r in kept}
        if len(used) > 1:
            raise UebenchError(
                f"the run's cells differ in {key} ({sorted(used)}): one setting each"
            )
        value = used.pop()
        if value != getattr(protocol, key):
            values[key] = value
    return GridConfig.from_dict(values)


def _setting(record: dict[str, Any], key: str) -> Any:
    config = record.get("config") or {}
    if key in ("train_size", "test_size"):
        return config.get(key)
    return (config.get("train") or {}).get(key)


def command_text(config: GridConfig) -> str:
    """``uebench run --dataset ... --no-progress --out runs/...``: the grid as a command."""
    parts = ["uebench", "run", "--dataset", config.dataset, "--protocol", str(config.protocol)]
    parts += ["--methods", ",".join(config.methods), "--defenses", ",".join(config.defenses)]
    if config.archs is not None:
        parts += ["--archs", ",".join(config.archs)]
    for key in _SETTINGS:
        value = getattr(config, key)
        if value is not None:
            parts += [f"--{key.replace('_', '-')}", repr(value) if key == "lr" else str(value)]
    parts += ["--seeds", ",".join(map(str, config.seeds))]
    if config.data_root is not None:
        parts += ["--data-root", config.data_root]
    stem = f"uebench-{config.resolved_protocol().name}-{config.resolved_protocol().dataset}"
    parts += ["--no-progress", "--out", f"runs/{stem}"]
    return shlex.join(parts)


def parse_command(command: str) -> GridConfig:
    """The grid a ``uebench run`` command makes, read as ``uebench run`` reads its flags."""
    parser = argparse.ArgumentParser(prog="uebench run")
    add_run_flags(parser)
    return GridConfig.from_dict(run_values(parser.parse_args(shlex.split(command)[2:])))


def _row(
    row: dict[str, Any],
    cells: pd.DataFrame,
    first: dict[str, Any],
    suite: Suite,
    protocol_hash: str,
    command: str,
    marks: Sequence[str],
) -> dict[str, Any]:
    keys = ["_key_dataset", "_key_arch", "_key_protocol", "_key_defense", "_key_method"]
    mine = cells
    for key in keys:
        mine = mine[mine[key] == row[key]]
    mine = mine.sort_values("seed")
    seeds = ", ".join(f"{s}: {v:.2f}" for s, v in zip(mine["seed"], mine["final_acc"], strict=True))
    std, n = float(row["std"]), int(row["n"])
    allowed = tolerance(std, n)
    protocol = first["protocol"]
    return {
        "id": f"{_slug(row['method'])}--{_slug(row['countermeasure'])}",
        "where": f"measured by uebench ({protocol} protocol)",
        "row": row["method"],
        "column": f"{row['countermeasure']}, final_acc, mean over seeds {row['seeds']}",
        "dataset": row["dataset"],
        "method": row["method"],
        "defense": row["defense"],
        "arch": row["arch"],
        "metric": "final_acc",
        "relation": "approx",
        "value": round(float(row["mean"]), 2),
        "tolerance": allowed,
        "std": round(std, 2),
        "n": n,
        "epochs": row["epochs"],
        "train_size": row["train_size"],
        "test_size": row["test_size"],
        "threat": row["threat"],
        "protocol": protocol,
        "protocol_hash": protocol_hash,
        "suite": suite.id,
        "suite_hash": suite.content_hash(),
        "uebench_version": __version__,
        "command": command,
        "marks": " ".join(marks),
        "note": (
            f"seeds {seeds}; tolerance max({MIN_TOLERANCE:g}, {SPREAD_FACTOR:g}·std·√(2/n)) = "
            f"{allowed:.1f}: the spread of the difference of two {n}-seed means"
        ),
    }


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", str(text)).strip("-").lower() or "x"


def default_board(out: Path) -> Path:
    """Where the leaderboard page goes: ``leaderboard/NAME.csv`` for a file in
    ``leaderboard/references/``, else ``NAME-board.csv`` beside it."""
    if out.parent.name == "references":
        return out.parent.parent / out.name
    return out.with_name(f"{out.stem}-board.csv")


def write_reference(
    run_dirs: Sequence[str | Path],
    out: str | Path,
    suite: str | Path | Suite = DEFAULT_SUITE,
    board: str | Path | None = None,
    marks: Sequence[str] = ("slow",),
) -> tuple[list[Path], list[str]]:
    """Write the reference file ``out`` and its leaderboard page (``board``, default
    :func:`default_board`), atomically; return the files written and the notes."""
    out = Path(out)
    if out.suffix != ".csv":
        raise UebenchError(f"a reference file must end in .csv, got {out}")
    chosen = load_suite(suite)
    frame, run_board, notes = reference_frame(run_dirs, chosen, marks)
    text = frame.to_csv(index=False)
    atomic_write(out, lambda stream: stream.write(text), mode="w")
    read_reference_file(out)  # what was written reads back as a valid reference file
    pages = write_board(run_board, board or default_board(out), rank_by="worst", suite=chosen)
    return [out, *pages], notes


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m uebench.benchmark.reference``: one line on an error, status 2."""
    parser = argparse.ArgumentParser(
        prog="python -m uebench.benchmark.reference",
        description="Write a finished multi-seed run under a suite as a reference file.",
    )
    parser.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="uebench results folders")
    parser.add_argument("-o", "--out", required=True, metavar="FILE.csv", help="reference file")
    parser.add_argument("--suite", default=DEFAULT_SUITE, help=f"default {DEFAULT_SUITE}")
    parser.add_argument("--board", metavar="PATH.csv", help="leaderboard page (see docs/bench.md)")
    parser.add_argument(
        "--marks", default="slow", help="marks of every row, space-separated (default slow)"
    )
    args = parser.parse_args(argv)
    try:
        files, notes = write_reference(
            args.run_dirs, args.out, args.suite, args.board, args.marks.split()
        )
    except UebenchError as error:
        print(f"uebench: error: {error}", file=sys.stderr)
        return 2
    for note in notes:
        print(f"note: {note}")
    for path in files:
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
