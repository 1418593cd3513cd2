"""Writing files safely: atomic writes, which process left a file behind and whether it is
still alive, the removal of temporary files whose writer died, and the one line that says why
a file could not be read or written (disk full, read-only, not UTF-8, ...).

Three kinds of file name their writer: the temporary files of :func:`atomic_write`
(``.NAME.<pid>@<host>.XXXXXXXX.tmp``), the staging folders of :func:`staging_folder`
(``.uebench-export-tmp-<pid>@<host>-XXXXXXXX``) and the claim files of
:meth:`uebench.grid.store.ResultStore.claim`.  A writer on this host is alive when its pid is;
a writer on another host cannot be asked, so only the file's age can say it is gone.
"""

from __future__ import annotations

import errno
import functools
import io
import os
import re
import shutil
import socket
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from uebench.errors import FileFault, UebenchError, one_line

#: A temporary file of a writer that cannot be asked (another host, a reused pid, a name from
#: before writers were tagged) is removed once it is this old.  An atomic write lasts from
#: creating its temporary file to renaming it: seconds for a poison, minutes at worst on a slow
#: network disk; an hour is far beyond any live write.
STALE_TEMPORARY_S = 3600.0

if TYPE_CHECKING:
    import pandas as pd

_TAGGED = re.compile(r"^\..+\.(?P<pid>\d+)@(?P<host>[A-Za-z0-9-]*)\.[A-Za-z0-9_]+\.tmp$")
#: How the staging folders of :func:`staging_folder` begin: a name no user file has, so that
#: removing stale ones never touches anything uebench did not make.
STAGING_PREFIX = ".uebench-export-tmp-"
_STAGING = re.compile(
    "^" + re.escape(STAGING_PREFIX) + r"(?P<pid>\d+)@(?P<host>[A-Za-z0-9-]*)-[A-Za-z0-9_]+$"
)

#: What an OS error means, by errno, in the words of :func:`os_error_line`.
_CAUSES = {
    errno.ENOSPC: "disk full",
    errno.EDQUOT: "disk quota exceeded",
    errno.EFBIG: "file too large (over the file size limit, e.g. ulimit -f)",
    errno.EROFS: "read-only file system",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
}


def os_error_line(error: BaseException, path: str | Path, doing: str = "writing") -> str:
    """``disk full writing PATH``, ``read-only file system writing PATH``, ``PATH is not
    UTF-8 text (...)``: what went wrong with a file, naming it, for a one-line error.
    ``doing`` is ``writing`` or ``reading`` (or any other gerund)."""
    if isinstance(error, UnicodeDecodeError):
        return (
            f"{path} is not UTF-8 text (byte 0x{error.object[error.start]:02x} at position "
            f"{error.start})"
        )
    cause = _CAUSES.get(getattr(error, "errno", None) or -1)
    if cause is not None:
        return f"{cause} {doing} {path}"
    reason = getattr(error, "strerror", None) or one_line(error)
    return f"error {doing} {path}: {reason}"


def file_fault(error: BaseException, path: str | Path, doing: str = "writing") -> FileFault:
    """:func:`os_error_line` as the exception to raise (``raise file_fault(...) from None``)."""
    return FileFault(os_error_line(error, path, doing))


@functools.cache
def this_host() -> str:
    """This machine's host name, reduced to letters, digits and ``-`` (safe in file names)."""
    return re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname())[:48] or "localhost"


def writer_tag() -> str:
    """``<pid>@<host>`` of this process, as atomic writes put it in their temporary names."""
    return f"{os.getpid()}@{this_host()}"


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists on this host (of any user)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, owned by someone else
        return True
    except OSError:
        return True  # cannot tell: assume alive, the age rule still applies
    return True


def writer_alive(pid: int, host: str) -> bool | None:
    """True or False for a writer on this host; None for one elsewhere (cannot be asked)."""
    return pid_alive(pid) if host == this_host() else None


