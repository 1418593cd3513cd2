"""Reference numbers as data: one record per reported number, with where it was reported.

A source is one file (``leaderboard/references/NAME.csv``, ``.yaml``/``.yml`` or ``.toml``);
adding a paper is adding a file.  This module loads and validates those files, finds the measured
cells a reference speaks about, and judges a measured number against the reference's tolerance.
The format is documented in ``docs/leaderboard.md``.

A noise method's number is not judged where the setting's clean row stayed near chance
(:func:`uebench.analysis.baseline.near_chance`): there "as low as reported" is what any untrained
victim scores, so it is neither a regression nor a win; its status says so instead.
"""

from __future__ import annotations

import math
import os
import re
import shlex
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import pandas as pd
import tomllib

from uebench.analysis.baseline import chance_level, near_chance
from uebench.errors import UebenchError
from uebench.files import os_error_line
from uebench.grid.protocols import protocol_names, resolve_protocol
from uebench.results.leaderboard import NEAR_CHANCE_STATUS, spec_key
from uebench.spec import parse_spec
from uebench.storage.records import ACCURACY_METRICS

SUFFIXES = (".csv", ".yaml", ".yml", ".toml")
RELATIONS = ("approx", "max", "min")
MARKS = ("slow", "gpu", "unverified")
#: Status of a reference whose number could not be traced to its source's table: shown beside
#: measurements, never judged, never a test that can fail.
UNVERIFIED_STATUS = "unverified (not judged)"
#: ``UEBENCH_REFERENCES``: extra folders (``os.pathsep``-separated) searched for sources by name.
ENV_DIRS = "UEBENCH_REFERENCES"

_METRIC = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_REQUIRED = ("id", "dataset", "method", "arch", "value", "tolerance")


@dataclass(frozen=True)
class Reference:
    """One reported number and what it is about.

    ``relation`` says how a measurement is judged: ``approx`` passes within ``tolerance`` either
    side of ``value``; ``max`` passes at or below ``value + tolerance`` (a bound such as "below
    23%"); ``min`` at or above ``value - tolerance``.  ``epochs``, ``train_size`` and
    ``test_size``, when given, restrict which measured cells count.  ``command`` is the exact
    ``uebench run`` command that produced a number uebench measured itself; ``marks`` (``slow``,
    ``gpu``) say what running the cell needs, and ``unverified`` that the number could not be
    traced to a table of its source: it is shown, never judged.  A row with ``ueraser`` in its
    countermeasure must name the variant it reports (``ueraser:variant=max``): APBench's
    training script defaults to the max variant and uses a JPEG variant for TAP and AR.

    Numbers uebench measured under a suite (:mod:`uebench.benchmark.reference`) also state
    the method's ``threat`` model, the ``protocol_hash``
    (:meth:`~uebench.grid.protocols.Protocol.content_hash` of the settings they ran under),
    the ``suite`` id and ``suite_hash``, and the ``uebench_version`` that measured them.
    """

    id: str
    source: str
    dataset: str
    method: str
    arch: str
    value: float
    tolerance: float
    defense: str = "none"
    metric: str = "final_acc"
    relation: str = "approx"
    where: str = ""
    row: str = ""
    column: str = ""
    protocol: str = ""
    epochs: int | None = None
    train_size: int | None = None
    test_size: int | None = None
    command: str = ""
    marks: tuple[str, ...] = ()
    std: float | None = None
    n: int | None = None
    note: str = ""
    threat: str = ""
    protocol_hash: str = ""
    suite: str = ""
    suite_hash: str = ""
    uebench_version: str = ""
    file: str = field(default="", compare=False)

    @property
    def name(self) -> str:
        """``source/id``, unique across sources."""
        return f"{self.source}/{self.id}"

    def cited(self) -> str:
        """Where the number was reported, e.g. ``Table 1, row RN-18 Δs, column CIFAR-10 Du``."""
        parts = [
            self.where,
            self.row and f"row {self.row}",
            self.column and f"column {self.column}",
        ]
        return ", ".join(p for p in parts if p) or self.name

    def keys(self) -> dict[str, str]:
        """The spelling-independent keys measured cells are matched on.

        A reference measured under one of uebench's named protocols names its method and
        countermeasure as typed on the command line; a record stores them with the protocol's
        options filled in, so the reference's specs are resolved the same way first.
        """
        method, defense = self.method, self.defense
        if self.protocol and self.protocol in protocol_names():
            protocol = resolve_protocol(self.protocol, self.dataset)
            method, defense = protocol.method_spec(method), protocol.defense_spec(defense)
        return {
            "_key_dataset": spec_key("dataset", self.dataset),
            "_key_method": spec_key("method", method),
            "_key_defense": spec_key("defense", defense),
            "_key_arch": spec_key("arch", self.arch),
        }


