"""Parameter-space exponential moving average of the trainable weights.

Convention (seed paper, "Rethinking Safety in LLM Fine-tuning: An Optimization Perspective"): η is the weight on
the NEW parameters,

    θ̄_t = (1 − η)·θ̄_{t−1} + η·θ_t,    θ̄_0 = the starting (aligned) weights,

applied after every `every`-th optimiser step. η = 1 keeps no memory (plain fine-tuning); η → 0 never moves.

Modes:
  shadow     train the live weights θ; evaluate θ̄ (swapped in by `eval_weights()` at no extra memory).
  writeback  after each update set θ ← θ̄, so training continues from the average. With plain SGD (no momentum,
             no weight decay) this equals SGD with learning rate lr·η, step for step.

Scope: the parameters with requires_grad at setup — all weights for full fine-tuning, the adapters for LoRA;
`include` (a regex on parameter names) narrows it. Memory: one fp32 copy of the scoped parameters (fp32 whatever the
model's dtype: a bf16 average would drop η-sized steps the way bf16 weights drop small Adam steps). Updates use fused
foreach kernels (one `_foreach_lerp_` per update).
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from typing import Any, ClassVar

import torch

from sweeps.methods._base import TrainingMethod
from sweeps.methods._context import TrainingContext
from sweeps.models import fp32_copy

MODES = ("shadow", "writeback")


class EMA(TrainingMethod):
    key = "ema"
    off: ClassVar[dict[str, Any]] = {"eta": 1.0}
    term: ClassVar[str] = "updates"

    def __init__(self, eta: float = 0.25, every: int = 1, mode: str = "shadow", include: str | None = None) -> None:
        errors = self.check_args({"eta": eta, "every": every, "mode": mode, "include": include})
        if errors:
            raise ValueError("; ".join(errors))
        self.eta, self.every, self.mode, self.include = float(eta), int(every), mode, include
        self.names: list[str] = []
        self.params: list[torch.Tensor] = []
        self.shadow: list[torch.Tensor] = []
        self.updates = 0

    @classmethod
    def check_args(cls, kwargs: dict[str, Any]) -> list[str]:
        errors = []
        eta = kwargs.get("eta", 0.25)
        if not isinstance(eta, int | float) or not 0 <= eta <= 1:
            errors.append(f"eta: must be in [0, 1], got {eta}")
        every = kwargs.get("every", 1)
        if not isinstance(every, int) or every < 1:
            errors.append(f"every: must be an integer >= 1, got {every}")
        if kwargs.get("mode", "shadow") not in MODES:
            errors.append(f"mode: '{kwargs.get('mode')}' is not one of {list(MODES)}")
        include = kwargs.get("include")
        if include is not None:
            try:
                re.compile(include)
            except (re.error, TypeError) as e:
                errors.append(f"include: '{include}' is not a valid regex ({e})")
        return errors

    def setup(self, ctx: TrainingContext) -> None:
        pattern = re.compile(self.include) if self.include else None
        named = [(n, p) for n, p in ctx.params.items() if not pattern or pattern.search(n)]
        if not named:
            raise ValueError("EMA: no trainable parameters in scope")
        self.names = [n for n, _ in named]
        self.params = [p for _, p in named]
        self.shadow = fp32_copy(self.params)
        self.updates = 0

    @torch.no_grad()
    def after_step(self, step: int) -> None:
        if step % self.every:
            return
        # shadow ← shadow + η·(θ − shadow)  ==  (1 − η)·shadow + η·θ
        torch._foreach_lerp_(self.shadow, [p.detach().float() for p in self.params], self.eta)
        if self.mode == "writeback":
            torch._foreach_copy_([p.data for p in self.params], self.shadow)
        self.updates += 1

    @property
    def swaps_eval_weights(self) -> bool:
        return self.mode == "shadow"

    @contextlib.contextmanager
    def eval_weights(self) -> Iterator[None]:
        if self.mode == "writeback" or not self.params:
            yield
            return
        if any(s.dtype != p.dtype for s, p in zip(self.shadow, self.params, strict=True)):
            live = [p.detach().clone() for p in self.params]  # 16-bit weights: copy the average in, restore after
            torch._foreach_copy_([p.data for p in self.params], self.shadow)
            try:
                yield
            finally:
                torch._foreach_copy_([p.data for p in self.params], live)
            return
        self._swap()  # fp32 weights: swaps storage references, so no copy and no extra memory
        try:
            yield
        finally:
            self._swap()

    def _swap(self) -> None:
        for p, i in zip(self.params, range(len(self.shadow)), strict=True):
            live = p.data
            p.data = self.shadow[i]
            self.shadow[i] = live

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {n: s for n, s in zip(self.names, self.shadow, strict=True)}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        for i, n in enumerate(self.names):
            self.shadow[i].copy_(state[n])

    def metrics(self) -> dict[str, float]:
        return {"eta": self.eta, "updates": float(self.updates)}
