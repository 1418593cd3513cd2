"""A cell's record on disk (``RUN_DIR/cells/<id>.json``): reading one and checking it, for every
reader alike (resume in the result store, ``leaderboard``, ``report``, ``diagnose``,
``export``).

A record is checked against its own cell id (its file name, and the hash of the identity it
states) and every field it has against the type and range ``uebench run`` writes: a record
edited by hand (``final_acc`` 250, a ``history`` of strings, a method label that is no spec of
its method) is refused in one line naming the file, never counted.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from uebench.errors import UebenchError
from uebench.files import os_error_line
from uebench.identity import cache_key
from uebench.spec import parse_spec

#: The accuracy columns every record has; ``final_acc`` is the default.
ACCURACY_METRICS = ("final_acc", "selected_acc", "best_acc", "trained_acc")

_REQUIRED_TEXT = ("dataset", "method", "defense", "arch")
#: Fields in percent: a number in [0, 100] (or null where a record may lack one).
_PERCENT = (*ACCURACY_METRICS, "backdoor_success", "shortcut_separability")
#: Fields that, when present, are non-negative integers (or null).
_COUNTS = ("epochs", "best_epoch", "selected_epoch", "train_size", "test_size", "num_classes")
#: Fields that, when present, are non-negative numbers (or null).
_SECONDS = ("wall_time_s", "craft_time_s")
#: Text fields that, when present, are strings (or null).
_TEXT = ("cell_id", "method_spec", "defense_spec", "protocol", "poison_hash", "threat")


def read_record(
    path: str | Path, cell_id: str | None = None, *, for_export: bool = False
) -> dict[str, Any]:
    """One cell record, checked (:func:`check_record`); a malformed file raises a one-line
    :class:`UebenchError` naming it.

    ``cell_id`` is the id the caller expects (the file name's, for a store); with
    ``for_export`` the record must also hold what recreating its poison needs (``config``,
    ``poison_hash``).
    """
    path = Path(path)
    try:
        record = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError) as error:
        raise UebenchError(f"cannot read record: {os_error_line(error, path, 'reading')}") from None
    except ValueError as error:
        raise UebenchError(f"record {path} is not valid JSON: {error}") from None
    if not isinstance(record, dict):
        raise UebenchError(f"record {path} is not a JSON object")
    problem = check_record(record, cell_id)
    if problem is None and for_export:
        if not isinstance(record.get("poison_hash"), str):
            problem = "no 'poison_hash' (not a record `uebench run` wrote)"
        elif not isinstance(record.get("config"), dict):
            problem = "no 'config' (what recreating its poison needs)"
    if problem is not None:
        if for_export:  # what export needs first of all is a record
            raise UebenchError(f"{path} is not a uebench cell record: {problem}")
        raise UebenchError(f"record {path}: {problem}")
    return record


def check_record(record: dict[str, Any], cell_id: str | None = None) -> str | None:
    """What is wrong with a record (``"no integer 'seed'"``, ``"'final_acc' is 250, outside
    [0, 100] (a percentage)"``), or None when it is sound; ``cell_id`` is the id it must
    carry."""
    for key in _REQUIRED_TEXT:
        if not isinstance(record.get(key), str) or not record[key]:
            return f"no {key!r} (a spec string)"
    seed = record.get("seed")
    if not isinstance(seed, int) or isinstance(seed, bool):
        return f"no integer 'seed' (got {_short(seed)})"
    for key in _TEXT:
        if record.get(key) is not None and not isinstance(record[key], str):
            return f"{key!r} is {_short(record[key])}, not text"
    if record.get("final_acc") is None:
        return "no numeric 'final_acc'"
    for key in _PERCENT:
        problem = _percent(key, record.get(key))
        if problem:
            return problem
    for key in _COUNTS:
        value = record.get(key)
        if value is not None and not _count(value):
            return f"{key!r} is {_short(value)}, not a non-negative integer"
    for key in _SECONDS:
        value = record.get(key)
        if value is not None and not (is_number(value) and value >= 0):
            return f"{key!r} is {_short(value)}, not a non-negative number"
    return (
        _identity_problem(record, cell_id)
        or _label_problem(record)
        or _history_problem(record.get("history", []))
        or _matrix_problem(record)
        or _notes_problem(record)
    )


def is_number(value: Any) -> bool:
    """A finite int or float (not a bool): what a record's numeric fields must hold."""
    return (
        isinstance(value, (int, float))
        and not isinstance(value, bool)
        and math.isfinite(float(value))
    )


def _count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _short(value: Any) -> str:
    text = json.dumps(value) if not isinstance(value, str) else repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _percent(key: str, value: Any) -> str | None:
    if value is None:
        return None
    if not is_number(value):
        return f"{key!r} must be a number, got {_short(value)}"
    if not 0 <= value <= 100:
        return f"{key!r} is {value:g}, outside [0, 100] (a percentage)"
    return None


def _identity_problem(record: dict[str, Any], cell_id: str | None) -> str | None:
    """The record's id against the one expected and against the identity it states."""
    own = record.get("cell_id")
    if cell_id is not None and own != cell_id:
        return f"its cell id is {_short(own)}, not {cell_id!r} (its file name)"
    config = record.get("config")
    if config is None:
        return None
    if not isinstance(config, dict):
        return "'config' is not an object"
    identity = config.get("identity")
    if identity is None:
        return None
    if not isinstance(identity, dict) or cache_key(identity)[:16] != own:
        return f"the identity it states does not hash to its cell id {_short(own)}"
    # A file poison's record names the file it read; its identity the file it was planned on.
    method = identity.get("method")
    planned = method.get("options") if isinstance(method, dict) else None
    poison = record.get("poison")
    read = poison.get("file_sha256") if isinstance(poison, dict) else None
    if isinstance(planned, dict) and read is not None and read != planned.get("sha256", read):
        return "it trained on a poison file other than the one its cell id names"
    return None


def _label_problem(record: dict[str, Any]) -> str | None:
    """A method or countermeasure label must name the plugin(s) of the spec that ran."""
    for label_key, spec_key in (("method", "method_spec"), ("defense", "defense_spec")):
        spec = record.get(spec_key)
        if spec is None:
            continue
        try:
            label = [parse_spec(part).name for part in record[label_key].split("+")]
            ran = [parse_spec(part).name for part in spec.split("+")]
        except UebenchError:
            return f"{label_key!r} is {_short(record[label_key])}, not a spec"
        if label != ran:
            return f"{label_key!r} is {_short(record[label_key])}, not a spelling of {spec!r}"
    return None


def _history_problem(history: Any) -> str | None:
    if not isinstance(history, list) or not all(isinstance(h, dict) for h in history):
        return "'history' is not a list of per-epoch objects"
    for epoch in history:
        for key, value in epoch.items():
            if value is None:
                continue
            # Losses may be NaN or infinite (a diverged run); accuracies are percentages.
            if not isinstance(value, (int, float)) or isinstance(value, bool):
                return f"'history' holds {key}={_short(value)}, not a number"
            problem = _percent(key, value) if key.endswith("_acc") else None
            if problem:
                return f"'history' holds {problem}"
    return None


def _matrix_problem(record: dict[str, Any]) -> str | None:
    matrix = record.get("confusion_matrix")
    if matrix is not None and not (
        isinstance(matrix, list)
        and all(isinstance(row, list) and all(_count(v) for v in row) for row in matrix)
    ):
        return "'confusion_matrix' is not a list of lists of counts"
    per_class = record.get("per_class_acc")
    if per_class is not None and not (
        isinstance(per_class, list) and all(v is None or _percent("", v) is None for v in per_class)
    ):
        return "'per_class_acc' is not a list of percentages"
    classes = record.get("classes")
    if classes is not None and not (
        isinstance(classes, list) and all(isinstance(c, str) for c in classes)
    ):
        return "'classes' is not a list of names"
    return None


def _notes_problem(record: dict[str, Any]) -> str | None:
    notes = record.get("countermeasure_notes", {})
    if notes is not None and not isinstance(notes, dict):
        return "'countermeasure_notes' is not an object"
    poison = record.get("poison")
    if poison is not None and not isinstance(poison, dict):
        return "'poison' is not an object"
    return None
