"""MagMax (Marczak et al., 2024): a post-hoc merge of task vectors by maximum magnitude, run in `finalize()`.

    Δ_safety = θ_aligned − θ_base,  Δ_user = θ_ft − θ_base   (Δ_user already contains Δ_safety)
    Δ = per element the entry of larger magnitude (ties: the later task, Δ_user)
    θ = θ_base + λ·Δ

θ_base is the context's "base" reference (the toy world's base/, the alignment stage's input model, or `base`: a
model directory or .safetensors file). The MagMax paper uses λ = 0.5 (many tasks); the Unforgotten-Safety paper
does not state its λ or merge base, so both are options. Under LoRA the adapters' ΔW = B·A is added to each wrapped
weight, the merged weight is written into the base layer and B is zeroed (the model stays a peft model); weights
without an adapter get θ_base + λ·Δ_safety. Also on saved weights: `python -m sweeps.merge` (sweeps/merge.py).
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from sweeps.methods._base import TrainingMethod, check_flag, check_number
from sweeps.methods._context import TrainingContext, base_names


def magmax(base: torch.Tensor, tasks: list[torch.Tensor], scale: float) -> torch.Tensor:
    """θ_base + scale·(per element, the task vector of largest magnitude; ties go to the later task), in fp32."""
    b = base.float()
    best = tasks[0].float() - b
    for t in tasks[1:]:
        d = t.float() - b
        best = torch.where(d.abs() >= best.abs(), d, best)
    return best.mul_(scale).add_(b)  # in place: one temporary fewer per tensor


class MagMax(TrainingMethod):
    key = "magmax"
    off: ClassVar[dict[str, Any]] = {"enabled": False}
    uses_base: ClassVar[bool] = True
    term: ClassVar[str] = "changed_fraction"

    def __init__(self, scale: float = 0.5, base: str | None = None, enabled: bool = True) -> None:
        errors = self.check_args({"scale": scale, "enabled": enabled})
        if errors:
            raise ValueError("; ".join(errors))
        self.scale, self.base, self.enabled = float(scale), base, enabled
        self.changed = 0.0

    @classmethod
    def check_args(cls, kwargs: dict[str, Any]) -> list[str]:
        return check_number(kwargs, "scale", 0.5, lo=0) + check_flag(kwargs, "enabled", True)

    def setup(self, ctx: TrainingContext) -> None:
        self.ctx = ctx
        if self.enabled:
            self.theta_base = ctx.reference("base")
            self.start = None if ctx.lora else ctx.reference("start")

    @torch.no_grad()
    def finalize(self) -> None:
        if not self.enabled:
            return
        changed = total = 0
        for key, p in self._merged_pairs():
            new = magmax(self.theta_base[key], [p["aligned"], p["tuned"]], self.scale).to(p["dst"].dtype)
            changed += int((new != p["dst"]).sum())
            total += new.numel()
            p["dst"].copy_(new)
        for module in self._lora_modules():
            for b in module.lora_B.values():
                b.weight.zero_()
        self.changed = changed / max(total, 1)

    def _merged_pairs(self):
        if self.start is not None:  # full fine-tuning: every trainable weight has a base and a start
            for n, p in self.ctx.params.items():
                yield n, {"aligned": self.start[n], "tuned": p, "dst": p}
            return
        deltas = {id(m.base_layer.weight): m.get_delta_weight(name) for m in self._lora_modules() for name in
                  m.lora_B}  # fmt: skip
        for key, w in base_names(self.ctx.model):
            tuned = w + deltas[id(w)] if id(w) in deltas else w
            yield key, {"aligned": w.clone(), "tuned": tuned, "dst": w}

    def _lora_modules(self):
        from peft.tuners.lora import LoraLayer

        return [m for m in self.ctx.model.modules() if isinstance(m, LoraLayer)] if self.ctx.lora else []

    def metrics(self) -> dict[str, float]:
        return {"scale": self.scale, "changed_fraction": self.changed}
