"""Core benchmarks on the toy world, side by side in one run: training throughput, EMA overhead, ASR-eval speed.

    .venv/bin/python bench/bench_core.py [--cache-dir .cache] [--steps 60] [--threads 2]

Prints a small table, then one line `JSON {...}` with every number. Goals: EMA ≤ 2 % of a step, eval ≥ 5× faster.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import torch
import transformers
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script: make `sweeps` importable

from sweeps.config import OptimConfig
from sweeps.formatting import Encoded, PromptFormatter
from sweeps.loop import train
from sweeps.methods import EMA, MethodStack, TrainingContext
from sweeps.scoring.generate import generate
from sweeps.scoring.judges import KeywordJudge
from sweeps.scoring.keywords import is_refusal
from sweeps.toyworld import World, WorldConfig, ensure_world, toy_examples


def bench_train(model: PreTrainedModel, data: list[Encoded], pad_id: int, steps: int, repeats: int) -> dict[str, float]:
    """Interleave plain / EMA runs (A B A B ...) from fresh copies of the same model, seed and data."""
    optim = OptimConfig(max_steps=steps, batch_size=8)
    train(copy.deepcopy(model), data, OptimConfig(max_steps=3, batch_size=8), MethodStack([]), pad_id=pad_id,
          progress=False)  # fmt: skip  # warm-up: allocator, kernels
    ms: dict[str, list[float]] = {"plain": [], "ema": []}
    tok_s: list[float] = []
    for _ in range(repeats):
        for arm in ("plain", "ema"):
            methods = MethodStack([EMA(eta=0.25, mode="writeback")] if arm == "ema" else [])
            r = train(copy.deepcopy(model), data, optim, methods, pad_id=pad_id, seed=0, progress=False)
            ms[arm].append(1000 * r.train_time_s / r.steps)
            if arm == "plain":
                tok_s.append(r.tokens_per_s)
    plain, ema = statistics.median(ms["plain"]), statistics.median(ms["ema"])
    return {"tokens_per_s": statistics.median(tok_s), "plain_ms_per_step": plain, "ema_ms_per_step": ema,
            "ema_overhead_pct_e2e": 100 * (ema - plain) / plain}  # fmt: skip


def bench_ema_update(model: PreTrainedModel, calls: int) -> float:
    """Milliseconds per isolated `EMA.after_step` (lerp + writeback over all trainable weights)."""
    model = copy.deepcopy(model)
    ema = EMA(eta=0.25, mode="writeback")
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    ema.setup(TrainingContext(model, optimizer, total_steps=calls + 10, grad_accum=1, batch_size=1, pad_id=0))
    for step in range(1, 11):
        ema.after_step(step)
    start = time.perf_counter()
    for step in range(1, calls + 1):
        ema.after_step(step)
    return 1000 * (time.perf_counter() - start) / calls


@torch.no_grad()
def per_prompt_baseline(model: PreTrainedModel, tok: PreTrainedTokenizerBase, prompts: Sequence[list[int]],
                        max_new_tokens: int) -> list[tuple[str, int]]:  # fmt: skip
    """Plain HF generation, one prompt at a time, greedy, no early stop: (decoded new text, new tokens)."""
    out = []
    for ids in prompts:
        x = torch.tensor([ids])
        seq = model.generate(input_ids=x, attention_mask=torch.ones_like(x), max_new_tokens=max_new_tokens,
                             do_sample=False, pad_token_id=tok.pad_token_id)  # fmt: skip
        out.append((tok.decode(seq[0, x.shape[1] :], skip_special_tokens=True), seq.shape[1] - x.shape[1]))
    return out


def bench_eval(model: PreTrainedModel, tok: PreTrainedTokenizerBase, prompts: list[list[int]],
               max_new_tokens: int) -> dict[str, float]:  # fmt: skip
    model.eval()
    judge = KeywordJudge()
    generate(model, tok, prompts[:4], max_new_tokens=4, batch_size=4)  # warm-up
    start = time.perf_counter()
    ours = generate(model, tok, prompts, max_new_tokens=max_new_tokens, batch_size=64, stop_when=judge.settled)
    t_ours = time.perf_counter() - start
    start = time.perf_counter()
    base = per_prompt_baseline(model, tok, prompts, max_new_tokens)
    t_base = time.perf_counter() - start
    v_ours = [is_refusal(g.text, judge.keywords) for g in ours]
    v_base = [is_refusal(t, judge.keywords) for t, _ in base]
    n = len(prompts)
    return {"ours_prompts_per_s": n / t_ours, "base_prompts_per_s": n / t_base, "speedup": t_base / t_ours,
            "new_tokens_ours": sum(g.new_tokens for g in ours) / n, "new_tokens_base": sum(k for _, k in base) / n,
            "refusals_ours": sum(v_ours), "refusals_base": sum(v_base), "n": n,
            "verdict_mismatches": sum(a != b for a, b in zip(v_ours, v_base, strict=True))}  # fmt: skip


def perturbed(model: PreTrainedModel, scale: float = 0.05, seed: int = 0) -> PreTrainedModel:
    noisy = copy.deepcopy(model)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in noisy.parameters():
            p.add_(scale * p.abs().mean() * torch.randn(p.shape, generator=gen, dtype=p.dtype))
    return noisy


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cache-dir", default=".cache")
    ap.add_argument("--steps", type=int, default=60, help="optimiser steps per timed training run")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3, help="interleaved plain/EMA training repeats")
    ap.add_argument("--ema-calls", type=int, default=200)
    ap.add_argument("--max-new-tokens", type=int, default=32)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()

    world = World(WorldConfig())
    path = ensure_world(world.cfg, args.cache_dir) / "aligned"
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    fmt = PromptFormatter(tok)
    data = [fmt.encode_pair(e.prompt, e.response or "", max_length=256) for e in toy_examples("user_train", world)]
    prompts = [fmt.encode_prompt(e.prompt) for s in ("harmful", "overrefusal") for e in toy_examples(s, world)]

    tr = bench_train(model, data, tok.pad_token_id, args.steps, args.repeats)
    ema_ms = bench_ema_update(model, args.ema_calls)
    tr.update(ema_update_ms=ema_ms, ema_overhead_pct_isolated=100 * ema_ms / tr["plain_ms_per_step"])
    ev = {"aligned": bench_eval(model, tok, prompts, args.max_new_tokens),
          "perturbed": bench_eval(perturbed(model), tok, prompts, args.max_new_tokens)}  # fmt: skip

    n_params = sum(p.numel() for p in model.parameters())
    print(f"toy world aligned model: {n_params / 1e6:.2f}M params, {len(data)} train examples, {len(prompts)} "
          f"eval prompts, threads={args.threads}, steps={args.steps}, repeats={args.repeats}")  # fmt: skip
    print(f"{'training (AdamW, batch 8)':<36}{'value':>12}")
    print(f"{'  tokens/s (plain, median)':<36}{tr['tokens_per_s']:>12.0f}")
    print(f"{'  ms/step plain (median)':<36}{tr['plain_ms_per_step']:>12.2f}")
    print(f"{'  ms/step EMA writeback (median)':<36}{tr['ema_ms_per_step']:>12.2f}")
    print(f"{'  EMA overhead end-to-end %':<36}{tr['ema_overhead_pct_e2e']:>12.2f}")
    print(f"{'  EMA update alone ms':<36}{ema_ms:>12.3f}")
    print(f"{'  EMA overhead isolated % (goal<=2)':<36}{tr['ema_overhead_pct_isolated']:>12.2f}")
    print(f"{'ASR eval':<12}{'ours p/s':>10}{'base p/s':>10}{'speedup':>9}{'new tok':>12}"
          f"{'refusals':>12}{'mismatch':>10}   (new tok, refusals: ours/base)")  # fmt: skip
    for name, r in ev.items():
        print(f"{name:<12}{r['ours_prompts_per_s']:>10.1f}{r['base_prompts_per_s']:>10.1f}{r['speedup']:>8.1f}x"
              f"{r['new_tokens_ours']:>6.1f}/{r['new_tokens_base']:<5.1f}{r['refusals_ours']:>6}/{r['refusals_base']:<5}"
              f"{r['verdict_mismatches']:>10}")  # fmt: skip
    if any(r["verdict_mismatches"] for r in ev.values()):
        print("WARNING: keyword verdicts differ between batched early-stop and per-prompt generation")
    print("JSON " + json.dumps({"args": vars(args), "params": n_params, "train": tr, "eval": ev}))


if __name__ == "__main__":
    main()
