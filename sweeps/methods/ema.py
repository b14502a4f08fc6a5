"""Parameter-space exponential moving average of the trainable weights.

Conventions (`convention`): which weight η multiplies.
  new   (default; the seed paper, "Rethinking Safety in LLM Fine-tuning: An Optimization Perspective")
            θ̄ ← (1 − η)·θ̄ + η·θ        η = 1 keeps no memory (plain fine-tuning); η → 0 never moves
  old   (PyTorch's `decay`, torch.optim.swa_utils.get_ema_multi_avg_fn)
            θ̄ ← η·θ̄ + (1 − η)·θ        η = 0 is plain fine-tuning; η → 1 never moves

When (`every` / `updates`): every k-th optimiser step (`every: k`, default 1), once per epoch (`every: epoch`: every
ceil(n_train / (batch_size × grad_accum)) optimiser steps), or a fixed number of updates spread evenly over the run
(`updates: N`: at the steps where ⌊s·N/T⌋ increases, T = total steps; the last one at step T).

Initial average (`init`): `start` θ̄₀ = θ_aligned (the weights before training); `first` θ̄ = the live weights at the
first update, so θ_aligned is not part of the average.

Modes:
  shadow     train the live weights θ; evaluate θ̄ (swapped in by `eval_weights()` at no extra memory).
  writeback  after each update set θ ← θ̄, so training continues from the average. With plain SGD (no momentum,
             no weight decay) this equals SGD with learning rate lr·η, step for step (new convention, every step).

Scope: the parameters with requires_grad at setup — all weights for full fine-tuning, the adapters for LoRA;
`include` (a regex on parameter names) narrows it. Memory: one fp32 copy of the scoped parameters (fp32 whatever the
model's dtype: a bf16 average would drop η-sized steps the way bf16 weights drop small Adam steps). Updates use fused
foreach kernels (one `_foreach_lerp_` per update).
"""

from __future__ import annotations

import contextlib
import logging
import math
import re
from collections.abc import Iterator
from typing import Any, ClassVar

import torch

from sweeps.methods._base import TrainingMethod, check_choice, check_number
from sweeps.methods._context import TrainingContext
from sweeps.models import fp32_copy

log = logging.getLogger(__name__)

MODES = ("shadow", "writeback")
CONVENTIONS = ("new", "old")
INITS = ("start", "first")
UPDATES = "ema/updates"  # the state_dict key of the update count


class EMA(TrainingMethod):
    key = "ema"
    off: ClassVar[dict[str, Any]] = {"eta": 1.0}
    term: ClassVar[str] = "updates"

    def __init__(self, eta: float = 0.25, every: int | str = 1, mode: str = "shadow", include: str | None = None,
                 convention: str = "new", updates: int | None = None, init: str = "start") -> None:  # fmt: skip
        args = {"eta": eta, "every": every, "mode": mode, "include": include, "convention": convention,
                "updates": updates, "init": init}  # fmt: skip
        errors = self.check_args(args)
        if errors:
            raise ValueError("; ".join(errors))
        self.eta, self.every, self.mode, self.include = float(eta), every, mode, include
        self.convention, self.n_updates, self.init = convention, updates, init
        # the lerp weight on the new parameters, whichever convention η was given in
        self.weight_new = self.eta if convention == "new" else 1.0 - self.eta
        self.interval = every if isinstance(every, int) else 0  # resolved in setup() for `epoch`
        self.total_steps = 0
        self.names: list[str] = []
        self.params: list[torch.Tensor] = []
        self.shadow: list[torch.Tensor] = []
        self.updates = 0

    @classmethod
    def check_args(cls, kwargs: dict[str, Any]) -> list[str]:
        errors = check_number(kwargs, "eta", 0.25, lo=0, hi=1)
        every = kwargs.get("every", 1)
        if every != "epoch" and (not isinstance(every, int) or isinstance(every, bool) or every < 1):
            errors.append(f"every: must be an integer >= 1 or 'epoch', got {every!r}")
        errors += check_number(kwargs, "updates", None, lo=1, integer=True, none_ok=True)
        if kwargs.get("updates") is not None and every != 1:
            errors.append(f"updates: set either updates ({kwargs['updates']}) or every ({every!r}), not both")
        errors += check_choice(kwargs, "mode", "shadow", MODES)
        errors += check_choice(kwargs, "convention", "new", CONVENTIONS)
        errors += check_choice(kwargs, "init", "start", INITS)
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
        self.full_scope = len(named) == len(ctx.params)  # an `include` EMA evaluates a mix of average and live
        self.total_steps = ctx.total_steps
        if self.every == "epoch":
            if ctx.n_examples is None:
                raise ValueError("method.ema.every: 'epoch' needs the training-set size (TrainingContext.n_examples)")
            self.interval = math.ceil(ctx.n_examples / (ctx.batch_size * ctx.grad_accum))
        if self.n_updates is not None and self.n_updates > self.total_steps:
            log.warning("method.ema.updates: %d updates asked for a %d-step run; updating every step instead",
                        self.n_updates, self.total_steps)  # fmt: skip

    def due(self, step: int) -> bool:
        """Whether optimiser step `step` (1-based) is an update step."""
        if self.n_updates is not None:
            n, total = min(self.n_updates, self.total_steps), max(1, self.total_steps)
            return step * n // total > (step - 1) * n // total
        return step % self.interval == 0

    @torch.no_grad()
    def after_step(self, step: int) -> None:
        if not self.due(step):
            return
        live = [p.detach().float() for p in self.params]
        if self.init == "first" and self.updates == 0:
            torch._foreach_copy_(self.shadow, live)
        else:  # shadow ← shadow + w·(θ − shadow)  ==  (1 − w)·shadow + w·θ,  w = the weight on the new parameters
            torch._foreach_lerp_(self.shadow, live, self.weight_new)
        if self.mode == "writeback":
            torch._foreach_copy_([p.data for p in self.params], self.shadow)
        self.updates += 1

    @property
    def swaps_eval_weights(self) -> bool:
        return self.mode == "shadow"

    @property
    def evaluates_start(self) -> bool:
        """A shadow average not updated yet is the fp32 copy of the starting weights (either `init`), bit for bit."""
        return self.mode == "shadow" and self.updates == 0 and bool(self.params) and self.full_scope

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
        # "/" never occurs in a parameter name: the update count cannot clash with an average
        return {n: s for n, s in zip(self.names, self.shadow, strict=True)} | {UPDATES: torch.tensor(self.updates)}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        for i, n in enumerate(self.names):
            self.shadow[i].copy_(state[n])
        self.updates = int(state[UPDATES])

    def metrics(self) -> dict[str, float]:
        # interval: optimiser steps between updates (total / updates when spread evenly)
        n = min(self.n_updates or 0, self.total_steps)
        interval = self.total_steps / n if n else float(self.interval)
        return {"eta": self.eta, "weight_new": self.weight_new, "interval": interval, "updates": float(self.updates)}
