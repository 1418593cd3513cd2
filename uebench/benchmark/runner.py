"""Run a bench: one method's cells through a suite, beside the field's rows, into a table.

The cells are a grid's (:class:`~uebench.grid.GridConfig`, :func:`~uebench.grid.run_grid`):
the same cells ``uebench run --methods SPEC --defenses <the suite>`` makes, so they resume and
share poisons with any run.  The field's rows come from the reference file of the dataset and
protocol (``uebench-<protocol>-<dataset>``, found as ``uebench compare`` finds sources) when
it was measured under the same settings and suite; clean training runs here under each
countermeasure the reference has no clean row for (every one, when there is no reference).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from uebench.benchmark.table import (
    BenchTable,
    FieldRows,
    bench_table,
    clean_columns,
    field_rows,
    no_field_rows,
    run_rows,
)
from uebench.errors import UebenchError
from uebench.grid import GridConfig, run_grid
from uebench.grid.protocols import Protocol
from uebench.results.references import available_sources, resolve_source
from uebench.results.report import write_report
from uebench.scoring.suites import DEFAULT_SUITE, Suite, load_suite
from uebench.storage.records import read_record

#: What a bench runs on unless told otherwise (the CPU protocol on CIFAR-10).
DEFAULT_DATASET = "cifar10"
DEFAULT_PROTOCOL = "mini"
#: Where benches write unless told otherwise: ``runs/bench/<the spec as a file name>``.
DEFAULT_ROOT = Path("runs") / "bench"


@dataclass
class BenchResult:
    """A finished bench: its table, the files it wrote and the report's page (None when the
    report could not be written; ``table.report`` says why)."""

    table: BenchTable
    out: Path
    files: list[Path]
    report: Path | None


def default_out(spec: str) -> Path:
    """``runs/bench/<spec as a file name>``: letters, digits, ``.``, ``_`` and ``-`` kept."""
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", spec).strip("-.")[:80] or "method"
    return DEFAULT_ROOT / slug


def bench_grid(
    spec: str,
    suite: Suite,
    *,
    dataset: str = DEFAULT_DATASET,
    protocol: str | None = DEFAULT_PROTOCOL,
    seeds: Sequence[int] | int | str = (0,),
    out: str | Path | None = None,
    **settings: Any,
) -> GridConfig:
    """The grid of ``spec`` under every countermeasure of ``suite`` (as the suite runs under the
    protocol on the dataset); ``settings`` are further GridConfig fields (``data_root``,
    ``threads``, ``progress``, ``epochs``, ...)."""
    values = {
        "dataset": dataset,
        "protocol": protocol,
        "seeds": [seeds] if isinstance(seeds, int) else seeds,
        "methods": [spec],
        "out": str(out if out is not None else default_out(spec)),
        **settings,
    }
    config = GridConfig.from_dict(values)
    resolved = config.resolved_protocol()
    config.defenses = [run for _, run in suite.runs_for(resolved.name, resolved.dataset)]
    return config


def find_field_rows(
    reference: str | Path | None, suite: Suite, protocol: Protocol, dataset: str
) -> FieldRows:
    """The field rows of ``reference`` (a source name or file), or by default of the source
    ``uebench-<protocol>-<dataset>`` when one is found; "none" asks for no field rows."""
    if reference is not None and str(reference) == "none":
        return no_field_rows("no field rows (--reference none)")
    if reference is None:
        name = f"uebench-{protocol.name}-{protocol.dataset}"
        if name not in available_sources():
            return no_field_rows(
                f"no field rows: no reference {name} ships for {protocol.dataset} under "
                f"protocol {protocol.name}; clean training ran here"
            )
        reference = name
    return field_rows(resolve_source(reference), suite, protocol, dataset)


def run_bench(
    spec: str,
    *,
    suite: str | Path | Suite = DEFAULT_SUITE,
    reference: str | Path | None = None,
    label: str | None = None,
    report: bool = True,
    **grid: Any,
) -> BenchResult:
    """Bench method ``spec``: run its cells under ``suite`` (and clean training where the field
    rows lack it), then write ``bench.csv``, ``bench.md`` and the report in the results
    folder.  ``grid`` holds :func:`bench_grid`'s keywords; ``label`` names the method's row
    (default: the spec).  Every input is checked before any cell runs."""
    chosen = load_suite(suite)
    config = bench_grid(spec, chosen, **grid)
    protocol = config.effective_protocol()
    field = find_field_rows(reference, chosen, protocol, config.dataset)
    configs = [config]
    for arch in protocol.archs:
        have = clean_columns(field.long, chosen, arch)
        todo = [run for column, run in _runs(chosen, protocol) if column not in have]
        if todo:
            clean = GridConfig.from_dict({**_values(config), "methods": ["clean"]})
            clean.defenses, clean.archs = todo, [arch]
            configs.append(clean)
    for each in configs:  # every spec, size and folder checked before the first cell runs
        each.cells()
    config.check_folders()
    ids = []
    for each in configs:
        ids += list(run_grid(each)["cell_id"])
    out = Path(config.out)
    records = [{**read_record(out / "cells" / f"{i}.json"), "_path": ""} for i in ids]
    name = label or spec
    measured = run_rows(records, chosen, {spec: name})
    classes = max((r.get("num_classes") or 0 for r in records), default=0) or None
    table = bench_table(measured, field, chosen, protocol, name, classes)
    page, note = None, ""
    if report:
        try:
            page = write_report([out], out / "report", suite=chosen)
        except UebenchError as error:  # the plots extra missing, say: the table stands
            note = f"report not written: {error}"
    if report:
        table.report = f"report: {page}" if page else note
    else:
        table.report = f"report: uebench report {out} --suite {chosen.argument()}"
    files = table.write(out)
    return BenchResult(table, out, files, page)


def _runs(suite: Suite, protocol: Protocol) -> list[tuple[str, str]]:
    return suite.runs_for(protocol.name, protocol.dataset)


def _values(config: GridConfig) -> dict[str, Any]:
    return {k: v for k, v in vars(config).items() if k not in ("methods", "defenses")}
