"""Elastic weight consolidation (Kirkpatrick et al., 2017) towards θ_aligned, and L2-SP as its identity-Fisher case.

    L = CE_user + (λ/2)·Σ_i F_i·(θ_i − θ*_i)²,    θ* = θ_aligned (the starting weights)

F is the diagonal Fisher of the SAFETY loss at θ* on the safety memory (response tokens), in fp32:
  weighted   Σ_x p(y|x)·(∇ log p(y|x))², p = exp(−mean token NLL): mammoth's ewc_on "probability-weighted" form
  empirical  Σ_x (∇ log p(y|x))²
  identity   F = 1: plain L2 regularisation to θ_aligned (L2-SP, Li et al., 2018)
averaged over the memory (one example per backward). The penalty depends on θ only, so its gradient
λ·F·(θ − θ*) is added in closed form once per optimiser step (after accumulation, before clipping), as mammoth does.
Memory: F and θ* — two fp32 copies of the trainable parameters (θ* is the shared "start" reference).
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import nn

from sweeps.lm_loss import response_loss
from sweeps.methods._base import TrainingMethod, check_choice, check_number
from sweeps.methods._chunks import Scratch, flat_chunks
from sweeps.methods._context import Stream, TrainingContext

FISHERS = ("weighted", "empirical", "identity")


def diagonal_fisher(model: nn.Module, params: dict[str, nn.Parameter], stream: Stream,
                    kind: str = "weighted") -> dict[str, torch.Tensor]:  # fmt: skip
    """Diagonal Fisher of the mean response-token NLL, one example at a time, averaged; `.grad` is left alone."""
    names = list(params)
    fisher = {n: torch.zeros_like(p, dtype=torch.float32) for n, p in params.items()}
    for batch, _ in stream.in_order(batch_size=1):
        loss, _ = response_loss(model, batch)
        grads = torch.autograd.grad(loss, [params[n] for n in names], allow_unused=True)
        weight = torch.exp(-loss.detach()).float() if kind == "weighted" else 1.0
        for n, g in zip(names, grads, strict=True):
            if g is not None:
                fisher[n].add_(g.float().square() * weight)
    for f in fisher.values():
        f.div_(len(stream))
    return fisher


class EWC(TrainingMethod):
    key = "ewc"
    streams = ("memory",)
    off: ClassVar[dict[str, Any]] = {"lam": 0.0}
    term: ClassVar[str] = "penalty"

    def __init__(self, lam: float = 100.0, fisher: str = "weighted", memory: dict | None = None,
                 size: int | None = None) -> None:  # fmt: skip
        errors = self.check_args({"lam": lam, "fisher": fisher, "size": size})
        if errors:
            raise ValueError("; ".join(errors))
        self.lam, self.fisher_kind, self.memory, self.size = float(lam), fisher, memory, size
        self.penalty = torch.zeros(())
        self.fisher: dict[str, torch.Tensor] = {}
        self.scratch = Scratch()

    @classmethod
    def check_args(cls, kwargs: dict[str, Any]) -> list[str]:
        return (check_number(kwargs, "lam", 100.0, lo=0) + check_choice(kwargs, "fisher", "weighted", FISHERS)
                + check_number(kwargs, "size", None, lo=0, open_lo=True, integer=True, none_ok=True))  # fmt: skip

    def setup(self, ctx: TrainingContext) -> None:
        self.params = ctx.params
        self.star = ctx.reference("start")
        stream = ctx.stream(self, "memory")
        if self.fisher_kind == "identity":
            self.fisher = {n: torch.ones_like(p, dtype=torch.float32) for n, p in ctx.params.items()}
        else:
            self.fisher = diagonal_fisher(ctx.model, ctx.params, stream, self.fisher_kind)

    @torch.no_grad()
    def after_backward(self, model: nn.Module) -> None:
        # penalty and ∂penalty/∂θ = λ·F·(θ − θ*) in one chunked pass (sweeps.methods._chunks: no full-size temporaries)
        penalty = None
        identity = self.fisher_kind == "identity"
        for n, p in self.params.items():
            if self.lam != 0 and p.grad is None:
                p.grad = torch.zeros_like(p)
            grad = p.grad if self.lam != 0 else p  # λ = 0: the gradient is left alone (p is only read)
            for pc, sc, fc, gc in flat_chunks(p, self.star[n], self.fisher[n], grad):
                d, fd = self.scratch.take(2, pc.numel(), pc.device)
                torch.sub(pc, sc, out=d)
                fd = d if identity else torch.mul(d, fc, out=fd)
                part = torch.dot(fd, d)
                penalty = part if penalty is None else penalty.add_(part)
                if self.lam != 0:
                    gc.add_(fd, alpha=self.lam)
        self.penalty = 0.5 * self.lam * penalty if penalty is not None else torch.zeros(())

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {f"fisher.{n}": f for n, f in self.fisher.items()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        for n, f in self.fisher.items():
            f.copy_(state[f"fisher.{n}"])

    def step_log(self) -> dict[str, float | torch.Tensor]:
        return {"penalty": self.penalty}

    def metrics(self) -> dict[str, float]:
        return {"lam": self.lam, "penalty": float(self.penalty), "fisher_mean": float(
            torch.stack([f.sum() for f in self.fisher.values()]).sum() / sum(f.numel() for f in self.fisher.values()))}