def _writer_gone(match: re.Match[str] | None, path: Path, now: float, max_age_s: float) -> bool:
    """A tagged temporary whose writer on this host is dead, or any one older than
    ``max_age_s`` (a writer elsewhere cannot be asked, and pids are reused)."""
    dead = match is not None and writer_alive(int(match["pid"]), match["host"]) is False
    return dead or now - path.stat().st_mtime > max_age_s


def remove_stale_temporaries(
    folder: str | Path, max_age_s: float = STALE_TEMPORARY_S
) -> list[Path]:
    """Delete the leftover temporary files of atomic writes whose writer is gone.

    A file tagged with a writer on this host whose pid is dead goes at once (a ``kill -9``
    mid-write leaves one); any other ``.*.tmp`` file, a live-looking writer's included (pids
    are reused), goes once it is older than ``max_age_s``.  Returns the files removed.
    """
    folder = Path(folder)
    removed: list[Path] = []
    if not folder.is_dir():
        return removed
    now = time.time()
    for path in folder.glob(".*.tmp"):
        try:
            if _writer_gone(_TAGGED.match(path.name), path, now, max_age_s):
                path.unlink()
                removed.append(path)
        except OSError:  # gone already (another process cleaned it) or not ours to delete
            continue
    return removed


def staging_folder(parent: Path) -> Path:
    """A new, empty folder in ``parent`` to build a tree in before renaming it into place,
    named ``.uebench-export-tmp-<pid>@<host>-XXXXXXXX`` (:func:`remove_stale_staging` knows
    it) and created with the mode a plain ``mkdir`` gives (0777 & ~umask), not 0700."""
    try:
        parent.mkdir(parents=True, exist_ok=True)
        folder = Path(tempfile.mkdtemp(dir=parent, prefix=f"{STAGING_PREFIX}{writer_tag()}-"))
        os.chmod(folder, 0o777 & ~_umask())
    except OSError as error:
        raise file_fault(error, parent) from None
    return folder


def remove_stale_staging(parent: Path, max_age_s: float = STALE_TEMPORARY_S) -> list[Path]:
    """Delete the staging folders (:func:`staging_folder`) in ``parent`` whose writer is gone:
    at once when it was a process of this host that is dead (a ``kill -9`` mid-export), else
    once older than ``max_age_s``.  Nothing without the staging prefix is touched."""
    removed: list[Path] = []
    if not parent.is_dir():
        return removed
    now = time.time()
    for path in parent.glob(STAGING_PREFIX + "*"):
        tagged = _STAGING.match(path.name)
        try:
            if tagged is not None and path.is_dir() and _writer_gone(tagged, path, now, max_age_s):
                shutil.rmtree(path)
                removed.append(path)
        except OSError:  # gone already, or not ours to delete
            continue
    return removed


def _umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


class _Recording:
    """A stream that remembers the OSError its ``write`` raised: writers such as
    ``torch.save`` turn it into an error of their own (a RuntimeError naming a C++ line),
    and the cause (disk full, a file size limit) would be lost."""

    def __init__(self, stream: Any) -> None:
        self._stream = stream
        self.error: OSError | None = None

    def write(self, data: Any) -> Any:
        try:
            return self._stream.write(data)
        except OSError as error:
            self.error = error
            raise

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


def atomic_write(path: Path, write: Any, mode: str = "wb") -> None:
    """Write through a temporary file in the same folder and rename it into place.

    The temporary file, ``.NAME.<pid>@<host>.XXXXXXXX.tmp``, names its writer, so a folder's
    owner can remove those of writers killed mid-write
    (:func:`remove_stale_temporaries`).  A file system error (disk full, a file size limit,
    read-only, permission) is a :class:`~uebench.errors.FileFault` naming ``path`` and the
    cause, and leaves neither the temporary file nor a half-written ``path``.
    """
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(
            dir=path.parent, prefix=f".{path.name}.{writer_tag()}.", suffix=".tmp"
        )
    except OSError as error:
        raise file_fault(error, path) from None
    stream = None
    try:
        # mkstemp creates the file 0600; give it the mode a plain open() would (0666 & ~umask).
        os.chmod(temporary, 0o666 & ~_umask())
        with os.fdopen(handle, mode) as opened:
            stream = _Recording(opened)
            write(stream)
            opened.flush()
            os.fsync(opened.fileno())
        os.replace(temporary, path)
    except BaseException as error:
        Path(temporary).unlink(missing_ok=True)
        cause = stream.error if stream is not None and stream.error is not None else error
        if isinstance(cause, OSError):
            raise file_fault(cause, path) from error
        raise


