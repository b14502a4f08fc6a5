"""Precision policy: fp32 master weights under bf16 autocast keep the small Adam steps that pure bf16 rounds away."""

from __future__ import annotations

import copy

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from sweeps.config import ConfigError, ModelConfig, OptimConfig
from sweeps.formatting import IGNORE_INDEX, Encoded
from sweeps.loop import train
from sweeps.methods import EMA, MethodStack
from sweeps.models import Precision, resolve_precision
from sweeps.precision import precision_errors


def _tiny_model() -> LlamaForCausalLM:
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=64, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=4, max_position_embeddings=32, initializer_range=0.02)  # fmt: skip
    return LlamaForCausalLM(cfg)


def _data(n: int = 16) -> list[Encoded]:
    g = torch.Generator().manual_seed(1)
    out = []
    for _ in range(n):
        ids = torch.randint(1, 64, (12,), generator=g).tolist()
        out.append(Encoded(ids, [IGNORE_INDEX] * 4 + ids[4:]))
    return out


def _moved_share(precision: Precision, lr: float = 1e-5, steps: int = 3) -> float:
    """Share of the transformer blocks' matrix entries that changed after `steps` AdamW steps at `lr`."""
    model = _tiny_model().to(precision.weight_dtype)
    before = {n: p.detach().clone() for n, p in model.named_parameters() if ".layers." in n and p.ndim == 2}
    seen: list[torch.dtype] = []
    model.model.layers[0].mlp.down_proj.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    optim = OptimConfig(lr=lr, batch_size=4, max_steps=steps, scheduler="constant", grad_clip=None)
    result = train(model, _data(), optim, MethodStack([]), pad_id=0, progress=False, precision=precision)
    assert result.status == "completed"
    assert set(seen) == {torch.bfloat16}  # both policies compute the forward in bf16; only the weights differ
    params = dict(model.named_parameters())
    moved = sum(int((params[n].detach() != w).sum()) for n, w in before.items())
    return moved / sum(w.numel() for w in before.values())


def test_bf16_autocast_trains_at_lr_1e5_where_pure_bf16_rounds_the_steps_away() -> None:
    autocast = resolve_precision(ModelConfig(device="cpu", precision="bf16-autocast"))
    pure = resolve_precision(ModelConfig(device="cpu", precision="bf16-pure"))
    assert (autocast.weight_dtype, autocast.autocast_dtype) == (torch.float32, torch.bfloat16)
    assert (pure.weight_dtype, pure.autocast_dtype) == (torch.bfloat16, None)
    kept, rounded = _moved_share(autocast), _moved_share(pure)
    assert kept > 0.95  # fp32 master weights take every ~1e-5 step
    assert rounded < 0.3  # bf16 keeps only the steps of weights near 0 (|w| below ~3e-3)


def test_auto_is_bf16_autocast_on_a_cuda_gpu_and_fp32_elsewhere(monkeypatch) -> None:
    assert resolve_precision(ModelConfig(device="cpu")).name == "fp32"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    on_gpu = resolve_precision(ModelConfig(), torch.device("cuda"))
    assert (on_gpu.name, on_gpu.weight_dtype, on_gpu.device_type) == ("bf16-autocast", torch.float32, "cuda")
    assert on_gpu.metrics() == {"precision": "bf16-autocast"} and on_gpu.warning is None
    pure = resolve_precision(ModelConfig(precision="bf16-pure"), torch.device("cuda"))
    assert pure.metrics()["precision"] == "bf16-pure" and "round to nothing" in pure.metrics()["precision_warning"]


@pytest.mark.parametrize(("dtype", "precision", "key"), [
    ("bfloat16", "auto", "model.dtype"), ("bfloat16", "bf16-autocast", "model.dtype"),
    ("float16", "auto", "model.dtype"), ("float32", "bf16-pure", "model.precision"),
    ("auto", "fp16", "model.precision"),
])  # fmt: skip
def test_16_bit_weights_only_on_request_one_line_each(dtype: str, precision: str, key: str) -> None:
    cfg = ModelConfig(device="cpu", dtype=dtype, precision=precision)
    errors = precision_errors(cfg)
    assert len(errors) == 1 and errors[0].startswith(key) and "\n" not in errors[0]
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        resolve_precision(cfg)
    assert precision_errors(ModelConfig(dtype="bfloat16", precision="bf16-pure")) == []


def test_fp16_autocast_trains_through_a_grad_scaler() -> None:
    fp16 = resolve_precision(ModelConfig(device="cpu", precision="fp16-autocast"))
    assert fp16.weight_dtype == torch.float32 and fp16.grad_scaler() is not None
    model = _tiny_model()
    start = [p.detach().clone() for p in model.parameters()]
    result = train(model, _data(), OptimConfig(lr=1e-3, batch_size=4, max_steps=2), MethodStack([]), pad_id=0,
                   progress=False, precision=fp16)  # fmt: skip
    assert result.status == "completed"
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert any(not torch.equal(a, p) for a, p in zip(start, model.parameters(), strict=True))


def test_fp16_overflow_skips_the_step_and_moves_no_weight() -> None:
    """An overflowed fp16 gradient (inf before unscaling) is skipped by the fused AdamW step (GradScaler hands it
    found_inf), weight decay included, and the run goes on."""
    fp16 = resolve_precision(ModelConfig(device="cpu", precision="fp16-autocast"))
    model = _tiny_model()
    first = next(model.parameters())
    first.register_hook(lambda g: torch.full_like(g, float("inf")))  # every backward overflows
    start = [p.detach().clone() for p in model.parameters()]
    optim = OptimConfig(lr=1e-3, batch_size=4, max_steps=2, weight_decay=0.1)
    result = train(model, _data(), optim, MethodStack([]), pad_id=0, progress=False, precision=fp16)
    assert result.status == "completed" and result.steps == 2
    assert all(torch.equal(a, p) for a, p in zip(start, model.parameters(), strict=True))


def test_ema_average_is_fp32_for_a_bf16_model() -> None:
    model = _tiny_model().to(torch.bfloat16)
    ema = EMA(eta=0.01)
    pure = resolve_precision(ModelConfig(device="cpu", precision="bf16-pure"))
    optim = OptimConfig(lr=1e-3, batch_size=4, max_steps=3, scheduler="constant")
    start = copy.deepcopy(model)
    train(model, _data(), optim, MethodStack([ema]), pad_id=0, progress=False, precision=pure)
    assert all(s.dtype == torch.float32 for s in ema.shadow)
    # η = 0.01 moves the average by ~1e-5 per step (lr 1e-3 steps of the matrices): a bf16 average keeps few of them
    first = dict(start.named_parameters())
    pairs = [(s, first[n].detach()) for n, s in zip(ema.names, ema.shadow, strict=True) if s.ndim == 2]
    total = sum(s.numel() for s, _ in pairs)
    fp32_moved = sum(int((s != w.float()).sum()) for s, w in pairs) / total
    bf16_moved = sum(int((s.to(torch.bfloat16) != w).sum()) for s, w in pairs) / total
    assert fp32_moved > 0.95 and bf16_moved < 0.5 * fp32_moved
    live = [p.detach().clone() for p in model.parameters()]
    with ema.eval_weights():
        for n, s in zip(ema.names, ema.shadow, strict=True):
            assert torch.equal(dict(model.named_parameters())[n].detach(), s.to(torch.bfloat16))
    assert all(torch.equal(a, p) for a, p in zip(live, model.parameters(), strict=True))  # live weights restored
