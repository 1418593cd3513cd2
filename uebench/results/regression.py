"""Reported numbers as pytest cases: a pytest plugin.

Each reference record (see :mod:`uebench.results.references`) becomes one test case that either
runs its cell (the record's ``uebench run`` command, restricted to that cell) or, with
``--uebench-results DIR``, reads the numbers already measured there; it passes when the measured
number (mean over seeds) is within the tolerance the record states.  Records marked ``slow`` or
``gpu`` get those pytest marks when they would run a cell, so the default ``-m 'not slow and not
gpu'`` skips them; reading measured results is cheap and is never marked.

The plugin is opt-in (importing it imports uebench and torch): ``-p uebench.regression`` on the
command line, or ``pytest_plugins = ["uebench.regression"]`` in a ``conftest.py`` pytest loads at
start-up (this project's ``tests/conftest.py``).  Then:

* ``pytest -p uebench.regression leaderboard/references/uebench-mini.csv`` collects a reference
  file named on the command line, one item per record;
* in a test module, ``@pytest.mark.parametrize("reference", reference_params("NAME"))`` with
  the ``uebench_check`` fixture does the same for any source.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import hashlib
import io
import json
import shlex
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from uebench.errors import UebenchError
from uebench.grid import run_grid
from uebench.grid.config import GridConfig, add_run_flags, run_values
from uebench.results.leaderboard import cells_frame, read_records, spec_key
from uebench.results.references import (
    SUFFIXES,
    Reference,
    Verdict,
    judge,
    load_references,
    match_cells,
    read_reference_file,
)
from uebench.training import resolve_device

_CHECKER = pytest.StashKey["ReferenceChecker"]()


# --- turning records into cases ----------------------------------------------------------------


def reference_params(*sources: str | Path) -> list[Any]:
    """``pytest.param`` per record of the sources (names or paths), with ``source/id`` as id.

    Marks are added at collection by the plugin (see the module docstring), so the plugin must
    be loaded; without it the ``uebench_check`` fixture is missing and the cases error out
    rather than run a slow cell by accident.
    """
    return [pytest.param(ref, id=ref.name) for ref in load_references(*sources)]


def grid_config(
    reference: Reference, data_root: str | None = None, device: str | None = None
) -> GridConfig:
    """The :class:`~uebench.grid.config.GridConfig` that measures ``reference``: its command
    restricted to its own cell (same cell ids as the full command), or, without a command, one
    seed of the cell at the record's epochs and sizes."""
    if reference.command:
        values = _command_values(reference)
        for key, kind in (("methods", "method"), ("defenses", "defense"), ("archs", "arch")):
            spec = getattr(reference, kind)
            default = getattr(GridConfig(), key)
            if default is None:  # the protocol's (archs)
                setting = {k: values[k] for k in ("dataset", "protocol") if k in values}
                default = list(GridConfig.from_dict(setting).resolved_protocol().archs)
            given = GridConfig.from_dict({key: values.get(key, default)})
            if spec_key(kind, spec) not in {spec_key(kind, s) for s in getattr(given, key)}:
                raise UebenchError(f"{reference.name}: {kind} {spec!r} is not in its command")
        values.update(methods=[reference.method], defenses=[reference.defense])
        values.update(archs=[reference.arch], progress=False)
        config = GridConfig.from_dict(values)
        if spec_key("dataset", config.dataset) != spec_key("dataset", reference.dataset):
            raise UebenchError(
                f"{reference.name}: dataset {reference.dataset!r} differs from its command's "
                f"{config.dataset!r}"
            )
    else:
        config = GridConfig(
            dataset=reference.dataset,
            methods=[reference.method],
            defenses=[reference.defense],
            archs=[reference.arch],
            seeds=[0],
            epochs=reference.epochs,
            train_size=reference.train_size,
            test_size=reference.test_size,
            progress=False,
        )
    if data_root is not None:
        config.data_root = data_root
    if device is not None:
        config.device = device
    return config


def check_protocol(reference: Reference) -> None:
    """Refuse to rerun a reference whose ``protocol_hash`` is not what its command's settings
    hash to now: the protocol changed since it was measured, so a fresh run would measure
    something else (a mismatch saying nothing about the code)."""
    if not (reference.protocol_hash and reference.command):
        return
    now = GridConfig.from_dict(_command_values(reference)).effective_protocol().content_hash()
    if now != reference.protocol_hash:
        raise UebenchError(
            f"its command's settings hash to {now}, the reference was measured under "
            f"{reference.protocol_hash}: the protocol changed since, so measure the reference "
            "again"
        )


