"""Per-cell JSON records (one file each, written atomically) and the derived results.csv."""

from __future__ import annotations

import io
import json
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd

from uebench.poison import atomic_write

CSV_COLUMNS = [
    "protocol",
    "dataset",
    "method",
    "defense",
    "arch",
    "seed",
    "epochs",
    "final_acc",
    "best_acc",
    "best_epoch",
    "selected_acc",
    "selected_epoch",
    "backdoor_success",
    "train_size",
    "test_size",
    "num_classes",
    "poison_hash",
    "wall_time_s",
    "cell_id",
]


class ResultStore:
    """``DIR/cells/<cell_id>.json`` records and ``DIR/results.csv`` (always rebuildable)."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.cells = self.root / "cells"

    def path(self, cell_id: str) -> Path:
        return self.cells / f"{cell_id}.json"

    def read(self, cell_id: str) -> dict[str, Any] | None:
        """A finished cell's record, or None; an unreadable record counts as unfinished."""
        path = self.path(cell_id)
        if not path.exists():
            return None
        try:
            record = json.loads(path.read_text())
            if record.get("cell_id") != cell_id:
                raise ValueError("cell id does not match the file name")
            return record
        except (ValueError, OSError) as error:
            warnings.warn(
                f"record {path} is unreadable ({error}); the cell will be recomputed", stacklevel=2
            )
            return None

    def write(self, record: dict[str, Any]) -> Path:
        path = self.path(record["cell_id"])
        text = json.dumps(record, indent=1, sort_keys=True)
        atomic_write(path, lambda stream: stream.write(text), mode="w")
        return path

    def records(self) -> Iterator[dict[str, Any]]:
        for path in sorted(self.cells.glob("*.json")):
            record = self.read(path.stem)
            if record is not None:
                yield record

    def table(self) -> pd.DataFrame:
        """One row per finished cell, columns :data:`CSV_COLUMNS`."""
        rows = [{column: record.get(column) for column in CSV_COLUMNS} for record in self.records()]
        frame = pd.DataFrame(rows, columns=CSV_COLUMNS)
        return frame.sort_values(
            ["dataset", "arch", "defense", "method", "seed"], kind="stable", ignore_index=True
        )

    def write_csv(self) -> Path:
        buffer = io.StringIO()
        self.table().to_csv(buffer, index=False, float_format="%.2f")
        path = self.root / "results.csv"
        atomic_write(path, lambda stream: stream.write(buffer.getvalue()), mode="w")
        return path
