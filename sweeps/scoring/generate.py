"""Greedy, batched, left-padded generation with the KV cache, an optional per-prompt early stop, and drafts.

Drafts: a landscape scores many nearby weight vectors, and neighbouring grid points mostly answer alike. Given the
answer tokens from a nearby point, `generate(..., drafts=...)` checks them with one teacher-forced forward pass
(speculative decoding with the neighbour as the draft model), keeps the longest prefix that greedy decoding would
have produced plus the model's own next token, and generates only the rest. The result is greedy decoding's, up to
float round-off between a full forward pass and KV-cached steps (which can flip an argmax at an exact near-tie).
HF's assisted generation does this for one prompt and a draft *model*; here drafts are fixed token lists for a batch.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn
from tqdm.auto import tqdm
from transformers import PreTrainedTokenizerBase, StoppingCriteria, StoppingCriteriaList

from sweeps.lm_loss import forward_keeping

# verification logits are computed a few rows at a time so that rows × kept positions × vocab stays below this
VERIFY_LOGIT_BUDGET = 64 * 2**20  # float32 values (256 MiB)
# draft checks per generate() call before the rest is decoded token by token. Each check is a forward pass over the
# whole prefix: cheap on a GPU; on a CPU with a large model and long answers, fewer rounds (1) can be faster.
DRAFT_ROUNDS = 8


@dataclass
class Generation:
    text: str
    new_tokens: int
    stopped_early: bool  # generation ended because `stop_when` fired, not at EOS or max_new_tokens
    tokens: list[int] = field(default_factory=list, repr=False)  # the answer's token ids (a draft for a neighbour)
    drafted: int = 0  # leading answer tokens taken from a verified draft instead of decoded one by one


class _StopWhen(StoppingCriteria):
    """Per row: done once `stop_when(answer so far)` holds or the row's own token budget is used up.

    Rows may enter with part of their answer already accepted (`answered[r]` tokens at the end of the prompt); the
    answer text is those plus the new tokens. HF pads finished rows and exits when all are done.
    """

    def __init__(self, tokenizer: PreTrainedTokenizerBase, width: int, answered: list[int], budgets: list[int],
                 stop_when: Callable[[str], bool] | None, end_ids: set[int]):  # fmt: skip
        self.tokenizer, self.width, self.answered, self.budgets = tokenizer, width, answered, budgets
        self.stop_when, self.end_ids = stop_when, end_ids
        self.fired_at: list[int | None] = [None] * len(answered)  # new tokens when `stop_when` fired
        self.done = torch.zeros(len(answered), dtype=torch.bool)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs) -> torch.BoolTensor:
        steps = input_ids.shape[1] - self.width
        for row in range(input_ids.shape[0]):
            if self.done[row]:
                continue
            if int(input_ids[row, -1]) in self.end_ids:  # finished at an end token: HF pads it from here on
                self.done[row] = True
                continue
            if self.stop_when is not None:
                answer = input_ids[row, self.width - self.answered[row] :]
                text = self.tokenizer.decode(answer, skip_special_tokens=True)
                if self.stop_when(text):
                    self.fired_at[row] = steps
                    self.done[row] = True
                    continue
            if steps >= self.budgets[row]:
                self.done[row] = True
        return self.done.to(input_ids.device).clone()


def _end_ids(model: nn.Module, tokenizer: PreTrainedTokenizerBase) -> set[int]:
    """Every token id that ends an answer: the tokenizer's EOS and all of the model's generation_config EOS ids."""
    ends = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
    config = getattr(model, "generation_config", None)
    extra = getattr(config, "eos_token_id", None) if config is not None else None
    ends.update([extra] if isinstance(extra, int) else list(extra or []))
    return ends


def left_pad(rows: Sequence[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Token lists right-aligned into one batch: (ids with `pad_id` on the left, attention mask)."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, width - len(r) :] = torch.tensor(r, dtype=torch.long)
        mask[i, width - len(r) :] = 1
    return ids, mask


def _decode_rows(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[list[int]],
    answered: Sequence[list[int]],
    drafted: Sequence[int],
    *,
    max_new_tokens: int,
    batch_size: int,
    stop_when: Callable[[str], bool] | None,
    progress: bool,
    desc: str,
) -> list[Generation]:
    """Greedy decoding of each prompt's answer, continuing after the `answered` tokens it already has."""
    device = next(model.parameters()).device
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    end_ids = _end_ids(model, tokenizer)
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]) + len(answered[i]))
    out: list[Generation | None] = [None] * len(prompts)
    for start in tqdm(range(0, len(order), batch_size), desc=desc, disable=not progress, leave=False):
        idx = order[start : start + batch_size]
        ids, mask = left_pad([prompts[i] + answered[i] for i in idx], pad_id)
        width = ids.shape[1]
        budgets = [max_new_tokens - len(answered[i]) for i in idx]
        criteria = None
        if stop_when is not None or any(answered[i] for i in idx):
            criteria = _StopWhen(tokenizer, width, [len(answered[i]) for i in idx], budgets, stop_when, end_ids)
        seqs = model.generate(
            input_ids=ids.to(device), attention_mask=mask.to(device), max_new_tokens=max(budgets),
            do_sample=False, num_beams=1, use_cache=True, pad_token_id=pad_id,
            stopping_criteria=StoppingCriteriaList([criteria]) if criteria else None,
            temperature=None, top_p=None, top_k=None,
        )  # fmt: skip
        new = seqs[:, width:].tolist()
        for row, i in enumerate(idx):
            fired_at = criteria.fired_at[row] if criteria is not None else None
            tokens = new[row][: budgets[row]]  # HF pads rows that finished (end token, early stop, budget)
            if fired_at is not None:
                n = fired_at
            else:
                n = next((j + 1 for j, t in enumerate(tokens) if t in end_ids), len(tokens))
            answer = answered[i] + tokens[:n]
            text = tokenizer.decode(answer, skip_special_tokens=True).strip()
            out[i] = Generation(text, len(answer), fired_at is not None, answer, drafted=drafted[i])
    return out  # type: ignore[return-value]


