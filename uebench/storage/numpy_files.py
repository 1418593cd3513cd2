"""Reading numpy files (``.npy``, ``.npz``) from outside without trusting them: never unpickled
(``allow_pickle=False`` everywhere), and each array's header checked against the bytes the
file holds and the memory free before numpy allocates it.

A ``.npy`` header states the array's shape, and numpy allocates that much before reading a
byte of data: a 2 KB file claiming 10⁹ images would ask for hundreds of GiB.  The dataset
loader (:mod:`uebench.datasets`) and the poison-file reader
(:mod:`uebench.storage.poison_files`) both call :func:`check_numpy_file` first.
"""

from __future__ import annotations

import io
import math
import os
import zipfile
import zlib
from pathlib import Path
from typing import IO

import numpy as np
from numpy.lib import format as npy_format

from uebench.errors import UebenchError

#: What numpy can raise on a truncated, corrupt or foreign file.
NUMPY_ERRORS = (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile, zlib.error)
NPY_MAGIC = b"\x93NUMPY"
ZIP_MAGIC = b"PK\x03\x04"


def is_numpy_magic(head: bytes) -> bool:
    """Whether a file starting with ``head`` is a zip (``.npz``) or a ``.npy`` file; numpy
    takes anything else for a pickle."""
    return head.startswith((ZIP_MAGIC, NPY_MAGIC))


def check_numpy_file(path: Path, data: bytes | None = None) -> None:
    """Refuse, in one line, a ``.npy`` or ``.npz`` file whose array headers claim more data
    than the file holds, or more than the memory available, before anything is allocated.

    ``data`` is the file's content when the caller has read it already (``path`` then only
    names it).  A file that is neither (or whose headers cannot be parsed) is left to the
    caller's own reading, which reports it.
    """
    try:
        with path.open("rb") if data is None else io.BytesIO(data) as handle:
            head = handle.read(6)
            handle.seek(0)
            if head.startswith(NPY_MAGIC):
                size = path.stat().st_size if data is None else len(data)
                nbytes, offset, shape = _claim(handle)
                claims = [(path.name, nbytes, offset, size, shape)]
            elif head.startswith(ZIP_MAGIC):
                claims = _zip_claims(handle)
            else:
                return
    except NUMPY_ERRORS:
        return  # malformed: np.load says what is wrong, in the caller's words
    total = 0
    for name, nbytes, offset, stored, shape in claims:
        total += nbytes
        if nbytes > max(stored - offset, 0):
            raise UebenchError(
                f"{path}: the header of {name} claims an array of shape {shape} "
                f"({_size(nbytes)}), but the file holds {_size(max(stored - offset, 0))} of data "
                "(truncated or forged)"
            )
    free = available_memory()
    if free is not None and total > free:
        raise UebenchError(
            f"{path}: its arrays need {_size(total)}, more than the {_size(free)} of memory "
            "available"
        )


def _claim(handle: IO[bytes]) -> tuple[int, int, tuple[int, ...]]:
    """(bytes the array claims, where its data starts, its shape) from a ``.npy`` header."""
    version = npy_format.read_magic(handle)
    if version == (1, 0):
        shape, _, dtype = npy_format.read_array_header_1_0(handle)
    else:  # 2.0 and 3.0 (a UTF-8 header) share 2.0's layout
        shape, _, dtype = npy_format.read_array_header_2_0(handle)
    return math.prod(shape) * dtype.itemsize, handle.tell(), tuple(shape)


def _zip_claims(handle: IO[bytes]) -> list[tuple[str, int, int, int, tuple[int, ...]]]:
    """Each ``.npy`` member's claim, against its uncompressed size in the zip directory."""
    claims = []
    with zipfile.ZipFile(handle) as archive:
        for member in archive.infolist():
            if not member.filename.endswith(".npy"):
                continue
            with archive.open(member) as handle:
                nbytes, offset, shape = _claim(handle)  # type: ignore[arg-type]
            claims.append((member.filename, nbytes, offset, member.file_size, shape))
    return claims


def available_memory() -> int | None:
    """Bytes of memory available to a new allocation (Linux's MemAvailable, else the free
    physical pages); None where neither can be read."""
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, AttributeError):
        return None


def _size(nbytes: int) -> str:
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if nbytes >= scale:
            return f"{nbytes / scale:.1f} {unit}"
    return f"{nbytes} bytes"


def load_numpy(path: Path, data: bytes | None = None) -> np.ndarray | np.lib.npyio.NpzFile:
    """``np.load(allow_pickle=False)`` of ``path`` (or of ``data``, its content read already)
    after :func:`check_numpy_file`; numpy's own errors are the caller's to word (they are
    :data:`NUMPY_ERRORS`)."""
    check_numpy_file(path, data)
    return np.load(path if data is None else io.BytesIO(data), allow_pickle=False)
