"""Dark experience replay (Buzzega et al., 2020) on the safety memory; DER++ adds a CE replay term.

    DER:    L = CE_user + λ·MSE(f_θ(x'), z')             (x', z') a memory batch, z' = θ_aligned's logits
    DER++:  L = DER + β·CE(f_θ(x''), y'')                (x'', y'') a second, independent memory batch
                                                          (`same_batch: true`: x'' = x', one forward for both terms)

Both terms use the response positions only (prompt and pad masked), in fp32, on one memory batch per optimiser
step (after the user micro-batches; `batch_size` = the user batch size unless set). mammoth's defaults: the MSE is
a mean over positions and vocabulary; α (our λ) and β both 0.5 in its best DER++ configs.

How z is obtained (`store`):
  logits   computed once in setup at θ_aligned and kept in host memory as fp32, response positions only:
           m × response length × vocab × 4 B — 250 × 128 × 32k × 4 B ≈ 4.2 GB for a 7B Llama (toy: a few MB);
           one host→device copy of a batch's logits per step.
  teacher  recomputed each step by the frozen teacher (under LoRA the adapter-free model): no memory, one extra
           no-grad forward on the memory batch per step.
`joint` (auto | always | never): the memory batches are drawn before the step's forwards and, when that pays
(`auto`: padding every row to the widest adds ≤ 10 % positions, sweeps.lm_loss.joint_pays), their rows join the last
user micro-batch's forward: one forward and one backward for user and memory rows (the same gradient: the losses
are summed either way; 95M Llama on 2 CPU cores: batch 8 + 8 in one pass 948 ms, in two 1,110 ms).
Reference: aimagelab/mammoth models/der.py, derpp.py (one forward per batch, one backward for their sum).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import torch
from torch import nn

from sweeps.formatting import concat_batches
from sweeps.lm_loss import JOINT_MODES, first_scored_in, forward_from, joint_pays, rows_of, token_losses
from sweeps.methods._base import TrainingMethod, check_choice, check_flag, check_number
from sweeps.methods._context import TrainingContext, response_mask

STORES = ("logits", "teacher")
# one memory batch of a step and the terms taken on it: "mse" (DER), "ce" (DER++'s second batch), "both"
Drawn = tuple[str, dict[str, torch.Tensor], torch.Tensor]


def _response_logits(model: nn.Module, batch: dict[str, torch.Tensor], first: int | None = None,
                     ) -> tuple[torch.Tensor, int, Any]:  # fmt: skip
    """The logits at the positions that predict a response token (rows in batch order, positions in order), where
    the vocabulary projection started, and the outputs (their `.logits` cover positions first … width − 1)."""
    first = first_scored_in(batch["labels"]) if first is None else first
    outputs = forward_from(model, batch, first)
    return outputs.logits[response_mask(batch["labels"])[:, first:]], first, outputs


class DER(TrainingMethod):
    key = "der"
    streams = ("memory",)
    off: ClassVar[dict[str, Any]] = {"lam": 0.0}
    term: ClassVar[str] = "mse"

    def __init__(self, lam: float = 0.5, memory: dict | None = None, size: int | None = None,
                 batch_size: int | None = None, store: str = "logits", joint: str = "auto") -> None:  # fmt: skip
        errors = self.check_args({"lam": lam, "size": size, "batch_size": batch_size, "store": store, "joint": joint})
        if errors:
            raise ValueError("; ".join(errors))
        self.lam, self.memory, self.size, self.batch_size, self.store = float(lam), memory, size, batch_size, store
        self.joint = joint
        self.z: list[torch.Tensor] = []
        self.terms: dict[str, torch.Tensor] = {}
        self.drawn: list[Drawn] = []  # this step's memory batches, drawn in before_step
        self.rode = False  # their terms came from the joint forward (ride_loss): step_loss has nothing left to do

    @classmethod
    def check_args(cls, kwargs: dict[str, Any]) -> list[str]:
        errors = check_number(kwargs, "lam", 0.5, lo=0) + check_choice(kwargs, "store", "logits", STORES)
        errors += check_number(kwargs, "size", None, lo=0, open_lo=True, integer=True, none_ok=True)
        errors += check_number(kwargs, "batch_size", None, lo=0, open_lo=True, integer=True, none_ok=True)
        return errors + check_choice(kwargs, "joint", "auto", JOINT_MODES)

    def setup(self, ctx: TrainingContext) -> None:
        self.stream = ctx.stream(self, "memory")
        self.pad_id = ctx.pad_id
        if self.store == "teacher":
            self.teacher = ctx.teacher()
            return
        self.z = []
        with torch.no_grad():
            for batch, _ in self.stream.in_order():
                f, _, _ = _response_logits(ctx.model, batch)  # rows in batch order: split back per example
                self.z += [z.float().cpu() for z in f.split(response_mask(batch["labels"]).sum(1).tolist())]

    def draw(self) -> list[Drawn]:
        """This step's memory batches and the terms each one serves."""
        return [("mse", *self.stream.next(self.batch_size))] if self.lam > 0 else []

    def before_step(self, step: int, batches: Sequence[dict[str, torch.Tensor]]) -> None:
        self.drawn, self.rode = self.draw(), False
        self.last_user = batches[-1]  # the micro-batch they may join (its contents as the loop will forward them)

    def rider(self) -> dict[str, torch.Tensor] | None:
        rows = [batch for _, batch, _ in self.drawn]
        if not rows or not joint_pays(self.joint, [self.last_user, *rows]):
            return None
        return concat_batches(rows, self.pad_id)

    def ride_loss(self, batch: dict[str, torch.Tensor], outputs: Any, first: int) -> torch.Tensor | None:
        bounds, parts = 0, []
        for role, _, ids in self.drawn:  # the rider's rows: the drawn batches, one after another
            rows = slice(bounds, bounds + len(ids))
            parts.append((role, {k: v[rows] for k, v in batch.items()}, ids, rows_of(outputs, rows), first))
            bounds = rows.stop
        self.drawn, self.rode = [], True
        return self._terms(parts)

    def step_loss(self, model: nn.Module) -> torch.Tensor | None:
        if self.rode:
            self.rode = False
            return None
        drawn, self.drawn = self.drawn or self.draw(), []  # (called without before_step: draw now)
        parts = []
        for role, batch, ids in drawn:
            first = first_scored_in(batch["labels"])
            parts.append((role, batch, ids, forward_from(model, batch, first), first))
        return self._terms(parts)

    def _terms(self, parts: list[tuple[str, dict[str, torch.Tensor], torch.Tensor, Any, int]]) -> torch.Tensor | None:
        """The method's terms on its memory batches' outputs (role, batch, ids, outputs, first scored position)."""
        terms = []
        for role, batch, ids, outputs, first in parts:
            if role in ("mse", "both"):
                terms.append(self.replay(batch, ids, outputs, first))
            if role in ("ce", "both"):
                terms.append(self.ce(batch, outputs, first))
        return torch.stack(terms).sum() if terms else None

    def replay(self, batch: dict[str, torch.Tensor], ids: torch.Tensor, outputs: Any, first: int) -> torch.Tensor:
        """λ·MSE between the batch's response-position logits and θ_aligned's."""
        f = outputs.logits[response_mask(batch["labels"])[:, first:]].float()
        if self.store == "teacher":
            z = _response_logits(self.teacher, batch, first)[0].float()
        else:  # rows in batch order, positions in order: the same flattening as logits[mask]
            z = torch.cat([self.z[i] for i in ids.tolist()]).to(f.device, non_blocking=True)
        term = self.lam * nn.functional.mse_loss(f, z)
        self.terms["mse"] = term.detach()
        return term

    def ce(self, batch: dict[str, torch.Tensor], outputs: Any, first: int) -> torch.Tensor:
        raise NotImplementedError  # DER++ only

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {f"z.{i}": z for i, z in enumerate(self.z)}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.z = [state[f"z.{i}"] for i in range(len(self.z))] if self.z else self.z

    def step_log(self) -> dict[str, float | torch.Tensor]:
        return dict(self.terms)

    def metrics(self) -> dict[str, float]:
        return {"lam": self.lam, "memory": float(len(self.stream)) if hasattr(self, "stream") else 0.0,
                **{k: float(v) for k, v in self.terms.items()}}  # fmt: skip


