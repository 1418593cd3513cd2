"""How many torch threads a grid uses on a CPU that other processes may share.

torch starts one intra-op thread per core.  When another busy process shares those cores, the
threads wait on each other at every parallel region and small-model steps become many times
slower (benchmarks/threads.py measures it).  So, unless ``--threads`` says otherwise, uebench
counts the processes running right now besides itself and leaves their cores to them.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager

import torch

from uebench.wording import counted


def usable_cores() -> int:
    """Cores this process may run on (its affinity mask, which containers and taskset set)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def busy_elsewhere(samples: int = 3, interval: float = 0.1) -> int:
    """Runnable threads on the machine besides the one asking (the least of a few samples).

    The fourth field of ``/proc/loadavg`` counts runnable threads at this instant, the caller
    included; the minimum over a few samples ignores this process's own threads still spinning
    down after their last parallel region.  0 where ``/proc/loadavg`` does not exist.
    """
    counts = []
    for sample in range(samples):
        try:
            with open("/proc/loadavg") as handle:
                running = int(handle.read().split()[3].split("/")[0])
        except (OSError, ValueError, IndexError):
            return 0
        counts.append(running - 1)
        if sample + 1 < samples:
            time.sleep(interval)
    return max(0, min(counts))


def choose_threads(requested: int | None) -> tuple[int, str]:
    """The thread count to use and why (a phrase for the run's log)."""
    cores = usable_cores()
    if requested is not None:
        return requested, f"{requested} (--threads)"
    others = busy_elsewhere()
    threads = max(1, cores - others)
    if threads < cores:
        return threads, (
            f"{threads} of {cores} cores ({counted(others, 'busy thread')} elsewhere; "
            "--threads N to override)"
        )
    return threads, f"{threads} (one per core)"


def threads_warning(requested: int | None) -> str | None:
    """A warning when ``--threads`` asks for more threads than this process has cores, else None.

    Not an error: the count may be meant for another machine (a config file shared with a
    cluster node), and the run still finishes, only slower.
    """
    cores = usable_cores()
    if requested is None or requested <= cores:
        return None
    return (
        f"uebench: warning: --threads {requested} is more than the {counted(cores, 'core')} "
        "this process may use; the extra threads wait on each other and training runs slower "
        f"(--threads {cores} or fewer, or leave it out to choose)"
    )


@contextmanager
def torch_threads(count: int) -> Iterator[None]:
    """Run the block with ``count`` intra-op threads, then restore the caller's setting."""
    previous = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)
