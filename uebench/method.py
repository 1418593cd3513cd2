"""The noise-method contract: ``craft(train data, context) -> Poison``.

A method plugin is a class whose keyword-only ``__init__`` parameters are its spec options
(``emin:form=class:eps=16/255``) and whose :meth:`Method.craft` returns a
:class:`~uebench.poison.Poison` for the whole training set.  The core never knows which method
it runs; everything a method needs from the harness comes through :class:`CraftContext`.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from typing import Any, TypeVar

import torch
from torch import nn
from tqdm.auto import tqdm

from uebench.data import ImageData
from uebench.errors import FileFault, UebenchError
from uebench.execution import Execution
from uebench.identity import poison_key
from uebench.plugin_flags import MethodFlags, plugin_flag
from uebench.poison import Poison
from uebench.registry import ARCHS, METHODS
from uebench.storage.cache import PoisonCache, SourceCache
from uebench.threat import ThreatModel
from uebench.training import TrainConfig

T = TypeVar("T")


class CraftContext:
    """What the harness lends a method: device, the victim's training config, progress bars,
    the poison cache (and the trained source models beside it) and how models run
    (:mod:`uebench.execution`).

    ``train_config`` is the victim's training settings.  A method reads it only when it
    declares ``uses_victim_training = True`` (which puts those settings into its poison's cache
    key); the context a method that does not declare it is handed (:meth:`for_method`) refuses
    the read, so its poison can never be reused under training settings it depended on.
    """

    def __init__(
        self,
        device: torch.device,
        train_config: TrainConfig | None = None,
        progress: bool = True,
        cache: PoisonCache | None = None,
        execution: Execution | None = None,
    ) -> None:
        self.device = device
        self.progress = progress
        self.cache = cache
        self.execution = (execution if execution is not None else Execution()).for_crafting()
        self._train_config = train_config if train_config is not None else TrainConfig()
        self._undeclared: str | None = None  # the spec of a method that may not read it

    @property
    def train_config(self) -> TrainConfig:
        """The victim's training settings (only for methods declaring uses_victim_training)."""
        if self._undeclared is not None:
            raise UebenchError(
                f"method {self._undeclared!r} reads the victim's training settings "
                "(ctx.train_config) without declaring uses_victim_training = True; declare it, "
                "so that its poison is keyed by those settings and not reused under others"
            )
        return self._train_config

    def for_method(self, method: Any, spec: str) -> CraftContext:
        """This context as ``method`` (crafting ``spec``) may use it: ``train_config`` only
        when the method declares ``uses_victim_training``."""
        view = copy.copy(self)
        view._undeclared = None if plugin_flag(method, "uses_victim_training") else spec
        return view

    def craft(self, method: str, data: ImageData) -> Poison:
        """Another method's poison for ``data`` (through the cache when there is one).

        Composite methods (mixtures, transfer) build on other methods' poisons this way, so a
        noise set crafted once is shared by every method and cell that uses it.
        """
        build = lambda: craft_within_threat(  # noqa: E731
            METHODS.resolve(method).without_common().build(), data, self, method
        )
        if self.cache is None:
            return build()
        key = poison_key(method, data.fingerprint(), self._train_config.as_dict())
        poison = self.cache.get_or_craft(key, build)
        check_cache_hit(poison, method, self.cache, key)
        return poison

    def build_model(self, arch: str, data: ImageData) -> nn.Module:
        """A fresh source model from an architecture spec such as ``resnet18:width=16``; a
        model with a data-dependent init (airbench's whitening) is fitted to the crafter's
        clean training images."""
        model = self.execution.place(
            ARCHS.build(arch, data.num_classes, data.image_shape), self.device
        )
        fit = getattr(model, "fit_to_training_images", None)
        if callable(fit):  # only then is the training set worth moving to the device here
            fit(data.x_train.to(self.device))
        return model

    def sources(self) -> SourceCache | None:
        """Where trained source models are shared (the poison cache's; none without one)."""
        return self.cache.sources() if self.cache is not None else None

    def bar(self, total: int | None, desc: str) -> tqdm:
        """A progress bar that vanishes when done (hidden when progress is off)."""
        return tqdm(
            total=total, desc=desc, leave=False, disable=not self.progress, dynamic_ncols=True
        )

    def track(self, iterable: Iterable[T], desc: str) -> Iterable[T]:
        """``iterable`` wrapped in a progress bar."""
        return tqdm(iterable, desc=desc, leave=False, disable=not self.progress, dynamic_ncols=True)


