"""``uebench leaderboard``, ``uebench compare`` and ``uebench report`` (a CLI command module)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from uebench.errors import UebenchError
from uebench.files import atomic_write, check_writable, write_csv
from uebench.results.leaderboard import (
    NEAR_CHANCE_STATUS,
    RANK_BY,
    board_markdown,
    cells_frame,
    check_board_path,
    leaderboard,
    markdown_table,
    read_records,
    write_board,
)
from uebench.results.references import compare, load_references
from uebench.results.report import check_run_dirs, write_report
from uebench.scoring.suites import load_suite


def register(commands: Any) -> None:
    """Add the three subcommands to the ``uebench`` parser."""
    board = commands.add_parser(
        "leaderboard", help="aggregate run folders over seeds into a leaderboard"
    )
    board.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="uebench results folders")
    board.add_argument(
        "-o",
        "--out",
        metavar="NAME.csv",
        help="write NAME.csv (one row per cell setting), NAME.pivot.csv and NAME.md; "
        "default: print the Markdown",
    )
    _metric_options(board)
    _suite_option(board)
    board.set_defaults(handler=_leaderboard)

    comparing = commands.add_parser("compare", help="measured numbers beside reported ones")
    comparing.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="uebench results folders")
    comparing.add_argument(
        "-r",
        "--reference",
        action="append",
        required=True,
        metavar="SOURCE",
        help="a reference source name (huang2021, apbench, uebench-mini, ...) or file; repeatable",
    )
    comparing.add_argument(
        "--all", action="store_true", help="also list the references this run did not measure"
    )
    comparing.add_argument("-o", "--out", metavar="FILE.csv|FILE.md", help="also write the table")
    comparing.add_argument(
        "--check", action="store_true", help="exit with status 1 when a number is out of tolerance"
    )
    comparing.set_defaults(handler=_compare)

    report = commands.add_parser(
        "report", help="an HTML (or Markdown) page of a run's tables and plots"
    )
    report.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="uebench results folders")
    report.add_argument(
        "-o", "--out", metavar="DIR", help="output folder (default: RUN_DIR/report of the first)"
    )
    report.add_argument("--format", choices=("html", "md"), default="html", help="default html")
    report.add_argument(
        "-r",
        "--reference",
        action="append",
        default=[],
        metavar="SOURCE",
        help="add a comparison with this reference source; repeatable",
    )
    _metric_options(report)
    _suite_option(report)
    report.set_defaults(handler=_report)


def _metric_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--metric",
        default="final_acc",
        help="accuracy column: final_acc (default), selected_acc (the countermeasure's choice, "
        "e.g. early stopping), best_acc, trained_acc, or a countermeasure note "
        "such as clean_part_acc",
    )
    parser.add_argument(
        "--rank-by",
        choices=RANK_BY,
        default="mean",
        help="order methods by their mean over countermeasures (default) or their worst case",
    )


def _suite_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--suite",
        metavar="ID|FILE.toml",
        help="add each method's worst case over this countermeasure suite (uebench list "
        "suites) and its rank within its threat budget and overall, and sort by it",
    )


def _leaderboard(args: argparse.Namespace) -> None:
    if args.out is not None:  # an unwritable place is one line before any record is read
        check_board_path(Path(args.out))
    suite = load_suite(args.suite) if args.suite else None
    board, _ = leaderboard(args.run_dirs, args.metric)
    if args.out is None:
        print(board_markdown(board, args.rank_by, suite))
        return
    for path in write_board(board, args.out, args.rank_by, suite):
        print(f"wrote {path}")


def _compare(args: argparse.Namespace) -> None:
    import pandas as pd

    out = Path(args.out) if args.out else None
    if out is not None:  # an unusable output is one line before any record is read
        if out.suffix not in (".csv", ".md"):
            raise UebenchError(f"compare output must end in .csv or .md, got {out}")
        check_writable("compare -o", out.parent)
    references = load_references(*args.reference)
    table = compare(references, cells_frame(read_records(args.run_dirs)))
    measured = table[table["status"] != "not measured"]
    shown = table if args.all else measured
    if shown.empty:
        stated = sorted({f"{r.dataset} at {r.epochs or 'any'} epochs" for r in references})
        print(
            f"no measured cell matches any of the {len(references)} references "
            f"({', '.join(args.reference)} speak about {'; '.join(stated)})"
        )
    else:
        with pd.option_context("display.width", 250, "display.max_colwidth", 60):
            print(
                shown.drop(columns=["dataset", "cited"]).to_string(index=False, float_format="%.2f")
            )
        mismatches = int((measured["status"] == "MISMATCH").sum())
        unjudged = int((measured["status"] == NEAR_CHANCE_STATUS).sum())
        print(
            f"\n{len(measured)} of {len(table)} references measured; "
            f"{mismatches} outside their tolerance"
            + (
                f"; {unjudged} not judged: clean training stayed near chance in their setting, "
                "so no number there can show what the noise does"
                if unjudged
                else ""
            )
        )
    if out is not None:
        if out.suffix == ".md":
            text = markdown_table(shown) + "\n"
            atomic_write(out, lambda stream: stream.write(text), mode="w")
        else:
            write_csv(out, shown, float_format="%.4g")
        print(f"wrote {out}")
    if args.check and (measured["status"] == "MISMATCH").any():
        raise SystemExit(1)


def _report(args: argparse.Namespace) -> None:
    # Bad input fails before the output folder is created: by default it lies inside the first
    # RUN_DIR, and a mistyped RUN_DIR must not come into being as a side effect.
    check_run_dirs(args.run_dirs)
    suite = load_suite(args.suite) if args.suite else None  # a typo fails before any record
    out = Path(args.out or Path(args.run_dirs[0]) / "report")
    created = [folder for folder in (out, *out.parents) if not folder.exists()]
    # A file in the way (or a read-only place) is one line before any record is read.
    check_writable("report -o", out)
    try:
        page = write_report(
            args.run_dirs, out, args.format, args.metric, args.rank_by, args.reference, suite
        )
    except UebenchError:
        # A malformed record or an unknown reference is found only now; the folders made
        # above go again (rmdir leaves any that are no longer empty).
        for folder in created:
            try:
                folder.rmdir()
            except OSError:
                break
        raise
    print(f"wrote {page}")
