"""Lisa (Huang et al., 2024): bi-state optimisation, alternating an alignment phase and a fine-tuning phase.

Alignment steps train on safety-stream batches (they replace the step's user micro-batches), fine-tuning steps on
the user data; phases switch every K_align / K_ft optimiser steps, alignment first. Each phase adds a proximal term

    (ρ/2)·‖θ − anchor‖²,   anchor = the weights at the end of the OTHER phase's last run

(both anchors start at θ_aligned), none for the first 10 % of the steps; one shared optimiser. The order follows
the reference code `git-disl/Lisa:trainer.py` (`check_mode`, `switch_model`), not its README, which names the
anchors the other way round. The proximal gradient ρ·(θ − anchor) is added in closed form after backward (it is
parameter-only, like EWC's), so no extra autograd graph over all parameters. Cost: two anchor copies of the
trainable parameters (fine under LoRA; 2 × 14 GB for a full 7B in bf16).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import torch
from torch import nn

from sweeps.methods._base import TrainingMethod, check_number
from sweeps.methods._context import TrainingContext

ALIGN, FINETUNE = "alignment", "finetune"


class LisaSchedule:
    """The reference code's phase clock, step by step (0-based steps, as its `self.steps`).

    `advance()` returns (phase of this step, switched): `switched` means the phase changed at this step, so the
    anchor of the phase just left must be taken from the current weights first."""

    def __init__(self, align_steps: int, finetune_steps: int) -> None:
        self.k_align, self.k_ft = align_steps, finetune_steps
        self.phase = ALIGN if align_steps > 0 else FINETUNE
        self.clock = 0
        self.steps = 0

    def advance(self) -> tuple[str, bool]:
        switched = False
        if self.steps > 0 and self.k_ft > 0 and self.k_align > 0:
            limit = self.k_align if self.phase == ALIGN else self.k_ft
            if self.clock % limit == 0:
                self.phase, switched, self.clock = (FINETUNE if self.phase == ALIGN else ALIGN), True, 0
        self.steps += 1
        self.clock += 1
        return self.phase, switched


class Lisa(TrainingMethod):
    key = "lisa"
    streams = ("safety",)
    off: ClassVar[dict[str, Any]] = {"rho": 0.0, "align_steps": 0}
    term: ClassVar[str] = "align_steps"

    def __init__(self, safety: dict | None = None, size: int | None = None, align_steps: int = 10,
                 finetune_steps: int = 90, rho: float = 1.0, warmup: float = 0.1) -> None:  # fmt: skip
        errors = self.check_args({"size": size, "align_steps": align_steps, "finetune_steps": finetune_steps,
                                  "rho": rho, "warmup": warmup})  # fmt: skip
        if errors:
            raise ValueError("; ".join(errors))
        self.safety, self.size, self.rho, self.warmup = safety, size, rho, warmup
        self.align_steps, self.finetune_steps = align_steps, finetune_steps
        self.schedule = LisaSchedule(align_steps, finetune_steps)
        self.n_align = 0
        self.phase = self.schedule.phase
        self.proximal = torch.zeros(())
        self.active = False

    @classmethod
    def check_args(cls, kwargs: dict[str, Any]) -> list[str]:
        errors = check_number(kwargs, "rho", 1.0, lo=0)
        errors += check_number(kwargs, "align_steps", 10, lo=0, integer=True)
        errors += check_number(kwargs, "finetune_steps", 90, lo=0, integer=True)
        errors += check_number(kwargs, "warmup", 0.1, lo=0, hi=1)
        errors += check_number(kwargs, "size", None, lo=0, open_lo=True, integer=True, none_ok=True)
        return errors

    def setup(self, ctx: TrainingContext) -> None:
        self.params = ctx.params
        self.total = ctx.total_steps
        self.stream = ctx.stream(self, "safety") if self.align_steps > 0 else None
        start = ctx.reference("start")  # both anchors start at θ_aligned (the reference's init())
        self.anchors = {ALIGN: dict(start), FINETUNE: dict(start)}

    def before_step(self, step: int, batches: Sequence[dict[str, torch.Tensor]]) -> None:
        phase, switched = self.schedule.advance()
        if switched:  # leaving `self.phase`: its last weights become the anchor the next phase is pulled toward
            self.anchors[self.phase] = {n: p.detach().clone() for n, p in self.params.items()}
        self.phase = phase
        # the reference's `self.steps > 0.1 * total` with its 0-based step count
        self.active = self.rho > 0 and step - 1 > self.warmup * self.total
        if phase == ALIGN:
            self.n_align += 1
            for batch in batches:  # the alignment phase trains on safety batches instead of the user's
                safety, _ = self.stream.next(len(batch["input_ids"]))
                batch.clear()
                batch.update(safety)

    def after_backward(self, model: nn.Module) -> None:
        if not self.active:
            self.proximal = torch.zeros(())
            return
        anchor = self.anchors[FINETUNE if self.phase == ALIGN else ALIGN]
        with torch.no_grad():
            terms = []
            for n, p in self.params.items():
                diff = p.detach() - anchor[n]
                terms.append(diff.float().square().sum())
                if p.grad is None:
                    p.grad = self.rho * diff
                else:
                    p.grad.add_(diff, alpha=self.rho)
            self.proximal = 0.5 * self.rho * torch.stack(terms).sum()

    def state_dict(self) -> dict[str, torch.Tensor]:
        s = self.schedule
        state = {"clock": torch.tensor([s.clock, s.steps, int(s.phase == ALIGN), self.n_align])}
        for phase, anchor in self.anchors.items():
            state.update({f"{phase}.{n}": t.detach().cpu() for n, t in anchor.items()})
        return state

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        clock, steps, align, self.n_align = (int(v) for v in state["clock"])
        self.schedule.clock, self.schedule.steps = clock, steps
        self.schedule.phase = self.phase = ALIGN if align else FINETUNE
        for phase, anchor in self.anchors.items():
            for n, t in anchor.items():
                anchor[n] = state[f"{phase}.{n}"].to(t.device, t.dtype)

    def step_log(self) -> dict[str, float | torch.Tensor]:
        return {"align": float(self.phase == ALIGN), "proximal": self.proximal}

    def metrics(self) -> dict[str, float]:
        return {"align_steps": float(self.n_align), "proximal": float(self.proximal),
                "memory": float(len(self.stream)) if getattr(self, "stream", None) is not None else 0.0}
