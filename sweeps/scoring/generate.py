"""Greedy, batched, left-padded generation with the KV cache, and an optional per-prompt early stop."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn
from tqdm.auto import tqdm
from transformers import PreTrainedTokenizerBase, StoppingCriteria, StoppingCriteriaList


@dataclass
class Generation:
    text: str
    new_tokens: int
    stopped_early: bool  # generation ended because `stop_when` fired, not at EOS or max_new_tokens


class _StopWhen(StoppingCriteria):
    """Marks a row done once `stop_when(decoded new text)` holds; HF pads finished rows and exits when all are."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, prompt_width: int, stop_when: Callable[[str], bool]):
        self.tokenizer, self.prompt_width, self.stop_when = tokenizer, prompt_width, stop_when
        self.fired: torch.Tensor | None = None

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs) -> torch.BoolTensor:
        if self.fired is None:
            self.fired = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
        texts = self.tokenizer.batch_decode(input_ids[:, self.prompt_width :], skip_special_tokens=True)
        now = torch.tensor([self.stop_when(t) for t in texts], dtype=torch.bool, device=input_ids.device)
        self.fired |= now
        return now


@torch.no_grad()
def generate(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[list[int]],
    *,
    max_new_tokens: int,
    batch_size: int,
    stop_when: Callable[[str], bool] | None = None,
    progress: bool = False,
    desc: str = "generate",
) -> list[Generation]:
    """Generate greedily for tokenised prompts; batches hold prompts of similar length to limit padding."""
    device = next(model.parameters()).device
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    out: list[Generation | None] = [None] * len(prompts)
    was_training = model.training
    model.eval()
    for start in tqdm(range(0, len(order), batch_size), desc=desc, disable=not progress, leave=False):
        idx = order[start : start + batch_size]
        width = max(len(prompts[i]) for i in idx)
        ids = torch.full((len(idx), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(idx), width), dtype=torch.long)
        for row, i in enumerate(idx):
            ids[row, width - len(prompts[i]) :] = torch.tensor(prompts[i])
            mask[row, width - len(prompts[i]) :] = 1
        criteria = _StopWhen(tokenizer, width, stop_when) if stop_when else None
        seqs = model.generate(
            input_ids=ids.to(device), attention_mask=mask.to(device), max_new_tokens=max_new_tokens,
            do_sample=False, num_beams=1, use_cache=True, pad_token_id=pad_id,
            stopping_criteria=StoppingCriteriaList([criteria]) if criteria else None,
            temperature=None, top_p=None, top_k=None,
        )  # fmt: skip
        new = seqs[:, width:]
        eos_id = tokenizer.eos_token_id
        for row, i in enumerate(idx):
            tokens = new[row].tolist()
            n = len(tokens)  # HF pads rows that finished (EOS or early stop) until the batch is done
            for j, t in enumerate(tokens):
                if t == eos_id:
                    n = j + 1
                    break
                if t == pad_id:
                    n = j
                    break
            fired = bool(criteria is not None and criteria.fired is not None and criteria.fired[row])
            text = tokenizer.decode(tokens[:n], skip_special_tokens=True).strip()
            out[i] = Generation(text=text, new_tokens=n, stopped_early=fired)
    if was_training:
        model.train()
    return out  # type: ignore[return-value]
