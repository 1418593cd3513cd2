"""Crafted poisons on disk, keyed by a hash of everything that determines them (the keys are
:func:`uebench.identity.poison_key`)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path

from uebench.errors import UebenchError
from uebench.files import file_fault, remove_stale_temporaries
from uebench.poison import Poison


class PoisonCache:
    """``root/<key>.pt`` files, written atomically and verified when read."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.hits = 0
        self.misses = 0
        # A writer killed mid-save (kill -9, out of memory) leaves a hidden temporary file.
        remove_stale_temporaries(self.root)

    def path(self, key: str) -> Path:
        return self.root / f"{key}.pt"

    def load(self, key: str) -> Poison:
        """The verified poison stored under ``key``.

        Besides its content hash (:meth:`Poison.load`), the file must name ``key`` as its own
        cache key: every poison the cache writes is stamped with it, so a file copied under
        another key's name, or one not written by the cache, is refused rather than used.
        """
        path = self.path(key)
        poison = Poison.load(path, cache_entry=True)
        stored = poison.meta.get("cache_key")
        if stored != key:
            held = f"the poison of key {stored}" if stored else "no cache key"
            raise UebenchError(
                f"poison file {path} holds {held}, not {key}; delete it to recompute"
            )
        return poison

    def get_or_craft(self, key: str, craft: Callable[[], Poison]) -> Poison:
        """The cached poison for ``key``, or ``craft()`` saved under it.

        A corrupt file raises :class:`~uebench.errors.UebenchError` naming it, rather than being
        silently replaced: a poison that changed under a finished result must be noticed.
        """
        path = self.path(key)
        if path.exists():
            self.hits += 1
            return self.load(key)
        # Two processes on one grid (claims share its cells) often need the same poison at
        # once: the second waits for the first's file instead of crafting it again.
        with _crafting_lock(self.root / f".{key}.lock"):
            if path.exists():
                self.hits += 1
                return self.load(key)
            self.misses += 1
            poison = craft()
            poison.meta = {**poison.meta, "cache_key": key}
            poison.save(path)
        return poison


@contextlib.contextmanager
def _crafting_lock(path: Path) -> Iterator[None]:
    """An exclusive advisory lock on ``path`` (``flock``: the kernel releases it when its holder
    dies, so a killed crafter never blocks the next run).  Where ``fcntl`` is missing (Windows)
    nothing is locked and a concurrent run may craft the same poison twice, harmlessly: the
    content is deterministic and the write atomic."""
    try:
        import fcntl
    except ImportError:
        yield
        return
    try:  # a read-only cache fails here, before any crafting: the place's fault, said so
        path.parent.mkdir(parents=True, exist_ok=True)
        handle = path.open("a")
    except OSError as error:
        raise file_fault(error, path.parent, "writing the poison cache in") from None
    with handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
