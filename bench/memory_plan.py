"""On paper: GPU memory for Llama-3.2-1B / 3.1-8B / 3.1-70B fine-tuning, from the model shapes alone (no weights).

Per size and mode — LoRA r=8 on q_proj, v_proj (one GPU) and full fine-tuning with FSDP over 8 GPUs (per GPU; FSDP
shards weights, gradients, optimiser state and every per-parameter copy evenly) — the bytes of:

  weights       every parameter at the policy's weight dtype: fp32 master weights (model.precision=bf16-autocast,
                the default on a GPU) or bf16 (bf16-pure; also what a frozen LoRA base could be kept in)
  gradients     fp32, trainable parameters only
  AdamW         exp_avg + exp_avg_sq, fp32, trainable only
  EMA average   fp32 copy of the trainable parameters (sweeps.methods.ema)
  teacher       frozen copy of the whole model in bf16 (distillation / LwF-style methods); 0 for LoRA, whose
                teacher is the frozen base itself with the adapters switched off (peft's disable_adapter)
  reference     fp32 copy of the trainable parameters at the start (θ₀ anchors: L2-SP, EWC's mean; EWC's Fisher
                diagonal is one more of the same size)
  DER memory    dark-experience replay: `examples × seq × top-k` logits kept as fp16 value + int32 token id (the full
                vocabulary would be examples × seq × vocab × 2 bytes; printed below the table)

Not counted: activations (batch × sequence dependent; gradient checkpointing cuts them), CUDA context and allocator
slack (~1-3 GB), LoRA's own fp32 weights are counted in `weights`. Parameter counts come from instantiating
transformers' LlamaForCausalLM on the meta device (no memory) and are checked against the closed form below.

Run: `.venv/bin/python bench/memory_plan.py [--gpu-gib 80] [--der-examples 1000 --der-seq 512 --der-topk 32]`.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

import torch
from transformers import LlamaConfig, LlamaForCausalLM

GIB = 1024**3
# Shapes from the public config.json of each model (meta-llama/Llama-3.2-1B, Llama-3.1-8B, Llama-3.1-70B).
SHAPES = {
    "Llama-3.2-1B": dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
                         num_key_value_heads=8, vocab_size=128256, tie_word_embeddings=True),
    "Llama-3.1-8B": dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
                         num_key_value_heads=8, vocab_size=128256, tie_word_embeddings=False),
    "Llama-3.1-70B": dict(hidden_size=8192, intermediate_size=28672, num_hidden_layers=80, num_attention_heads=64,
                          num_key_value_heads=8, vocab_size=128256, tie_word_embeddings=False),
}  # fmt: skip
COLUMNS = ("weights", "gradients", "adamw", "ema", "teacher", "reference", "der")


def count_params(cfg: LlamaConfig) -> int:
    """Closed form: embeddings, per layer q/k/v/o + gated MLP + two RMSNorms, final norm, untied lm_head."""
    h, inter, layers, vocab = cfg.hidden_size, cfg.intermediate_size, cfg.num_hidden_layers, cfg.vocab_size
    kv = cfg.num_key_value_heads * (h // cfg.num_attention_heads)
    per_layer = 2 * h * h + 2 * h * kv + 3 * h * inter + 2 * h
    return vocab * h + layers * per_layer + h + (0 if cfg.tie_word_embeddings else vocab * h)


def meta_params(cfg: LlamaConfig) -> int:
    """The same count from transformers' own module tree (meta device: shapes only, no storage)."""
    with torch.device("meta"):
        model = LlamaForCausalLM(cfg)
    return sum(p.numel() for p in model.parameters())


