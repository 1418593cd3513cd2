"""Crafted poisons and trained source models on disk, each keyed by a hash of everything that
determines it (:func:`uebench.identity.poison_key`, :func:`uebench.identity.source_key`)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
from torch import nn

from uebench.errors import UebenchError
from uebench.files import atomic_write, file_fault, remove_stale_temporaries
from uebench.poison import Poison

#: Trains a source model, leaving the generator and torch's RNG as its training left them.
Trainer = Callable[[], nn.Module]


class _KeyedFiles:
    """``root/<key>.pt`` files, and how many lookups found theirs (``hits``) or made it
    (``misses``)."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.hits = 0
        self.misses = 0
        # A writer killed mid-save (kill -9, out of memory) leaves a hidden temporary file.
        remove_stale_temporaries(self.root)

    def path(self, key: str) -> Path:
        return self.root / f"{key}.pt"


class PoisonCache(_KeyedFiles):
    """Crafted poisons as ``root/<key>.pt`` files, written atomically and verified when read."""

    def sources(self) -> SourceCache | None:
        """Where the source models crafting trains are shared: ``sources/`` beside the poisons."""
        return SourceCache(self.root / "sources")

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


class SourceCache(_KeyedFiles):
    """Source models trained for crafting, shared by every method that asks for the same one:
    ``root/<key>.pt`` holds the trained weights and the random state training left behind.

    ``emax`` and ``tap`` (under its victim recipe) both train the protocol's source on the clean
    training set with the victim's recipe and seed: the second finds the first's model.  A hit
    restores the seeded generator's and torch's random state as well, so what the method draws
    afterwards (its noise starts, its augmentations) and the poison it crafts are what training
    the source itself would have given.
    """

    def get_or_train(
        self, key: str, train: Trainer, skeleton: Trainer, generator: torch.Generator
    ) -> nn.Module:
        """The source model of ``key``: ``train()``'s result, saved, or (on a hit) ``skeleton()``
        (the untrained model, built the same way) with the saved weights, and ``generator`` and
        torch's RNG set to the states training left."""
        path = self.path(key)
        with _crafting_lock(self.root / f".{key}.lock"):
            if path.exists():
                self.hits += 1
                return self._load(path, key, skeleton, generator)
            self.misses += 1
            model = train()
            payload = {
                "key": key,
                "state": {name: value.detach().cpu() for name, value in model.state_dict().items()},
                "generator": generator.get_state(),
                "torch_rng": torch.get_rng_state(),
            }
            atomic_write(path, lambda handle: torch.save(payload, handle))
        return model

    def _load(
        self, path: Path, key: str, skeleton: Trainer, generator: torch.Generator
    ) -> nn.Module:
        try:
            payload = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as error:  # a truncated or foreign file: any torch.load error
            raise UebenchError(
                f"source model file {path} is unreadable ({type(error).__name__}); delete it to "
                "retrain"
            ) from None
        if not isinstance(payload, dict) or payload.get("key") != key:
            raise UebenchError(f"source model file {path} is not the model of key {key}; delete it")
        model = skeleton()
        model.load_state_dict(payload["state"])
        generator.set_state(payload["generator"])
        torch.set_rng_state(payload["torch_rng"])
        return model.eval()


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
