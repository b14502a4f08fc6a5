"""Refresh learning (Wang et al., 2024): unlearn a little of the current user batch, then learn it with replay.

Before each optimiser step (the paper: θ ← θ + γ·F⁻¹∇L_user(θ) + N(0, 2γF⁻¹)), per parameter tensor:

    u = ∇L_user(θ) · ‖θ‖ / ‖∇L_user(θ)‖                   gradient ASCENT direction, rescaled to the tensor's norm
    θ ← θ + γ · (u + σ·ε) / (1 + c·F),   ε ~ N(0, I)       Fisher-damped (directions the safety task needs move less)

F = the diagonal Fisher of the safety loss at θ_aligned on the safety memory (as EWC's `weighted`). Then the
normal step with safety replay: DER++ on the same memory (λ·MSE on stored logits + β·CE). Defaults are the
reference code's (joey-wang123/CL-refresh-learning models/derpp.py `unlearn`): γ = 1e-5, σ = 1e-3, c = 1e-3; like
the reference (`observe` calls `unlearn(inputs)` first) we unlearn the batch about to be learned, before its step.
The ascent gradient uses the step's first micro-batch and never touches `.grad`.
Cost over DER++: one forward + backward per step, F (one fp32 copy of the trainable parameters) and one Gaussian
draw per parameter (on CPU ≈ 0.45 s a step for 95M parameters). Per step that is 4 forward + backward passes (the
unlearn, the user batch and DER++'s two memory batches) against SFT's one: ≈ 4× an SFT step at equal batch sizes is
the algorithm's own floor; a smaller memory `batch_size` is the knob that lowers it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import torch

from sweeps.methods._base import check_number
from sweeps.methods._chunks import Scratch, flat_chunks
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
        self.scratch, self.host_scratch = Scratch(), Scratch()

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
        with torch.no_grad():
            live = [(n, p, g) for n, p, g in zip(names, params, grads, strict=True) if g is not None]
            p_norms = torch._foreach_norm([p for _, p, _ in live])  # read-only: no full-size temporaries
            g_norms = torch._foreach_norm([g for _, _, g in live])
            moved = torch.zeros((), device=params[0].device)
            for (n, p, g), pn, gn in zip(live, p_norms, g_norms, strict=True):
                scale = self.gamma * pn.float() / (gn.float() + 1e-20)
                for pc, gc, dc in flat_chunks(p, g, self.damping[n]):  # cache-sized, buffers reused (_chunks)
                    (delta,) = self.scratch.take(1, pc.numel(), pc.device)
                    (eps,) = self.host_scratch.take(1, pc.numel(), torch.device("cpu"))
                    torch.randn(pc.numel(), generator=self.generator, out=eps)  # seeded on the host
                    torch.add(gc.float() * scale, eps.to(pc.device), alpha=self.gamma * self.noise, out=delta)
                    delta.mul_(dc)
                    pc.add_(delta)
                    moved.add_(torch.dot(delta, delta))
        self.move = moved.sqrt()

    def step_log(self) -> dict[str, float | torch.Tensor]:
        return {**super().step_log(), **({"unlearn_norm": self.move} if self.gamma > 0 else {})}

    def metrics(self) -> dict[str, float]:
        return {**super().metrics(), "gamma": self.gamma, "unlearn_norm": float(self.move)}