class DERpp(DER):
    key = "derpp"
    off: ClassVar[dict[str, Any]] = {"lam": 0.0, "beta": 0.0}

    def __init__(self, lam: float = 0.5, beta: float = 0.5, memory: dict | None = None, size: int | None = None,
                 batch_size: int | None = None, store: str = "logits", same_batch: bool = False,
                 joint: str = "auto") -> None:  # fmt: skip
        errors = check_number({"beta": beta}, "beta", 0.5, lo=0) + check_flag({"same_batch": same_batch}, "same_batch")
        if errors:
            raise ValueError("; ".join(errors))
        super().__init__(lam=lam, memory=memory, size=size, batch_size=batch_size, store=store, joint=joint)
        self.beta, self.same_batch = float(beta), same_batch

    @classmethod
    def check_args(cls, kwargs: dict[str, Any]) -> list[str]:
        return super().check_args(kwargs) + check_number(kwargs, "beta", 0.5, lo=0) + check_flag(kwargs, "same_batch")

    def draw(self) -> list[Drawn]:
        if self.same_batch and self.lam > 0 and self.beta > 0:  # one memory batch, one forward, both terms
            return [("both", *self.stream.next(self.batch_size))]
        # mammoth's DER++: two independent memory batches
        return super().draw() + ([("ce", *self.stream.next(self.batch_size))] if self.beta > 0 else [])

    def ce(self, batch: dict[str, torch.Tensor], outputs: Any, first: int) -> torch.Tensor:
        """β·CE on the batch's response tokens."""
        term = self.beta * token_losses(outputs.logits, batch["labels"], first)[0].mean()
        self.terms["ce"] = term.detach()
        return term

    def metrics(self) -> dict[str, float]:
        return {**super().metrics(), "beta": self.beta, "same_batch": float(self.same_batch)}