_FIELDS = {f.name: f for f in fields(Reference) if f.name != "file"}
_FLOATS = {"value", "tolerance", "std"}
_INTS = {"epochs", "train_size", "test_size", "n"}


# --- finding sources ---------------------------------------------------------------------------


def reference_dirs() -> list[Path]:
    """Folders searched for a source given by name, first match wins: ``$UEBENCH_REFERENCES``,
    ``./leaderboard/references``, then the checkout's own ``leaderboard/references``."""
    dirs = [Path(p) for p in os.environ.get(ENV_DIRS, "").split(os.pathsep) if p]
    dirs.append(Path.cwd() / "leaderboard" / "references")
    dirs.append(Path(__file__).resolve().parents[2] / "leaderboard" / "references")
    unique: list[Path] = []
    for folder in dirs:
        if folder.resolve() not in [d.resolve() for d in unique]:
            unique.append(folder)
    return unique


def available_sources() -> dict[str, Path]:
    """Every source name found in :func:`reference_dirs`, with its file."""
    found: dict[str, Path] = {}
    for folder in reference_dirs():
        if folder.is_dir():
            for path in sorted(folder.iterdir()):
                if path.suffix in SUFFIXES:
                    found.setdefault(path.stem, path)
    return found


def resolve_source(source: str | Path) -> Path:
    """A reference file from a path or a source name (``huang2021``)."""
    path = Path(source)
    if path.is_file():
        return path
    if path.suffix in SUFFIXES or os.sep in str(source):
        raise UebenchError(f"reference file {source} does not exist")
    found = available_sources()
    if str(source) in found:
        return found[str(source)]
    names = ", ".join(found) or "(none found)"
    raise UebenchError(f"unknown reference source {str(source)!r}; available: {names}")


# --- loading and validation --------------------------------------------------------------------


def load_references(*sources: str | Path) -> list[Reference]:
    """Every record of the given sources (names or paths), validated; ``source/id`` unique."""
    references: list[Reference] = []
    seen: dict[str, str] = {}
    for source in sources:
        for reference in read_reference_file(resolve_source(source)):
            if reference.name in seen:
                raise UebenchError(
                    f"reference {reference.name} is defined in both {seen[reference.name]} "
                    f"and {reference.file}"
                )
            seen[reference.name] = reference.file
            references.append(reference)
    return references


def read_reference_file(path: str | Path) -> list[Reference]:
    """The records of one reference file; any problem is one line naming the file and place."""
    path = Path(path)
    if path.suffix not in SUFFIXES:
        raise UebenchError(f"reference file {path} must end in {', '.join(SUFFIXES)}")
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as error:
        raise UebenchError(f"reference file: {os_error_line(error, path, 'reading')}") from None
    defaults: dict[str, Any] = {}
    if path.suffix == ".csv":
        rows = _csv_rows(path, text)
    else:
        defaults, raw = _structured_rows(path, text)
        rows = [(f"record {i + 1}", row) for i, row in enumerate(raw)]
    references = []
    ids: set[str] = set()
    for where, row in rows:
        reference = _build(path, where, {**defaults, **row})
        if reference.id in ids:
            raise UebenchError(f"{path} {where}: id {reference.id!r} is used twice")
        ids.add(reference.id)
        references.append(reference)
    if not references:
        raise UebenchError(f"reference file {path} has no records")
    return references


