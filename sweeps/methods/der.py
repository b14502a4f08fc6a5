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
Reference: aimagelab/mammoth models/der.py, derpp.py.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import nn

from sweeps.lm_loss import first_scored_in, forward_from, response_loss, token_losses
from sweeps.methods._base import TrainingMethod, check_choice, check_flag, check_number
from sweeps.methods._context import TrainingContext, response_mask

STORES = ("logits", "teacher")


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
                 batch_size: int | None = None, store: str = "logits") -> None:  # fmt: skip
        errors = self.check_args({"lam": lam, "size": size, "batch_size": batch_size, "store": store})
        if errors:
            raise ValueError("; ".join(errors))
        self.lam, self.memory, self.size, self.batch_size, self.store = float(lam), memory, size, batch_size, store
        self.z: list[torch.Tensor] = []
        self.terms: dict[str, torch.Tensor] = {}

    @classmethod
    def check_args(cls, kwargs: dict[str, Any]) -> list[str]:
        errors = check_number(kwargs, "lam", 0.5, lo=0) + check_choice(kwargs, "store", "logits", STORES)
        errors += check_number(kwargs, "size", None, lo=0, open_lo=True, integer=True, none_ok=True)
        errors += check_number(kwargs, "batch_size", None, lo=0, open_lo=True, integer=True, none_ok=True)
        return errors

    def setup(self, ctx: TrainingContext) -> None:
        self.stream = ctx.stream(self, "memory")
        if self.store == "teacher":
            self.teacher = ctx.teacher()
            return
        self.z = []
        with torch.no_grad():
            for batch, _ in self.stream.in_order():
                f, _, _ = _response_logits(ctx.model, batch)  # rows in batch order: split back per example
                self.z += [z.float().cpu() for z in f.split(response_mask(batch["labels"]).sum(1).tolist())]

    def replay(self, model: nn.Module, drawn: tuple[dict, torch.Tensor, torch.Tensor, int] | None = None,
               ) -> torch.Tensor | None:  # fmt: skip
        """λ·MSE on a fresh memory batch, or on `drawn` = (batch, ids, its response logits, where they start)."""
        if self.lam == 0:
            return None
        if drawn is not None:
            batch, ids, f, first = drawn
        else:
            batch, ids = self.stream.next(self.batch_size)
            f, first, _ = _response_logits(model, batch)
        f = f.float()
        if self.store == "teacher":
            z = _response_logits(self.teacher, batch, first)[0].float()
        else:  # rows in batch order, positions in order: the same flattening as logits[mask]
            z = torch.cat([self.z[i] for i in ids.tolist()]).to(f.device, non_blocking=True)
        term = self.lam * nn.functional.mse_loss(f, z)
        self.terms["mse"] = term.detach()
        return term

    def step_loss(self, model: nn.Module) -> torch.Tensor | None:
        return self.replay(model)

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
                 batch_size: int | None = None, store: str = "logits", same_batch: bool = False) -> None:  # fmt: skip
        errors = check_number({"beta": beta}, "beta", 0.5, lo=0) + check_flag({"same_batch": same_batch}, "same_batch")
        if errors:
            raise ValueError("; ".join(errors))
        super().__init__(lam=lam, memory=memory, size=size, batch_size=batch_size, store=store)
        self.beta, self.same_batch = float(beta), same_batch

    @classmethod
    def check_args(cls, kwargs: dict[str, Any]) -> list[str]:
        return super().check_args(kwargs) + check_number(kwargs, "beta", 0.5, lo=0) + check_flag(kwargs, "same_batch")

    def step_loss(self, model: nn.Module) -> torch.Tensor | None:
        if self.same_batch and self.lam > 0 and self.beta > 0:  # one memory batch, one forward, both terms
            batch, ids = self.stream.next(self.batch_size)
            f, first, out = _response_logits(model, batch)
            terms = [self.replay(model, (batch, ids, f, first)), self.ce(model, (batch, first, out))]
        else:  # mammoth's DER++: two independent memory batches
            terms = [self.replay(model), self.ce(model)]
        terms = [t for t in terms if t is not None]
        return torch.stack(terms).sum() if terms else None

    def ce(self, model: nn.Module, drawn: tuple[dict, int, Any] | None = None) -> torch.Tensor | None:
        """β·CE on a fresh memory batch, or on `drawn` = (batch, where its logits start, its outputs) forwarded."""
        if self.beta == 0:
            return None
        if drawn is None:
            term = self.beta * response_loss(model, self.stream.next(self.batch_size)[0])[0]
        else:
            batch, first, out = drawn
            term = self.beta * token_losses(out.logits, batch["labels"], first)[0].mean()
        self.terms["ce"] = term.detach()
        return term

    def metrics(self) -> dict[str, float]:
        return {**super().metrics(), "beta": self.beta, "same_batch": float(self.same_batch)}