def lora_params(cfg: LlamaConfig, r: int = 8) -> int:
    """LoRA A (r × in) + B (out × r) on q_proj (h → h) and v_proj (h → kv) of every layer."""
    h = cfg.hidden_size
    kv = cfg.num_key_value_heads * (h // cfg.num_attention_heads)
    return cfg.num_hidden_layers * r * ((h + h) + (h + kv))


@dataclass
class Plan:
    model: str
    mode: str
    params: int  # all parameters (the base, for LoRA)
    trainable: int
    shards: int  # GPUs the per-parameter bytes are split over
    bytes: dict[str, float]

    @property
    def plain(self) -> float:
        """Plain fine-tuning: weights + gradients + AdamW."""
        return self.bytes["weights"] + self.bytes["gradients"] + self.bytes["adamw"]

    @property
    def everything(self) -> float:
        return sum(self.bytes.values())


def plan(name: str, cfg: LlamaConfig, mode: str, *, weight_bytes: int = 4, shards: int = 1, lora_r: int = 8,
         der: tuple[int, int, int] = (1000, 512, 32)) -> Plan:  # fmt: skip
    """Bytes per GPU. `mode`: "lora" (adapters on q, v train; base frozen) or "full"; `der` = (examples, seq, top-k)."""
    params = count_params(cfg)
    extra = lora_params(cfg, lora_r) if mode == "lora" else 0
    trainable = extra if mode == "lora" else params
    examples, seq, topk = der
    per_gpu = {
        "weights": (params + extra) * weight_bytes,
        "gradients": trainable * 4,
        "adamw": trainable * 8,
        "ema": trainable * 4,
        "teacher": 0 if mode == "lora" else params * 2,
        "reference": trainable * 4,
    }
    out = {k: v / shards for k, v in per_gpu.items()}
    out["der"] = examples * seq * topk * (2 + 4)  # replay buffer: not sharded (each rank replays its own batches)
    return Plan(name, mode, params, trainable, shards, out)


def plans(weight_bytes: int = 4, der: tuple[int, int, int] = (1000, 512, 32)) -> list[Plan]:
    out = []
    for name, shape in SHAPES.items():
        cfg = LlamaConfig(**shape)
        out.append(plan(name, cfg, "lora", weight_bytes=weight_bytes, der=der))
        out.append(plan(name, cfg, "full", weight_bytes=weight_bytes, shards=1, der=der))
        out.append(plan(name, cfg, "full", weight_bytes=weight_bytes, shards=8, der=der))
    return out


def markdown(rows: list[Plan], gpu_gib: float) -> str:
    def gib(x: float) -> str:
        return f"{x / GIB:.2f}" if x < 10 * GIB else f"{x / GIB:.0f}"

    def mode(p: Plan) -> str:
        if p.mode == "lora":
            return "LoRA r=8 q,v"
        return "full FT, 1 GPU" if p.shards == 1 else f"full FT, FSDP×{p.shards}"

    head = ["model", "mode", "params", "trainable", *COLUMNS, "plain FT", "fits", "all of it", "fits"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for p in rows:
        fit = [("yes" if x <= gpu_gib * GIB else "no") for x in (p.plain, p.everything)]
        cells = [p.model, mode(p), f"{p.params / 1e9:.2f} B", f"{p.trainable / 1e6:,.1f} M",
                 *(gib(p.bytes[c]) for c in COLUMNS), gib(p.plain), fit[0], gib(p.everything), fit[1]]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gpu-gib", type=float, default=80.0)
    ap.add_argument("--weight-bytes", type=int, default=4, help="4: fp32 master weights (bf16-autocast); 2: bf16")
    ap.add_argument("--der-examples", type=int, default=1000)
    ap.add_argument("--der-seq", type=int, default=512)
    ap.add_argument("--der-topk", type=int, default=32)
    args = ap.parse_args()
    der = (args.der_examples, args.der_seq, args.der_topk)
    for name, shape in SHAPES.items():
        cfg = LlamaConfig(**shape)
        assert count_params(cfg) == meta_params(cfg), name  # closed form == transformers' module tree
    rows = plans(args.weight_bytes, der)
    print(f"GiB per GPU; weights at {args.weight_bytes} bytes/parameter; fits = within {args.gpu_gib:g} GiB "
          "before activations and CUDA context")  # fmt: skip
    print(markdown(rows, args.gpu_gib))
    full_logits = der[0] * der[1] * SHAPES["Llama-3.1-8B"]["vocab_size"] * 2
    print(f"\nDER with full-vocabulary fp16 logits instead of top-{der[2]}: {full_logits / GIB:.0f} GiB "
          f"({der[0]} examples × {der[1]} tokens × 128256).")


if __name__ == "__main__":
    main()
