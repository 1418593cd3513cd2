"""``emin-lbfgs``: error-minimizing noise in the L-BFGS form of Appendix I.

The inner problem becomes ``minimize c‖δ‖² + L(x+δ, y)``, alternating with M=100 source-model
steps.  Two solvers (``solver=``):

* ``adam`` (default), as the appendix says it was solved: T=200 Adam steps per batch, δ
  projected onto the ε-ball and the valid pixel range after every step;
* ``lbfgs``, the L-BFGS the name promises: ``torch.optim.LBFGS`` (strong-Wolfe line search,
  history 10, at most T iterations per batch) on an unconstrained variable w with the budget
  kept by a change of variables, δ = lo + (hi − lo)·sigmoid(w) with lo = max(−ε, −x) and
  hi = min(ε, 1 − x), so every iterate is within the ε-ball and the pixel range without a
  projection that L-BFGS's curvature pairs would not see.

No public implementation exists; this follows the appendix text.
"""

from __future__ import annotations

from typing import ClassVar, Literal

import torch
import torch.nn.functional as F

from uebench.crafting import alternate, craft_autocast, start_crafting
from uebench.data import ImageData
from uebench.errors import UebenchError
from uebench.method import CraftContext, Method, check_eps
from uebench.poison import Poison


class ErrorMinimizingLBFGS(Method):
    """Sample-wise error-minimizing noise from the penalized (L-BFGS style) objective."""

    crafts_by_gradient = True
    late_options: ClassVar[dict[str, str]] = {"solver": "adam"}

    def __init__(
        self,
        *,
        eps: float = 8 / 255,
        c: float = 1.0,
        steps: int = 200,
        lr: float | None = None,
        model_steps: int = 100,
        stop_error: float = 0.01,
        max_rounds: int = 20,
        model_lr: float = 0.1,
        batch_size: int = 128,
        source: str = "resnet18",
        solver: Literal["adam", "lbfgs"] = "adam",
        seed: int = 0,
    ) -> None:
        self.eps = check_eps(eps)
        if solver not in ("adam", "lbfgs"):
            raise UebenchError(f"emin-lbfgs: solver must be adam or lbfgs, got {solver!r}")
        self.solver = solver
        self.c = c
        self.steps = steps
        self.lr = lr if lr is not None else eps / 10
        self.model_steps = model_steps
        self.stop_error = stop_error
        self.max_rounds = max_rounds
        self.model_lr = model_lr
        self.batch_size = batch_size
        self.source = source
        self.seed = seed

    def craft(self, data: ImageData, ctx: CraftContext) -> Poison:
        # The whole training set, in order.
        opening = start_crafting(data, ctx, seed=self.seed, source=self.source)
        model, x, y = opening.model, opening.x, opening.y
        delta = torch.zeros_like(x)
        source = opening.source_steps(self.model_lr, self.batch_size)

        def update_noise(index: torch.Tensor) -> None:
            delta[index] = self._solve(model, x[index], y[index], delta[index])

        rounds, error = alternate(
            source,
            x,
            y,
            lambda index: delta[index],
            update_noise,
            model_steps=self.model_steps,
            stop_error=self.stop_error,
            max_rounds=self.max_rounds,
            bar=ctx.bar(self.max_rounds, "emin-lbfgs"),
        )
        meta = {
            "form": "sample",
            "solver": self.solver,
            "rounds": rounds,
            "final_error": error,
            "converged": error < self.stop_error,
            "craft_seconds": opening.seconds(),
        }
        return Poison(delta.cpu().clamp(-self.eps, self.eps), torch.arange(len(x)), self.eps, meta)

    def _solve(self, model, x: torch.Tensor, y: torch.Tensor, start: torch.Tensor) -> torch.Tensor:
        if self.solver == "lbfgs":
            return self._solve_lbfgs(model, x, y, start)
        delta = start.clone().requires_grad_(True)
        optimizer = torch.optim.Adam([delta], lr=self.lr)
        for _ in range(self.steps):
            with craft_autocast(x.device):
                loss = F.cross_entropy(model(x + delta).float(), y, reduction="sum")
            # Per-sample objective c‖δ_i‖² + L_i, summed so each sample's gradient is its own.
            loss = loss + self.c * delta.pow(2).sum()
            # Gradient for δ alone: backward() would also fill the source model's weight grads.
            (delta.grad,) = torch.autograd.grad(loss, delta)
            optimizer.step()
            with torch.no_grad():
                delta.clamp_(-self.eps, self.eps)
                delta.copy_((x + delta).clamp(0, 1) - x)
        return delta.detach()

    def _solve_lbfgs(
        self, model, x: torch.Tensor, y: torch.Tensor, start: torch.Tensor
    ) -> torch.Tensor:
        """The same objective by L-BFGS through δ = lo + (hi − lo)·sigmoid(w) (module doc)."""
        low = torch.clamp(-x, min=-self.eps)
        span = torch.clamp(1 - x, max=self.eps) - low  # >= ε > 0: x is never both 0 and 1
        # Start at ``start``, kept off the sigmoid's saturated ends so its gradient is not 0.
        fraction = ((start - low) / span).clamp(1e-3, 1 - 1e-3)
        w = torch.logit(fraction).requires_grad_(True)
        optimizer = torch.optim.LBFGS(
            [w], max_iter=self.steps, history_size=10, line_search_fn="strong_wolfe"
        )

        def closure() -> torch.Tensor:
            delta = low + span * torch.sigmoid(w)
            with craft_autocast(x.device):
                loss = F.cross_entropy(model(x + delta).float(), y, reduction="sum")
            loss = loss + self.c * delta.pow(2).sum()
            (w.grad,) = torch.autograd.grad(loss, w)
            return loss.detach()

        optimizer.step(closure)
        with torch.no_grad():
            return low + span * torch.sigmoid(w)
