"""Turn (prompt, response) text into token ids: chat template when the tokenizer has one, else a plain template.

Over-long pairs (prompt + response > max_length): the response is what the loss scores, so it is kept. The prompt is
cut from the left, keeping its leading special tokens (BOS, the template's opening marker) and its tail (the end of
the instruction and the generation prompt right before the response). The prompt keeps at least
min(its length, max_length // 4) tokens; a response longer than what is left keeps its head. A pair with no
response token left (empty response without EOS, max_length < 2) is dropped. `encode_pairs` counts both per data
role and warns once per role.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch
from transformers import PreTrainedTokenizerBase

log = logging.getLogger(__name__)
PLAIN_TEMPLATE = "### Instruction:\n{prompt}\n\n### Response:\n"
IGNORE_INDEX = -100


@dataclass
class Encoded:
    input_ids: list[int]
    labels: list[int]  # IGNORE_INDEX on prompt tokens: the loss covers response tokens only
    prompt_cut: int = 0  # prompt tokens removed (from the left, after the leading special tokens) to fit max_length
    response_cut: int = 0  # response tokens removed from its tail: the response alone did not fit

    @property
    def truncated(self) -> bool:
        return bool(self.prompt_cut or self.response_cut)


@dataclass
class Truncation:
    """What `encode_pairs` did to one data role's examples."""

    total: int = 0
    truncated: int = 0  # kept, with the prompt and/or the response cut to fit max_length
    dropped: int = 0  # nothing left to score

    def metrics(self, role: str) -> dict[str, int]:
        return {f"truncated/{role}": self.truncated, f"dropped/{role}": self.dropped}


class PromptFormatter:
    def __init__(
        self, tokenizer: PreTrainedTokenizerBase, template: str | None = None, system_prompt: str | None = None
    ) -> None:
        self.tokenizer = tokenizer
        self.use_chat = template is None and bool(getattr(tokenizer, "chat_template", None))
        self.template = template or PLAIN_TEMPLATE
        self.system_prompt = system_prompt
        self._special = set(tokenizer.all_special_ids)
        self._warned: set[str] = set()  # roles already warned about (a probe re-encoding a subset stays quiet)

    def prompt_text(self, prompt: str) -> str:
        if not self.use_chat:
            return self.template.format(prompt=prompt)
        messages = [{"role": "system", "content": self.system_prompt}] if self.system_prompt else []
        messages.append({"role": "user", "content": prompt})
        return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    def encode_prompt(self, prompt: str) -> list[int]:
        # Chat templates already carry their BOS; the plain template gets the tokenizer's own specials.
        return self.tokenizer(self.prompt_text(prompt), add_special_tokens=not self.use_chat)["input_ids"]

    def encode_pair(self, prompt: str, response: str, max_length: int) -> Encoded | None:
        """Prompt + response ids with the loss on the response; None when no response token fits (see module doc)."""
        prompt_ids = self.encode_prompt(prompt)
        response_ids = self.tokenizer(response, add_special_tokens=False)["input_ids"]
        if self.tokenizer.eos_token_id is not None:
            response_ids = [*response_ids, self.tokenizer.eos_token_id]
        if len(prompt_ids) + len(response_ids) > max_length:
            prompt_room = max(1, min(len(prompt_ids), max_length // 4))
            response_room = max_length - max(prompt_room, max_length - len(response_ids))
            kept_response = response_ids[:response_room]
            kept_prompt = _cut_left(prompt_ids, max_length - len(kept_response), self._lead(prompt_ids))
            prompt_cut, response_cut = len(prompt_ids) - len(kept_prompt), len(response_ids) - len(kept_response)
            prompt_ids, response_ids = kept_prompt, kept_response
        else:
            prompt_cut = response_cut = 0
        if len(response_ids) - (not prompt_ids) <= 0:  # position 0 is never a target: nothing would be scored
            return None
        return Encoded(prompt_ids + response_ids, [IGNORE_INDEX] * len(prompt_ids) + response_ids,
                       prompt_cut, response_cut)  # fmt: skip

    def encode_pairs(
        self, pairs: Iterable[tuple[str, str]], max_length: int, role: str
    ) -> tuple[list[Encoded], Truncation]:
        """Encode a data role's pairs, dropping those with nothing to score; warns once per role if any was cut."""
        out, stats = [], Truncation()
        for prompt, response in pairs:
            enc = self.encode_pair(prompt, response, max_length)
            stats.total += 1
            if enc is None:
                stats.dropped += 1
                continue
            stats.truncated += enc.truncated
            out.append(enc)
        if (stats.truncated or stats.dropped) and role not in self._warned:
            self._warned.add(role)
            log.warning("%s: %d of %d examples exceed max_length=%d: %d truncated (prompt cut from the left, "
                        "response kept where it fits), %d dropped (no response token left)", role,
                        stats.truncated + stats.dropped, stats.total, max_length, stats.truncated,
                        stats.dropped)  # fmt: skip
        return out, stats

    def _lead(self, ids: list[int]) -> int:
        """How many leading ids are special tokens (BOS, a chat template's opening role marker)."""
        n = 0
        while n < len(ids) and ids[n] in self._special:
            n += 1
        return n


def _cut_left(ids: list[int], keep: int, lead: int) -> list[int]:
    """`keep` ids of `ids`: its first `lead` (kept only while at least one tail id fits after them) and its tail."""
    if len(ids) <= keep:
        return ids
    if keep <= 0:
        return []
    head = ids[: min(lead, keep - 1)]
    return head + ids[len(ids) - (keep - len(head)) :]


def collate(examples: Sequence[Encoded], pad_id: int, device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
    """Right-pad to the longest example; padded positions are masked and ignored by the loss."""
    width = max(len(e.input_ids) for e in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    for i, e in enumerate(examples):
        n = len(e.input_ids)
        ids[i, :n] = torch.tensor(e.input_ids)
        labels[i, :n] = torch.tensor(e.labels)
        mask[i, :n] = 1
    return {"input_ids": ids.to(device), "attention_mask": mask.to(device), "labels": labels.to(device)}


def concat_batches(batches: Sequence[dict[str, torch.Tensor]], pad_id: int) -> dict[str, torch.Tensor]:
    """Collated batches stacked row-wise, each right-padded to the widest (pads masked and ignored by the loss)."""
    width = max(b["input_ids"].shape[1] for b in batches)
    fill = {"input_ids": pad_id, "attention_mask": 0, "labels": IGNORE_INDEX}
    return {k: torch.cat([torch.nn.functional.pad(b[k], (0, width - b[k].shape[1]), value=v) for b in batches])
            for k, v in fill.items()}  # fmt: skip


def response_tokens(examples: Sequence[Encoded]) -> int:
    """Tokens the causal-LM loss covers (labels shifted by one), counted on the host."""
    return sum(sum(1 for t in e.labels[1:] if t != IGNORE_INDEX) for e in examples)
