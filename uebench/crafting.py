"""Building blocks shared by the crafting methods: the source-model steps of the bi-level loop,
error-minimizing PGD on inputs, and accuracy under noise.

:class:`WeightNoise`, :class:`SmoothedSourceSteps` and ``minimize_error(weight_noise=...)`` are
the smoothed variants provably unlearnable examples use: every gradient is averaged over random
Gaussian perturbations of the source model's trainable parameters.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from uebench.data import ImageData, stratified_indices, to_float
from uebench.identity import source_key
from uebench.precision import craft_autocast
from uebench.training import standard_augmentation, train

if TYPE_CHECKING:
    from uebench.method import CraftContext


@dataclass
class WeightNoise:
    """Gaussian weight perturbations at levels ``sigmas``, ``draws`` draws per level."""

    sigmas: tuple[float, ...]
    draws: int
    generator: torch.Generator

    def samples(self) -> Iterator[tuple[float, float]]:
        """``(sigma, weight)`` pairs whose weights sum to ``len(sigmas) * draws``.

        A level σ=0 is one unperturbed pass weighted by ``draws``: its draws would all be equal.
        """
        for sigma in self.sigmas:
            if sigma == 0:
                yield 0.0, float(self.draws)
            else:
                for _ in range(self.draws):
                    yield float(sigma), 1.0

    @property
    def total(self) -> float:
        """The sum of the sample weights: what a mean over the draws divides by."""
        return float(len(self.sigmas) * self.draws)


@contextlib.contextmanager
def perturbed_weights(
    model: nn.Module, sigma: float, generator: torch.Generator
) -> Iterator[nn.Module]:
    """``model`` with N(0, σ²) added to every trainable parameter, restored exactly on exit.

    Gradients computed inside accumulate into the parameters' ``.grad`` as usual, so a step
    taken afterwards moves the unperturbed weights by the gradient at the perturbed ones.
    BatchNorm running statistics are buffers, not parameters, and are left alone.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    if sigma == 0:
        yield model
        return
    saved = [p.detach().clone() for p in params]
    try:
        with torch.no_grad():
            for param in params:
                noise = torch.randn(
                    param.shape, generator=generator, device=generator.device, dtype=param.dtype
                )
                param.add_(noise.to(param.device), alpha=sigma)
        yield model
    finally:
        with torch.no_grad():
            for param, original in zip(params, saved, strict=True):
                param.copy_(original)


