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
trainable parameters) and one Gaussian draw per parameter (on CPU in LANES threads: ≈ 0.2 s a step for 95M parameters
on 2 cores). The step's user batch and DER++'s memory batches are then taken at θ + Δ, in one joint forward when
that pays (DER's `joint`): the unlearn pass and one joint pass, against SFT's one pass.
`ascent: shared` (cheaper, first-order): the move is made from the user gradient the step computes anyway (all its
micro-batches, in `after_user_backward`), and that same gradient is then descended; only the replay terms are
computed at the moved weights (so they cannot join the user forward). The reference evaluates the user gradient again
at θ + Δ; the two differ by O(‖H·Δ‖), Δ = γ·‖θ‖-scaled (1e-5 relative at the default γ), so this drops the unlearn
pass. With DER++'s `same_batch: true` as well, a step is 2 passes + the noise draw.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, ClassVar

import torch

from sweeps.lm_loss import response_loss
from sweeps.methods._base import check_choice, check_number
from sweeps.methods._chunks import Scratch, chunk_size, flat_chunks
from sweeps.methods._context import TrainingContext
from sweeps.methods.der import DERpp
from sweeps.methods.ewc import diagonal_fisher

ASCENTS = ("separate", "shared")
# On CPU the chunked move runs in LANES threads, chunk k on lane k % LANES with that lane's generator: torch draws
# normals on one core, and the draw was most of the move (95M parameters, 2 cores: 0.39 s a step in one lane, 0.23 s
# in two). The noise depends on the lane count, never on the thread count.
LANES = 2


@functools.cache
def _pool() -> ThreadPoolExecutor:
    """One process-wide pool for the lanes after the first (idle threads cost nothing between steps)."""
    return ThreadPoolExecutor(LANES - 1, thread_name_prefix="refresh-lane")


class Refresh(DERpp):
    key = "refresh"
    off: ClassVar[dict[str, Any]] = {"gamma": 0.0, "lam": 0.0, "beta": 0.0}
    term: ClassVar[str] = "unlearn_norm"

    def __init__(self, gamma: float = 1e-5, noise: float = 1e-3, fisher_scale: float = 1e-3, lam: float = 0.5,
                 beta: float = 0.5, memory: dict | None = None, size: int | None = None,
                 batch_size: int | None = None, store: str = "logits", seed: int = 0, ascent: str = "separate",
                 same_batch: bool = False, joint: str = "auto") -> None:  # fmt: skip
        errors = self.check_args({"gamma": gamma, "noise": noise, "fisher_scale": fisher_scale, "ascent": ascent})
        if errors:
            raise ValueError("; ".join(errors))
        super().__init__(lam=lam, beta=beta, memory=memory, size=size, batch_size=batch_size, store=store,
                         same_batch=same_batch, joint=joint)  # fmt: skip
        self.gamma, self.noise, self.fisher_scale = float(gamma), float(noise), float(fisher_scale)
        self.ascent = ascent
        self.seed = seed
        self.move = torch.zeros(())

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
        # noise drawn where the weights are; on CPU from LANES generators, one per thread (see _move_chunks)
        lanes = LANES if device.type == "cpu" else 1
        self.generators = [torch.Generator(device=device).manual_seed(self.seed + 7919 * j) for j in range(lanes)]
        self.scratch = [Scratch() for _ in range(lanes)]
        self.damping = {}
        if self.gamma > 0:
            fisher = diagonal_fisher(ctx.model, ctx.params, self.stream)
            self.damping = {n: 1.0 / (1.0 + self.fisher_scale * f) for n, f in fisher.items()}
        # tensors below one CPU chunk move together as one flat vector (a handful of ops instead of ~5 per tensor);
        # on every device: the flat path holds full-size copies, so an accelerator's larger chunks would not do
        cpu_chunk = chunk_size(torch.device("cpu"))
        self.small = [n for n in self.damping if self.damping[n].numel() < cpu_chunk]
        self.small_damping = torch.cat([self.damping[n].view(-1) for n in self.small]) if self.small else None

    def before_step(self, step: int, batches: Sequence[dict[str, torch.Tensor]]) -> None:
        if self.gamma > 0 and self.ascent == "separate":  # the move first: the replay is then taken at θ + Δ
            params = list(self.params.values())
            self.unlearn(torch.autograd.grad(response_loss(self.model, batches[0])[0], params, allow_unused=True))
        super().before_step(step, batches)

    @property
    def reads_user_gradient(self) -> bool:
        return self.gamma > 0 and self.ascent == "shared"  # the replay must not be in `.grad` when the move is made

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
            chunks = [(pc, gc, dc, scale[n]) for n in live if n not in small
                      for pc, gc, dc in flat_chunks(*live[n], self.damping[n])]  # cache-sized (_chunks)  # fmt: skip
            lanes = range(len(self.generators))
            if len(lanes) > 1 and torch.get_num_threads() > 1:  # lane 0 here, the others in the pool
                pending = [_pool().submit(self._move_chunks, j, chunks) for j in lanes[1:]]
                moved.add_(self._move_chunks(0, chunks) + sum(f.result() for f in pending))
            else:
                moved.add_(sum(self._move_chunks(j, chunks) for j in lanes))
        self.move = moved.sqrt()

    def _move_chunks(self, lane: int, chunks: list[tuple[torch.Tensor, ...]]) -> torch.Tensor:
        """θ += δ on every `len(generators)`-th chunk from `lane` on, with that lane's generator and buffers (so the
        noise is the same however many threads run the lanes); returns Σ δ²."""
        moved = torch.zeros((), device=chunks[0][0].device) if chunks else torch.zeros(())
        with torch.no_grad():  # grad mode is per thread: a pool thread does not inherit the caller's
            for pc, gc, dc, scale in chunks[lane :: len(self.generators)]:
                delta, eps = self.scratch[lane].take(2, pc.numel(), pc.device)
                torch.randn(pc.numel(), generator=self.generators[lane], out=eps)
                torch.add(gc.float() * scale, eps, alpha=self.gamma * self.noise, out=delta)
                delta.mul_(dc)
                pc.add_(delta)
                moved.add_(torch.dot(delta, delta))
        return moved

    def _noise(self, n: int, device: torch.device) -> torch.Tensor:
        """n standard-normal draws from lane 0's seeded generator, on the weights' device."""
        return torch.randn(n, generator=self.generators[0], device=device)

    def step_log(self) -> dict[str, float | torch.Tensor]:
        return {**super().step_log(), **({"unlearn_norm": self.move} if self.gamma > 0 else {})}

    def metrics(self) -> dict[str, float]:
        return {**super().metrics(), "gamma": self.gamma, "unlearn_norm": float(self.move),
                "ascent_shared": float(self.ascent == "shared")}  # fmt: skip
