"""``uebench bench SPEC``: one method through a countermeasure suite, beside the field's rows
(a CLI command module)."""

from __future__ import annotations

import argparse
import time
from typing import Any

from uebench.benchmark.runner import DEFAULT_DATASET, DEFAULT_PROTOCOL, default_out, run_bench
from uebench.cli.plugins import add_plugin_flag
from uebench.grid.config import RUN_FLAGS
from uebench.scoring.suites import DEFAULT_SUITE

#: ``uebench run`` flags a bench passes on as they are.  The grid settings a protocol decides
#: (archs to test_size) change the protocol's hash: field rows then count only if measured so.
_PASSED_ON = (
    "data_root",
    "threads",
    "device",
    "cache_dir",
    "archs",
    "epochs",
    "batch_size",
    "lr",
    "train_size",
    "test_size",
)
_INTS = {"threads", "epochs", "batch_size", "train_size", "test_size"}


def register(commands: Any) -> None:
    """Add ``bench`` to the ``uebench`` parser."""
    bench = commands.add_parser(
        "bench",
        help="score one method under a countermeasure suite (its worst case) beside the field",
        description="Run SPEC's cells under every countermeasure of a suite and print its row "
        "beside the field's rows of the shipped reference, each with its threat model, its "
        "worst case (the highest clean accuracy any countermeasure reaches), the countermeasure "
        "reaching it and its rank within its threat budget and overall.",
    )
    bench.add_argument(
        "spec",
        metavar="SPEC",
        help="method spec: a built-in with options (lsp, emin:form=class), a plugin, or "
        "file:path=X.npz:eps=8/255 for a poison made elsewhere",
    )
    bench.add_argument(
        "--dataset", default=DEFAULT_DATASET, help=f"dataset spec (default {DEFAULT_DATASET})"
    )
    bench.add_argument(
        "--protocol",
        default=DEFAULT_PROTOCOL,
        help=f"named settings bundle (default {DEFAULT_PROTOCOL}; uebench list protocols)",
    )
    bench.add_argument("--seeds", default="0", help="victim training seeds (default 0; e.g. 0-2)")
    bench.add_argument(
        "--suite",
        default=DEFAULT_SUITE,
        metavar="ID|FILE.toml",
        help=f"countermeasure suite (default {DEFAULT_SUITE}; uebench list suites)",
    )
    bench.add_argument(
        "--reference",
        metavar="SOURCE|none",
        help="field rows from this reference source or file (default: "
        "uebench-<protocol>-<dataset> when it ships; none: no field rows)",
    )
    bench.add_argument("--out", help="results folder (default runs/bench/<SPEC as a file name>)")
    for name in _PASSED_ON:
        kind = int if name in _INTS else float if name == "lr" else str
        bench.add_argument(
            f"--{name.replace('_', '-')}", dest=name, type=kind, help=RUN_FLAGS[name]
        )
    bench.add_argument("--no-progress", action="store_true", help="hide progress bars")
    bench.add_argument(
        "--no-report",
        action="store_true",
        help="skip the report page (RUN_DIR/report/report.html; its plots take seconds)",
    )
    add_plugin_flag(bench)
    bench.set_defaults(handler=_bench)


def _bench(args: argparse.Namespace) -> None:
    started = time.perf_counter()
    settings = {name: getattr(args, name) for name in _PASSED_ON if getattr(args, name) is not None}
    result = run_bench(
        args.spec,
        suite=args.suite,
        reference=args.reference,
        dataset=args.dataset,
        protocol=args.protocol,
        seeds=args.seeds,
        out=args.out or default_out(args.spec),
        progress=not args.no_progress,
        report=not args.no_report,
        **settings,
    )
    table = result.table
    print()
    print(table.text())
    if table.findings:
        print(f"\nfindings for {table.method} (against clean training, same countermeasure):")
        print("\n".join(f"  {line}" for line in table.findings))
    for note in table.notes:
        print(f"note: {note}")
    print(
        f"\nwall time {time.perf_counter() - started:.0f} s; table in "
        f"{', '.join(str(path) for path in result.files)}; records in {result.out / 'cells'}"
    )
    print(table.report)