def _logits_last(model: nn.Module, ids: torch.Tensor, mask: torch.Tensor, keep: int) -> torch.Tensor:
    """Logits of the last `keep` positions of a left-padded batch in one forward pass (no cache)."""
    positions = (mask.cumsum(-1) - 1).clamp(min=0)  # left padding: every row's first real token is position 0
    return forward_keeping(model, keep, input_ids=ids, attention_mask=mask, position_ids=positions,
                           use_cache=False).logits  # fmt: skip


def _verify(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[list[int]],
    drafts: Sequence[Sequence[int]],
    *,
    max_new_tokens: int,
    batch_size: int,
    stop_when: Callable[[str], bool] | None,
    rounds: int = DRAFT_ROUNDS,
) -> tuple[list[Generation | None], list[list[int]], list[int]]:
    """Check the drafts → finished generations, and the accepted answer tokens of the rest.

    Round 1 checks each whole draft. Where an answer leaves its draft, later rounds look the answer's last tokens up
    in the draft, else in all drafts (prompt-lookup style: a changed, added or dropped word, then the same text again;
    or another prompt's answer with the same wording) and check what follows there; a row leaves once a round
    accepts none of its proposal or no lookup matches.
    """
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    end_ids = _end_ids(model, tokenizer)
    drafts = [list(d[:max_new_tokens]) for d in drafts]
    finished: list[Generation | None] = [None] * len(prompts)
    accepted: list[list[int]] = [[] for _ in prompts]
    drafted = [0] * len(prompts)  # accepted tokens that came from proposals (not the free greedy token per check)
    proposals = dict(enumerate(drafts))
    pool = _Lookup([t for d in drafts for t in [*d, -1]])  # every draft, -1 between them so no match spans two
    for round_ in range(rounds):
        rows = list(proposals)
        if not rows:
            break
        gained = _check(model, pad_id, [prompts[i] + accepted[i] for i in rows], [proposals[i] for i in rows],
                        batch_size)  # fmt: skip
        proposals = {}
        for i, new in zip(rows, gained, strict=True):
            drafted[i] += len(new) - 1
            finished[i], accepted[i] = _settle(tokenizer, accepted[i] + new, end_ids, max_new_tokens, stop_when,
                                               drafted[i])  # fmt: skip
            if finished[i] is None and (round_ == 0 or len(new) > 1):
                limit = max_new_tokens - len(accepted[i])
                follow = _Lookup(drafts[i]).follow(accepted[i], limit) or pool.follow(accepted[i], limit)
                if follow:
                    proposals[i] = follow
    return finished, accepted, drafted


class _Lookup:
    """Where in a token list each 1-, 2- and 3-gram ends, to propose what follows an answer's last tokens there."""

    def __init__(self, tokens: list[int], longest: int = 3) -> None:
        self.tokens, self.longest = tokens, longest
        self.ends: dict[tuple[int, ...], list[int]] = {}
        for n in range(1, longest + 1):
            for j in range(n, len(tokens)):
                self.ends.setdefault(tuple(tokens[j - n : j]), []).append(j)

    def follow(self, answer: list[int], limit: int) -> list[int]:
        """The tokens after the match of the answer's longest tail (nearest the answer's own position), up to a -1."""
        for n in range(min(self.longest, len(answer)), 0, -1):
            ends = self.ends.get(tuple(answer[-n:]))
            if ends:
                j = min(ends, key=lambda e: abs(e - len(answer)))
                follow = self.tokens[j : j + limit]
                return follow[: follow.index(-1)] if -1 in follow else follow
        return []


