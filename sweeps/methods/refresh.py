"""Refresh learning (Wang et al., 2024): unlearn a little of the current user batch, then learn it with replay.

Before each optimiser step (the paper: θ ← θ + γ·F⁻¹∇L_user(θ) + N(0, 2γF⁻¹)), per parameter tensor:

    u = ∇L_user(θ) · ‖θ‖ / ‖∇L_user(θ)‖                   gradient ASCENT direction, rescaled to the tensor's norm
    θ ← θ + γ · (u + σ·ε) / (1 + c·F),   ε ~ N(0, I)       Fisher-damped (directions the safety task needs move less)

F = the diagonal Fisher of the safety loss at θ_aligned on the safety memory (as EWC's `weighted`). Then the
normal step with safety replay: DER++ on the same memory (λ·MSE on stored logits + β·CE). Defaults are the
reference code's (joey-wang123/CL-refresh-learning models/derpp.py `unlearn`): γ = 1e-5, σ = 1e-3, c = 1e-3; the
reference unlearns after the step on the batch just learned, we before the step on the batch about to be learned
(the issue's order). The ascent gradient uses the step's first micro-batch and never touches `.grad`.
Cost over DER++: one forward + backward per step, F (one fp32 copy of the trainable parameters).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import torch

from sweeps.methods._base import check_number
from sweeps.methods._context import TrainingContext
from sweeps.methods.der import DERpp
from sweeps.methods.ewc import diagonal_fisher


class Refresh(DERpp):
    key = "refresh"
    off: ClassVar[dict[str, Any]] = {"gamma": 0.0, "lam": 0.0, "beta": 0.0}
    term: ClassVar[str] = "unlearn_norm"

    def __init__(self, gamma: float = 1e-5, noise: float = 1e-3, fisher_scale: float = 1e-3, lam: float = 0.5,
                 beta: float = 0.5, memory: dict | None = None, size: int | None = None,
                 batch_size: int | None = None, store: str = "logits", seed: int = 0) -> None:  # fmt: skip
        errors = self.check_args({"gamma": gamma, "noise": noise, "fisher_scale": fisher_scale})
        if errors:
            raise ValueError("; ".join(errors))
        super().__init__(lam=lam, beta=beta, memory=memory, size=size, batch_size=batch_size, store=store)
        self.gamma, self.noise, self.fisher_scale = float(gamma), float(noise), float(fisher_scale)
        self.generator = torch.Generator().manual_seed(seed)
        self.move = torch.zeros(())

    @classmethod
    def check_args(cls, kwargs: dict[str, Any]) -> list[str]:
        errors = super().check_args(kwargs)
        for arg, default in (("gamma", 1e-5), ("noise", 1e-3), ("fisher_scale", 1e-3)):
            errors += check_number(kwargs, arg, default, lo=0)
        return errors + check_number(kwargs, "seed", 0, integer=True)

    def setup(self, ctx: TrainingContext) -> None:
        super().setup(ctx)
        self.model, self.params = ctx.model, ctx.params
        self.damping = {}
        if self.gamma > 0:
            fisher = diagonal_fisher(ctx.model, ctx.params, self.stream)
            self.damping = {n: 1.0 / (1.0 + self.fisher_scale * f) for n, f in fisher.items()}

    def before_step(self, step: int, batches: Sequence[dict[str, torch.Tensor]]) -> None:
        if self.gamma == 0:
            return
        names = list(self.params)
        params = [self.params[n] for n in names]
        grads = torch.autograd.grad(self.model(**batches[0]).loss, params, allow_unused=True)
        moved = []
        with torch.no_grad():
            for n, p, g in zip(names, params, grads, strict=True):
                if g is None:
                    continue
                u = g.float() * (p.float().norm() / (g.float().norm() + 1e-20))
                eps = torch.randn(p.shape, generator=self.generator).to(p.device)  # seeded on the host
                delta = self.gamma * (u + self.noise * eps) * self.damping[n]
                p.add_(delta.to(p.dtype))
                moved.append(delta.square().sum())
        self.move = torch.stack(moved).sum().sqrt() if moved else torch.zeros(())

    def step_log(self) -> dict[str, float | torch.Tensor]:
        return {**super().step_log(), **({"unlearn_norm": self.move} if self.gamma > 0 else {})}

    def metrics(self) -> dict[str, float]:
        return {**super().metrics(), "gamma": self.gamma, "unlearn_norm": float(self.move)}