def write_csv(path: Path, frame: pd.DataFrame, float_format: str | None = None) -> None:
    """Write ``frame`` as CSV to ``path`` atomically, every text cell that a spreadsheet would
    read as a formula (:func:`spreadsheet_safe`) escaped first."""
    buffer = io.StringIO()
    spreadsheet_safe(frame).to_csv(buffer, index=False, float_format=float_format)
    atomic_write(path, lambda stream: stream.write(buffer.getvalue()), mode="w")


def append_csv(path: Path, frame: pd.DataFrame, float_format: str | None = None) -> None:
    """Append ``frame``'s rows to the CSV file ``path`` (after a header when the file is new
    or empty), escaped as :func:`write_csv` escapes them.

    The rows go out in one ``write`` to a file opened for appending, so a process killed at
    any moment leaves whole rows, never part of one, and processes appending to one file at
    once do not interleave their rows.
    """
    safe = spreadsheet_safe(frame)
    text = safe.to_csv(index=False, header=False, float_format=float_format)
    try:
        handle = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            if os.fstat(handle).st_size == 0:
                text = safe.head(0).to_csv(index=False) + text
            data = text.encode()
            while data:  # a regular file takes it whole unless the disk fills
                data = data[os.write(handle, data) :]
        finally:
            os.close(handle)
    except OSError as error:
        raise file_fault(error, path) from None


#: The first characters that make a spreadsheet read a cell as a formula (OWASP, CSV Injection).
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def spreadsheet_safe(frame: pd.DataFrame) -> pd.DataFrame:
    """``frame`` with a leading apostrophe on each text cell that starts like a formula
    (:data:`FORMULA_STARTS`): record text such as a method named ``=HYPERLINK(...)`` stays
    text in a spreadsheet.  Numbers are left alone (a negative number is no formula)."""
    safe = frame.copy()
    for column in safe.columns:
        if safe[column].dtype == object or str(safe[column].dtype).startswith("str"):
            safe[column] = safe[column].map(
                lambda v: "'" + v if isinstance(v, str) and v.startswith(FORMULA_STARTS) else v
            )
    safe.columns = [
        "'" + c if isinstance(c, str) and c.startswith(FORMULA_STARTS) else c for c in safe.columns
    ]
    return safe


def check_writable(key: str, folder: Path) -> None:
    """Create ``folder`` and write and remove a probe file in it; one line naming ``key`` (the
    setting that chose the folder) if either fails."""
    # A name longer than the file system allows fails every call below with a traceback-worthy
    # OSError; 255 bytes is the limit of ext4, xfs, btrfs, APFS and NTFS alike.
    long = next((part for part in folder.parts if len(os.fsencode(part)) > 255), None)
    if long is not None:
        raise UebenchError(
            f"{key}: the folder name {long[:40]}... is {len(os.fsencode(long))} bytes long; "
            "file systems allow at most 255"
        )
    # mkdir's own errors for these ("File exists", "Not a directory") do not say which file.
    try:
        blocker = next(
            (p for p in (folder, *folder.parents) if p.exists() and not p.is_dir()), None
        )
    except OSError as error:
        raise UebenchError(
            f"{key}: cannot use {folder} ({error.strerror or type(error).__name__})"
        ) from None
    if blocker == folder:
        raise UebenchError(f"{key}: {folder} is a file, not a folder")
    if blocker is not None:
        raise UebenchError(f"{key}: cannot create {folder}: {blocker} is a file")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        handle, probe = tempfile.mkstemp(dir=folder, prefix=".uebench-probe-")
        os.close(handle)
        os.unlink(probe)
    except OSError as error:
        raise UebenchError(
            f"{key}: cannot write to {folder} ({error.strerror or type(error).__name__})"
        ) from None
