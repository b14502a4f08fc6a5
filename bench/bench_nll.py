"""Response-only NLL (`sweeps.scoring.nll.per_example_nll`) vs the full-logits computation it replaced, side by side.

    .venv/bin/python bench/bench_nll.py [--model .cache/aligned-<key>] [--n 32] [--batch-size 32] [--repeats 3]

The model: a θ_aligned SmolLM2 folder (default: the first `.cache/aligned-*`, built by any SmolLM2 study); the data:
`--n` refusal pairs (safety_tuned_llamas) and `--n` held-out Alpaca rows from ../shared/data, encoded as the trials
encode them (chat template, max_length 256) — the sets behind `safety_loss` and `utility_loss`. The reference
projects every position onto the vocabulary and runs the cross-entropy over the transposed (batch, vocab, time)
logits, as `per_example_nll` did before 2026-12-06. Interleaved runs (ref, new, ref, new, ...), best of `--repeats`;
prints the seconds of each, the ratio, and the largest difference between the two NLLs. A few minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script: make `sweeps` importable

from bench._smollm2 import DATA, load_aligned  # noqa: E402
from sweeps.formatting import IGNORE_INDEX, PromptFormatter, collate  # noqa: E402
from sweeps.scoring.nll import per_example_nll  # noqa: E402


@torch.no_grad()
def full_logits_nll(model, data, *, pad_id: int, batch_size: int) -> list[float]:
    """The previous implementation: logits at every position, cross-entropy over (batch, vocab, time)."""
    order = sorted(range(len(data)), key=lambda i: len(data[i].input_ids))
    out = [0.0] * len(data)
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        batch = collate([data[i] for i in idx], pad_id, "cpu")
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        targets = batch["labels"][:, 1:]
        losses = F.cross_entropy(logits[:, :-1].float().transpose(1, 2), targets, ignore_index=IGNORE_INDEX,
                                 reduction="none")  # fmt: skip
        counts = (targets != IGNORE_INDEX).sum(1)
        for row, i in enumerate(idx):
            out[i] = float(losses[row].sum() / counts[row].clamp(min=1))
    return out


def rows(path: Path, n: int, start: int = 0) -> list[tuple[str, str]]:
    items = [r for r in json.loads(path.read_text()) if r.get("output")][start : start + n]
    return [(r["instruction"] + ("\n\n" + r["input"] if r.get("input") else ""), r["output"]) for r in items]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=None)
    ap.add_argument("--n", type=int, default=32)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    tok, model = load_aligned(args.model, args.threads)
    fmt = PromptFormatter(tok)
    pairs = rows(DATA / "safety_tuned_llamas" / "safety_only_data_Instructions.json", args.n)
    pairs += rows(DATA / "alpaca" / "alpaca_5000.json", args.n, start=4000)
    data = [e for e in (fmt.encode_pair(p, r, 256) for p, r in pairs) if e is not None]
    tokens = sum(len(e.input_ids) for e in data)
    scored = sum(sum(t != IGNORE_INDEX for t in e.labels[1:]) for e in data)
    times: dict[str, list[float]] = {"full logits (before)": [], "response only (now)": []}
    values = {}
    for _ in range(args.repeats):
        for name, fn in (("full logits (before)", full_logits_nll), ("response only (now)", per_example_nll)):
            start = time.perf_counter()
            values[name] = fn(model, data, pad_id=tok.pad_token_id, batch_size=args.batch_size)
            times[name].append(time.perf_counter() - start)
    best = {k: min(v) for k, v in times.items()}
    diff = max(abs(a - b) for a, b in zip(*values.values(), strict=True))
    print(f"{len(data)} examples, {tokens} tokens, {scored} scored ({scored / tokens:.0%}), batch {args.batch_size}")
    for name, t in best.items():
        print(f"  {name:22s} {t:7.2f} s")
    ratio = best["full logits (before)"] / best["response only (now)"]
    print(f"  speed-up {ratio:.2f}x, largest NLL difference {diff:.2e}")
    print("JSON " + json.dumps({"seconds": best, "speedup": ratio, "max_abs_diff": diff, "examples": len(data),
                                "tokens": tokens, "scored": scored}))  # fmt: skip


if __name__ == "__main__":
    main()
