"""What a method receives in `setup(ctx)`: the model and optimiser plus shared, read-only resources.

Resources are requested during `setup` (the loop freezes the context before the first step, so a snapshot of
θ_aligned can never be taken from weights that already moved):

    ctx.stream(self, "memory")   the data set named by this method's `memory` argument: endless seeded batches,
                                 encoded once, each row with its example id (validated up front like data.*)
    ctx.reference("start")       θ_aligned for every trainable parameter (one copy shared by all methods)
    ctx.reference("base")        θ before alignment (toy world `base/`, the alignment stage's base, or a path)
    ctx.teacher()                frozen θ_aligned: the same model with adapters disabled under LoRA (no memory),
                                 one frozen copy for full fine-tuning (created once, clear error when it cannot fit)
    ctx.capture_hidden()         the loop asks the model for hidden states; `outputs.hidden_states[-1]` is then set
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from sweeps.formatting import IGNORE_INDEX, Encoded


class Stream:
    """Endless seeded reshuffles of one encoded data set; `next()` returns a collated batch and its example ids."""

    def __init__(self, name: str, data: Sequence[Encoded], *, batch_size: int, pad_id: int,
                 device: torch.device | str, seed: int) -> None:  # fmt: skip
        if not data:
            raise ValueError(f"{name}: the data set is empty")
        self.name, self.data, self.batch_size, self.pad_id, self.device = name, list(data), batch_size, pad_id, device
        self.generator = torch.Generator().manual_seed(seed)
        self.order: list[int] = []
        self.tokens = 0  # response tokens served (counted on the host), for the training log

    def __len__(self) -> int:
        return len(self.data)

    def next(self, batch_size: int | None = None) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        n = batch_size or self.batch_size
        ids = []
        while len(ids) < n:
            if not self.order:
                self.order = torch.randperm(len(self.data), generator=self.generator).tolist()
            ids.append(self.order.pop())
        return self.batch(ids), torch.tensor(ids)

    def batch(self, ids: Sequence[int]) -> dict[str, torch.Tensor]:
        from sweeps.formatting import collate, response_tokens

        rows = [self.data[i] for i in ids]
        self.tokens += response_tokens(rows)
        return collate(rows, self.pad_id, self.device)

    def in_order(self, batch_size: int | None = None) -> Iterator[tuple[dict[str, torch.Tensor], list[int]]]:
        """Every example once, in id order (for statistics at θ_aligned: Fisher, stored logits)."""
        n = batch_size or self.batch_size
        for s in range(0, len(self.data), n):
            ids = list(range(s, min(s + n, len(self.data))))
            yield self.batch(ids), ids


@dataclass
class Resources:
    """What the trial provides beyond the model: the method data sets (by `<instance>.<argument>`), encoded, and
    where θ_base lives. Everything is optional, so plain `train()` calls (tests, the toy-world build) need none."""

    streams: dict[str, Sequence[Encoded]] = field(default_factory=dict)
    base_path: Path | None = None  # a model directory or .safetensors file with θ_base
    seed: int = 0


class TrainingContext:
    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, *, total_steps: int, grad_accum: int,
                 batch_size: int, pad_id: int, resources: Resources | None = None,
                 n_examples: int | None = None) -> None:  # fmt: skip
        self.model, self.optimizer = model, optimizer
        self.n_examples = n_examples  # training-set size (per-epoch schedules); None when the caller did not say
        self.params: dict[str, nn.Parameter] = {n: p for n, p in model.named_parameters() if p.requires_grad}
        self.total_steps, self.grad_accum, self.batch_size, self.pad_id = total_steps, grad_accum, batch_size, pad_id
        self.device = next(model.parameters()).device
        self.resources = resources or Resources()
        self.streams: dict[str, Stream] = {}
        self.hidden = False
        self._refs: dict[str, dict[str, torch.Tensor]] = {}
        self._teacher: Teacher | None = None
        self.frozen = False

    @property
    def lora(self) -> bool:
        return hasattr(self.model, "peft_config")

    def _check_open(self, what: str) -> None:
        if self.frozen:
            raise RuntimeError(f"{what} must be requested in setup(), before the first step")

    def stream(self, method: Any, arg: str) -> Stream:
        key = f"{method.name}.{arg}"
        if key not in self.streams:
            self._check_open(f"stream {key}")
            if key not in self.resources.streams:
                raise ValueError(f"method.{key}: no data was provided for this stream")
            self.streams[key] = Stream(key, self.resources.streams[key], batch_size=self.batch_size,
                                       pad_id=self.pad_id, device=self.device, seed=self.resources.seed)  # fmt: skip
        return self.streams[key]

    def reference(self, kind: str) -> Mapping[str, torch.Tensor]:
        """Read-only weights by trainable-parameter name: "start" (θ_aligned) or "base" (θ before alignment)."""
        if kind not in self._refs:
            self._check_open(f"reference '{kind}'")
            if kind == "start":
                self._refs[kind] = {n: p.detach().clone() for n, p in self.params.items()}
            elif kind == "base":
                self._refs[kind] = self._load_base()
            else:
                raise ValueError(f"unknown reference weights '{kind}' (start | base)")
        return self._refs[kind]

    def _load_base(self) -> dict[str, torch.Tensor]:
        from safetensors import safe_open

        path = self.resources.base_path
        if path is None:
            raise ValueError("reference 'base': no θ_base known (toy world base/, model.align, or method.*.base)")
        path = Path(path)
        names = dict(base_names(self.model))
        out: dict[str, torch.Tensor] = {}
        if path.suffix == ".gguf":  # dequantised by transformers' GGUF reader, as the alignment stage loaded it
            from transformers import AutoModelForCausalLM

            base_model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
            out = {k: v.to(names[k].device, names[k].dtype) for k, v in base_model.state_dict().items() if k in names}
        else:
            files = [path] if path.is_file() else sorted(path.glob("*.safetensors"))
            if not files:
                raise ValueError(f"reference 'base': no .safetensors weights in {path}")
            for f in files:
                with safe_open(str(f), framework="pt", device="cpu") as sf:
                    for key in sf.keys():  # noqa: SIM118 (safe_open has no __iter__)
                        if key in names:
                            p = names[key]
                            out[key] = sf.get_tensor(key).to(p.device, p.dtype)
        missing = [k for k in names if k not in out]
        if missing:
            raise ValueError(f"reference 'base': {path} lacks {len(missing)} tensors, e.g. {missing[0]}")
        return out

    def teacher(self) -> Teacher:
        if self._teacher is None:
            self._check_open("the teacher")
            self._teacher = Teacher(self.model)
        return self._teacher

    def capture_hidden(self) -> None:
        self._check_open("hidden-state capture")
        self.hidden = True


def base_names(model: nn.Module) -> Iterator[tuple[str, nn.Parameter]]:
    """(checkpoint key, parameter) for every base-model weight; peft's wrapper prefixes are stripped."""
    for name, p in model.named_parameters():
        if "lora_" in name:
            continue
        key = name.removeprefix("base_model.model.").replace(".base_layer.", ".")
        yield key, p


class Teacher:
    """Frozen θ_aligned: forward passes without gradients, in eval mode (no dropout)."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.copy: nn.Module | None = None
        if not hasattr(model, "disable_adapter"):
            try:
                self.copy = copy.deepcopy(model).eval().requires_grad_(False)
            except torch.OutOfMemoryError:
                raise RuntimeError("the frozen teacher (a second copy of the model for full fine-tuning) does not fit "
                                   "in device memory; use LoRA (the teacher is then the adapter-free model)") from None

    @torch.no_grad()
    def __call__(self, **batch: Any) -> Any:
        if self.copy is not None:
            return self.copy(**batch)
        was_training = self.model.training
        self.model.eval()
        try:
            with self.model.disable_adapter():
                return self.model(**batch)
        finally:
            self.model.train(was_training)


def response_mask(labels: torch.Tensor) -> torch.Tensor:
    """Positions whose logits predict a response token (labels shifted by one, as the causal-LM loss does)."""
    mask = torch.zeros_like(labels, dtype=torch.bool)
    mask[:, :-1] = labels[:, 1:] != IGNORE_INDEX
    return mask
