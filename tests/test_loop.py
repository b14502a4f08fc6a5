"""Training loop: response-only loss, determinism, accumulation bookkeeping, divergence."""

from __future__ import annotations

import copy

import torch

from sweeps.config import OptimConfig
from sweeps.formatting import IGNORE_INDEX, PromptFormatter
from sweeps.loop import collate, total_steps, train
from sweeps.methods import MethodStack, TrainingMethod
from sweeps.toyworld import toy_examples


def _encoded(tok, world, n=64):
    fmt = PromptFormatter(tok)
    return [fmt.encode_pair(e.prompt, e.response, 64) for e in toy_examples("user_train", world)[:n]]


def test_labels_cover_response_tokens_only(aligned, toy_world) -> None:
    _, tok = aligned
    fmt = PromptFormatter(tok)
    e = toy_examples("user_train", toy_world)[0]
    enc = fmt.encode_pair(e.prompt, e.response, 64)
    n_prompt = len(fmt.encode_prompt(e.prompt))
    assert all(x == IGNORE_INDEX for x in enc.labels[:n_prompt])
    assert tok.decode(enc.labels[n_prompt:], skip_special_tokens=True) == e.response
    assert enc.labels[-1] == tok.eos_token_id
    batch = collate([enc, fmt.encode_pair("hi", "x", 64)], tok.pad_token_id)
    assert batch["attention_mask"][1].sum() < batch["attention_mask"][0].sum()
    assert (batch["labels"][batch["attention_mask"] == 0] == IGNORE_INDEX).all()


def test_same_seed_same_run_and_accumulation_bookkeeping(aligned, toy_world) -> None:
    model, tok = aligned
    data = _encoded(tok, toy_world)
    optim = OptimConfig(lr=1e-3, batch_size=4, grad_accum=3, max_steps=4)
    runs = [train(copy.deepcopy(model), data, optim, MethodStack([]), pad_id=tok.pad_token_id, seed=7, progress=False)
            for _ in range(2)]  # fmt: skip
    assert runs[0].losses == runs[1].losses
    assert runs[0].effective_batch_size == 12 and runs[0].steps == 4
    assert runs[0].status == "completed" and runs[0].train_tokens > 0
    other = train(copy.deepcopy(model), data, optim, MethodStack([]), pad_id=tok.pad_token_id, seed=8, progress=False)
    assert other.losses != runs[0].losses


def test_epochs_define_step_count() -> None:
    assert total_steps(100, OptimConfig(batch_size=8, grad_accum=2, epochs=2.0)) == 13
    assert total_steps(100, OptimConfig(batch_size=8, max_steps=5)) == 5


class _NaNAt(TrainingMethod):
    name = "nan"

    def __init__(self, step: int) -> None:
        self.step, self.calls = step, 0

    def extra_loss(self, model, batch, outputs):
        self.calls += 1
        return torch.tensor(float("nan")) if self.calls >= self.step else None


def test_nan_loss_ends_run_as_diverged_without_updating(aligned, toy_world) -> None:
    model, tok = aligned
    data = _encoded(tok, toy_world)
    before = None
    result = train(model, data, OptimConfig(lr=1e-3, batch_size=4, max_steps=10), MethodStack([_NaNAt(3)]),
                   pad_id=tok.pad_token_id, progress=False)  # fmt: skip
    assert result.status == "diverged" and result.diverged_at == 3 and result.steps == 2
    before = [p.detach().clone() for p in model.parameters()]
    assert all(torch.isfinite(p).all() for p in before)  # the NaN step was not applied


def test_exploding_lr_is_recorded_as_diverged(aligned, toy_world) -> None:
    model, tok = aligned
    optim = OptimConfig(name="sgd", lr=1e12, scheduler="constant", batch_size=4, max_steps=20, grad_clip=None)
    result = train(model, _encoded(tok, toy_world), optim, MethodStack([]), pad_id=tok.pad_token_id, progress=False)
    assert result.status == "diverged"
