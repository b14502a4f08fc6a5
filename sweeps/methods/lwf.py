"""Learning without forgetting (Li & Hoiem, 2016), in the hidden-state form of the Unforgotten-Safety paper.

    L = CE_user + β·MSE(h_θ(x), h_θs(x))     x = the USER batch, h = last hidden states, θs = frozen θ_aligned

The teacher is the context's frozen model: under LoRA the same model with the adapters disabled (no second copy,
one extra no-grad forward per micro-batch); for full fine-tuning one frozen copy of the weights. `positions`:
  response  only the positions whose next token is a response token (as the CE term)
  all       every non-pad position (prompt and response)
The MSE is a mean over positions and hidden units (fp32). The paper's β is not stated; 1.0 is ours.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import nn

from sweeps.lm_loss import forward_from
from sweeps.methods._base import TrainingMethod, check_choice, check_number
from sweeps.methods._context import TrainingContext, response_mask

POSITIONS = ("response", "all")


class LwF(TrainingMethod):
    key = "lwf"
    off: ClassVar[dict[str, Any]] = {"beta": 0.0}
    term: ClassVar[str] = "mse"

    def __init__(self, beta: float = 1.0, positions: str = "response") -> None:
        errors = self.check_args({"beta": beta, "positions": positions})
        if errors:
            raise ValueError("; ".join(errors))
        self.beta, self.positions = float(beta), positions
        self.term = torch.zeros(())

    @classmethod
    def check_args(cls, kwargs: dict[str, Any]) -> list[str]:
        return check_number(kwargs, "beta", 1.0, lo=0) + check_choice(kwargs, "positions", "response", POSITIONS)

    def setup(self, ctx: TrainingContext) -> None:
        if self.beta > 0:
            self.teacher = ctx.teacher()
            ctx.capture_hidden()

    def extra_loss(self, model: nn.Module, batch: dict[str, torch.Tensor], outputs: Any) -> torch.Tensor | None:
        if self.beta == 0:
            return None
        mask = response_mask(batch["labels"]) if self.positions == "response" else batch["attention_mask"].bool()
        width = batch["input_ids"].shape[1]  # the teacher's hidden states only: no loss, one row of logits
        target = forward_from(self.teacher, batch, width - 1, output_hidden_states=True).hidden_states[-1][mask].float()
        term = self.beta * nn.functional.mse_loss(outputs.hidden_states[-1][mask].float(), target)
        self.term = term.detach()
        return term

    def step_log(self) -> dict[str, float | torch.Tensor]:
        return {"mse": self.term}

    def metrics(self) -> dict[str, float]:
        return {"beta": self.beta, "mse": float(self.term)}
