"""Refresh learning (Wang et al., 2024): unlearn a little of the current user batch, then learn it with replay.

Before each optimiser step (the paper: θ ← θ + γ·F⁻¹∇L_user(θ) + N(0, 2γF⁻¹)), per parameter tensor:

    u = ∇L_user(θ) · ‖θ‖ / ‖∇L_user(θ)‖                   gradient ASCENT direction, rescaled to the tensor's norm
    θ ← θ + γ · (u + σ·ε) / (1 + c·F),   ε ~ N(0, I)       Fisher-damped (directions the safety task needs move less)

F = the diagonal Fisher of the safety loss at θ_aligned on the safety memory (as EWC's `weighted`). Then the
normal step with safety replay: DER++ on the same memory (λ·MSE on stored logits + β·CE). Defaults are the
reference code's (joey-wang123/CL-refresh-learning models/derpp.py `unlearn`): γ = 1e-5, σ = 1e-3, c = 1e-3; like
the reference (`observe` calls `unlearn(inputs)` first) we unlearn the batch about to be learned, before its step.
`ascent: separate` (the reference): the ascent gradient is its own forward + backward on the step's first
micro-batch, before the step, and never touches `.grad`. Cost over DER++: that pass, F (one fp32 copy of the
trainable parameters) and one Gaussian draw per parameter (on CPU ≈ 0.45 s a step for 95M parameters). Per step that
is 4 forward + backward passes (the unlearn, the user batch and DER++'s two memory batches) against SFT's one: ≈ 4×
an SFT step at equal batch sizes is the algorithm's own floor.
`ascent: shared` (cheaper, first-order): the move is made from the user gradient the step computes anyway (all its
micro-batches, in `after_user_backward`), and that same gradient is then descended; only the replay terms are
computed at the moved weights. The reference evaluates the user gradient again at θ + Δ; the two differ by
O(‖H·Δ‖), Δ = γ·‖θ‖-scaled (1e-5 relative at the default γ), so this drops one pass of four. With DER++'s
`same_batch: true` as well, a step is 2 passes + the noise draw.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import torch

from sweeps.lm_loss import response_loss
from sweeps.methods._base import check_choice, check_number
from sweeps.methods._chunks import CHUNK, Scratch, flat_chunks
from sweeps.methods._context import TrainingContext
from sweeps.methods.der import DERpp
from sweeps.methods.ewc import diagonal_fisher

ASCENTS = ("separate", "shared")


class Refresh(DERpp):
    key = "refresh"
    off: ClassVar[dict[str, Any]] = {"gamma": 0.0, "lam": 0.0, "beta": 0.0}
    term: ClassVar[str] = "unlearn_norm"

    def __init__(self, gamma: float = 1e-5, noise: float = 1e-3, fisher_scale: float = 1e-3, lam: float = 0.5,
                 beta: float = 0.5, memory: dict | None = None, size: int | None = None,
                 batch_size: int | None = None, store: str = "logits", seed: int = 0, ascent: str = "separate",
                 same_batch: bool = False) -> None:  # fmt: skip
        errors = self.check_args({"gamma": gamma, "noise": noise, "fisher_scale": fisher_scale, "ascent": ascent})
        if errors:
            raise ValueError("; ".join(errors))
        super().__init__(lam=lam, beta=beta, memory=memory, size=size, batch_size=batch_size, store=store,
                         same_batch=same_batch)  # fmt: skip
        self.gamma, self.noise, self.fisher_scale = float(gamma), float(noise), float(fisher_scale)
        self.ascent = ascent
        self.seed = seed
        self.move = torch.zeros(())
        self.scratch = Scratch()

    @classmethod
    def check_args(cls, kwargs: dict[str, Any]) -> list[str]:
        errors = super().check_args(kwargs)
        for arg, default in (("gamma", 1e-5), ("noise", 1e-3), ("fisher_scale", 1e-3)):
            errors += check_number(kwargs, arg, default, lo=0)
        errors += check_choice(kwargs, "ascent", "separate", ASCENTS)
        return errors + check_number(kwargs, "seed", 0, integer=True)

    def setup(self, ctx: TrainingContext) -> None:
        super().setup(ctx)
        self.model, self.params = ctx.model, ctx.params
        device = next(iter(ctx.params.values())).device
        self.generator = torch.Generator(device=device).manual_seed(self.seed)  # noise drawn where the weights are
        self.damping = {}
        if self.gamma > 0:
            fisher = diagonal_fisher(ctx.model, ctx.params, self.stream)
            self.damping = {n: 1.0 / (1.0 + self.fisher_scale * f) for n, f in fisher.items()}
        # tensors below one chunk move together as one flat vector (a handful of ops instead of ~5 per tensor)
        self.small = [n for n in self.damping if self.damping[n].numel() < CHUNK]
        self.small_damping = torch.cat([self.damping[n].view(-1) for n in self.small]) if self.small else None

    def before_step(self, step: int, batches: Sequence[dict[str, torch.Tensor]]) -> None:
        if self.gamma == 0 or self.ascent != "separate":
            return
        params = list(self.params.values())
        self.unlearn(torch.autograd.grad(response_loss(self.model, batches[0])[0], params, allow_unused=True))

    def after_user_backward(self, model: torch.nn.Module) -> None:
        if self.gamma == 0 or self.ascent != "shared":
            return
        self.unlearn([p.grad for p in self.params.values()])

    def unlearn(self, grads: Sequence[torch.Tensor | None]) -> None:
        """θ ← θ + γ·(u + σ·ε)/(1 + c·F) per tensor, u = the ascent gradient rescaled to ‖θ‖ (its scale cancels)."""
        names = list(self.params)
        params = [self.params[n] for n in names]
        with torch.no_grad():
            live = {n: (p, g) for n, p, g in zip(names, params, grads, strict=True) if g is not None}
            p_norms = torch._foreach_norm([p for p, _ in live.values()])  # read-only: no full-size temporaries
            g_norms = torch._foreach_norm([g for _, g in live.values()])
            scales = self.gamma * torch.stack(p_norms).float() / (torch.stack(g_norms).float() + 1e-20)
            scale = dict(zip(live, scales, strict=True))
            moved = torch.zeros((), device=params[0].device)
            # an overflowed (fp16-scaled) gradient: the scaler skips this step, and the weights take no NaN move
            if not bool(scales.isfinite().all()):  # the one host sync of the move
                self.move = moved
                return
            small = [n for n in self.small if n in live]
            if small:  # one flat vector: δ = (g·scale + γσ·ε)·damping
                sizes = [live[n][0].numel() for n in small]
                g = torch.cat([live[n][1].reshape(-1).float() for n in small])
                per_element = torch.repeat_interleave(torch.stack([scale[n] for n in small]),
                                                      torch.tensor(sizes, device=g.device))  # fmt: skip
                delta = g.mul_(per_element).add_(self._noise(g.numel(), g.device), alpha=self.gamma * self.noise)
                delta.mul_(self.small_damping if len(small) == len(self.small) else
                           torch.cat([self.damping[n].view(-1) for n in small]))  # fmt: skip
                pieces = [d.view_as(live[n][0]) for d, n in zip(delta.split(sizes), small, strict=True)]
                torch._foreach_add_([live[n][0] for n in small], [d.to(live[n][0].dtype) for d, n in
                                                                  zip(pieces, small, strict=True)])  # fmt: skip
                moved.add_(torch.dot(delta, delta))
            for n in [n for n in live if n not in small]:  # in order: the noise stream is reproducible
                p, g = live[n]
                for pc, gc, dc in flat_chunks(p, g, self.damping[n]):  # cache-sized, buffers reused (_chunks)
                    delta, eps = self.scratch.take(2, pc.numel(), pc.device)
                    torch.randn(pc.numel(), generator=self.generator, out=eps)
                    torch.add(gc.float() * scale[n], eps, alpha=self.gamma * self.noise, out=delta)
                    delta.mul_(dc)
                    pc.add_(delta)
                    moved.add_(torch.dot(delta, delta))
        self.move = moved.sqrt()

    def _noise(self, n: int, device: torch.device) -> torch.Tensor:
        """n standard-normal draws from the method's seeded generator, on the weights' device."""
        return torch.randn(n, generator=self.generator, device=device)

    def step_log(self) -> dict[str, float | torch.Tensor]:
        return {**super().step_log(), **({"unlearn_norm": self.move} if self.gamma > 0 else {})}

    def metrics(self) -> dict[str, float]:
        return {**super().metrics(), "gamma": self.gamma, "unlearn_norm": float(self.move),
                "ascent_shared": float(self.ascent == "shared")}  # fmt: skip
