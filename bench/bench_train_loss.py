"""Training step with the response-only loss (`sweeps.lm_loss.response_loss`, what `sweeps.loop.train` runs) vs the
model's own full-vocabulary loss (`model(**batch).loss`, what the loop ran before 2026-12-06), side by side, and the
response-only loss under bf16 autocast (`model.precision=bf16-autocast`: fp32 weights, bf16 matmuls; on a CPU with
native bf16 — avx512_bf16 or AMX — the matmuls run in bf16 too).

    .venv/bin/python bench/bench_train_loss.py [--model .cache/aligned-<key>] [--data gsm8k|alpaca] [--steps 6]
                                                [--batch-size 4] [--repeats 2]

The model: a θ_aligned SmolLM2 folder (default: the first `.cache/aligned-*`, built by any SmolLM2 study), fp32, in
train mode; the data: the first `--steps` × `--batch-size` GSM8K train solutions (or Alpaca rows) from
../shared/data, encoded as the trials encode them (chat template, max_length 256). Each arm runs forward + backward
of the same batches; interleaved (before, now, bf16, before, ...), best of `--repeats`. Prints seconds per step, the
ratios to "before", and the largest loss and gradient differences of "now" against "before". A few minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script: make `sweeps` importable

from bench._smollm2 import DATA, load_aligned  # noqa: E402
from sweeps.formatting import IGNORE_INDEX, PromptFormatter, collate  # noqa: E402
from sweeps.lm_loss import first_scored, response_loss  # noqa: E402


def pairs(kind: str, n: int) -> list[tuple[str, str]]:
    if kind == "gsm8k":
        lines = (DATA / "gsm8k" / "train.jsonl").read_text().splitlines()[:n]
        return [(r["question"], r["answer"]) for r in map(json.loads, lines)]
    items = [r for r in json.loads((DATA / "alpaca" / "alpaca_5000.json").read_text()) if r.get("output")][:n]
    return [(r["instruction"] + ("\n\n" + r["input"] if r.get("input") else ""), r["output"]) for r in items]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=None)
    ap.add_argument("--data", choices=["gsm8k", "alpaca"], default="gsm8k")
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    tok, model = load_aligned(args.model, args.threads)
    model.train()
    fmt = PromptFormatter(tok)
    data = [e for e in (fmt.encode_pair(p, r, 256) for p, r in pairs(args.data, args.steps * args.batch_size)) if e]
    batches = [data[i : i + args.batch_size] for i in range(0, len(data), args.batch_size)]
    tokens = sum(len(e.input_ids) for e in data)
    scored = sum(sum(t != IGNORE_INDEX for t in e.labels[1:]) for e in data)
    params = [p for p in model.parameters() if p.requires_grad]

    def before(rows):  # the loop before 2026-12-06: the model's own loss over every position
        return model(**collate(rows, tok.pad_token_id)).loss

    def now(rows):
        return response_loss(model, collate(rows, tok.pad_token_id), first_scored(rows))[0]

    def bf16(rows):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return now(rows)

    arms = {"full logits (before)": before, "response only (now)": now, "now + bf16 autocast": bf16}
    times: dict[str, list[float]] = {k: [] for k in arms}
    last: dict[str, tuple[float, list[torch.Tensor]]] = {}
    for _ in range(args.repeats):
        for name, fn in arms.items():
            start = time.perf_counter()
            for rows in batches:
                loss = fn(rows)
                grads = torch.autograd.grad(loss, params)
            times[name].append((time.perf_counter() - start) / len(batches))
            last[name] = (loss.item(), list(grads))
    best = {k: min(v) for k, v in times.items()}
    (la, ga), (lb, gb) = last["full logits (before)"], last["response only (now)"]
    grad_diff = max(float((a - b).abs().max() / b.abs().max().clamp(min=1e-30)) for a, b in zip(ga, gb, strict=True))
    print(f"{args.data}: {len(batches)} steps of batch {args.batch_size}, {tokens} tokens, {scored} scored "
          f"({scored / tokens:.0%})")  # fmt: skip
    ratios = {name: best["full logits (before)"] / t for name, t in best.items()}
    for name, t in best.items():
        print(f"  {name:22s} {t:7.2f} s/step  {ratios[name]:.2f}x")
    print(f"  now vs before: last loss {lb:.6f} vs {la:.6f}, largest gradient difference {grad_diff:.1e} (relative to "
          f"each tensor's largest entry); bf16 autocast: last loss {last['now + bf16 autocast'][0]:.6f}")
    print("JSON " + json.dumps({"seconds_per_step": best, "speedup": ratios, "loss": [la, lb],
                                "grad_rel_diff": grad_diff, "tokens": tokens, "scored": scored, "data": args.data}))


if __name__ == "__main__":
    main()
