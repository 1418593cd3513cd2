"""The ``ray`` backend (:mod:`uebench.grid.backends`): a grid's cells as Ray tasks on every
core or GPU of one machine or a cluster.

The driver (the process running ``uebench run --backend ray``) plans the grid and owns every
file; workers only compute:

* The grid's distinct poisons (the cache keys its unfinished cells need) are crafted first, each
  exactly once, each as its own task.  Keys already in the driver's poison cache are loaded and
  put into the object store instead.  A method built on other methods (``mix``) gets their
  poisons as task arguments when the grid crafts them anyway, so nothing is crafted twice.
* Each cell is a task whose arguments are its data and its own poison's ``ObjectRef``: Ray
  starts it as soon as that one poison exists, and moves the poison (and the data) through its
  object store, so worker nodes need neither the dataset files nor a shared filesystem.
* Workers return records (and model weights, with ``save_models``); the driver alone writes
  them, atomically, as each task finishes: crafted poisons into its poison cache, then
  ``cells/<id>.json`` and ``results.csv`` through :class:`~uebench.grid.store.ResultStore`.
  Killing the driver loses only unfinished cells; rerunning the command skips finished ones.
* A worker process or node that dies is a system failure: Ray reruns the task (``max_retries``),
  and the cell is recorded once, when its one successful run returns.  An exception raised by a
  cell is not retried (it would raise again): it is reported in one line, the other cells go
  on, and the grid ends with :class:`~uebench.grid.outcome.CellsFailed`.

Ray is imported here only, and only when this backend runs: the base install does not need it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
from tqdm.auto import tqdm

from uebench.data import ImageData
from uebench.errors import UebenchError, named_error
from uebench.execution import execution_for
from uebench.files import atomic_write
from uebench.grid.cell import (
    Cell,
    cell_plugins,
    cell_poison_key,
    check_data_unchanged,
    data_digest,
    load_cell_data,
    run_cell,
)
from uebench.grid.config import GridConfig
from uebench.grid.estimate import announce_grid
from uebench.grid.outcome import (
    CellsFailed,
    failure_line,
    grid_table,
    lost_records,
    vanished,
)
from uebench.grid.store import ResultStore
from uebench.grid.threads import torch_threads
from uebench.identity import nested_method_specs, poison_key
from uebench.method import CraftContext, check_cache_hit
from uebench.plugin_loader import plugin_modules
from uebench.poison import Poison
from uebench.registry import REGISTRIES
from uebench.storage.cache import PoisonCache, SourceCache
from uebench.training import resolve_device
from uebench.version import code_version
from uebench.wording import counted

#: Reruns of a task whose worker process or node died (system failures only).
MAX_RETRIES = 3


def _import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise UebenchError('the ray backend needs Ray: pip install -e ".[ray]"') from None
    return ray


@dataclass(frozen=True)
class Resources:
    """What each task (crafting or cell) asks Ray for, and the torch threads it then uses."""

    cpus: float
    gpus: float
    threads: int

    def options(self) -> dict[str, float]:
        return {"num_cpus": self.cpus, "num_gpus": self.gpus}

    def describe(self) -> str:
        gpus = f", {self.gpus:g} GPU" if self.gpus else ""
        return f"{self.cpus:g} CPU{gpus} and {self.threads} torch thread(s) per task"


def choose_resources(config: GridConfig, cluster: dict[str, float]) -> Resources:
    """Per-task requests: the flags when given, else one GPU per cell when the cluster has GPUs
    (and the grid may use them), else one CPU per cell; torch threads follow the CPU request.

    (GridConfig has checked the values themselves.)
    """
    if config.gpus_per_cell is not None:
        gpus = config.gpus_per_cell
    else:
        gpus = 1.0 if cluster.get("GPU", 0) > 0 and config.device != "cpu" else 0.0
    if config.cpus_per_cell is not None:
        cpus = config.cpus_per_cell
    else:
        cpus = float(config.threads) if config.threads is not None else 1.0
    threads = config.threads if config.threads is not None else max(1, int(cpus))
    return Resources(cpus, gpus, threads)


def _node() -> dict[str, str]:
    import ray

    return {"node": socket.gethostname(), "ray_node_id": ray.get_runtime_context().get_node_id()}


def _runtime_plugins() -> dict[str, dict[str, Callable[..., Any]]]:
    """Plugins registered at run time in the driver (a notebook's ``METHODS.register``).

    Workers only see entry points, so these travel with every task; a factory defined in
    ``__main__`` or a notebook is pickled by value, one from a module needs that module
    importable on the workers.
    """
    return {kind: dict(registry._extra) for kind, registry in REGISTRIES.items() if registry._extra}


@contextlib.contextmanager
def _shipped_by_value(ray: Any, modules: list[str]) -> Iterator[None]:
    """Pickle the code of ``modules`` (those ``--plugin`` imported) by value meanwhile: a
    worker then needs no copy of a plugin the driver found in its current folder."""
    shipped = [sys.modules[name] for name in modules if name in sys.modules]
    for module in shipped:
        ray.cloudpickle.register_pickle_by_value(module)
    try:
        yield
    finally:
        for module in shipped:
            ray.cloudpickle.unregister_pickle_by_value(module)


def _install(plugins: dict[str, dict[str, Callable[..., Any]]]) -> None:
    # The worker mirrors the driver's registries as they are (overrides included, which the
    # driver has checked); a reused worker process gets each task's copy anew.
    for kind, factories in plugins.items():
        REGISTRIES[kind]._extra.update(factories)


class _HandedOverCache(PoisonCache):
    """A worker's poison cache, in memory: the poisons the driver handed over, plus those
    crafted in this task (returned to the driver, which saves them in its own cache).

    Keys are the driver's: ``translate`` maps the key a worker computes for a spec to the one
    the driver computed.  They differ for a plugin shipped by value (a notebook's class), whose
    source hash the worker cannot read; the driver's keys are the ones its cache and a later
    local run use.
    """

    def __init__(self, known: dict[str, Poison], translate: dict[str, str]) -> None:
        super().__init__("<memory>")
        self.known = dict(known)
        self.translate = translate
        self.crafted: dict[str, Poison] = {}

    def get_or_craft(self, key: str, craft: Callable[[], Poison]) -> Poison:
        key = self.translate.get(key, key)
        if key in self.known:
            self.hits += 1
            return self.known[key]
        self.misses += 1
        poison = craft()
        # Stamped exactly as PoisonCache does, so the hash a record cites is the same.
        poison.meta = {**poison.meta, "cache_key": key}
        self.known[key] = self.crafted[key] = poison
        return poison

    def sources(self) -> SourceCache | None:
        """None: a task's source models stay in the task (each trains its own)."""
        return None


def craft_task(
    cell: Cell,
    data: ImageData,
    threads: int,
    plugins: dict[str, dict[str, Callable[..., Any]]],
    specs: list[tuple[str, str]],
    keys: list[str],
    *known: Poison,
) -> tuple[Poison, dict[str, Any]]:
    """(Ray task) Craft ``cell``'s poison; ``known`` are poisons under ``keys`` it may build on.

    ``specs`` pairs the cell's method (first) and the method specs nested in it with the
    driver's keys for them.  Returns the poison and a report: the other poisons crafted on the
    way (by the driver's keys), time and node.
    """
    _install(plugins)
    started = time.perf_counter()
    train = cell.train.as_dict()
    translate = {poison_key(spec, data.fingerprint(), train): key for spec, key in specs}
    cache = _HandedOverCache(dict(zip(keys, known, strict=True)), translate)
    pristine = data_digest(data)
    with torch_threads(threads):
        device = resolve_device(cell.device)
        ctx = CraftContext(device, cell.train, False, cache, execution_for(device, cell.compile))
        poison = ctx.craft(cell.method, data)
    check_data_unchanged(data, pristine, f"method {cell.method!r}")
    key = specs[0][1]
    extras = {other: crafted for other, crafted in cache.crafted.items() if other != key}
    return poison, {"extras": extras, "seconds": time.perf_counter() - started, **_node()}


def cell_task(
    cell: Cell,
    data: ImageData,
    crafted: Poison,
    threads: int,
    plugins: dict[str, dict[str, Callable[..., Any]]],
    tracker: Any,
    save_model: bool,
) -> tuple[dict[str, Any], bytes | None]:
    """(Ray task) Run one cell on the poison the driver handed over; return its record (and
    the trained model's file bytes when asked: the driver writes every file)."""
    _install(plugins)
    if tracker is not None:
        tracker.start.remote(cell.cell_id)
    with torch_threads(threads), tempfile.TemporaryDirectory() as folder:
        model_path = Path(folder) / "model.pt" if save_model else None
        record = run_cell(cell, False, model_path, crafted=crafted, data=data)
        model = model_path.read_bytes() if model_path is not None else None
    record.update(backend="ray", threads=threads, **_node())
    return record, model


def _started_tracker() -> type:
    """An actor class that collects the ids of cells whose task has started (for the bar).

    Built inside a function so that cloudpickle ships it by value: its process then needs
    neither torch nor uebench, and starts in a moment.
    """

    class StartedCells:
        def __init__(self) -> None:
            self.ids: set[str] = set()

        def start(self, cell_id: str) -> None:
            self.ids.add(cell_id)

        def started(self) -> set[str]:
            return self.ids

    return StartedCells


def _connect(ray: Any, config: GridConfig) -> bool:
    """Join the cluster at ``config.address`` or start a local instance; True when this call
    did either (and so must shut it down).  An already-initialized Ray is used as it is."""
    if ray.is_initialized():
        return False
    if config.address is not None:
        _check_reachable(config.address)
    options: dict[str, Any] = {"log_to_driver": True, "logging_level": logging.WARNING}
    try:
        if config.address is None:
            ray.init(include_dashboard=False, **options)
        else:
            ray.init(address=config.address, **options)
    except (ConnectionError, ValueError, RuntimeError) as error:
        where = f"the Ray cluster at {config.address!r}" if config.address else "a local Ray"
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise UebenchError(f"cannot start or reach {where}: {first} (docs/cluster.md)") from None
    return True


#: Seconds to wait for a cluster address to accept a connection before giving up.
CONNECT_TIMEOUT_S = 10.0


def _check_reachable(address: str) -> None:
    """One line when ``HOST:PORT`` (or ``ray://HOST:PORT``) does not accept a TCP connection
    within :data:`CONNECT_TIMEOUT_S`: ``ray.init`` itself retries such an address for minutes.
    ``auto`` and other forms are left to Ray, which answers them at once."""
    host, separator, port = address.removeprefix("ray://").rpartition(":")
    if not separator or not port.isdigit():
        return
    try:
        socket.create_connection((host.strip("[]"), int(port)), CONNECT_TIMEOUT_S).close()
    except (OSError, OverflowError, ValueError) as error:
        reason = "timed out" if isinstance(error, TimeoutError) else str(error.args[-1])
        raise UebenchError(
            f"cannot reach the Ray cluster at {address!r} ({reason} after at most "
            f"{CONNECT_TIMEOUT_S:g} s); is its head node running? (docs/cluster.md)"
        ) from None


def _reason(error: BaseException) -> str:
    """One line saying why a task failed: the cell's own exception when it raised one."""
    cause = getattr(error, "cause", None)
    if isinstance(cause, BaseException):
        error = cause
    return named_error(error)


def _check_fits(ray: Any, resources: Resources, local: bool) -> None:
    """Refuse requests no node can meet on a local instance (its tasks would wait forever)."""
    nodes = [node["Resources"] for node in ray.nodes() if node.get("Alive")]
    fits = any(
        node.get("CPU", 0) >= resources.cpus and node.get("GPU", 0) >= resources.gpus
        for node in nodes
    )
    if fits:
        return
    message = f"no Ray node has {resources.cpus:g} CPU and {resources.gpus:g} GPU for one cell"
    if local:
        raise UebenchError(f"{message}; lower --cpus-per-cell / --gpus-per-cell")
    tqdm.write(f"uebench: {message} now; the tasks wait for a node that has them")


class _Plan:
    """Where each unfinished cell's data and poison come from, as object-store references."""

    def __init__(
        self,
        ray: Any,
        todo: list[Cell],
        resources: Resources,
        plugins_ref: Any,
        craft: Any,
    ) -> None:
        self.ray, self.resources, self.plugins_ref, self.craft = ray, resources, plugins_ref, craft
        self.data: dict[tuple[Any, ...], ImageData] = {}
        self.data_refs: dict[tuple[Any, ...], Any] = {}
        self.poison_refs: dict[str, Any] = {}
        self.crafting: dict[Any, tuple[str, Cell, Any]] = {}  # report ref -> key, cell, poison ref
        self.cached = 0
        self.key_of: dict[str, str] = {}
        self.first_cell: dict[str, Cell] = {}
        for cell in todo:
            key = cell_poison_key(cell, self.cell_data(cell))
            self.key_of[cell.cell_id] = key
            self.first_cell.setdefault(key, cell)
        for key in self.first_cell:
            self.poison_ref(key, self.first_cell[key])

    def data_key(self, cell: Cell) -> tuple[Any, ...]:
        return (cell.dataset, cell.data_root, cell.train_size, cell.test_size)

    def cell_data(self, cell: Cell) -> ImageData:
        where = self.data_key(cell)
        if where not in self.data:
            self.data[where] = load_cell_data(*where)
        return self.data[where]

    def data_ref(self, cell: Cell) -> Any:
        where = self.data_key(cell)
        if where not in self.data_refs:
            self.data_refs[where] = self.ray.put(self.cell_data(cell))
        return self.data_refs[where]

    def poison_ref(self, key: str, cell: Cell) -> Any:
        """The poison under ``key``: from the driver's cache, or from its one crafting task."""
        if key in self.poison_refs:
            return self.poison_refs[key]
        cache = PoisonCache(cell.cache_dir)
        if cache.path(key).exists():
            self.poison_refs[key] = self.ray.put(_cached(cache, key, cell.method))
            self.cached += 1
            return self.poison_refs[key]
        keys, refs, specs = [], [], [(cell.method, key)]
        data = self.cell_data(cell)
        for spec in nested_method_specs(cell.method):
            nested = poison_key(spec, data.fingerprint(), cell.train.as_dict())
            specs.append((spec, nested))
            if nested in keys:
                continue
            if nested in self.first_cell:  # the grid crafts it anyway: wait for that task
                keys.append(nested)
                refs.append(self.poison_ref(nested, self.first_cell[nested]))
            elif cache.path(nested).exists():
                keys.append(nested)
                refs.append(self.ray.put(_cached(cache, nested, spec)))
        poison, report = self.craft.remote(
            cell, self.data_ref(cell), self.resources.threads, self.plugins_ref, specs, keys, *refs
        )
        self.poison_refs[key] = poison
        self.crafting[report] = (key, cell, poison)
        return poison


def _cached(cache: PoisonCache, key: str, method: str) -> Poison:
    """The driver's cache entry for ``key``, checked as a local run checks a hit: its own key,
    its content hash and the budget ``method`` declares (one line advising deletion if not)."""
    poison = cache.load(key)
    check_cache_hit(poison, method, cache, key)
    return poison


def run_grid_ray(config: GridConfig) -> pd.DataFrame:
    """Run every unfinished cell of the grid as Ray tasks; return results.csv as a DataFrame.

    Raises :class:`~uebench.grid.outcome.CellsFailed` at the end when cells raised, after every
    other cell's record is written.
    """
    ray = _import_ray()
    cells = config.cells(report=tqdm.write)
    config.check_folders()  # an unwritable --out is one line here, not a traceback at the end
    store = ResultStore(config.out)
    todo = [cell for cell in cells if store.read(cell.cell_id) is None]
    unfinished = {cell.cell_id for cell in todo}
    _sweep_claims(store, [cell for cell in cells if cell.cell_id not in unfinished])
    if len(todo) < len(cells):
        tqdm.write(
            f"uebench: {len(cells) - len(todo)} of {len(cells)} cells already done in "
            f"{store.root}; running {len(todo)}"
        )
    left = {cell.cell_id for cell in todo}  # those another process holds, once claimed below
    todo = _claim(store, todo)
    left -= {cell.cell_id for cell in todo}
    store.write_csv()  # the table so far, to which each finished cell appends its row
    if not todo:
        return grid_table(store, cells)
    try:  # the data's checks come here: a refused grid leaves no claim behind
        announce_grid(
            config, todo, None, tqdm.write, lambda line: tqdm.write(line, file=sys.stderr)
        )
    except BaseException:
        store.release_all()
        raise
    pending: dict[Any, Any] = {}
    started_here = False
    guard = None
    try:
        if config.address is None and not ray.is_initialized():
            guard = _start_orphan_guard(ray)
        started_here = _connect(ray, config)
        resources = choose_resources(config, ray.cluster_resources())
        _check_fits(ray, resources, local=started_here and config.address is None)
        failures = _run(ray, config, store, todo, resources, pending)
    finally:
        for ref in pending:  # interrupted: leave nothing running for this grid
            with contextlib.suppress(Exception):  # best effort: a finished task is gone
                ray.cancel(ref)
        if started_here:
            ray.shutdown()
        if guard is not None:  # after a clean shutdown it finds nothing left to end
            guard.stdin.close()  # type: ignore[union-attr]
            with contextlib.suppress(subprocess.TimeoutExpired):
                guard.wait(timeout=10)
        store.release_all()
    store.write_csv()
    if failures:
        raise CellsFailed(failures, len(todo), store.root)
    lost = lost_records(store, [cell for cell in cells if cell.cell_id not in left])
    if lost:
        raise UebenchError(f"{vanished(store, lost, len(cells))}; rerun to recompute them")
    return grid_table(store, cells)


#: The orphan guard (see :func:`_start_orphan_guard`), run as ``python -c DRIVER_PID RAY_DIR``.
#: Once a second, until its stdin closes (which happens however the driver ends, ``kill -9``
#: included), it notes the driver's children whose command line lies in Ray's package (the
#: head processes) and every descendant of those (Ray's agents and workers), with their start
#: times; then it kills any of them still running.  A pid is only killed while its start time
#: is the one noted, so a reused pid is left alone.
_GUARD = r"""
import os, select, signal, sys

def stat(pid):
    with open(f"/proc/{pid}/stat") as handle:
        fields = handle.read().rsplit(")", 1)[1].split()
    return int(fields[1]), int(fields[19])

driver, package = int(sys.argv[1]), os.fsencode(sys.argv[2])
known = {os.getpid(): None}  # itself: its own command line names Ray's package too
while not select.select([sys.stdin], [], [], 1.0)[0]:
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) in known:
            continue
        try:
            parent, start = stat(name)
            if parent == driver:
                with open(f"/proc/{name}/cmdline", "rb") as handle:
                    if package not in handle.read():
                        continue
            elif parent not in known:
                continue
            known[int(name)] = start
        except (OSError, ValueError, IndexError):
            pass
for pid, start in known.items():
    try:
        if start is not None and stat(pid)[1] == start:
            os.kill(pid, signal.SIGKILL)
    except (OSError, ValueError, IndexError):
        pass
"""


def _start_orphan_guard(ray: Any) -> subprocess.Popen[bytes] | None:
    """A process that ends the local Ray instance's processes if this driver dies abruptly.

    Ray ties its head processes to the driver, but the agents its raylet starts outlive a
    driver killed with ``kill -9``, one set per killed run.  Started before Ray, so a driver
    killed while Ray starts is covered too.  Linux only (it reads ``/proc``); elsewhere None.
    """
    if not Path("/proc/self/stat").exists():
        return None
    return subprocess.Popen(
        [sys.executable, "-c", _GUARD, str(os.getpid()), str(Path(ray.__file__).parent)],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # a Ctrl-C to the driver's terminal must not end it first
    )


def _sweep_claims(store: ResultStore, finished: list[Cell]) -> None:
    """Remove dead claimants' claims on finished cells: a driver killed between writing a
    record and releasing its claim leaves one (harmless, as the record wins, but litter)."""
    for cell in finished:
        holder = store.claimant(cell.cell_id)
        if holder is not None and holder["stale"]:
            store.claim_path(cell.cell_id).unlink(missing_ok=True)


def _claim(store: ResultStore, todo: list[Cell]) -> list[Cell]:
    """The cells this driver claims (see :meth:`ResultStore.claim`); those another live
    process is running are left to it, and said so."""
    mine = [cell for cell in todo if store.claim(cell.cell_id)]
    # A record may have landed between the first read and the claim.
    finished = [cell for cell in mine if store.read(cell.cell_id) is not None]
    for cell in finished:
        store.release(cell.cell_id)
    if len(mine) < len(todo):
        tqdm.write(
            f"uebench: {counted(len(todo) - len(mine), 'cell')} running in another process on "
            f"{store.root}; left to it (rerun afterwards to pick up any it did not finish)"
        )
    done = {cell.cell_id for cell in finished}
    return [cell for cell in mine if cell.cell_id not in done]


def _run(
    ray: Any,
    config: GridConfig,
    store: ResultStore,
    todo: list[Cell],
    resources: Resources,
    pending: dict[Any, Any],
) -> list[str]:
    """Submit the plan, then write each result as it arrives; the failed cells' names."""
    plan, tracker = _submit(ray, config, todo, resources, pending)
    return _collect(ray, config, store, plan, tracker, pending, len(todo))


def _submit(
    ray: Any,
    config: GridConfig,
    todo: list[Cell],
    resources: Resources,
    pending: dict[Any, Any],
) -> tuple[_Plan, Any]:
    """Submit the grid's craftings and cells as Ray tasks (each task's reference into
    ``pending``); the plan and the actor that tracks started cells (None without progress)."""
    options = {**resources.options(), "max_retries": MAX_RETRIES, "retry_exceptions": False}
    craft = ray.remote(craft_task).options(num_returns=2, **options)
    run = ray.remote(cell_task).options(**options)
    # The tracker only feeds the bar; without one it would still cost a worker process.
    tracker = ray.remote(num_cpus=0)(_started_tracker()).remote() if config.progress else None
    with _shipped_by_value(ray, plugin_modules()):
        plugins_ref = ray.put(_runtime_plugins())
    plan = _Plan(ray, todo, resources, plugins_ref, craft)
    if config.progress:
        tqdm.write(
            f"uebench: {counted(len(todo), 'cell')} under protocol {todo[0].protocol!r} on Ray "
            f"({ray.cluster_resources().get('CPU', 0):g} CPU, "
            f"{ray.cluster_resources().get('GPU', 0):g} GPU); {resources.describe()}; "
            f"{counted(len(plan.crafting), 'poison')} to craft, {plan.cached} from the cache"
        )
    pending.update({report: ("poison", report) for report in plan.crafting})
    for cell in todo:
        poison = plan.poison_refs[plan.key_of[cell.cell_id]]
        ref = run.remote(
            cell,
            plan.data_ref(cell),
            poison,
            resources.threads,
            plan.plugins_ref,
            tracker,
            config.save_models,
        )
        pending[ref] = ("cell", cell)
    return plan, tracker


def _collect(
    ray: Any,
    config: GridConfig,
    store: ResultStore,
    plan: _Plan,
    tracker: Any,
    pending: dict[Any, Any],
    cells: int,
) -> list[str]:
    """Write each task's result as it arrives (poisons into the cache, records into the
    store) under a progress bar, until ``pending`` is empty; the failed cells' names."""
    failures: list[str] = []
    done, crafted, ours = 0, 0, code_version()
    bar = tqdm(
        total=cells, desc="grid", unit="cell", disable=not config.progress, dynamic_ncols=True
    )
    while pending:
        ready, _ = ray.wait(list(pending), num_returns=1, timeout=1.0)
        for ref in ready:
            kind, what = pending.pop(ref)
            if kind == "poison":
                crafted += _save_poison(ray, plan.crafting[what], ref, config.progress)
                continue
            record = _store_cell(ray, store, what, ref, ours)
            bar.update()
            if record is None:
                failures.append(what.name())
                continue
            done += 1
            if config.progress:
                tqdm.write(
                    f"uebench: {what.name()}: {record['final_acc']:.1f}% "
                    f"({record['wall_time_s']:.0f} s)"
                )
        if config.progress:
            running = _running(ray, tracker, pending)
            bar.set_postfix(
                done=done,
                running=running,
                failed=len(failures),
                poisons=f"{crafted}/{len(plan.crafting)}",
                refresh=False,
            )
            bar.refresh()
    bar.close()
    return failures


def _store_cell(
    ray: Any, store: ResultStore, cell: Cell, ref: Any, ours: dict[str, Any]
) -> dict[str, Any] | None:
    """Write a finished cell task's record (and model) through ``store``; None, said in one
    line on stderr, when the task failed (its claim is released: a rerun retries it)."""
    try:
        record, model = ray.get(ref)
    except ray.exceptions.RayError as error:
        store.release(cell.cell_id)
        tqdm.write(failure_line(cell, _reason(error)), file=sys.stderr)
        return None
    if record.get("code_version") != ours:
        tqdm.write(
            f"uebench: warning: {cell.name()} ran on {record['node']} with code "
            f"{record.get('code_version')}, the driver has {ours}",
            file=sys.stderr,
        )
    # The driver's view of what the cell is, so the record's identity hashes to its cell id
    # even for a plugin shipped by value (whose source a worker cannot hash).
    record["config"]["identity"] = cell.planned
    record["plugins"] = cell_plugins(cell)
    if model is not None:
        path = store.root / "models" / f"{cell.cell_id}.pt"
        atomic_write(path, lambda handle, data=model: handle.write(data))
        record["model_path"] = str(path)
    store.add(record)
    return record


def _running(ray: Any, tracker: Any, pending: dict[Any, Any]) -> int | str:
    """Cells whose task has started and not yet returned ("?" if the tracker is gone)."""
    try:
        started = ray.get(tracker.started.remote(), timeout=5)
    except ray.exceptions.RayError:
        return "?"
    waiting = {what.cell_id for kind, what in pending.values() if kind == "cell"}
    return len(started & waiting)


def _save_poison(ray: Any, crafting: tuple[str, Cell, Any], report_ref: Any, progress: bool) -> int:
    """Write a finished crafting's poisons into the driver's cache; 1 if it succeeded."""
    key, cell, poison_ref = crafting
    try:
        report = ray.get(report_ref)
        poison = ray.get(poison_ref)
    except ray.exceptions.RayError as error:
        # Its cells fail with the same error when they come back; say where it started.
        tqdm.write(
            f"uebench: crafting {cell.method} for {cell.dataset} failed: {_reason(error)}",
            file=sys.stderr,
        )
        return 0
    cache = PoisonCache(cell.cache_dir)
    for each_key, each in {key: poison, **report["extras"]}.items():
        if not cache.path(each_key).exists():
            each.save(cache.path(each_key))
    if progress:
        tqdm.write(
            f"uebench: crafted {cell.method_label or cell.method} in {report['seconds']:.0f} s "
            f"on {report['node']}"
        )
    return 1
