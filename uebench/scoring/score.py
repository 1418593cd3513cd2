"""A method's score under a suite: its worst case, the strongest thief's accuracy, and its ranks.

Per countermeasure of the suite a method has one number, the mean clean test accuracy over its
seeds.  Its score is the highest of them (the countermeasure a data thief would pick) with the
countermeasure that reached it; lower is more unlearnable.  A method without a number under
some countermeasure of the suite has no score (``missing`` names them), never a partial one.
Methods are ranked among those of the same threat budget (the records' ``threat``: ``L∞ ≤
8/255``, ``L2 ≤ 1``, ``L0 ≤ 1 px``) and overall; the clean baseline is shown but not ranked.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from typing import Any

import pandas as pd

from uebench.errors import UebenchError
from uebench.grid.protocols import resolve_protocol
from uebench.identity import countermeasure_identity
from uebench.registry import DATASETS
from uebench.scoring.suites import Suite
from uebench.spec import parse_spec

#: The columns :func:`worst_case` adds after the suite's countermeasures.
SCORE_COLUMNS = ("worst_case", "reached_by", "rank_in_budget", "rank_overall", "missing")


def worst_case(
    long: pd.DataFrame,
    columns: Sequence[str],
    index: Sequence[str],
    setting: Sequence[str] = (),
) -> pd.DataFrame:
    """One row per ``index`` value of ``long`` (rows: ``index`` columns, ``countermeasure``
    naming one of ``columns``, ``mean``, ``threat``): its mean under each of ``columns``, then
    :data:`SCORE_COLUMNS`.  Ranks are taken within each ``setting`` value (a subset of
    ``index``: dataset, arch, ...), by budget and overall; rank 1 is the most unlearnable."""
    index = list(index)
    rows = []
    for key, group in long.groupby(index, sort=False, dropna=False):
        values = dict(zip(index, key if isinstance(key, tuple) else (key,), strict=True))
        means = group.groupby("countermeasure", sort=False)["mean"].first()
        row: dict[str, Any] = {**values, "threat": _first(group["threat"])}
        for column in columns:
            row[column] = _number(means.get(column))
        score, reached, missing = worst_of({c: row[c] for c in columns})
        row.update(worst_case=score, reached_by=reached, missing=",".join(missing))
        rows.append(row)
    table = pd.DataFrame(rows, columns=[*index, "threat", *columns, *SCORE_COLUMNS[:2], "missing"])
    rankable = table["worst_case"].where(~table["method"].map(is_clean))
    groups = list(setting)
    table["rank_in_budget"] = _rank(rankable, table, [*groups, "threat"])
    table["rank_overall"] = _rank(rankable, table, groups)
    return table[[*index, "threat", *columns, *SCORE_COLUMNS]]


def worst_of(means: dict[str, float | None]) -> tuple[float | None, str | None, list[str]]:
    """The highest of ``means`` and the first countermeasure (in the suite's order) reaching
    it, or (None, None, the missing ones) when any has no number."""
    missing = [name for name, value in means.items() if value is None]
    if missing or not means:
        return None, None, missing
    best = max(means, key=lambda name: (means[name], -list(means).index(name)))
    return means[best], best, []


def is_clean(method: Any) -> bool:
    """Whether a method label is the no-noise baseline (``clean``, any options)."""
    try:
        return parse_spec(str(method)).name == "clean"
    except UebenchError:
        return False


def _rank(values: pd.Series, table: pd.DataFrame, groups: list[str]) -> pd.Series:
    if not groups:
        return values.rank(method="min").astype("Int64")
    keys = [table[g].fillna("") for g in groups]
    return values.groupby(keys, sort=False).rank(method="min").astype("Int64")


def _first(column: pd.Series) -> Any:
    present = column.dropna()
    return present.iloc[0] if len(present) else None


def _number(value: Any) -> float | None:
    if value is None:
        return None
    number = float(value)
    return None if math.isnan(number) else number


# --- board rows as suite columns ---------------------------------------------------------------


def suite_columns(board: pd.DataFrame, suite: Suite) -> pd.Series:
    """For each row of a leaderboard board (:func:`uebench.results.leaderboard.aggregate`), the
    suite column its countermeasure is (the spec as the suite writes it), or None.

    A row matches when its cells ran the suite's countermeasure under the row's own protocol
    and dataset: the same canonical identity, protocol options and overrides included."""
    known: dict[tuple[str | None, str], dict[str, str]] = {}
    labels = []
    for dataset, protocol_key, defense_key in zip(
        board["dataset"], board["_key_protocol"], board["_key_defense"], strict=True
    ):
        name = json.loads(protocol_key).get("name")
        if (name, dataset) not in known:
            known[name, dataset] = suite_keys(suite, name, dataset)
        labels.append(known[name, dataset].get(defense_key))
    return pd.Series(labels, index=board.index, dtype=object)


def suite_keys(suite: Suite, protocol: str | None, dataset: str) -> dict[str, str]:
    """Canonical countermeasure key (as records and references are keyed) → suite column, for
    the suite run under ``protocol`` (None: the dataset's default) on ``dataset`` (a spec)."""
    resolved = resolve_protocol(protocol, dataset)
    name = DATASETS.resolve(dataset).spec.name
    return {
        json.dumps(countermeasure_identity(resolved.defense_spec(spec)), sort_keys=True): column
        for column, spec in suite.runs_for(resolved.name, name)
    }


def board_worst_case(board: pd.DataFrame, suite: Suite, index: Sequence[str]) -> pd.DataFrame:
    """:func:`worst_case` of a leaderboard board's rows that are the suite's countermeasures,
    one row per ``index`` value (the pivot's: setting columns, then ``method``)."""
    columns = suite_columns(board, suite)
    long = board.assign(countermeasure=columns)[columns.notna()]
    index = list(index)
    return worst_case(long, suite.countermeasures, index, setting=index[:-1])