def _command_values(reference: Reference) -> dict[str, Any]:
    """The GridConfig values of the record's ``uebench run`` command (its config file's, with
    its flags on top), read as ``uebench run`` reads them."""
    argv = shlex.split(reference.command)[1:]
    errors = io.StringIO()
    try:
        if argv[:1] != ["run"]:
            raise UebenchError("its command is not a `uebench run` command")
        parser = argparse.ArgumentParser(prog="uebench run")
        add_run_flags(parser)
        with contextlib.redirect_stderr(errors):
            args = parser.parse_args(argv[1:])
    except SystemExit:
        why = (errors.getvalue().strip().splitlines() or ["cannot parse it"])[-1]
        raise UebenchError(f"its command is not a valid uebench command ({why})") from None
    return run_values(args)


# --- measuring and judging ---------------------------------------------------------------------


class ReferenceChecker:
    """Measures references for one pytest session: reads ``results`` folders when given,
    otherwise runs cells under ``workdir`` (cells and poisons shared by cases of one command)."""

    def __init__(
        self,
        results: list[str],
        workdir: Path | None = None,
        data_root: str | None = None,
        device: str | None = None,
    ) -> None:
        self.results = results
        self.data_root = data_root
        self.device = device
        self._workdir = workdir
        self._own_workdir = workdir is None
        self._cells: pd.DataFrame | None = None

    @property
    def workdir(self) -> Path:
        """Where cells run; a temporary folder is made on first use, so sessions that run no
        reference case create nothing."""
        if self._workdir is None:
            self._workdir = Path(tempfile.mkdtemp(prefix="uebench-regression-"))
        return self._workdir

    @property
    def reads_results(self) -> bool:
        """True when the cases judge measured results instead of running cells."""
        return bool(self.results)

    def measure(self, reference: Reference) -> Verdict:
        """The reference's measured number; skips the case when nothing can be measured."""
        if self.reads_results:
            if self._cells is None:
                self._cells = cells_frame(read_records(self.results))
            matched = match_cells(reference, self._cells)
            if matched.empty:
                pytest.skip(f"{reference.name}: no matching cell in {', '.join(self.results)}")
        else:
            matched = self._run(reference)
        return judge(reference, matched[reference.metric])

    def check(self, reference: Reference) -> Verdict:
        """Measure ``reference`` and fail the test (one line) when it is out of tolerance;
        an ``unverified`` reference is skipped: it is not a number to hold a result to."""
        if "unverified" in reference.marks:
            pytest.skip(f"{reference.name}: unverified against its source, not judged")
        try:
            verdict = self.measure(reference)
        except UebenchError as error:
            pytest.fail(f"{reference.name}: {error}", pytrace=False)
        if not verdict.ok:
            pytest.fail(verdict.message(), pytrace=False)
        return verdict

    def _run(self, reference: Reference) -> pd.DataFrame:
        check_protocol(reference)
        config = grid_config(reference, self.data_root, self.device)
        device = resolve_device(config.device)
        if "gpu" in reference.marks and device.type != "cuda":
            pytest.skip(f"{reference.name}: needs a CUDA device")
        shared = {
            k: v
            for k, v in dataclasses.asdict(config).items()
            if k not in {"methods", "defenses", "archs", "out", "cache_dir", "progress"}
        }
        digest = hashlib.sha256(json.dumps(shared, sort_keys=True).encode()).hexdigest()[:12]
        config.out = str(self.workdir / digest)
        config.cache_dir = str(self.workdir / "cache")
        with _single_thread(device.type == "cpu"):
            run_grid(config)
        matched = match_cells(reference, cells_frame(read_records([config.out])))
        if matched.empty:
            raise UebenchError(
                f"the run made no cell matching the reference (check its epochs, sizes and "
                f"metric {reference.metric!r}); results in {config.out}"
            )
        return matched

    def close(self) -> None:
        """Remove the temporary work folder (a folder the user named is kept)."""
        if self._own_workdir and self._workdir is not None:
            shutil.rmtree(self._workdir, ignore_errors=True)


