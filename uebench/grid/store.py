"""Per-cell JSON records (one file each, written atomically), the derived results.csv, and the
claims that keep two processes from running one cell.

A process claims a cell before running it: ``cells/<id>.claim`` is created atomically
(``O_CREAT | O_EXCL``) and holds the claimant's pid, host and start time; it is removed when the
record is written or the run fails.  While held, a claim is touched every
:data:`CLAIM_HEARTBEAT_S`.  Another process skips a claimed cell, unless the claim is stale:
its pid is dead on this host, or it has not been touched for :data:`CLAIM_STALE_S` (a claimant
on another host cannot be asked, and a pid may have been reused); a stale claim is taken over.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import threading
import time
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pandas as pd

from uebench.errors import UebenchError
from uebench.files import (
    append_csv,
    atomic_write,
    file_fault,
    remove_stale_temporaries,
    this_host,
    write_csv,
    writer_alive,
)
from uebench.storage.records import read_record  # the one validation every reader shares

try:  # claims are serialized with flock where there is one (not on Windows)
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

#: How often a held claim is touched to show its claimant is alive (seconds).
CLAIM_HEARTBEAT_S = 30.0
#: A claim untouched this long is stale, whoever holds it.  Twenty missed heartbeats: long
#: enough for clocks of hosts sharing a folder to differ by minutes and for network file
#: systems' lagging modification times, short enough that a crashed host's cells are taken
#: over within minutes rather than hours.  (A cell itself may run far longer: the heartbeat,
#: not the cell's length, keeps its claim fresh.)
CLAIM_STALE_S = 600.0

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
    "shortcut_separability",
    "train_size",
    "test_size",
    "num_classes",
    "threat",
    "poison_hash",
    "wall_time_s",
    "cell_id",
]
#: How results.csv writes floats (accuracies in percent, seconds).
CSV_FLOAT_FORMAT = "%.2f"


class ResultStore:
    """``DIR/cells/<cell_id>.json`` records and ``DIR/results.csv`` (always rebuildable).

    A run rewrites results.csv from every record when it starts and when it ends
    (:meth:`write_csv`) and appends each cell's row as the cell finishes (:meth:`add`), so a
    run killed at any moment leaves the rows of the cells finished so far; the records are the
    truth, and the next run rebuilds the table from them.
    """

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.cells = self.root / "cells"
        self.csv_path = self.root / "results.csv"
        self._held: dict[str, str] = {}  # cell id -> the token written in our claim
        self._guard = threading.Lock()
        self._heartbeat: threading.Thread | None = None
        for folder in (self.root, self.cells, self.root / "models"):
            remove_stale_temporaries(folder)  # of writers killed mid-write

    def path(self, cell_id: str) -> Path:
        return self.cells / f"{cell_id}.json"

    # --- claims ----------------------------------------------------------------------------

    def claim_path(self, cell_id: str) -> Path:
        return self.cells / f"{cell_id}.claim"

    def claim(self, cell_id: str) -> bool:
        """Claim a cell for this process: True when it is now ours (a stale claim is taken
        over), False while another live process holds it.  Release with :meth:`release`;
        :meth:`write` releases the cell it writes."""
        if cell_id in self._held:
            return True
        self.cells.mkdir(parents=True, exist_ok=True)
        token = uuid.uuid4().hex
        path = self.claim_path(cell_id)
        with self._claims_locked():
            holder = self.claimant(cell_id)
            if holder is not None:
                if not holder["stale"]:
                    return False
                path.unlink(missing_ok=True)
            try:
                handle = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:  # a process that does not take the lock got there first
                return False
            except OSError as error:
                raise file_fault(error, path) from None
            try:
                with os.fdopen(handle, "w") as stream:
                    json.dump(
                        {
                            "pid": os.getpid(),
                            "host": this_host(),
                            "started": time.time(),
                            "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                            "token": token,
                        },
                        stream,
                    )
            except OSError as error:  # a disk full now: no half-written claim left behind
                path.unlink(missing_ok=True)
                raise file_fault(error, path) from None
        with self._guard:
            self._held[cell_id] = token
            if self._heartbeat is None:
                self._heartbeat = threading.Thread(
                    target=self._beat, name="uebench-claims", daemon=True
                )
                self._heartbeat.start()
        return True

    def release(self, cell_id: str) -> None:
        """Give up our claim on a cell (a claim someone has since taken over is left alone)."""
        with self._guard:
            token = self._held.pop(cell_id, None)
        if token is None:
            return
        with self._claims_locked():
            holder = self.claimant(cell_id)
            if holder is not None and holder.get("token") == token:
                self.claim_path(cell_id).unlink(missing_ok=True)

    def release_all(self) -> None:
        """Release every claim this store holds (a backend's ``finally``)."""
        for cell_id in list(self._held):
            self.release(cell_id)

    def held(self) -> list[str]:
        """The cell ids this store holds claims on."""
        return list(self._held)

    def claimant(self, cell_id: str) -> dict[str, Any] | None:
        """Who holds a cell's claim (``pid``, ``host``, ``started``, ``age_s`` since its last
        heartbeat, ``stale``), or None when it is unclaimed."""
        path = self.claim_path(cell_id)
        try:
            text = path.read_text()
            age = time.time() - path.stat().st_mtime
        except FileNotFoundError:
            return None
        except OSError:
            text, age = "", 0.0
        try:
            holder = json.loads(text)
            if not isinstance(holder, dict):
                raise ValueError
        except ValueError:  # being written this instant, or damaged: only its age can tell
            holder = {}
        pid, host = holder.get("pid"), holder.get("host")
        dead = isinstance(pid, int) and isinstance(host, str) and writer_alive(pid, host) is False
        return {**holder, "age_s": age, "stale": dead or age > CLAIM_STALE_S}

    @contextlib.contextmanager
    def _claims_locked(self) -> Iterator[None]:
        """Serialize claim changes across processes, so that two processes taking over one
        stale claim cannot both win."""
        if fcntl is None:
            yield
            return
        # Beside cells/, not in it: what lists cells/ should find records and claims only.
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / ".claims.lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _beat(self) -> None:
        """Touch every held claim each :data:`CLAIM_HEARTBEAT_S`; end when none is held."""
        while True:
            time.sleep(CLAIM_HEARTBEAT_S)
            with self._guard:
                if not self._held:
                    self._heartbeat = None
                    return
                held = list(self._held)
            for cell_id in held:
                with contextlib.suppress(OSError):
                    os.utime(self.claim_path(cell_id))

    # --- records ---------------------------------------------------------------------------

    def read(
        self, cell_id: str, unreadable: str = "the cell will be recomputed"
    ) -> dict[str, Any] | None:
        """A finished cell's record, or None; an unreadable or malformed record (a stub such as
        ``{"cell_id": ...}``, a JSON list, a field of the wrong type or out of range, an id
        that is not its file's) counts as unfinished, with one warning line on stderr ending in
        ``unreadable`` (what the caller will do about it)."""
        path = self.path(cell_id)
        if not path.exists():
            return None
        try:
            return read_record(path, cell_id)
        except UebenchError as error:
            _warn_once(path, f"{error}; {unreadable}")
            return None

    def write(self, record: dict[str, Any]) -> Path:
        """Write a cell's record (atomically) and release our claim on the cell, if any."""
        path = self.path(record["cell_id"])
        text = json.dumps(record, indent=1, sort_keys=True)
        atomic_write(path, lambda stream: stream.write(text), mode="w")
        self.release(record["cell_id"])
        return path

    def add(self, record: dict[str, Any]) -> Path:
        """Write a finished cell's record (:meth:`write`), then append its row to results.csv."""
        path = self.write(record)
        append_csv(self.csv_path, _rows([record]), float_format=CSV_FLOAT_FORMAT)
        return path

    def records(self, unreadable: str = "`uebench run` recomputes it") -> Iterator[dict[str, Any]]:
        """Every readable record; each unreadable one is skipped with a warning (see read)."""
        for path in sorted(self.cells.glob("*.json")):
            record = self.read(path.stem, unreadable)
            if record is not None:
                yield record

    def table(self) -> pd.DataFrame:
        """One row per finished cell, columns :data:`CSV_COLUMNS`."""
        return _rows(self.records()).sort_values(
            ["dataset", "arch", "defense", "method", "seed"], kind="stable", ignore_index=True
        )

    def write_csv(self) -> Path:
        """Rewrite ``results.csv`` from every record (text escaped against spreadsheet
        formulas, :func:`uebench.files.spreadsheet_safe`)."""
        write_csv(self.csv_path, self.table(), float_format=CSV_FLOAT_FORMAT)
        return self.csv_path


def _rows(records: Iterable[dict[str, Any]]) -> pd.DataFrame:
    """The results.csv rows of ``records`` (columns :data:`CSV_COLUMNS`), in their order."""
    rows = [{column: record.get(column) for column in CSV_COLUMNS} for record in records]
    return pd.DataFrame(rows, columns=CSV_COLUMNS)


#: (path, size, mtime) of the records warned about in this process: a run reads a record
#: several times (planning, claiming, the table), and one bad file is one line.
_WARNED: set[tuple[str, int, int]] = set()


def _warn_once(path: Path, message: str) -> None:
    """Print ``uebench: warning: message`` on stderr once per version of the file."""
    try:
        stat = path.stat()
        version = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    except OSError:
        version = (str(path), -1, -1)
    if version in _WARNED:
        return
    _WARNED.add(version)
    print(f"uebench: warning: {message}", file=sys.stderr)
