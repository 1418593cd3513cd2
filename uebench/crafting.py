"""Building blocks shared by the crafting methods: the source-model steps of the bi-level loop,
error-minimizing PGD on inputs, and accuracy under noise."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from uebench.training import autocast


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

    def step(self, x: torch.Tensor, y: torch.Tensor) -> float:
        """One SGD step on a float batch in [0, 1]; returns the loss."""
        self.model.train()
        with autocast(self.device):
            loss = F.cross_entropy(self.model(x).float(), y)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return float(loss.detach())


def minimize_error(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    delta: torch.Tensor,
    *,
    eps: float,
    alpha: float,
    steps: int,
) -> torch.Tensor:
    """Error-minimizing PGD (Eq. 3): ``steps`` sign-gradient *descent* steps on δ from ``delta``.

    Written here rather than taken from torchattacks: its PGD projects onto the ε-ball around
    the input it is given, so resuming from an existing δ would let x+δ drift 2ε from x.
    Returns δ with ‖δ‖∞ ≤ ε and x+δ in [0, 1].
    """
    delta = delta.detach().clone()
    for _ in range(steps):
        delta.requires_grad_(True)
        with autocast(x.device):
            loss = F.cross_entropy(model(x + delta).float(), y)
        (grad,) = torch.autograd.grad(loss, delta)
        delta = (delta.detach() - alpha * grad.sign()).clamp_(-eps, eps)
        delta = (x + delta).clamp_(0, 1) - x
    return delta.detach()


@torch.no_grad()
def accuracy_under_noise(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, noise_of: callable, batch_size: int
) -> float:
    """Fraction of ``x + noise_of(index)`` the model classifies correctly (eval mode)."""
    model.eval()
    correct = 0
    for index in torch.arange(len(x), device=x.device).split(batch_size):
        with autocast(x.device):
            logits = model((x[index] + noise_of(index)).clamp(0, 1))
        correct += int((logits.argmax(1) == y[index]).sum())
    return correct / max(len(x), 1)


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
) -> tuple[int, float]:
    """Algorithm 1's loop: M model steps, one noise pass over the crafting set, until error < λ.

    ``noise_of(index)`` gives the current noise of a batch; ``update_noise(index)`` optimizes it.
    Returns the rounds run and the final error of the source model on the perturbed set.
    """
    error, rounds = 1.0, 0
    for rounds in range(1, max_rounds + 1):  # noqa: B007 - rounds is returned
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
    bar.close()
    return rounds, error