def _check(model: nn.Module, pad_id: int, prefixes: list[list[int]], proposals: list[list[int]], batch_size: int
           ) -> list[list[int]]:  # fmt: skip
    """For each prefix, the longest start of its proposal that greedy decoding reproduces, plus the next greedy
    token: one teacher-forced forward pass per batch (no cache)."""
    device = next(model.parameters()).device
    head = model.get_output_embeddings()
    vocab = head.weight.shape[0] if head is not None else 1
    out: list[list[int]] = [[] for _ in prefixes]
    order = sorted(range(len(prefixes)), key=lambda i: len(prefixes[i]) + len(proposals[i]))
    for start in range(0, len(order), batch_size):
        batch = order[start : start + batch_size]
        keep = max(len(proposals[i]) for i in batch) + 1  # a prediction after the prefix and after each proposed one
        rows_per_pass = max(1, VERIFY_LOGIT_BUDGET // (keep * vocab))
        for sub in range(0, len(batch), rows_per_pass):
            idx = batch[sub : sub + rows_per_pass]
            ids, mask = left_pad([prefixes[i] + proposals[i] for i in idx], pad_id)
            sub_keep = max(len(proposals[i]) for i in idx) + 1  # ≤ the padded width (a prefix has ≥ 1 token)
            predicted = _logits_last(model, ids.to(device), mask.to(device), sub_keep).argmax(-1).tolist()
            for row, i in enumerate(idx):
                proposal = proposals[i]
                greedy = predicted[row][-(len(proposal) + 1) :]  # greedy[k]: the next token after proposal[:k]
                agree = next((k for k, (d, g) in enumerate(zip(proposal, greedy, strict=False)) if d != g),
                             len(proposal))  # fmt: skip
                out[i] = [*proposal[:agree], greedy[agree]]
    return out


def _settle(tokenizer: PreTrainedTokenizerBase, tokens: list[int], end_ids: set[int], max_new_tokens: int,
            stop_when: Callable[[str], bool] | None, drafted: int) -> tuple[Generation | None, list[int]]:  # fmt: skip
    """Where greedy decoding of these verified tokens would have ended (EOS, early stop, budget), if it did."""
    tokens = tokens[:max_new_tokens]
    end = next((j + 1 for j, t in enumerate(tokens) if t in end_ids), None)
    tokens = tokens[:end]

    def decode(n: int) -> str:
        return tokenizer.decode(tokens[:n], skip_special_tokens=True)

    if stop_when is not None and stop_when(decode(len(tokens))):
        lo, hi = 1, len(tokens)  # `stop_when` is monotone in the answer (settled stays settled): first step it fires
        while lo < hi:
            mid = (lo + hi) // 2
            lo, hi = (lo, mid) if stop_when(decode(mid)) else (mid + 1, hi)
        return Generation(decode(lo).strip(), lo, True, tokens[:lo], drafted=min(drafted, lo)), tokens[:lo]
    if end is not None or len(tokens) >= max_new_tokens:
        n = len(tokens)
        return Generation(decode(n).strip(), n, False, tokens, drafted=min(drafted, n)), tokens
    return None, tokens


@torch.no_grad()
def generate(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[list[int]],
    *,
    max_new_tokens: int,
    batch_size: int,
    stop_when: Callable[[str], bool] | None = None,
    drafts: Sequence[Sequence[int]] | None = None,
    draft_rounds: int = DRAFT_ROUNDS,
    progress: bool = False,
    desc: str = "generate",
) -> list[Generation]:
    """Generate greedily for tokenised prompts; batches hold prompts of similar length to limit padding.

    `stop_when(answer text)` ends a row early once it holds (it must stay true for every continuation).
    `drafts[i]`: a guess at prompt i's answer tokens (e.g. a neighbouring landscape point's), verified first in up to
    `draft_rounds` forward passes (0: drafts unused).
    """
    was_training = model.training
    model.eval()
    try:
        answered: list[list[int]] = [[] for _ in prompts]
        drafted = [0] * len(prompts)
        finished: list[Generation | None] = [None] * len(prompts)
        if drafts is not None and draft_rounds > 0:
            if len(drafts) != len(prompts):
                raise ValueError(f"generate: {len(drafts)} drafts for {len(prompts)} prompts")
            finished, answered, drafted = _verify(model, tokenizer, prompts, drafts, max_new_tokens=max_new_tokens,
                                         batch_size=batch_size, stop_when=stop_when, rounds=draft_rounds)  # fmt: skip
        todo = [i for i, g in enumerate(finished) if g is None]
        rest = _decode_rows(model, tokenizer, [prompts[i] for i in todo], [answered[i] for i in todo],
                            [drafted[i] for i in todo],
                            max_new_tokens=max_new_tokens, batch_size=batch_size, stop_when=stop_when,
                            progress=progress, desc=desc) if todo else []  # fmt: skip
        for i, g in zip(todo, rest, strict=True):
            finished[i] = g
        return finished  # type: ignore[return-value]
    finally:
        if was_training:
            model.train()
