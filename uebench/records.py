"""A cell's record on disk (``RUN_DIR/cells/<id>.json``): reading one and checking the fields
every reader needs, the result store and the results side alike."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from uebench.errors import UebenchError

#: The accuracy columns every record has; ``final_acc`` is the default.
ACCURACY_METRICS = ("final_acc", "selected_acc", "best_acc", "trained_acc")

_REQUIRED_TEXT = ("dataset", "method", "defense", "arch")


def read_record(path: str | Path) -> dict[str, Any]:
    """One cell record; a malformed file raises a one-line :class:`UebenchError` naming it."""
    path = Path(path)
    try:
        record = json.loads(path.read_text())
    except OSError as error:
        raise UebenchError(f"cannot read record {path}: {error.strerror}") from None
    except ValueError as error:
        raise UebenchError(f"record {path} is not valid JSON: {error}") from None
    if not isinstance(record, dict):
        raise UebenchError(f"record {path} is not a JSON object")
    for key in _REQUIRED_TEXT:
        if not isinstance(record.get(key), str) or not record[key]:
            raise UebenchError(f"record {path} has no {key!r} (a spec string)")
    if not isinstance(record.get("seed"), int) or isinstance(record.get("seed"), bool):
        raise UebenchError(f"record {path}: 'seed' must be an integer, got {record.get('seed')!r}")
    for key in ("final_acc", *ACCURACY_METRICS[1:]):
        if key in record and record[key] is not None and not is_number(record[key]):
            raise UebenchError(f"record {path}: {key!r} must be a number, got {record[key]!r}")
    if not is_number(record.get("final_acc")):
        raise UebenchError(f"record {path} has no numeric 'final_acc'")
    history = record.get("history", [])
    if not isinstance(history, list) or not all(isinstance(h, dict) for h in history):
        raise UebenchError(f"record {path}: 'history' must be a list of per-epoch objects")
    notes = record.get("countermeasure_notes", {})
    if notes is not None and not isinstance(notes, dict):
        raise UebenchError(f"record {path}: 'countermeasure_notes' must be an object")
    return record


def is_number(value: Any) -> bool:
    """A finite int or float (not a bool): what a record's numeric fields must hold."""
    return (
        isinstance(value, (int, float))
        and not isinstance(value, bool)
        and math.isfinite(float(value))
    )