@contextlib.contextmanager
def _single_thread(enabled: bool) -> Iterator[None]:
    # One thread makes CPU float reductions run in one order whatever the core count, so a
    # number measured on one machine reproduces on another; on a shared CPU it is also faster.
    if not enabled:
        yield
        return
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


# --- pytest hooks ------------------------------------------------------------------------------


def pytest_addoption(parser: pytest.Parser) -> None:
    """The ``--uebench-*`` options: results, workdir, data-root, device."""
    group = parser.getgroup("uebench", "uebench reference regression")
    group.addoption(
        "--uebench-results",
        action="append",
        default=[],
        metavar="DIR",
        help="judge the numbers measured in this uebench results folder (repeatable) "
        "instead of running the cells",
    )
    group.addoption(
        "--uebench-workdir",
        metavar="DIR",
        help="run cells into this new folder and keep it (default: a temporary folder)",
    )
    group.addoption(
        "--uebench-data-root",
        metavar="DIR",
        help="the dataset's folder on this machine (also for rows with a command)",
    )
    group.addoption("--uebench-device", metavar="DEV", help="device for the cells (default auto)")


def pytest_configure(config: pytest.Config) -> None:
    """Create the session's :class:`ReferenceChecker`."""
    workdir = config.getoption("uebench_workdir")
    if workdir is not None:
        workdir = Path(workdir)
        if workdir.exists() and any(workdir.iterdir()):
            raise pytest.UsageError(f"--uebench-workdir {workdir} must be new or empty")
        workdir.mkdir(parents=True, exist_ok=True)
    config.stash[_CHECKER] = ReferenceChecker(
        config.getoption("uebench_results"),
        workdir,
        config.getoption("uebench_data_root"),
        config.getoption("uebench_device"),
    )


def pytest_unconfigure(config: pytest.Config) -> None:
    """Remove the temporary work folder."""
    checker = config.stash.get(_CHECKER, None)
    if checker is not None:
        checker.close()


def pytest_collect_file(file_path: Path, parent: pytest.Collector) -> pytest.Collector | None:
    """Collect a reference file, but only one named on the command line (inert otherwise)."""
    if file_path.suffix not in SUFFIXES:
        return None
    config = parent.config
    named = {(config.invocation_params.dir / arg.split("::")[0]).resolve() for arg in config.args}
    if file_path.resolve() in named:
        return ReferenceFile.from_parent(parent, path=file_path)
    return None


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Give reference cases their record's marks when they would run a cell; ``tryfirst`` so
    that ``-m`` deselection sees them."""
    checker = config.stash.get(_CHECKER, None)
    if checker is None or checker.reads_results:
        return
    for item in items:
        reference = _reference_of(item)
        if reference is not None:
            for mark in reference.marks:
                if mark != "unverified":  # not a pytest mark: check() skips such cases
                    item.add_marker(getattr(pytest.mark, mark))


def _reference_of(item: pytest.Item) -> Reference | None:
    if isinstance(item, ReferenceItem):
        return item.reference
    callspec = getattr(item, "callspec", None)
    if callspec is not None:
        for value in callspec.params.values():
            if isinstance(value, Reference):
                return value
    return None


@pytest.fixture
def uebench_check(request: pytest.FixtureRequest) -> Callable[[Reference], Verdict]:
    """``uebench_check(reference)`` measures the reference (runs or reads its cell) and fails the
    test when the number is out of the record's tolerance; returns the :class:`Verdict`."""
    return request.config.stash[_CHECKER].check


class ReferenceFile(pytest.File):
    """A reference file named on the command line: one item per record."""

    def collect(self) -> Iterator[ReferenceItem]:
        try:
            references = read_reference_file(self.path)
        except UebenchError as error:
            raise self.CollectError(str(error)) from None
        for reference in references:
            yield ReferenceItem.from_parent(self, name=reference.id, reference=reference)


class ReferenceItem(pytest.Item):
    """One reference record as a test case."""

    def __init__(self, *, reference: Reference, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.reference = reference

    def runtest(self) -> None:
        self.config.stash[_CHECKER].check(self.reference)

    def reportinfo(self) -> tuple[Path, int | None, str]:
        return self.path, None, f"{self.reference.name}: {self.reference.cited()}"
