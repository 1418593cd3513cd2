"""Writing files safely: atomic writes, which process left a file behind and whether it is
still alive, and the removal of temporary files whose writer died.

Two kinds of file name their writer: the temporary files of :func:`atomic_write`
(``.NAME.<pid>@<host>.XXXXXXXX.tmp``) and the claim files of
:meth:`uebench.grid.store.ResultStore.claim`.  A writer on this host is alive when its pid is;
a writer on another host cannot be asked, so only the file's age can say it is gone.
"""

from __future__ import annotations

import functools
import os
import re
import socket
import tempfile
import time
from pathlib import Path
from typing import Any

from uebench.errors import UebenchError

#: A temporary file of a writer that cannot be asked (another host, a reused pid, a name from
#: before writers were tagged) is removed once it is this old.  An atomic write lasts from
#: creating its temporary file to renaming it: seconds for a poison, minutes at worst on a slow
#: network disk; an hour is far beyond any live write.
STALE_TEMPORARY_S = 3600.0

_TAGGED = re.compile(r"^\..+\.(?P<pid>\d+)@(?P<host>[A-Za-z0-9-]*)\.[A-Za-z0-9_]+\.tmp$")


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
        tagged = _TAGGED.match(path.name)
        try:
            dead = tagged is not None and writer_alive(int(tagged["pid"]), tagged["host"]) is False
            if dead or now - path.stat().st_mtime > max_age_s:
                path.unlink()
                removed.append(path)
        except OSError:  # gone already (another process cleaned it) or not ours to delete
            continue
    return removed


def atomic_write(path: Path, write: Any, mode: str = "wb") -> None:
    """Write through a temporary file in the same folder and rename it into place.

    The temporary file, ``.NAME.<pid>@<host>.XXXXXXXX.tmp``, names its writer, so a folder's
    owner can remove those of writers killed mid-write
    (:func:`remove_stale_temporaries`).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(
        dir=path.parent, prefix=f".{path.name}.{writer_tag()}.", suffix=".tmp"
    )
    try:
        # mkstemp creates the file 0600; give it the mode a plain open() would (0666 & ~umask).
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(temporary, 0o666 & ~umask)
        with os.fdopen(handle, mode) as stream:
            write(stream)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


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