class Method(MethodFlags):
    """Base class of noise methods; subclasses set their options in ``__init__``.

    Class attributes tell the harness more (:class:`~uebench.plugin_flags.MethodFlags`, with
    their defaults): ``uses_victim_training``, ``crafts_by_gradient``, ``revision``,
    ``nested_specs``, ``late_options`` and the static method ``identity_options``.
    """

    def craft(self, data: ImageData, ctx: CraftContext) -> Poison:
        raise NotImplementedError

    def check_data(self, data: ImageData) -> None:
        """Refuse, with a :class:`~uebench.errors.UebenchError`, a dataset this method cannot
        craft for; a grid calls it for every method before its first cell, so what only the
        data can tell fails before any crafting or training.  The default accepts any data."""

    def crafting_passes(self, train_size: int, train: TrainConfig) -> tuple[float, float]:
        """About how many forward-and-backward passes over single images crafting takes on a
        training set of ``train_size`` images (a batch of B images counts B), as the fewest
        and the most, for the cost estimate a grid prints before it starts
        (:mod:`uebench.grid.estimate`).

        Crafting that stops once it is good enough (error-minimizing noise below its
        ``stop_error``) gives one round and its ``max_rounds``; crafting of a fixed cost gives
        one number twice.  ``train`` is the victim's training settings, for methods that train
        a source model with them.  The default, (0, 0), says crafting costs little beside
        training (noise drawn at random or computed in one pass).
        """
        return 0.0, 0.0

    def threat_model(self) -> ThreatModel | None:
        """The budget every poison this method crafts keeps to; the harness checks it.

        The default is an L∞ budget at the method's ``eps`` option; a method with another norm
        (L2, L0, unbounded) overrides this.  None means undeclared: the poison's own budget is
        then all that is checked.
        """
        eps = getattr(self, "eps", None)
        return ThreatModel.linf(eps) if isinstance(eps, (int, float)) else None

    def options(self) -> dict[str, Any]:
        return dict(vars(self))


def craft_within_threat(method: Method, data: ImageData, ctx: CraftContext, spec: str) -> Poison:
    """``method.craft(data, ctx)``, refused when the poison leaves the declared threat model.

    A poison always satisfies the budget it carries (:class:`~uebench.poison.Poison` checks
    every row); this checks that the budget it carries is no larger than the one its method
    declares, so a method cannot claim L∞ 8/255 and hand back L∞ 16/255 or an L2 poison.
    """
    try:
        poison = method.craft(data, ctx.for_method(method, spec))
    except UebenchError as error:
        # Poison's own checks (NaN noise, rows out of range, a row over its budget) do not
        # know which method made it; the user needs to.  A file fault (disk full writing a
        # nested poison to the cache) is the place's, not the method's.
        if spec in str(error) or isinstance(error, FileFault):
            raise
        raise UebenchError(f"method {spec!r} failed while crafting: {error}") from error
    check_declared_threat(method, poison, spec)
    return poison


def check_declared_threat(
    method: Method, poison: Poison, spec: str, source: str = "crafted"
) -> None:
    """Refuse ``poison`` when its budget is larger than the one ``method`` declares."""
    declared = method.threat_model()
    if declared is not None and not declared.allows(poison.threat):  # type: ignore[arg-type]
        raise UebenchError(
            f"method {spec!r} declares {declared.describe()} but {source} a poison of "
            f"{poison.threat.describe()}"  # type: ignore[union-attr]
            + ("; delete it to recompute" if source != "crafted" else "")
        )


def check_cache_hit(poison: Poison, method: str, cache: PoisonCache, key: str) -> None:
    """Hold a poison read from ``cache`` to the budget ``method`` declares, as a fresh crafting
    is (:func:`craft_within_threat`): a hit was made by whoever wrote the file, and a forged
    unbounded one must not be trained on (one line advising deletion)."""
    check_declared_threat(
        METHODS.resolve(method).without_common().build(),
        poison,
        method,
        f"its poison cache file {cache.path(key)} holds",
    )


def check_eps(eps: float) -> float:
    """ε in image units (8/255 is the paper's); out of (0, 1] is a one-line error."""
    if not 0 < eps <= 1:
        hint = f" (did you mean {eps:g}/255?)" if eps > 1 else ""
        raise UebenchError(f"eps must be in (0, 1], e.g. 8/255; got {eps:g}{hint}")
    return eps


def check_fraction(name: str, value: float) -> float:
    if not 0 < value <= 1:
        raise UebenchError(f"{name} must be in (0, 1], got {value:g}")
    return value
