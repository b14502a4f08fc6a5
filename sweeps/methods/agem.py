"""Averaged gradient episodic memory (Chaudhry et al., 2019) with the safety memory as the episodic memory.

Once per optimiser step (after accumulation, before clipping), over all trainable parameters jointly:

    g_ref = ∇ L_safety(θ) on a memory batch;   if g·g_ref < 0:  g ← g − (g·g_ref / ‖g_ref‖²)·g_ref

so the update never increases the safety loss to first order. Cost: one forward and backward on the memory batch
per step, and g_ref (one copy of the trainable gradients: fine under LoRA, ~14 GB for a full 7B in bf16).
The projection is computed without a host sync (a clamped coefficient); `projected` logs which steps needed it.
Reference: aimagelab/mammoth models/agem.py.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import nn

from sweeps.lm_loss import response_loss
from sweeps.methods._base import TrainingMethod, check_flag, check_number
from sweeps.methods._context import TrainingContext


class AGEM(TrainingMethod):
    key = "agem"
    streams = ("memory",)
    off: ClassVar[dict[str, Any]] = {"project": False}
    term: ClassVar[str] = "cos"

    def __init__(self, memory: dict | None = None, size: int | None = None, batch_size: int | None = None,
                 project: bool = True) -> None:  # fmt: skip
        errors = self.check_args({"size": size, "batch_size": batch_size, "project": project})
        if errors:
            raise ValueError("; ".join(errors))
        self.memory, self.size, self.batch_size, self.project = memory, size, batch_size, project
        self.projected = torch.zeros(())
        self.n_projected = torch.zeros(())
        self.steps = 0
        self.cos = torch.zeros(())

    @classmethod
    def check_args(cls, kwargs: dict[str, Any]) -> list[str]:
        errors = check_number(kwargs, "size", None, lo=0, open_lo=True, integer=True, none_ok=True)
        errors += check_number(kwargs, "batch_size", None, lo=0, open_lo=True, integer=True, none_ok=True)
        return errors + check_flag(kwargs, "project", True)

    def setup(self, ctx: TrainingContext) -> None:
        self.params = list(ctx.params.values())
        self.stream = ctx.stream(self, "memory")

    def after_backward(self, model: nn.Module) -> None:
        if not self.project:
            return
        batch, _ = self.stream.next(self.batch_size)
        ref = torch.autograd.grad(response_loss(model, batch)[0], self.params, allow_unused=True)
        with torch.no_grad():
            pairs = [(p, r) for p, r in zip(self.params, ref, strict=True) if r is not None and p.grad is not None]
            dot = torch.stack([(p.grad.float() * r.float()).sum() for p, r in pairs]).sum()
            norm2 = torch.stack([r.float().square().sum() for _, r in pairs]).sum()
            grad_norm2 = torch.stack([p.grad.float().square().sum() for p, _ in pairs]).sum()
            self.cos = dot / (norm2 * grad_norm2).sqrt().clamp(min=1e-20)  # before projection
            coef = dot.clamp(max=0) / norm2.clamp(min=1e-20)  # 0 unless the gradients conflict
            for p, r in pairs:
                p.grad.sub_((coef * r.float()).to(p.grad.dtype))
        self.projected = (dot < 0).float()
        self.n_projected = self.n_projected.to(dot.device) + self.projected
        self.steps += 1

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"n_projected": self.n_projected.detach().cpu().reshape(1)}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.n_projected = state["n_projected"].reshape(())

    def step_log(self) -> dict[str, float | torch.Tensor]:
        return {"projected": self.projected, "cos": self.cos} if self.project else {}

    def metrics(self) -> dict[str, float]:
        return {"projection_rate": float(self.n_projected) / self.steps if self.steps else 0.0, "cos": float(self.cos)}
