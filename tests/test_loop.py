"""Training loop: response-only loss, determinism, accumulation bookkeeping, divergence."""

from __future__ import annotations

import copy

import torch

from sweeps.config import OptimConfig
from sweeps.formatting import IGNORE_INDEX, PromptFormatter
from sweeps.loop import build_optimizer, collate, total_steps, train
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


def _varlen(n: int = 16) -> list:
    from sweeps.formatting import Encoded

    g = torch.Generator().manual_seed(1)
    out = []
    for i in range(n):
        ids = torch.randint(1, 11, (3 + (i * 5) % 11,), generator=g).tolist()
        prompt = 1 + i % 3
        out.append(Encoded(ids, [IGNORE_INDEX] * prompt + ids[prompt:]))
    return out


class _Record(TrainingMethod):
    """Keeps the complete gradient of the first step and the order of hook calls."""

    def __init__(self) -> None:
        self.grads: list[torch.Tensor] | None = None
        self.calls: list[str] = []

    def setup(self, ctx):
        self.params = list(ctx.params.values())
        self.calls.append("setup")

    def before_step(self, step, batches):
        self.calls.append(f"before{step}")

    def after_backward(self, model):
        if self.grads is None:
            self.grads = [p.grad.detach().clone() for p in self.params]

    def after_step(self, step):
        self.calls.append(f"after{step}")

    def finalize(self):
        self.calls.append("finalize")


def test_adamw_is_fused_and_takes_the_reference_step() -> None:
    """The loop's AdamW is torch's fused kernel on CPU tensors, with the config's lr, betas and weight decay: the same
    weights as torch's per-tensor reference implementation after a few steps."""
    torch.manual_seed(0)
    shapes = [(7, 5), (5,), (3, 7)]
    ours = [torch.nn.Parameter(torch.randn(s)) for s in shapes]
    ref = [torch.nn.Parameter(p.detach().clone()) for p in ours]
    start = [p.detach().clone() for p in ours]
    cfg = OptimConfig(lr=1e-2, weight_decay=0.1, betas=[0.8, 0.99])
    optimizer = build_optimizer(ours, cfg)
    reference = torch.optim.AdamW(ref, lr=1e-2, betas=(0.8, 0.99), weight_decay=0.1, foreach=False)
    assert optimizer.defaults["fused"] is True
    for _ in range(3):
        for a, b in zip(ours, ref, strict=True):
            a.grad = torch.randn(a.shape)
            b.grad = a.grad.clone()
        optimizer.step()
        reference.step()
    for a, b, s in zip(ours, ref, start, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
        assert (a - s).abs().max() > 1e-3  # every tensor moved
    # elsewhere (here the meta device; FSDP's DTensor shards likewise) torch picks its own implementation
    meta = torch.nn.Parameter(torch.empty(3, device="meta"))
    assert build_optimizer([meta], cfg).defaults["fused"] is None


def test_token_weighted_accumulation_matches_one_big_batch() -> None:
    from tests.test_ema import TinyLM

    torch.manual_seed(0)
    model = TinyLM()
    grads = []
    for bs, accum in ((16, 1), (4, 4), (2, 8)):
        rec = _Record()
        optim = OptimConfig(name="sgd", lr=0.1, batch_size=bs, grad_accum=accum, max_steps=1, grad_clip=None)
        train(copy.deepcopy(model), _varlen(), optim, MethodStack([rec]), pad_id=0, seed=5, progress=False)
        grads.append(rec.grads)
    for other in grads[1:]:
        for a, b in zip(grads[0], other, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)
    # the old per-micro-batch mean would differ on variable-length examples
    assert rec.calls == ["setup", "before1", "after1", "finalize"]


class _InfGrad(TrainingMethod):
    def setup(self, ctx):
        self.p = next(iter(ctx.params.values()))

    def after_backward(self, model):
        self.p.grad.view(-1)[0] = float("inf")


def test_non_finite_grad_norm_ends_run_as_diverged_without_finalize(tmp_path) -> None:
    from tests.test_ema import TinyLM

    model = TinyLM()
    before = [p.detach().clone() for p in model.parameters()]
    rec = _Record()
    result = train(model, _varlen(), OptimConfig(lr=1e-2, batch_size=4, max_steps=5, grad_clip=1.0),
                   MethodStack([rec, _InfGrad()]), pad_id=0, progress=False, log_path=tmp_path / "log.jsonl")
    assert result.status == "diverged" and result.diverged_at == 1 and result.steps == 0
    for a, b in zip(before, model.parameters(), strict=True):
        torch.testing.assert_close(a, b.detach())
    assert "finalize" not in rec.calls


class _Term(TrainingMethod):
    def __init__(self) -> None:
        self.name = "term"

    def step_log(self):
        return {"value": torch.tensor(2.5)}


def test_train_log_has_one_line_per_step(tmp_path) -> None:
    import json

    from tests.test_ema import TinyLM

    path = tmp_path / "train_log.jsonl"
    result = train(TinyLM(), _varlen(), OptimConfig(lr=1e-2, batch_size=4, grad_accum=2, max_steps=3),
                   MethodStack([_Term()]), pad_id=0, progress=False, log_path=path)  # fmt: skip
    lines = [json.loads(x) for x in path.read_text().splitlines()]
    assert [x["step"] for x in lines] == [1, 2, 3]
    assert [x["loss"] for x in lines] == result.losses
    assert all(x["grad_norm"] > 0 and x["lr"] > 0 and x["term/value"] == 2.5 for x in lines)
    assert sum(x["tokens"]["train"] for x in lines) == result.train_tokens