class ThroughAugmentation(nn.Module):
    """``model`` seen through the victim's default random crop (pad side/8) and flip.

    Noise optimized through it must fool the model at every crop and flip, as the victim's
    training will show it (expectation over transformation, as in REM, Fu et al. 2022).  The
    paper crafts on un-augmented images; on 16-px images its class-wise noise then lives at
    fixed pixels and a 2-px crop undoes it (measured, ε=16/255 on cluttered-digits at contrast
    0.5: 95.3% victim accuracy, against 10.1% when the victim trains without crop and flip;
    crafted through them, 34.3% with the crop and flip).  The wrapper has no
    parameters of its own, so optimizers and weight noise act on ``model``'s.
    """

    def __init__(self, model: nn.Module, image_side: int) -> None:
        super().__init__()
        self.model = model
        self.augment = standard_augmentation(image_side, padding=None, flip=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(self.augment(x))


class SourceModelSteps:
    """The θ side of Algorithm 1: SGD steps on the source model over a cycling shuffled order."""

    def __init__(
        self,
        model: nn.Module,
        num_samples: int,
        *,
        lr: float,
        batch_size: int,
        generator: torch.Generator,
        device: torch.device,
    ) -> None:
        self.model = model
        self.optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4)
        self.batch_size = batch_size
        self.num_samples = num_samples
        self.generator = generator
        self.device = device
        self._order: Iterator[torch.Tensor] = iter(())

    def next_batch(self) -> torch.Tensor:
        """Indices of the next batch; a new shuffle starts when the last one runs out."""
        batch = next(self._order, None)
        if batch is None:
            order = torch.randperm(self.num_samples, generator=self.generator).to(self.device)
            self._order = iter(order.split(self.batch_size))
            batch = next(self._order)
        return batch

    def step(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """One SGD step on a float batch in [0, 1]; returns the loss, on the device (reading it
        each step would stall a GPU pipeline)."""
        self.model.train()
        with craft_autocast(self.device):
            loss = F.cross_entropy(self.model(x).float(), y)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return loss.detach()


class SmoothedSourceSteps(SourceModelSteps):
    """Source-model steps whose gradient, once :attr:`smoothing` is on, is the mean over
    :class:`WeightNoise` draws (one SGD step per call, all levels accumulated)."""

    def __init__(
        self,
        model: nn.Module,
        num_samples: int,
        *,
        lr: float,
        batch_size: int,
        generator: torch.Generator,
        device: torch.device,
        weight_noise: WeightNoise,
    ) -> None:
        super().__init__(
            model, num_samples, lr=lr, batch_size=batch_size, generator=generator, device=device
        )
        self.weight_noise = weight_noise
        self.smoothing = False

    def step(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """One SGD step on a float batch; returns the mean loss over the draws (on the device)."""
        if not self.smoothing:
            return super().step(x, y)
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        total = torch.zeros((), device=x.device)
        for sigma, weight in self.weight_noise.samples():
            with perturbed_weights(self.model, sigma, self.weight_noise.generator):
                with craft_autocast(self.device):
                    loss = F.cross_entropy(self.model(x).float(), y)
                (loss * (weight / self.weight_noise.total)).backward()
            total += loss.detach() * weight
        self.optimizer.step()
        return total / self.weight_noise.total


def minimize_error(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    delta: torch.Tensor,
    *,
    eps: float,
    alpha: float,
    steps: int,
    weight_noise: WeightNoise | None = None,
    loss_of: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    gradient_of: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
) -> torch.Tensor:
    """Error-minimizing PGD (Eq. 3): ``steps`` sign-gradient *descent* steps on δ from ``delta``.

    Written here rather than taken from torchattacks: its PGD projects onto the ε-ball around
    the input it is given, so resuming from an existing δ would let x+δ drift 2ε from x.
    With ``weight_noise`` each step follows the sign of the input gradient summed over its
    weight-perturbation draws.  ``loss_of(x + δ, y)``, when given, is the loss descended instead
    of ``model``'s cross-entropy at x+δ (robust error-minimizing noise descends the loss of
    augmented, adversarially perturbed views).  ``gradient_of(x + δ, y)``, when given, is that
    loss's gradient at x+δ, computed by the caller (:func:`chunked_input_gradient`).  Returns δ
    with ‖δ‖∞ ≤ ε and x+δ in [0, 1].
    """
    if loss_of is None:
        loss_of = lambda inputs, labels: F.cross_entropy(model(inputs).float(), labels)  # noqa: E731
    delta = delta.detach().clone()
    for _ in range(steps):
        delta.requires_grad_(True)
        if gradient_of is not None:
            grad = gradient_of(x + delta.detach(), y)
        elif weight_noise is None:
            with craft_autocast(x.device):
                loss = loss_of(x + delta, y)
            (grad,) = torch.autograd.grad(loss, delta)
        else:
            grad = torch.zeros_like(delta)
            for sigma, weight in weight_noise.samples():
                with perturbed_weights(model, sigma, weight_noise.generator):
                    with craft_autocast(x.device):
                        loss = loss_of(x + delta, y)
                    grad += weight * torch.autograd.grad(loss, delta)[0]
        delta = (delta.detach() - alpha * grad.sign()).clamp_(-eps, eps)
        delta = (x + delta).clamp_(0, 1) - x
    return delta.detach()


def chunked_input_gradient(
    model: nn.Module, augment: nn.Module, chunk: int
) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """The gradient of the mean cross-entropy of ``model(augment(inputs))`` with respect to
    ``inputs``, the model's forward and backward pass run ``chunk`` images at a time.

    In eval mode images do not affect each other, so the gradient is the whole batch's (a model
    in training mode runs in one piece); one chunk's activations stay in a CPU's cache (a batch
    of 512 in chunks of 128: 1.37× faster, ``benchmarks/eval_chunks.py``).  The augmentation
    runs once on the whole batch, so its random draws are the same as in one whole pass.
    """

    def gradient(inputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        inputs = inputs.detach().requires_grad_(True)
        with craft_autocast(inputs.device):
            views = augment(inputs)
        pieces = []
        # In training mode BatchNorm ties the batch together: one piece, then.
        size = len(labels) if model.training else chunk
        for part, targets in zip(views.detach().split(size), labels.split(size), strict=True):
            part = part.requires_grad_(True)
            with craft_autocast(inputs.device):
                logits = model(part).float()
            loss = F.cross_entropy(logits, targets, reduction="sum") / len(labels)
            pieces.append(torch.autograd.grad(loss, part)[0])
        return torch.autograd.grad(views, inputs, torch.cat(pieces))[0]

    return gradient


@torch.no_grad()
def accuracy_under_noise(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, noise_of: callable, batch_size: int
) -> float:
    """Fraction of ``x + noise_of(index)`` the model classifies correctly (eval mode)."""
    model.eval()
    correct = torch.zeros((), device=x.device, dtype=torch.long)
    for index in torch.arange(len(x), device=x.device).split(batch_size):
        with craft_autocast(x.device):
            logits = model((x[index] + noise_of(index)).clamp(0, 1))
        correct += (logits.argmax(1) == y[index]).sum()
    return int(correct) / max(len(x), 1)


def alternate(
    source: SourceModelSteps,
    x: torch.Tensor,
    y: torch.Tensor,
    noise_of: Callable[[torch.Tensor], torch.Tensor],
    update_noise: Callable[[torch.Tensor], None],
    *,
    model_steps: int,
    stop_error: float,
    max_rounds: int,
    bar: tqdm,
    on_round: Callable[[int, float], None] | None = None,
) -> tuple[int, float]:
    """Algorithm 1's loop: M model steps, one noise pass over the crafting set, until error < λ.

    ``noise_of(index)`` gives the current noise of a batch; ``update_noise(index)`` optimizes it.
    ``on_round(round, error)``, if given, sees each round's error before the next one starts.
    Returns the rounds run and the final error of the source model on the perturbed set.
    """
    error, rounds = 1.0, 0
    for rounds in range(1, max_rounds + 1):
        for _ in range(model_steps):
            index = source.next_batch()
            source.step((x[index] + noise_of(index)).clamp(0, 1), y[index])
        source.model.eval()
        for index in torch.arange(len(x), device=x.device).split(source.batch_size):
            update_noise(index)
        error = 1.0 - accuracy_under_noise(source.model, x, y, noise_of, source.batch_size * 4)
        bar.update()
        bar.set_postfix(error=f"{error:.4f}")
        if error < stop_error:
            break
        if on_round is not None:
            on_round(rounds, error)
    bar.close()
    return rounds, error


def trained_source(
    spec: str, data: ImageData, ctx: CraftContext, epochs: int, generator: torch.Generator
) -> nn.Module:
    """The source model ``spec`` trained on the clean training set as the victim would be
    (``ctx``'s training config, ``epochs`` epochs), in eval mode: what error-maximizing and
    targeted adversarial noise attack."""
    model = ctx.build_model(spec, data)
    train(
        model,
        data.x_train,
        data.y_train,
        replace(ctx.train_config, epochs=epochs),
        ctx.device,
        generator=generator,
        execution=ctx.execution,
    )
    return model.eval()


def shared_source(
    spec: str,
    data: ImageData,
    ctx: CraftContext,
    epochs: int | float,
    generator: torch.Generator,
    seed: int,
    recipe: Callable[..., nn.Module] = trained_source,
) -> nn.Module:
    """``recipe(spec, data, ctx, epochs, generator)``, trained once per architecture, data,
    recipe, training settings and seed and shared through the context's source cache
    (:class:`uebench.storage.cache.SourceCache`); trained in place when there is no cache."""
    sources = ctx.sources()
    if sources is None:
        return recipe(spec, data, ctx, epochs, generator)
    key = source_key(
        spec,
        data.fingerprint(),
        f"{recipe.__module__}.{recipe.__qualname__}",
        replace(ctx.train_config, epochs=epochs).as_dict(),
        seed,
    )
    return sources.get_or_train(
        key,
        lambda: recipe(spec, data, ctx, epochs, generator),
        # Built as the recipe builds it, untrained; the random state it uses is restored after.
        lambda: recipe(spec, data, ctx, 0, torch.Generator().manual_seed(seed)),
        generator,
    )


def crafting_set(
    data: ImageData, fraction: float, seed: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A stratified, seeded share of the training set: its indices, float images on ``device``
    and labels on ``device``."""
    indices = stratified_indices(data.y_train, round(fraction * len(data.y_train)), seed)
    return indices, to_float(data.x_train[indices].to(device)), data.y_train[indices].to(device)


@dataclass
class CraftingStart:
    """What a crafting method starts from (:func:`start_crafting`): its seeded generator, its
    source model, its crafting set (indices into the training set, float images and labels on
    the device) and the time it started."""

    generator: torch.Generator
    device: torch.device
    model: nn.Module
    indices: torch.Tensor
    x: torch.Tensor
    y: torch.Tensor
    started: float

    def source_steps(
        self,
        lr: float,
        batch_size: int,
        *,
        model: nn.Module | None = None,
        kind: type[SourceModelSteps] = SourceModelSteps,
        **options: Any,
    ) -> SourceModelSteps:
        """SGD steps on the source model (``model`` when it is seen through a wrapper) over the
        crafting set, drawing batches from the method's generator; ``kind`` and ``options``
        choose a variant (:class:`SmoothedSourceSteps` and its ``weight_noise``)."""
        return kind(
            self.model if model is None else model,
            len(self.x),
            lr=lr,
            batch_size=batch_size,
            generator=self.generator,
            device=self.device,
            **options,
        )

    def seconds(self) -> float:
        """Seconds since crafting started (a poison's ``craft_seconds``)."""
        return time.perf_counter() - self.started


def start_crafting(
    data: ImageData,
    ctx: CraftContext,
    *,
    seed: int,
    source: str,
    subset: float = 1.0,
    source_epochs: int | None = None,
    train_source: Callable[..., nn.Module] | None = None,
) -> CraftingStart:
    """The opening every crafting method shares: seed torch and a generator with ``seed``,
    build the ``source`` model (trained on the clean training set for ``source_epochs`` epochs
    as the victim would be, when given: :func:`trained_source`, or ``train_source`` with the
    same arguments for another recipe; trained once and shared by :func:`shared_source`) and
    take the stratified ``subset`` of the training set
    to craft on (:func:`crafting_set`).

    The order is the one the methods always used (model, then crafting set, which draws from
    its own seeded generator), so their poisons are what they were.
    """
    started = time.perf_counter()
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    if source_epochs is None:
        model = ctx.build_model(source, data)
    else:
        recipe = train_source or trained_source
        model = shared_source(source, data, ctx, source_epochs, generator, seed, recipe)
    indices, x, y = crafting_set(data, subset, seed, ctx.device)
    return CraftingStart(generator, ctx.device, model, indices, x, y, started)


def class_mean(delta: torch.Tensor, per_sample: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """``delta`` (one row per class) with each class present in ``labels`` replaced by the mean
    of its per-sample rows: how class-wise noise takes a step from per-sample updates."""
    sums = torch.zeros_like(delta).index_add_(0, labels, per_sample)
    counts = torch.bincount(labels, minlength=len(delta)).to(delta.dtype)
    present = counts > 0
    out = delta.clone()
    out[present] = sums[present] / counts[present].view(-1, *([1] * (delta.dim() - 1)))
    return out