def _csv_rows(path: Path, text: str) -> list[tuple[str, dict[str, Any]]]:
    import io

    try:
        frame = pd.read_csv(io.StringIO(text), dtype=str, keep_default_na=False, comment=None)
    except (ValueError, pd.errors.ParserError) as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else "unreadable"
        raise UebenchError(f"reference file {path} is not valid CSV: {first}") from None
    frame.columns = [str(c).strip() for c in frame.columns]
    # pandas names repeated headers "x.1"; a repeated column is a typo worth reporting.
    for column in frame.columns:
        if re.search(r"\.\d+$", column) and column.rsplit(".", 1)[0] in frame.columns:
            raise UebenchError(f"reference file {path}: column {column.rsplit('.', 1)[0]!r} twice")
    # Line numbers assume one line per record (no quoted newlines), as these files are written.
    return [(f"line {i + 2}", dict(row)) for i, row in enumerate(frame.to_dict("records"))]


def _structured_rows(path: Path, text: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    try:
        if path.suffix == ".toml":
            data: Any = tomllib.loads(text)
        else:
            import yaml

            data = yaml.safe_load(text)
    except Exception as error:  # yaml and toml raise many error classes; all mean "malformed"
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise UebenchError(
            f"reference file {path} is not valid {path.suffix[1:]}: {first}"
        ) from None
    if isinstance(data, list):
        defaults, records = {}, data
    elif isinstance(data, dict) and isinstance(data.get("records"), list):
        defaults = {k: v for k, v in data.items() if k != "records"}
        records = data["records"]
    else:
        raise UebenchError(f"reference file {path} must hold a list of records or a 'records' list")
    for i, record in enumerate(records):
        if not isinstance(record, dict):
            raise UebenchError(f"{path} record {i + 1}: must be a mapping of fields to values")
    return defaults, records


def _build(path: Path, where: str, row: dict[str, Any]) -> Reference:
    given_id = str(row.get("id") or "").strip()
    place = f"{path} {where}" + (f" (id {given_id})" if given_id else "")
    unknown = sorted(set(row) - set(_FIELDS))
    if unknown:
        raise UebenchError(
            f"{place}: unknown field {unknown[0]!r}; valid: {', '.join(sorted(_FIELDS))}"
        )
    values: dict[str, Any] = {}
    for key, raw in row.items():
        text = "" if raw is None else str(raw).strip()
        if text == "":
            continue
        if key in _FLOATS:
            values[key] = _number(place, key, text)
        elif key in _INTS:
            values[key] = _integer(place, key, text)
        elif key == "marks":
            values[key] = tuple(m for m in re.split(r"[\s,;]+", text) if m)
        else:
            values[key] = text
    values.setdefault("source", path.stem)
    missing = [key for key in _REQUIRED if key not in values]
    if missing:
        raise UebenchError(f"{place}: missing {missing[0]!r}")
    if values["tolerance"] < 0:
        raise UebenchError(f"{place}: tolerance must be >= 0, got {values['tolerance']}")
    if values.get("relation", "approx") not in RELATIONS:
        raise UebenchError(
            f"{place}: relation {values['relation']!r} is not one of {', '.join(RELATIONS)}"
        )
    bad_marks = [m for m in values.get("marks", ()) if m not in MARKS]
    if bad_marks:
        raise UebenchError(f"{place}: mark {bad_marks[0]!r} is not one of {', '.join(MARKS)}")
    for part in str(values.get("defense", "none")).split("+"):
        spec = parse_spec(part)
        if spec.name == "ueraser" and "variant" not in spec.options and not spec.positional:
            raise UebenchError(
                f"{place}: a ueraser row must name its variant (ueraser:variant=lite, standard "
                "or max): APBench trains with max by default and a JPEG variant for TAP and AR"
            )
    if not _METRIC.match(values.get("metric", "final_acc")):
        raise UebenchError(f"{place}: metric {values['metric']!r} is not a column name")
    for key in ("dataset", "method", "arch", "defense"):
        if key in values:
            try:
                for part in values[key].split("+") if key == "defense" else [values[key]]:
                    parse_spec(part)
            except UebenchError as error:
                raise UebenchError(f"{place}: {key}: {error}") from None
    if "command" in values:
        try:
            argv = shlex.split(values["command"])
        except ValueError as error:
            raise UebenchError(f"{place}: command: {error}") from None
        if argv[:2] != ["uebench", "run"]:
            raise UebenchError(f"{place}: command must start with 'uebench run'")
    return Reference(file=str(path), **values)


def _number(place: str, key: str, text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise UebenchError(f"{place}: {key} {text!r} is not a number") from None
    if not math.isfinite(value):
        raise UebenchError(f"{place}: {key} must be finite, got {text!r}")
    return value


def _integer(place: str, key: str, text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise UebenchError(f"{place}: {key} {text!r} is not an integer") from None
    if value < 1:
        raise UebenchError(f"{place}: {key} must be at least 1, got {value}")
    return value


def references_frame(references: Sequence[Reference]) -> pd.DataFrame:
    """The references as a table, one row each."""
    rows = [{"name": r.name, **{k: getattr(r, k) for k in _FIELDS}} for r in references]
    return pd.DataFrame(rows)


# --- matching and judging ----------------------------------------------------------------------


def match_cells(reference: Reference, cells: pd.DataFrame) -> pd.DataFrame:
    """The measured cells (rows of :func:`uebench.results.leaderboard.cells_frame`) a reference
    is about:
    same dataset, method, countermeasure and arch (in canonical form), the reference's epochs
    and sizes when it states them, and a number for its metric.

    A reference whose setting was measured but whose metric none of those cells has (neither
    an accuracy column nor a note their countermeasure records) is an error, not "not
    measured": a typo in a reference file must not pass as a check that was never made.
    """
    if cells.empty:
        return cells
    keep = pd.Series(True, index=cells.index)
    for key, value in reference.keys().items():
        keep &= cells[key] == value
    for key in ("epochs", "train_size", "test_size"):
        wanted = getattr(reference, key)
        if wanted is not None:
            keep &= cells[key] == wanted
    if reference.metric not in cells.columns:
        if keep.any() and reference.metric not in ACCURACY_METRICS:
            known = [*ACCURACY_METRICS, *_note_columns(cells[keep])]
            raise UebenchError(
                f"reference {reference.name} ({reference.file}): metric {reference.metric!r} is "
                f"no column of the cells it is about; they have {', '.join(known)}"
            )
        return cells.iloc[0:0]
    keep &= cells[reference.metric].notna()
    return cells[keep]


def _note_columns(cells: pd.DataFrame) -> list[str]:
    """The numeric countermeasure notes some of ``cells`` record (``rate``, ...)."""
    fixed = {"seed", "epochs", "train_size", "test_size", "num_classes", "separability"}
    return [
        column
        for column in cells.columns
        if not column.startswith("_")
        and column not in fixed
        and column not in ACCURACY_METRICS
        and pd.api.types.is_numeric_dtype(cells[column])
        and cells[column].notna().any()
    ]


@dataclass(frozen=True)
class Verdict:
    """A measured number (mean over ``n`` seeds) judged against a reference.

    ``baseline`` is the clean accuracy of the same setting (mean over seeds) and
    ``num_classes`` its class count, when known; a noise method's number whose baseline is near
    chance is not judged (``ok`` None, status ``baseline near chance``).
    """

    reference: Reference
    measured: float | None
    std: float | None
    n: int
    baseline: float | None = None
    num_classes: int | None = None

    @property
    def baseline_near_chance(self) -> bool:
        """True when the setting's clean row says nothing could be learned there (a reference
        about ``clean`` itself is always judged: its number is the baseline)."""
        if parse_spec(self.reference.method).name == "clean":
            return False
        return near_chance(self.baseline, self.num_classes) is True

    @property
    def diff(self) -> float | None:
        """Measured minus reported."""
        return None if self.measured is None else self.measured - self.reference.value

    @property
    def ok(self) -> bool | None:
        """True within tolerance, False outside it, None when nothing was measured or the
        baseline is near chance."""
        if self.measured is None or self.baseline_near_chance:
            return None
        ref, slack = self.reference, 1e-9  # slack: reported numbers carry 2 decimals
        if ref.relation == "max":
            return self.measured <= ref.value + ref.tolerance + slack
        if ref.relation == "min":
            return self.measured >= ref.value - ref.tolerance - slack
        return abs(self.measured - ref.value) <= ref.tolerance + slack

    @property
    def status(self) -> str:
        """``ok``, ``MISMATCH``, ``not measured``, ``baseline near chance`` or
        ``unverified (not judged)``."""
        if "unverified" in self.reference.marks:
            return UNVERIFIED_STATUS
        if self.measured is not None and self.baseline_near_chance:
            return NEAR_CHANCE_STATUS
        return {True: "ok", False: "MISMATCH", None: "not measured"}[self.ok]

    def expected(self) -> str:
        """The accepted range in words, e.g. ``25.40 ± 6.00`` or ``<= 23.00``."""
        ref = self.reference
        if ref.relation == "max":
            return f"<= {ref.value + ref.tolerance:.2f}"
        if ref.relation == "min":
            return f">= {ref.value - ref.tolerance:.2f}"
        return f"{ref.value:.2f} ± {ref.tolerance:.2f}"

    def message(self) -> str:
        """One line: what was measured against what was reported, and where it was reported."""
        ref = self.reference
        what = f"{ref.name} ({ref.dataset} {ref.method} / {ref.defense} / {ref.arch}, {ref.metric})"
        if self.measured is None:
            return f"{what}: not measured; reported {ref.value:.2f} in {ref.cited()}"
        spread = f" ± {self.std:.2f}" if self.std is not None and not math.isnan(self.std) else ""
        if self.baseline_near_chance:
            chance = chance_level(self.num_classes)
            return (
                f"{what}: measured {self.measured:.2f}{spread} (n={self.n}), not judged: clean "
                f"training reached only {self.baseline:.2f} (chance {chance:.1f}) "
                f"[{ref.cited()}]: {self.status}"
            )
        return (
            f"{what}: measured {self.measured:.2f}{spread} (n={self.n}), expected "
            f"{self.expected()} [{ref.cited()}]: {self.status}"
        )


def judge(
    reference: Reference,
    values: Iterable[float],
    baseline: float | None = None,
    num_classes: int | None = None,
) -> Verdict:
    """Judge the mean of ``values`` (one per seed) against ``reference``; ``baseline`` (the
    setting's clean accuracy) and ``num_classes``, when given, withhold the verdict for a noise
    method whose baseline is near chance."""
    numbers = [float(v) for v in values if v is not None and not math.isnan(float(v))]
    if not numbers:
        return Verdict(reference, None, None, 0, baseline, num_classes)
    series = pd.Series(numbers)
    std = float(series.std()) if len(numbers) > 1 else None
    return Verdict(reference, float(series.mean()), std, len(numbers), baseline, num_classes)


def baseline_of(
    reference: Reference, cells: pd.DataFrame, matched: pd.DataFrame
) -> tuple[float | None, int | None]:
    """The clean accuracy (mean over seeds, in the reference's metric where the clean cells
    have it, else ``final_acc``) and class count of the setting of ``matched``: the ``clean``
    cells with the reference's dataset, countermeasure, arch, epochs and sizes, under the
    protocols of the matched cells.  (None, None) when there is no such cell."""
    if matched.empty or "_clean" not in cells.columns:
        return None, None
    keep = cells["_clean"].astype(bool) & cells["_key_protocol"].isin(matched["_key_protocol"])
    for key, value in reference.keys().items():
        if key != "_key_method":
            keep &= cells[key] == value
    for key in ("epochs", "train_size", "test_size"):
        wanted = getattr(reference, key)
        if wanted is not None:
            keep &= cells[key] == wanted
    clean = cells[keep]
    if clean.empty:
        return None, None
    values = clean["final_acc"]
    if reference.metric in clean.columns:
        values = clean[reference.metric].fillna(values)
    classes = pd.concat([clean["num_classes"], matched["num_classes"]]).dropna()
    return float(values.mean()), int(classes.max()) if len(classes) else None


def compare(references: Sequence[Reference], cells: pd.DataFrame) -> pd.DataFrame:
    """Reported beside measured, one row per reference, with the difference, the setting's
    clean accuracy (``clean``) and a status (``baseline near chance`` where that is)."""
    rows = []
    for reference in references:
        matched = match_cells(reference, cells)
        baseline, num_classes = baseline_of(reference, cells, matched)
        values = matched[reference.metric] if len(matched) else []
        verdict = judge(reference, values, baseline, num_classes)
        rows.append(
            {
                "reference": reference.name,
                "cited": reference.cited(),
                "dataset": reference.dataset,
                "method": reference.method,
                "defense": reference.defense,
                "arch": reference.arch,
                "metric": reference.metric,
                "reported": reference.value,
                "accepted": verdict.expected(),
                "measured": verdict.measured,
                "std": verdict.std,
                "n": verdict.n,
                "diff": verdict.diff,
                "clean": baseline,
                "status": verdict.status,
            }
        )
    return pd.DataFrame(rows)
